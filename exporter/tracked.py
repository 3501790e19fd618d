"""What the exporter knows of each target and job: the tracked job, a target's state and its
counted-once aggregates, and the small rules every reader of them shares (a step's histogram
label, who must act on a failure, the `asyncjob_jobs` tally).

Data and the small rules on it, no I/O: exporter.tracker changes them as polls come in; the
renderer, the pages and the state stores read them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from exporter import slos, step_times
from exporter.config import ResolvedTarget
from exporter.histogram import Histogram
from exporter.history import EMPTY, History
from exporter.model import Cause, Connection, Job, Status
from exporter.parsing import bounded_label
from exporter.step_times import StepTimes

log = logging.getLogger("asyncjob.tracker")


# Histogram buckets: seconds, from a second to a day (jobs) and to two hours (steps).
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
STEP_DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
POLL_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Ids dropped by retention are remembered this long, so discovery (Basiq lists 7 days of
# jobs) does not bring a finished job back.
TOMBSTONE_SECONDS = 8 * 86400.0
# Tombstones a target keeps in memory, the newest (~160 B each: at most ~0.6 MiB a target). A
# target that finds jobs itself keeps every one in the state file too, looked up there when its
# id appears again; with state in memory only, an older one is forgotten, and a job listed again
# after that is first seen finished longer than `retention` ago: history, not counted again.
TOMBSTONES_IN_MEMORY = 4096
# A job that was being polled when the event loop froze (exporter.watchdog) is neither polled
# nor read for this long from the freeze, by this process or any other sharing the state file.
QUARANTINE_SECONDS = 86400.0


@dataclass(slots=True)  # no __dict__: one object less and ~100 bytes less per job
class TrackedJob:
    """A job as the exporter knows it: the provider's last answer plus what was observed over time."""

    job: Job
    provider: str
    first_seen: float
    last_progress: float
    source: str = "static"  # static | discovered | registered
    seen_terminal_at: float | None = None
    counted: bool = False
    step_times: StepTimes = step_times.NONE  # when each step started and finished (exporter.step_times)
    reruns: int = 0
    polled: bool = False  # False until a provider answer replaced the registration placeholder
    # First seen already finished, longer than `retention` before the exporter knew of it: not
    # news. Neither counted nor exposed per job (so never paged); the API still shows it.
    is_history: bool = False
    # Who must act on the failure (cause_of), resolved whenever the job or the target's config changes.
    cause: Cause | None = None
    history: History = EMPTY  # observed transitions, packed (exporter.history)
    slo_counted: tuple[str, ...] = ()  # the objectives that judged it already (exporter.slos)

    @property
    def step_duration(self) -> dict[str, float]:
        """How long each step took, from the poll that saw it start to the one that saw it end."""
        return step_times.durations(self.step_times)


@dataclass
class Aggregates:
    """Counters and histograms of one target, keyed by job_type (and the named label)."""

    finished: Counter[tuple[str, str]] = field(default_factory=Counter)  # (job_type, status)
    failed: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (job_type, reason, cause)
    records_processed: Counter[str] = field(default_factory=Counter)
    records_failed: Counter[str] = field(default_factory=Counter)
    reruns: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)  # reason
    job_duration: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (job_type, status)
    step_duration: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (job_type, step)
    by_status: Counter[tuple[str, str]] = field(default_factory=Counter)  # tracked now: (job_type, status)
    queue_events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (queue, event_type)
    # Tracked now in a state no one documented (status unknown): (job_type, raw status label).
    undocumented: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Raw status -> its label: the first UNDOCUMENTED_LABELS seen keep their own, later ones
    # are "other" (a provider's free text must not grow the series without bound).
    undocumented_labels: dict[str, str] = field(default_factory=dict)
    slo: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (job_type, slo, result)


@dataclass
class TargetState:
    config: ResolvedTarget
    jobs: dict[str, TrackedJob] = field(default_factory=dict)
    agg: Aggregates = field(default_factory=Aggregates)
    connections: dict[str, Connection] = field(default_factory=dict)
    tombstones: dict[str, float] = field(default_factory=dict)  # the newest, oldest first
    quarantined: dict[str, float] = field(default_factory=dict)  # job id -> when the loop froze on it
    # Indexes kept up to date on every change, so that neither the scheduler nor the sweep
    # walks every job: the unfinished jobs (in the order they came), and a heap of
    # (seen finished at, id) with the stamp each finished job has in it.
    pending: dict[str, None] = field(default_factory=dict)
    retention_queue: list[tuple[float, str]] = field(default_factory=list)
    queued: dict[str, float] = field(default_factory=dict)
    up: bool = False
    polled_once: bool = False
    last_success: float | None = None
    last_error: str = ""
    last_error_reason: str = ""  # timeout, connect, http_4xx, …, bad_body: as asyncjob_poll_errors_total
    # Configured sources answering 404 (`user ea3a81`, `queue 20`) -> since when, this process.
    missing: dict[str, float] = field(default_factory=dict)
    poll_duration: Histogram = field(default_factory=lambda: Histogram(POLL_DURATION_BUCKETS))
    slo_deadlines: slos.Deadlines = field(default_factory=slos.Deadlines)  # with slos only
    # Step names given a histogram of their own (at most max_step_names); the rest are "other".
    step_names: set[str] = field(default_factory=set)
    step_names_capped: bool = False  # a name past the cap was seen (and logged, once)

    @property
    def discovers(self) -> bool:
        """Whether the target finds jobs itself (a list, a queue), which can list a job it dropped."""
        return self.config.discovers

    def in_quarantine(self, job_id: str, now: float) -> bool:
        """Whether the job is skipped: the loop froze on it less than QUARANTINE_SECONDS ago."""
        since = self.quarantined.get(job_id)
        if since is None:
            return False
        if now - since < QUARANTINE_SECONDS:
            return True
        del self.quarantined[job_id]  # served its time: polled again
        return False

    def bury(self, job_id: str, at: float) -> None:
        """Remember a dropped id (or renew its tombstone); past TOMBSTONES_IN_MEMORY the oldest
        leaves memory."""
        tombstones = self.tombstones
        tombstones.pop(job_id, None)  # to the end: the dict stays oldest first
        tombstones[job_id] = at
        if len(tombstones) > TOMBSTONES_IN_MEMORY:
            del tombstones[next(iter(tombstones))]


# The step histograms' label for names past the target's max_step_names.
OTHER_STEP = "other"


def step_label(state: TargetState, name: str) -> str:
    """`name` while the target has room for it in the step histograms, else "other": a provider
    that makes up step names would grow them for ever (about 430 bytes of exposition a name)."""
    names = state.step_names
    if name in names:
        return name
    if len(names) < state.config.max_step_names:
        names.add(name)
        return name
    if not state.step_names_capped:
        state.step_names_capped = True
        log.warning(
            'step names past max_step_names are counted as step="other"',
            extra={"target": state.config.name, "max_step_names": state.config.max_step_names, "step": name},
        )
    return OTHER_STEP


def cause_of(state: TargetState, job: Job) -> Cause:
    """Who must act on the failed `job`: the target's `cause_map` for its reason, else what the
    answer itself said, else the provider's map of its documented reasons, else unknown."""
    reason = job.reason or "unknown"
    override = state.config.config.cause_map.get(reason)
    if override is not None:
        return override
    if job.cause is not None:
        return job.cause
    return state.config.causes.get(reason, Cause.UNKNOWN)


def reason_cause(state: TargetState, reason: str) -> Cause:
    """The cause a reason gets when the answer says nothing itself (for counters made at zero)."""
    override = state.config.config.cause_map.get(reason)
    return override if override is not None else state.config.causes.get(reason, Cause.UNKNOWN)


def _resolve_cause(state: TargetState, tracked: TrackedJob) -> None:
    job = tracked.job
    # A failed job's cause; also that of a job's refused records (their reason, e.g. record_errors).
    records = job.reason is not None and bool(job.records_failed)
    tracked.cause = cause_of(state, job) if job.status is Status.FAILED or records else None


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


def _first_progress(job: Job, *fallback: float) -> float:
    """A job's progress stamp at its first answer: the provider's `updated`, else `created`
    (else the fallback), never later than the last fallback (now)."""
    stamp = _first(job.updated, job.created, *fallback)
    return min(stamp, fallback[-1])


def _runs_again(tracked: TrackedJob, old: Job, job: Job) -> bool:
    """True when an answer after a seen outcome is a new run of the same id: back to queued or
    running, or, once a rerun was asked, another outcome (a fast rerun may never be seen running).
    A rerun's first answers may still show the old failure: those are not a new run."""
    if tracked.seen_terminal_at is None:
        return False
    return not job.status.terminal or (tracked.reruns > 0 and job.status is not old.status)


def _is_history(state: TargetState, tracked: TrackedJob, now: float) -> bool:
    """First seen already finished, longer than `retention` before the exporter knew of the job.

    The finish must be known to be that old: the provider's finished stamp, else its `updated`
    (a job changes no more after it ends); `created` alone proves nothing about the end.
    """
    job = tracked.job
    if not job.status.terminal:
        return False
    ended = job.finished if job.finished is not None else job.updated
    return ended is not None and ended < min(tracked.first_seen, now) - state.config.retention


# Raw statuses of undocumented states a target labels by their own text, at most.
UNDOCUMENTED_LABELS = 20


def _tally(state: TargetState, tracked: TrackedJob, delta: int) -> None:
    """The `asyncjob_jobs{status}` gauge: tracked jobs that are news (history is not shown);
    and, for those in a state no one documented, `asyncjob_jobs_undocumented{raw_status}`."""
    if tracked.is_history:
        return
    job = tracked.job
    agg = state.agg
    agg.by_status[(job.job_type, job.status)] += delta
    if job.status is Status.UNKNOWN and not job.is_placeholder:
        names = agg.undocumented_labels
        label = names.get(job.raw_status)
        if label is None:
            label = "other"  # not kept: the map stays bounded, and "other" stays "other"
            if len(names) < UNDOCUMENTED_LABELS:
                label = names[job.raw_status] = bounded_label(job.raw_status) or "other"
        agg.undocumented[(job.job_type, label)] += delta
        if not agg.undocumented[(job.job_type, label)]:
            del agg.undocumented[(job.job_type, label)]


def _count_finished(agg: Aggregates, job: Job, cause: Cause, duration: float | None) -> None:
    agg.finished[(job.job_type, job.status)] += 1
    if job.status is Status.FAILED:
        agg.failed[(job.job_type, job.reason or "unknown", cause)] += 1
    key = (job.job_type, str(job.status))
    hist = agg.job_duration.get(key)
    if hist is None:
        hist = agg.job_duration[key] = Histogram(JOB_DURATION_BUCKETS)
    if duration is not None:
        hist.observe(duration, job.id)
    # A failed job did not process its total: only the records it says went through.
    processed = job.records_total if job.status is Status.SUCCEEDED else job.records_affected
    if processed is not None:
        agg.records_processed[job.job_type] += processed
    if job.records_failed is not None:
        agg.records_failed[job.job_type] += job.records_failed
