"""What the pages tell of one job: whether it is stuck or overdue (as the shipped alerts judge),
who must act on its failure, whom it concerns, and what to do next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter.model import Job, Status
from exporter.tracked import TargetState, TrackedJob


def duration_text(seconds: float | None) -> str:
    """A duration as people read it: 45s, 3m07s, 2h05m, 1d03h."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def cause_of(tracked: TrackedJob) -> str | None:
    """Who must act on a failed job, as the tracker resolved it (the target's cause_map, the
    answer, the provider's map)."""
    return str(tracked.cause) if tracked.cause is not None and tracked.job.status is Status.FAILED else None


def is_stuck(state: TargetState, tracked: TrackedJob, now: float) -> bool:
    """As AsyncJobStuck: unfinished, not waiting for its end user, no progress for stuck_after."""
    job = tracked.job
    if job.status.terminal or job.awaiting_user:
        return False
    return now - tracked.last_progress > state.config.stuck_after


def runtime_of(tracked: TrackedJob, now: float) -> float | None:
    """How long an unfinished job has run, from its start, else its creation (as the rules)."""
    job = tracked.job
    since = job.started if job.started is not None else job.created
    return None if since is None or job.status.terminal else max(0.0, now - since)


def is_overdue(state: TargetState, tracked: TrackedJob, now: float) -> bool:
    """As AsyncJobOverdue: unfinished, not waiting for its end user, running for longer than
    max_duration."""
    ran = runtime_of(tracked, now)
    return ran is not None and not tracked.job.awaiting_user and ran > state.config.max_duration


# What a provider tells about whom a job concerns (Job.extra keys), in the words of the page.
PARTIES = (
    ("user", "end user"),
    ("connection", "connection"),
    ("account", "account"),
    ("company", "company"),
    ("institution", "institution"),
)


def parties(job: Job) -> list[tuple[str, str]]:
    """(what, id) of the end user, connection or account a job concerns, as its provider gives them."""
    return [(name, job.extra[key]) for key, name in PARTIES if job.extra.get(key)]


@dataclass(frozen=True)
class NextStep:
    """What the page tells a reader to do, and the runbook section that says more."""

    alert: str  # the section of the runbooks: the alert that fires (or would) for this job
    advice: str


def next_step(job: Job, cause: str | None, stuck: bool, overdue: bool, ran: float | None) -> NextStep | None:
    if job.status is Status.FAILED:
        if cause == "user":
            return NextStep(
                "AsyncJobUserFailureRateHigh",
                "Only the end user can fix this (credentials, a one-time code, a consent): tell the "
                "application team, with the end user or connection below.",
            )
        if cause == "provider":
            return NextStep(
                "AsyncJobFailed",
                "The provider or the institution failed: retry later. If many jobs of the target "
                "fail, check the provider's status page.",
            )
        return NextStep(
            "AsyncJobFailed", "Read the message: the runbook lists the likely causes per provider."
        )
    if job.status.terminal:
        return None
    if job.awaiting_user:
        return NextStep(
            "AsyncJobAwaitingUser", "Waiting for the end user: no operator action, unless it waits for days."
        )
    if overdue:
        return NextStep(
            "AsyncJobOverdue",
            f"Running for {duration_text(ran)}, longer than the target's max duration: is it moving at all, "
            "and are the target's other jobs as slow?",
        )
    if stuck:
        return NextStep(
            "AsyncJobStuck",
            "No progress for longer than the target allows: check the target is polled, then the "
            "job at the provider.",
        )
    return None


def settled(entries: list[dict[str, Any]], job: Job) -> list[dict[str, Any]]:
    """A finished job's timeline ends: no state of it lasts until now (a history written before a
    failed job's last state was recorded as failed could say "awaiting user", growing)."""
    if not job.status.terminal:
        return entries
    for entry in entries:
        if entry["duration_seconds"] is not None and entry is _last_of(entries, entry["step"]):
            entry["duration_seconds"] = None
    return entries


def _last_of(entries: list[dict[str, Any]], step: str | None) -> dict[str, Any] | None:
    return next((e for e in reversed(entries) if e["step"] == step), None)
