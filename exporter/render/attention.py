"""Which jobs need a person, for `per_job_series: exceptions`: the rule, the moment a quiet job
will start to need one (stuck or overdue, by the thresholds the target exports), and the mode
`auto` picks from the number of tracked jobs."""

from __future__ import annotations

from exporter.config import ResolvedTarget
from exporter.model import Status
from exporter.tracked import TrackedJob

# `auto` goes back to every job's series under this share of per_job_series_limit, so a target
# hovering at the limit does not switch at every job.
AUTO_BACK_UNDER = 0.8


def needs_person(tracked: TrackedJob, config: ResolvedTarget, now: float) -> bool:
    """What some shipped alert watches per job: failed (until `retention` drops it), stuck,
    overdue, waiting for its end user, failing records, or a status no map knows."""
    job = tracked.job
    if job.status in (Status.FAILED, Status.UNKNOWN) or job.awaiting_user or job.records_failed:
        return True
    when = due(tracked, config)
    return when is not None and when <= now


def due(tracked: TrackedJob, config: ResolvedTarget) -> float | None:
    """When an unfinished job's series are shown, should nothing move before: a lead ahead of the
    moment it becomes stuck or overdue (the same sums as the shipped rules: no progress for
    `stuck_after`, running from its start, else its creation, longer than `max_duration`); None
    for a finished job."""
    job = tracked.job
    if job.status.terminal:
        return None
    stuck = tracked.last_progress + config.stuck_after - lead(config.stuck_after, config)
    start = job.started if job.started is not None else job.created
    if start is None:
        return stuck
    return min(stuck, start + config.max_duration - lead(config.max_duration, config))


def lead(threshold: float, config: ResolvedTarget) -> float:
    """How long before a threshold the job's series are shown: a poll interval (at most a tenth
    of the threshold), so that Prometheus has scraped them when the threshold passes and the
    rule's first evaluation after it sees the job, as it would in `all` mode. Earlier would
    show jobs that move again in time, and hide them again: series made for nothing."""
    return min(config.poll_interval, threshold / 10)


def effective_mode(config: ResolvedTarget, jobs: int, current: str | None) -> str:
    """`all`, `exceptions` or `none` for a target tracking `jobs` jobs; `current` is what `auto`
    chose before (its memory: above the limit it stays `exceptions` down to 80 % of it)."""
    if config.per_job_series != "auto":
        return config.per_job_series
    limit = config.per_job_series_limit
    if jobs > limit:
        return "exceptions"
    if current == "exceptions" and jobs >= limit * AUTO_BACK_UNDER:
        return "exceptions"
    return "all"
