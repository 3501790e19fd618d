"""The SLI of the job objectives (`slos:`): each job covered by an objective is judged once for it,
good, bad or the end user's, and counted in `asyncjob_slo_jobs_total` (exporter.render.slos).

A job is good when it succeeded within the objective's latency (from its creation); bad when it
failed for any cause but its end user, succeeded too late, or is still unfinished once the
latency has passed (judged then, so a provider that hangs burns budget before the job ends). A
failure the end user caused, or a job still waiting for the end user when its latency passes,
is the user's: left out of the SLI and counted beside it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from exporter.config.slos import SLO
from exporter.model import Cause, Status

if TYPE_CHECKING:
    from exporter.tracked import TrackedJob


class Result(StrEnum):
    GOOD = "good"
    BAD = "bad"
    USER = "user"


RESULTS = tuple(Result)

Judged = list[tuple[str, Result]]


def start_of(tracked: TrackedJob) -> float:
    """Where a job's latency runs from: its creation (the end user's wait includes the queue),
    else its start, else when the exporter first saw it."""
    job = tracked.job
    if job.created is not None:
        return job.created
    return job.started if job.started is not None else tracked.first_seen


def end_of(tracked: TrackedJob) -> float | None:
    """When a finished job ended: the provider's finished stamp, else its `updated` (a job changes
    no more once it ends), else the poll that saw it end; None for a job first seen finished with
    neither stamp, whose end is not known."""
    job = tracked.job
    if job.finished is not None:
        return job.finished
    if job.updated is not None:
        return job.updated
    seen = tracked.seen_terminal_at
    return seen if seen is not None and seen != tracked.first_seen else None


def finished(slo: SLO, tracked: TrackedJob, now: float) -> Result | None:
    """The judgement of a finished job; None for a success whose end is not known (no latency
    can be told: it is left out rather than guessed)."""
    if tracked.job.status is Status.FAILED:
        return Result.USER if tracked.cause is Cause.USER else Result.BAD
    end = end_of(tracked)
    if end is None:
        return None
    return Result.GOOD if end - start_of(tracked) <= slo.latency else Result.BAD


def overdue(slo: SLO, tracked: TrackedJob, now: float) -> Result | None:
    """The judgement of a job still unfinished: none while within its latency."""
    if now - start_of(tracked) <= slo.latency:
        return None
    return Result.USER if tracked.job.awaiting_user else Result.BAD


def _mark(tracked: TrackedJob, judged: Judged) -> Judged:
    if judged:
        tracked.slo_counted = (*tracked.slo_counted, *(name for name, _ in judged))
    return judged


def judge_finished(slos: Iterable[SLO], tracked: TrackedJob, now: float) -> Judged:
    """The judgements of a job that just finished, for every objective that covers it and has
    not judged it yet; the job is marked judged for them (the mark is saved with the job)."""
    judged: Judged = []
    for slo in slos:
        if slo.covers(tracked.job.job_type) and slo.name not in tracked.slo_counted:
            result = finished(slo, tracked, now)
            if result is not None:
                judged.append((slo.name, result))
    return _mark(tracked, judged)


def judge_overdue(slos: Iterable[SLO], tracked: TrackedJob, now: float) -> Judged:
    """The judgements of an unfinished job whose latency passed, marked as `judge_finished`'s."""
    judged: Judged = []
    for slo in slos:
        if slo.covers(tracked.job.job_type) and slo.name not in tracked.slo_counted:
            result = overdue(slo, tracked, now)
            if result is not None:
                judged.append((slo.name, result))
    return _mark(tracked, judged)


def next_deadline(slos: Iterable[SLO], tracked: TrackedJob) -> float | None:
    """When the unfinished job passes the shortest latency of the objectives still to judge it."""
    job = tracked.job
    if job.status.terminal or not tracked.polled or tracked.is_history:
        return None
    latencies = [
        slo.latency for slo in slos if slo.covers(job.job_type) and slo.name not in tracked.slo_counted
    ]
    return start_of(tracked) + min(latencies) if latencies else None


@dataclass
class Deadlines:
    """The unfinished jobs of a target by the moment they pass their next latency: a heap read only
    as far as now, so a sweep costs the jobs it judges, not the jobs tracked (a scan of 10,000
    unfinished jobs against two objectives took 45 ms a sweep, once a second). A job whose
    deadline moves (its first answer gave its creation) is pushed again; the old entry is
    skipped when it comes up."""

    heap: list[tuple[float, str]] = field(default_factory=list)
    due: dict[str, float] = field(default_factory=dict)

    def schedule(self, slos: Iterable[SLO], tracked: TrackedJob) -> None:
        job_id, at = tracked.job.id, next_deadline(slos, tracked)
        if at is None:
            self.due.pop(job_id, None)
        elif self.due.get(job_id) != at:
            self.due[job_id] = at
            heapq.heappush(self.heap, (at, job_id))

    def forget(self, job_id: str) -> None:
        self.due.pop(job_id, None)

    def passed(self, now: float) -> list[str]:
        """Ids whose deadline is past `now`, each handed out once per scheduling."""
        out = []
        heap, due = self.heap, self.due
        while heap and heap[0][0] < now:
            at, job_id = heapq.heappop(heap)
            if due.get(job_id) == at:
                del due[job_id]
                out.append(job_id)
        return out


def add(counter: Counter[tuple[str, str, str]], job_type: str, judged: Judged) -> None:
    """Counts the judgements: (job_type, slo, result) -> jobs."""
    for name, result in judged:
        counter[(job_type, name, str(result))] += 1
