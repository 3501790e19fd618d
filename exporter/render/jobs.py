"""The per-job families: one flat list of (catalogue family, lines(job)), each series carrying
the `target`/`job_id` prefix; rendered when a job changes, never at scrape time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exporter import catalogue
from exporter.model import STATUSES, Status
from exporter.render.text import escape, fmt
from exporter.tracked import TargetState, TrackedJob

# Each family: (catalogue family, fn(tracked, prefix) -> text lines). `prefix` is the
# `target="…",job_id="…"` part every per-job series carries.

Lines = Callable[[TrackedJob, str], str]


@dataclass(frozen=True)
class Family:
    """A catalogue family and how a job's series of it are written."""

    family: catalogue.Family
    lines: Lines

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def help(self) -> str:
        return self.family.help

    @property
    def type(self) -> str:
        return self.family.type

    def header(self) -> bytes:
        return self.family.header


# The names the lines below start with, looked up once rather than at every job's render.
_INFO = catalogue.JOB_INFO.name
_ERROR_INFO = catalogue.JOB_ERROR_INFO.name
_STATUS = catalogue.JOB_STATUS.name
_PERCENT = catalogue.JOB_PERCENT_COMPLETED.name
_CREATED = catalogue.JOB_CREATED.name
_STARTED = catalogue.JOB_STARTED.name
_FINISHED = catalogue.JOB_FINISHED.name
_LAST_PROGRESS = catalogue.JOB_LAST_PROGRESS.name
_STEP_STATUS = catalogue.JOB_STEP_STATUS.name
_STEP_DURATION = catalogue.JOB_STEP_DURATION.name
_RECORDS = catalogue.JOB_RECORDS.name
_ATTEMPTS = catalogue.JOB_ATTEMPTS.name
_AWAITING_USER = catalogue.JOB_AWAITING_USER.name


def _info(t: TrackedJob, p: str) -> str:
    return f'{_INFO}{{{p},provider="{escape(t.provider)}",job_type="{escape(t.job.job_type)}"}} 1\n'


def _error_info(t: TrackedJob, p: str) -> str:
    # A failed job's error; or the reason and cause of the records a job refused.
    if t.job.status is not Status.FAILED and t.cause is None:
        return ""
    reason, cause = escape(t.job.reason or "unknown"), t.cause or "unknown"
    return f'{_ERROR_INFO}{{{p},reason="{reason}",cause="{cause}"}} 1\n'


# A state set's lines after the series' own labels, for each current status: the series
# repeat one head, so a state set is one join (the largest share of a job's lines).
_STATE_TAILS = {cur: [f',status="{s}"}} {1 if s is cur else 0}\n' for s in STATUSES] for cur in STATUSES}


def _state_set(head: str, cur: Status) -> str:
    return head + head.join(_STATE_TAILS[cur])


def _status(t: TrackedJob, p: str) -> str:
    return _state_set(f"{_STATUS}{{{p}", t.job.status)


def _percent(t: TrackedJob, p: str) -> str:
    v = t.job.effective_percent()
    return "" if v is None else f"{_PERCENT}{{{p}}} {fmt(v)}\n"


def _stamp(name: str, get: Callable[[TrackedJob], float | None]) -> Lines:
    def lines(t: TrackedJob, p: str) -> str:
        v = get(t)
        return "" if v is None else f"{name}{{{p}}} {fmt(v)}\n"

    return lines


def _step_status(t: TrackedJob, p: str) -> str:
    return "".join(
        _state_set(f'{_STEP_STATUS}{{{p},step="{escape(step.name)}"', step.status) for step in t.job.steps
    )


def _step_duration(t: TrackedJob, p: str) -> str:
    return "".join(
        f'{_STEP_DURATION}{{{p},step="{escape(name)}"}} {fmt(v)}\n' for name, v in t.step_duration.items()
    )


def _records(t: TrackedJob, p: str) -> str:
    j = t.job
    out = []
    for kind, v in (
        ("total", j.records_total),
        ("affected", j.records_affected),
        ("failed", j.records_failed),
    ):
        if v is not None:
            out.append(f'{_RECORDS}{{{p},kind="{kind}"}} {v}\n')
    return "".join(out)


def _attempts(t: TrackedJob, p: str) -> str:
    return "" if t.job.attempts is None else f"{_ATTEMPTS}{{{p}}} {t.job.attempts}\n"


def _awaiting(t: TrackedJob, p: str) -> str:
    return f"{_AWAITING_USER}{{{p}}} {1 if t.job.awaiting_user else 0}\n"


JOB_FAMILIES: tuple[Family, ...] = (
    Family(catalogue.JOB_INFO, _info),
    Family(catalogue.JOB_ERROR_INFO, _error_info),
    Family(catalogue.JOB_STATUS, _status),
    Family(catalogue.JOB_PERCENT_COMPLETED, _percent),
    Family(catalogue.JOB_CREATED, _stamp(_CREATED, lambda t: t.job.created)),
    Family(catalogue.JOB_STARTED, _stamp(_STARTED, lambda t: t.job.started)),
    Family(
        catalogue.JOB_FINISHED,
        _stamp(
            _FINISHED, lambda t: (t.job.finished or t.seen_terminal_at) if t.job.status.terminal else None
        ),
    ),
    Family(catalogue.JOB_LAST_PROGRESS, _stamp(_LAST_PROGRESS, lambda t: t.last_progress)),
    Family(catalogue.JOB_STEP_STATUS, _step_status),
    Family(catalogue.JOB_STEP_DURATION, _step_duration),
    Family(catalogue.JOB_RECORDS, _records),
    Family(catalogue.JOB_ATTEMPTS, _attempts),
    Family(catalogue.JOB_AWAITING_USER, _awaiting),
)


def job_prefix(state: TargetState, tracked: TrackedJob) -> str:
    return f'target="{escape(state.config.name)}",job_id="{escape(tracked.job.id)}"'


def render_job(state: TargetState, tracked: TrackedJob) -> tuple[bytes, ...]:
    """One job's lines, per family (the groups render many jobs at once the same way)."""
    prefix = job_prefix(state, tracked)
    return tuple(f.lines(tracked, prefix).encode("utf-8", "replace") for f in JOB_FAMILIES)
