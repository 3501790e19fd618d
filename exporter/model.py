"""The normalised job model every provider reads its answers into; plain values, no I/O."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Status(StrEnum):
    """Normalised status of a job or a step."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED)


STATUSES: tuple[Status, ...] = tuple(Status)


class Cause(StrEnum):
    """Who must act on a failed job: the end user, the provider, or nobody knows."""

    USER = "user"
    PROVIDER = "provider"
    UNKNOWN = "unknown"


CAUSES: tuple[Cause, ...] = tuple(Cause)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a job (Basiq's steps, a generic API's stages)."""

    name: str
    status: Status
    raw_status: str = ""
    reason: str | None = None
    message: str | None = None
    awaiting_user: bool = False


# Typed read-only (Mapping): one empty dict that every job without extras shares.
NO_EXTRA: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Job:
    """A provider's job as last seen, normalised.

    Timestamps are Unix seconds (float) or None when the provider does not say.
    `reason` is a bounded error code (safe as a label); `message` is free text.
    """

    id: str
    status: Status
    raw_status: str = ""
    job_type: str = ""
    percent: float | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    updated: float | None = None
    steps: tuple[Step, ...] = ()
    records_total: int | None = None
    records_affected: int | None = None
    records_failed: int | None = None
    attempts: int | None = None
    reason: str | None = None
    message: str | None = None
    # Who must act, when the answer itself says so (an expired MFA, a lapsed consent); else the
    # provider's map of reasons decides, overridden by the target's `cause_map`.
    cause: Cause | None = None
    awaiting_user: bool = False
    # Provider-specific follow-up: e.g. the AIMS360 rerun that replaced this job. Read-only: most
    # jobs have none and share one empty mapping (a dict a job cost 64 bytes).
    extra: Mapping[str, str] = field(default_factory=lambda: NO_EXTRA, compare=False, hash=False)

    @property
    def is_placeholder(self) -> bool:
        """True for a job known only by its id (configured or registered, not yet polled)."""
        return self.extra.get("placeholder") == "true"

    def progress_key(self) -> tuple[object, ...]:
        """Everything whose change counts as progress (SPEC: status, step, percent, records, updated)."""
        return (
            self.status,
            self.raw_status,
            tuple((s.name, s.status) for s in self.steps),
            self.percent,
            self.records_total,
            self.records_affected,
            self.records_failed,
            self.updated,
            self.awaiting_user,
        )

    def effective_percent(self) -> float | None:
        """The provider's percent, else the share of finished steps, 100 once succeeded."""
        if self.percent is not None:
            return max(0.0, min(100.0, self.percent))
        if self.steps:
            done = sum(1 for s in self.steps if s.status.terminal)
            return 100.0 * done / len(self.steps)
        if self.status is Status.SUCCEEDED:
            return 100.0
        return None


# Steps as jobs of one kind have them at a time: a few combinations of names and statuses,
# shared by every job in the same state instead of a tuple, its Steps and their strings a job.
# Bounded: emptied when full (what jobs hold stays theirs), and in bytes too: only steps of the
# usual size are shared (an answer's titles and steps have no bound but max_response_bytes).
_SHARED_STEPS: dict[tuple[Step, ...], tuple[Step, ...]] = {}
SHARED_STEPS_MAX = 4096
SHARED_STEPS_LEN = 16  # steps in a shared tuple, at most
SHARED_TEXT_MAX = 96  # characters of a shared step's name and raw status, at most


def interned_step(
    name: str,
    status: Status,
    raw_status: str = "",
    reason: str | None = None,
    message: str | None = None,
    awaiting_user: bool = False,
) -> Step:
    """A Step whose name and raw status are the one string of their text in the process."""
    return Step(sys.intern(name), status, sys.intern(raw_status), reason, message, awaiting_user)


def shared_steps(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """The one tuple equal to `steps` that other jobs hold (free text, a failure's message, is
    not shared)."""
    if not steps or len(steps) > SHARED_STEPS_LEN:
        return steps
    if any(s.message is not None or len(s.name) + len(s.raw_status) > SHARED_TEXT_MAX for s in steps):
        return steps
    found = _SHARED_STEPS.get(steps)
    if found is not None:
        return found
    if len(_SHARED_STEPS) >= SHARED_STEPS_MAX:
        _SHARED_STEPS.clear()
    _SHARED_STEPS[steps] = steps
    return steps


def interned(job: Job) -> Job:
    """`job` holding the steps, labels and extras other jobs in the same state hold (a job read
    back from the state file comes with copies of its own)."""
    return replace(
        job,
        raw_status=sys.intern(job.raw_status),
        job_type=sys.intern(job.job_type),
        steps=shared_steps(job.steps),
        extra=job.extra or NO_EXTRA,
    )


def placeholder(job_id: str) -> Job:
    """A job known only by its id until its first poll."""
    return Job(id=job_id, status=Status.PENDING, extra={"placeholder": "true"})


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel of an Oxlin connection (EMBEDDED scraping or REDIRECT PSD2)."""

    id: str
    status: str = ""
    last_success: float | None = None
    last_end: float | None = None
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class Connection:
    """An Oxlin connection's state as last seen."""

    id: str
    status: str
    name: str = ""
    last_success: float | None = None
    channels: tuple[Channel, ...] = ()
    # Only its end user can make it synchronise again (its last sync failed for them, or every
    # consent lapsed): its staleness pages no operator.
    awaiting_user: bool = False
