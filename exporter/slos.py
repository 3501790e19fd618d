"""The SLI of the job objectives (`slos:`): each job covered by an objective is judged once for it,
good, bad or the end user's, and counted in `asyncjob_slo_jobs_total` (exporter.render.slos).

A job is good when it succeeded within the objective's latency (from its creation); bad when it
failed for any cause but its end user, succeeded too late, or is still unfinished once the
latency has passed (judged then, so a provider that hangs burns budget before the job ends). A
failure the end user caused, or a job still waiting for the end user when its latency passes,
is the user's: left out of the SLI and counted beside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING

from exporter.config.slos import SLO
from exporter.model import Cause, Status

if TYPE_CHECKING:
    from exporter.tracker import TrackedJob


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


def finished(slo: SLO, tracked: TrackedJob, now: float) -> Result:
    job = tracked.job
    if job.status is Status.FAILED:
        return Result.USER if tracked.cause is Cause.USER else Result.BAD
    end = job.finished if job.finished is not None else (tracked.seen_terminal_at or now)
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
    job_type = tracked.job.job_type
    judged = [
        (slo.name, finished(slo, tracked, now))
        for slo in slos
        if slo.covers(job_type) and slo.name not in tracked.slo_counted
    ]
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


def add(counter: Counter[tuple[str, str, str]], job_type: str, judged: Judged) -> None:
    """Counts the judgements: (job_type, slo, result) -> jobs."""
    for name, result in judged:
        counter[(job_type, name, str(result))] += 1
