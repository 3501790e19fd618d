"""How every tracked job changes: progress stamps, step timing, counting each outcome once,
retention and the per-target cap. The data it changes (TrackedJob, TargetState, Aggregates) is
exporter.tracked's.

The tracker is told what each poll saw (`apply`) and tells its listener (the renderer,
the state store) which jobs changed or went away. It never does I/O itself.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Protocol

from exporter import slos, step_times
from exporter.config import ResolvedTarget
from exporter.histogram import Histogram
from exporter.history import observe
from exporter.model import Cause, Job, Status
from exporter.providers.base import PollResult
from exporter.tracked import (
    JOB_DURATION_BUCKETS,
    STEP_DURATION_BUCKETS,
    TOMBSTONE_SECONDS,
    TargetState,
    TrackedJob,
    _count_finished,
    _first,
    _first_progress,
    _is_history,
    _resolve_cause,
    _runs_again,
    _tally,
    reason_cause,
    step_label,
)
from exporter.watchdog import freeze, frozen_on

log = logging.getLogger("asyncjob.tracker")
# Tests only (exporter.watchdog.FREEZE_ENV): the answer for this job id blocks the event loop.
_FREEZE_ON = frozen_on()
# A tombstone of a job the provider still lists is renewed (and written) this often, not every poll.
TOMBSTONE_RENEW_SECONDS = 86400.0


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
