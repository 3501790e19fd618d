"""The per-job families: one flat list of (name, help, type, lines(job)), each series
carrying the `target`/`job_id` prefix; rendered when a job changes, never at scrape time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exporter.model import STATUSES, Status
from exporter.render.text import escape, fmt
from exporter.tracker import TargetState, TrackedJob

# Each family: (name, help, type, fn(tracked, prefix) -> text lines). `prefix` is the
# `target="…",job_id="…"` part every per-job series carries.

Lines = Callable[[TrackedJob, str], str]


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    type: str
    lines: Lines

    def header(self) -> bytes:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.type}\n".encode()


def _info(t: TrackedJob, p: str) -> str:
    return f'asyncjob_job_info{{{p},provider="{escape(t.provider)}",job_type="{escape(t.job.job_type)}"}} 1\n'


def _error_info(t: TrackedJob, p: str) -> str:
    # A failed job's error; or the reason and cause of the records a job refused.
    if t.job.status is not Status.FAILED and t.cause is None:
        return ""
    reason, cause = escape(t.job.reason or "unknown"), t.cause or "unknown"
    return f'asyncjob_job_error_info{{{p},reason="{reason}",cause="{cause}"}} 1\n'


# A state set's lines after the series' own labels, for each current status: the series
# repeat one head, so a state set is one join (the largest share of a job's lines).
_STATE_TAILS = {cur: [f',status="{s}"}} {1 if s is cur else 0}\n' for s in STATUSES] for cur in STATUSES}


def _state_set(head: str, cur: Status) -> str:
    return head + head.join(_STATE_TAILS[cur])


def _status(t: TrackedJob, p: str) -> str:
    return _state_set(f"asyncjob_job_status{{{p}", t.job.status)


def _percent(t: TrackedJob, p: str) -> str:
    v = t.job.effective_percent()
    return "" if v is None else f"asyncjob_job_percent_completed{{{p}}} {fmt(v)}\n"


def _stamp(name: str, get: Callable[[TrackedJob], float | None]) -> Lines:
    def lines(t: TrackedJob, p: str) -> str:
        v = get(t)
        return "" if v is None else f"{name}{{{p}}} {fmt(v)}\n"

    return lines


def _step_status(t: TrackedJob, p: str) -> str:
    return "".join(
        _state_set(f'asyncjob_job_step_status{{{p},step="{escape(step.name)}"', step.status)
        for step in t.job.steps
    )


def _step_duration(t: TrackedJob, p: str) -> str:
    return "".join(
        f'asyncjob_job_step_duration_seconds{{{p},step="{escape(name)}"}} {fmt(v)}\n'
        for name, v in t.step_duration.items()
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
            out.append(f'asyncjob_job_records{{{p},kind="{kind}"}} {v}\n')
    return "".join(out)


def _attempts(t: TrackedJob, p: str) -> str:
    return "" if t.job.attempts is None else f"asyncjob_job_attempts{{{p}}} {t.job.attempts}\n"


def _awaiting(t: TrackedJob, p: str) -> str:
    return f"asyncjob_job_awaiting_user{{{p}}} {1 if t.job.awaiting_user else 0}\n"


JOB_FAMILIES: tuple[Family, ...] = (
    Family(
        "asyncjob_job_info",
        "Tracked job, with its provider and type. Polled on the exporter's own schedule.",
        "gauge",
        _info,
    ),
    Family(
        "asyncjob_job_error_info",
        "A failed job's bounded error reason (provider's code or state), or that of the records a "
        "job refused, and who must act: user, provider, unknown.",
        "gauge",
        _error_info,
    ),
    Family(
        "asyncjob_job_status",
        "Normalised job status as a state set: 1 for the current status.",
        "gauge",
        _status,
    ),
    Family(
        "asyncjob_job_percent_completed",
        "Completion 0-100: the provider's, else the share of finished steps.",
        "gauge",
        _percent,
    ),
    Family(
        "asyncjob_job_created_timestamp_seconds",
        "When the provider created the job.",
        "gauge",
        _stamp("asyncjob_job_created_timestamp_seconds", lambda t: t.job.created),
    ),
    Family(
        "asyncjob_job_started_timestamp_seconds",
        "When the job started, when known.",
        "gauge",
        _stamp("asyncjob_job_started_timestamp_seconds", lambda t: t.job.started),
    ),
    Family(
        "asyncjob_job_finished_timestamp_seconds",
        "When the job finished, when known.",
        "gauge",
        _stamp(
            "asyncjob_job_finished_timestamp_seconds",
            lambda t: (t.job.finished or t.seen_terminal_at) if t.job.status.terminal else None,
        ),
    ),
    Family(
        "asyncjob_job_last_progress_timestamp_seconds",
        "Last time anything about the job moved (status, step, percent, records, provider's update time).",
        "gauge",
        _stamp("asyncjob_job_last_progress_timestamp_seconds", lambda t: t.last_progress),
    ),
    Family(
        "asyncjob_job_step_status", "Each step's normalised status as a state set.", "gauge", _step_status
    ),
    Family(
        "asyncjob_job_step_duration_seconds",
        "Observed step duration; resolution is one poll interval when the provider gives no step times.",
        "gauge",
        _step_duration,
    ),
    Family("asyncjob_job_records", "Records of the job by kind: total, affected, failed.", "gauge", _records),
    Family("asyncjob_job_attempts", "Attempts the provider reports for the job.", "gauge", _attempts),
    Family(
        "asyncjob_job_awaiting_user",
        "1 while the job waits for its end user (MFA, consent, re-authentication): not stuck.",
        "gauge",
        _awaiting,
    ),
)


def job_prefix(state: TargetState, tracked: TrackedJob) -> str:
    return f'target="{escape(state.config.name)}",job_id="{escape(tracked.job.id)}"'


def render_job(state: TargetState, tracked: TrackedJob) -> tuple[bytes, ...]:
    """One job's lines, per family (the groups render many jobs at once the same way)."""
    prefix = job_prefix(state, tracked)
    return tuple(f.lines(tracked, prefix).encode("utf-8", "replace") for f in JOB_FAMILIES)
