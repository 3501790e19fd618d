"""Every tracked job's state and its transitions: progress stamps, step timing, counted-once
aggregates, retention and the per-target cap.

The tracker is told what each poll saw (`apply`) and tells its listener (the renderer,
the state store) which jobs changed or went away. It never does I/O itself.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

from exporter import slos, step_times
from exporter.config import ResolvedTarget
from exporter.histogram import Histogram
from exporter.history import EMPTY, History, observe
from exporter.model import Cause, Connection, Job, Status
from exporter.parsing import bounded_label
from exporter.providers.base import PollResult
from exporter.step_times import StepTimes
from exporter.watchdog import freeze, frozen_on

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
# Tests only (exporter.watchdog.FREEZE_ENV): the answer for this job id blocks the event loop.
_FREEZE_ON = frozen_on()
# A tombstone of a job the provider still lists is renewed (and written) this often, not every poll.
TOMBSTONE_RENEW_SECONDS = 86400.0


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


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


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


def _resolve_cause(state: TargetState, tracked: TrackedJob) -> None:
    job = tracked.job
    # A failed job's cause; also that of a job's refused records (their reason, e.g. record_errors).
    records = job.reason is not None and bool(job.records_failed)
    tracked.cause = cause_of(state, job) if job.status is Status.FAILED or records else None


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


class AfterCommit(Protocol):
    def __call__(self, apply: Callable[[], None], key: tuple[str, str] | None = None) -> None: ...


class Listener(Protocol):
    """Told about every change: the renderer re-renders, the state store persists."""

    def job_changed(self, target: TargetState, tracked: TrackedJob) -> None: ...

    def job_removed(self, target: TargetState, job_id: str) -> None: ...

    def tombstone_renewed(self, target: TargetState, job_id: str) -> None: ...


class CapReached(Exception):
    """The target tracks max_jobs_per_target jobs already."""


class Tracker:
    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self.targets: dict[str, TargetState] = {}
        self.listeners: list[Listener] = list(listeners)
        # Jobs saved by a previous run for a target (the state store sets this).
        self.restore: Callable[[TargetState], list[TrackedJob]] = lambda state: []
        # Applies a counter increment whose counted-once mark was just set. The state store
        # holds it back until the mark is committed (else kill -9 could count it twice).
        # `key` is the (target, job id) the increment counts, where there is one: a cluster's
        # store runs it only while that job's shard is still this replica's.
        self.after_commit: AfterCommit = lambda apply, key=None: apply()
        # When (target, id) was dropped, for a tombstone no longer in memory (the state store
        # looks it up in its file); None: not remembered.
        self.buried: Callable[[str, str], float | None] = lambda target, job_id: None
        # Takes a finished job retention drops into the history (exporter.job_history), before
        # the job's removal is told: the state store writes both in one transaction.
        self.retire: Callable[[TargetState, TrackedJob], None] = lambda state, tracked: None

    # --- targets -----------------------------------------------------------------------
    def set_target(self, config: ResolvedTarget) -> TargetState:
        """Add a target, or give an existing one its new config while keeping its jobs."""
        state = self.targets.get(config.name)
        if state is None:
            state = self.targets[config.name] = TargetState(config)
            self.adopt(state, self.restore(state))
        else:
            state.config = config
            for tracked in state.jobs.values():
                _resolve_cause(state, tracked)
                self._changed(state, tracked)
        return state

    def adopt(self, state: TargetState, jobs: Iterable[TrackedJob]) -> list[TrackedJob]:
        """Take in jobs tracked elsewhere (the last run, or another replica of a cluster), as they
        were: no transition is observed and nothing is counted again. Returns those taken in (not
        already tracked, within the cap)."""
        taken = []
        for tracked in jobs:
            if tracked.job.id in state.jobs or len(state.jobs) >= state.config.max_jobs:
                continue
            state.jobs[tracked.job.id] = tracked
            _tally(state, tracked, 1)
            _resolve_cause(state, tracked)
            self._changed(state, tracked)
            taken.append(tracked)
        return taken

    def let_go(self, name: str, job_ids: Iterable[str]) -> int:
        """Stop tracking jobs another replica of the cluster works now: no tombstone, nothing
        counted as dropped (the jobs live on there). Returns how many were let go."""
        state = self.targets.get(name)
        if state is None:
            return 0
        gone = 0
        for job_id in job_ids:
            tracked = state.jobs.pop(job_id, None)
            if tracked is not None:
                _tally(state, tracked, -1)
                self._notify_removed(state, job_id)
                gone += 1
        return gone

    def remove_target(self, name: str) -> None:
        state = self.targets.pop(name, None)
        if state is not None:
            for job_id in list(state.jobs):
                self._notify_removed(state, job_id)

    # --- jobs ----------------------------------------------------------------------------
    def pollable(self, name: str) -> list[str]:
        """Ids of the target's unfinished jobs: finished jobs are never polled again."""
        return list(self.targets[name].pending)

    def track(self, name: str, job: Job, source: str, now: float | None = None) -> TrackedJob:
        """Start tracking `job` (a placeholder or a parsed answer); an already tracked job is updated."""
        state = self.targets[name]
        if job.id in state.jobs:
            return self.update(state, job, now)
        return self._add(state, job, source, now if now is not None else time.time())

    def _add(self, state: TargetState, job: Job, source: str, now: float) -> TrackedJob:
        if len(state.jobs) >= state.config.max_jobs:
            state.agg.dropped["cap"] += 1
            raise CapReached(f"target {state.config.name} tracks {state.config.max_jobs} jobs already")
        state.tombstones.pop(job.id, None)
        tracked = TrackedJob(
            job=job,
            provider=state.config.provider,
            first_seen=now,
            last_progress=_first_progress(job, now),
            source=source,
            polled=not job.is_placeholder,
        )
        state.jobs[job.id] = tracked
        if tracked.polled:
            tracked.is_history = _is_history(state, tracked, now)
        _tally(state, tracked, 1)
        _resolve_cause(state, tracked)
        tracked.history = observe(tracked.history, None, job, now)
        self._prime(state, job)
        self._observe_steps(state, tracked, None, now)
        self._on_terminal(state, tracked, now)
        self._changed(state, tracked)
        return tracked

    def update(self, state: TargetState, job: Job, now: float | None = None) -> TrackedJob:
        now = now if now is not None else time.time()
        tracked = state.jobs[job.id]
        old = tracked.job
        if old == job and tracked.polled:
            return tracked
        if job.job_type == "" and old.job_type:
            job = replace(job, job_type=old.job_type)
        first_answer = not tracked.polled and not job.is_placeholder
        if first_answer:
            # The placeholder's stamp is when the exporter learnt the id, not the job's progress:
            # the provider's own stamp says how long the job has been still.
            tracked.last_progress = _first_progress(job, tracked.last_progress, now)
        elif old.progress_key() != job.progress_key():
            if job.updated is not None and (old.updated is None or job.updated > old.updated):
                tracked.last_progress = max(tracked.last_progress, min(job.updated, now))
            else:
                tracked.last_progress = now
        _tally(state, tracked, -1)
        tracked.job = job
        if first_answer:
            tracked.is_history = _is_history(state, tracked, now)
        elif _runs_again(tracked, old, job):
            # A rerun under the same id brought it back: its outcome is news and counts too.
            tracked.is_history = False
            tracked.seen_terminal_at = None
            tracked.counted = False
            tracked.slo_counted = ()
        _tally(state, tracked, 1)
        _resolve_cause(state, tracked)
        tracked.history = observe(tracked.history, old, job, now)
        self._prime(state, job)
        # A placeholder (a static or registered id never polled yet) is not an observation.
        self._observe_steps(state, tracked, old if tracked.polled else None, now)
        tracked.polled = True
        self._on_terminal(state, tracked, now)
        self._changed(state, tracked)
        return tracked

    def _prime(self, state: TargetState, job: Job) -> None:
        """Create a job type's (and step's) counters and histograms at zero when first seen.

        A counter that appears already at 1 loses its first increase to rate() and
        increase(); created at 0 beforehand, the first finish, failure or step counts.
        """
        if job.is_placeholder:
            return
        agg, jt = state.agg, job.job_type
        if (jt, Status.SUCCEEDED) not in agg.finished:
            for final in (Status.SUCCEEDED, Status.FAILED):
                agg.finished[(jt, final)] += 0
                agg.job_duration.setdefault((jt, str(final)), Histogram(JOB_DURATION_BUCKETS))
            for reason in (*state.config.known_reasons, "unknown"):
                agg.failed[(jt, reason, reason_cause(state, reason))] += 0
        if job.records_total is not None and jt not in agg.records_processed:
            agg.records_processed[jt] += 0
            agg.records_failed[jt] += 0
        for step in job.steps:
            key = (jt, step_label(state, step.name))
            if key not in agg.step_duration:
                agg.step_duration[key] = Histogram(STEP_DURATION_BUCKETS)

    def _observe_steps(self, state: TargetState, tracked: TrackedJob, old: Job | None, now: float) -> None:
        """Step timing from observations: Basiq's steps carry no timestamps.

        A step starts where the previous one was seen finished (the first step: at the
        job's start), else at the poll where it was first seen running; it ends at the poll
        where it is first seen finished. The resolution is therefore one poll interval.
        """
        job = tracked.job
        previous_end: float | None = job.started if job.started is not None else job.created
        seen_before = old is not None
        times = tracked.step_times
        where = step_times.index(times, len(job.steps))
        changes: dict[str, step_times.Times] = {}
        for step in job.steps:
            was = changes.get(step.name) or step_times.get(times, where, step.name)
            started, finished, duration = was
            if step.status in (Status.RUNNING, Status.SUCCEEDED, Status.FAILED) and started is None:
                start = previous_end if previous_end is not None else (now if seen_before else None)
                if start is not None:
                    started = min(start, now)
            if step.status.terminal and finished is None:
                # A step already finished when the job was first seen has no observed end.
                if seen_before:
                    finished = now
                    if started is not None:
                        duration = max(0.0, now - started)
                        key = (job.job_type, step_label(state, step.name))
                        hist = state.agg.step_duration.get(key)
                        if hist is None:
                            hist = state.agg.step_duration[key] = Histogram(STEP_DURATION_BUCKETS)
                        self.after_commit(
                            partial(hist.observe, duration, job.id), (state.config.name, job.id)
                        )
                else:
                    finished = job.updated or now
            if (started, finished, duration) != was:
                changes[step.name] = (started, finished, duration)
            previous_end = finished
        if changes:
            tracked.step_times = step_times.updated(times, changes)

    def _on_terminal(self, state: TargetState, tracked: TrackedJob, now: float) -> None:
        job = tracked.job
        if not job.status.terminal:
            return
        if tracked.seen_terminal_at is None:
            tracked.seen_terminal_at = now
        if tracked.counted:
            return
        tracked.counted = True
        if tracked.is_history:
            return
        start = job.started if job.started is not None else job.created
        end = _first(job.finished, now)
        # A job first seen already finished, with no start of its own, has no duration to tell.
        first_sight = tracked.seen_terminal_at == tracked.first_seen
        duration = (
            None if start is None and first_sight else max(0.0, end - _first(start, tracked.first_seen))
        )
        cause = tracked.cause or Cause.UNKNOWN
        self.after_commit(
            partial(_count_finished, state.agg, job, cause, duration), (state.config.name, job.id)
        )
        judged = slos.judge_finished(state.config.slos, tracked, now)
        if judged:
            self.after_commit(
                partial(slos.add, state.agg.slo, job.job_type, judged), (state.config.name, job.id)
            )

    def apply(self, name: str, result: PollResult, now: float | None = None) -> None:
        """Fold one poll cycle's answers into the target's state."""
        now = now if now is not None else time.time()
        state = self.targets[name]
        for job in result.jobs:
            if _FREEZE_ON is not None and job.id == _FREEZE_ON:
                freeze()
            if job.id in state.jobs:
                self.update(state, job, now)
            elif (at := state.tombstones.get(job.id)) is not None or (
                at := self.buried(name, job.id)
            ) is not None:
                # Still listed: remembered for as long as the provider keeps listing it, across
                # restarts too (the state store writes the renewal).
                if now - at >= TOMBSTONE_RENEW_SECONDS:
                    state.bury(job.id, now)
                    for listener in self.listeners:
                        listener.tombstone_renewed(state, job.id)
            else:
                with contextlib.suppress(CapReached):  # counted as dropped{reason="cap"}
                    self._add(state, job, "discovered", now)
        for old_id, new_id in result.replaced.items():
            new = state.jobs.get(new_id)
            old = state.jobs.get(old_id)
            if old is not None:
                # Counted under the job type this cycle's answers gave (a placeholder has none).
                state.agg.reruns[(new or old).job.job_type or old.job.job_type] += 1
            if old_id == new_id:
                if old is not None:
                    # The rerun kept its id (AIMS360 may): the same job runs again, its next
                    # outcome counted as the first one was (_runs_again).
                    old.reruns += 1
                    self._changed(state, old)
                continue
            if new is not None and old is not None:
                new.reruns = old.reruns + 1
                self.drop(name, old_id, "rerun")
        for job_id in result.gone:
            if self.drop(name, job_id, "gone"):
                log.warning(
                    "job dropped: the provider does not know it", extra={"target": name, "job_id": job_id}
                )
        for conn in result.connections:
            state.connections[conn.id] = conn
        if result.queue_events:
            # Visible once the queue cursors saved after this cycle are committed.
            self.after_commit(partial(state.agg.queue_events.update, result.queue_events))

    def drop(self, name: str, job_id: str, reason: str) -> bool:
        state = self.targets.get(name)
        if state is None or job_id not in state.jobs:
            return False
        tracked = state.jobs.pop(job_id)
        _tally(state, tracked, -1)
        state.agg.dropped[reason] += 1
        # Remembered so discovery does not bring the job back; "deleted" is an API DELETE.
        if reason in ("retention", "gone", "rerun", "deleted"):
            state.bury(job_id, time.time())
        if reason == "retention":
            self.retire(state, tracked)
        self._notify_removed(state, job_id)
        return True

    def sweep(self, now: float | None = None) -> int:
        """Drop finished jobs whose retention ended; forget old tombstones. Returns jobs dropped.

        Both are read oldest first and only as far as they expired, so a sweep costs what it
        drops, not the number of jobs tracked.
        """
        now = now if now is not None else time.time()
        dropped = 0
        for name, state in list(self.targets.items()):
            queue, retention = state.retention_queue, state.config.retention
            while queue and now - queue[0][0] >= retention:
                at, job_id = heapq.heappop(queue)
                if state.queued.get(job_id) == at:
                    del state.queued[job_id]
                tracked = state.jobs.get(job_id)
                if tracked is not None and tracked.seen_terminal_at == at:
                    dropped += self.drop(name, job_id, "retention")
            old: list[str] = []
            # Oldest first (restored ones are sorted as they come in, renewals move to the end).
            for job_id, at in state.tombstones.items():
                if now - at <= TOMBSTONE_SECONDS:
                    break
                old.append(job_id)
            for job_id in old:
                del state.tombstones[job_id]
            if state.config.slos:
                self._judge_overdue(state, now)
        return dropped

    def _judge_overdue(self, state: TargetState, now: float) -> None:
        """Unfinished jobs past an objective's latency count against it now, once (exporter.slos)."""
        for job_id in state.slo_deadlines.passed(now):
            tracked = state.jobs.get(job_id)
            if tracked is None or job_id not in state.pending:
                continue
            found = slos.judge_overdue(state.config.slos, tracked, now)
            if found:
                # The mark goes to the state file before the count shows; the next objective's
                # latency, if any, is scheduled.
                self._changed(state, tracked)
                self.after_commit(
                    partial(slos.add, state.agg.slo, tracked.job.job_type, found), (state.config.name, job_id)
                )
            else:
                state.slo_deadlines.schedule(state.config.slos, tracked)

    def _changed(self, state: TargetState, tracked: TrackedJob) -> None:
        job_id, at = tracked.job.id, tracked.seen_terminal_at
        if tracked.job.status.terminal:
            state.pending.pop(job_id, None)
        else:
            state.pending[job_id] = None
        if at is not None and state.queued.get(job_id) != at:
            state.queued[job_id] = at
            heapq.heappush(state.retention_queue, (at, job_id))
        if state.config.slos:
            state.slo_deadlines.schedule(state.config.slos, tracked)
        for listener in self.listeners:
            listener.job_changed(state, tracked)

    def _notify_removed(self, state: TargetState, job_id: str) -> None:
        state.pending.pop(job_id, None)
        state.slo_deadlines.forget(job_id)
        for listener in self.listeners:
            listener.job_removed(state, job_id)
