"""Scenarios of the alerts about jobs: one job failed, stuck, overdue, failing on its records or
waiting for its end user; many of a target's jobs stuck; a job type failing often; a step slow.
Each puts a job (or a job type) just past the alert's threshold and another just short of it.
"""

from __future__ import annotations

import math

from exporter import catalogue

from .config import Config, seconds
from .promtest_inputs import MINUTE, Scenario, alerts_by_name, constant, input_series, job_labels, run_minutes

# The exporter's step duration buckets (exporter.tracked.STEP_DURATION_BUCKETS).
STEP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def stuck(cfg: Config, labels: dict[str, str]) -> Scenario:
    threshold, n = 600, run_minutes(cfg, 3600)
    series = [input_series(catalogue.TARGET_STUCK_THRESHOLD.name, labels, constant(threshold, n))]
    series.append(input_series(catalogue.TARGET_MAX_DURATION.name, labels, constant(10**9, n)))
    # j2 moved 5 minutes later; j3 is in a state no one documented, stuck as much as j1.
    for job_id, progress_at, status in (("j1", 0, "running"), ("j2", 300, "running"), ("j3", 0, "unknown")):
        series.append(
            input_series(
                catalogue.JOB_LAST_PROGRESS.name,
                job_labels(labels, job_id),
                constant(progress_at, n),
            )
        )
        series.append(
            input_series(catalogue.JOB_STATUS.name, job_labels(labels, job_id, status=status), constant(1, n))
        )
        series.append(
            input_series(catalogue.JOB_AWAITING_USER.name, job_labels(labels, job_id), constant(0, n))
        )
    return Scenario("AsyncJobStuck", threshold + MINUTE, 2, series)


def overdue_silences_stuck(cfg: Config, labels: dict[str, str]) -> Scenario:
    """A job both stuck and overdue pages once, as overdue."""
    stuck_after, max_duration, n = 600, 1800, run_minutes(cfg, 3600)
    series = [
        input_series(catalogue.TARGET_STUCK_THRESHOLD.name, labels, constant(stuck_after, n)),
        input_series(catalogue.TARGET_MAX_DURATION.name, labels, constant(max_duration, n)),
        input_series(catalogue.JOB_STARTED.name, job_labels(labels, "j1"), constant(0, n)),
        input_series(catalogue.JOB_LAST_PROGRESS.name, job_labels(labels, "j1"), constant(0, n)),
        input_series(catalogue.JOB_STATUS.name, job_labels(labels, "j1", status="running"), constant(1, n)),
        input_series(catalogue.JOB_AWAITING_USER.name, job_labels(labels, "j1"), constant(0, n)),
    ]
    return Scenario("AsyncJobOverdue", max_duration + MINUTE, 1, series, others={"AsyncJobStuck": 0})


def many_stuck(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    """`many_stuck_jobs` stuck jobs on t1 page once for t1, none for its jobs; one fewer on t2
    page one by one."""
    if "AsyncJobManyStuck" not in alerts_by_name(cfg) or cfg.many_stuck_jobs < 2:
        return None
    threshold, n = 600, run_minutes(cfg, 3600)
    series = []
    for target, count in (("t1", cfg.many_stuck_jobs), ("t2", cfg.many_stuck_jobs - 1)):
        at = {**labels, "target": target}
        series.append(input_series(catalogue.TARGET_STUCK_THRESHOLD.name, at, constant(threshold, n)))
        series.append(input_series(catalogue.TARGET_MAX_DURATION.name, at, constant(10**9, n)))
        for i in range(count):
            job = job_labels(at, f"j{i}")
            series.append(input_series(catalogue.JOB_LAST_PROGRESS.name, job, constant(0, n)))
            # Half of them in a state the provider does not document: they count too.
            status = "unknown" if i % 2 else "running"
            series.append(input_series(catalogue.JOB_STATUS.name, {**job, "status": status}, constant(1, n)))
            series.append(input_series(catalogue.JOB_AWAITING_USER.name, job, constant(0, n)))
    others = {"AsyncJobStuck": cfg.many_stuck_jobs - 1}
    if seconds(cfg.stuck_for) > seconds(cfg.many_stuck_for):
        others = {}  # the per-job alerts would not have fired yet at the target's firing time
    return Scenario("AsyncJobManyStuck", threshold + MINUTE, 1, series, others=others)


def overdue(cfg: Config, labels: dict[str, str]) -> Scenario:
    threshold, n = 1800, run_minutes(cfg, 3600)
    series = [input_series(catalogue.TARGET_MAX_DURATION.name, labels, constant(threshold, n))]
    series.append(input_series(catalogue.TARGET_STUCK_THRESHOLD.name, labels, constant(10**9, n)))
    for job_id, started, status in (("j1", 0, "running"), ("j2", 600, "running"), ("j3", 0, "unknown")):
        series.append(
            input_series(catalogue.JOB_STARTED.name, job_labels(labels, job_id), constant(started, n))
        )
        series.append(
            input_series(catalogue.JOB_LAST_PROGRESS.name, job_labels(labels, job_id), constant(0, n))
        )
        series.append(
            input_series(catalogue.JOB_STATUS.name, job_labels(labels, job_id, status=status), constant(1, n))
        )
        series.append(
            input_series(catalogue.JOB_AWAITING_USER.name, job_labels(labels, job_id), constant(0, n))
        )
    return Scenario("AsyncJobOverdue", threshold + MINUTE, 2, series)


def failed(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = run_minutes(cfg)
    series = []
    for job_id, cause in (("j1", "provider"), ("j2", "user")):  # the end user's failure pages nobody
        series.append(
            input_series(
                catalogue.JOB_STATUS.name, job_labels(labels, job_id, status="failed"), constant(1, n)
            )
        )
        error = job_labels(
            labels, job_id, reason="connector-error" if cause == "provider" else "invalid-credentials"
        )
        series.append(input_series(catalogue.JOB_ERROR_INFO.name, {**error, "cause": cause}, constant(1, n)))
    return Scenario("AsyncJobFailed", 0, 1, series)


def failed_during_outage(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    """While t1's failure rate is high, its jobs the provider failed page no more one by one;
    those of t2, whose rate is low, still do."""
    if "AsyncJobFailureRateHigh" not in alerts_by_name(cfg):
        return None
    n = run_minutes(cfg, seconds(cfg.failure_window))
    per_minute = max(100, cfg.failure_min_finished)
    if cfg.failure_ratio >= 1:
        return None
    series = []
    for target, failures in (("t1", per_minute), ("t2", 0)):
        at = {**labels, "target": target}
        common = {**at, "job_type": "connection"}
        series.append(
            input_series(catalogue.JOBS_FINISHED.name, {**common, "status": "failed"}, f"0+{failures}x{n}")
        )
        series.append(
            input_series(
                catalogue.JOBS_FINISHED.name,
                {**common, "status": "succeeded"},
                f"0+{per_minute - failures}x{n}",
            )
        )
        failed_labels = {**common, "reason": "connector-error", "cause": "provider"}
        series.append(input_series(catalogue.JOBS_FAILED.name, failed_labels, f"0+{failures}x{n}"))
        job = job_labels(at, "j1")
        # Failed from the third minute on: by then t1's rate has held for a minute (increase()
        # needs two samples), whatever `failed_for` is.
        series.append(input_series(catalogue.JOB_STATUS.name, {**job, "status": "failed"}, f"0x1 1x{n}"))
        error = {**job, "reason": "connector-error", "cause": "provider"}
        series.append(input_series(catalogue.JOB_ERROR_INFO.name, error, f"0x1 1x{n}"))
    return Scenario("AsyncJobFailed", 2 * MINUTE, 1, series)


def _records_failing(cfg: Config, labels: dict[str, str], name: str) -> Scenario | None:
    # j1's records fail for a cause an operator owns, j3's for the application's data
    # (cause="user"): each fires one of the two alerts. j2 stays just under the threshold.
    total, n = 10000, run_minutes(cfg)
    above = math.floor(cfg.records_failed_ratio * total) + 1
    below = math.ceil(cfg.records_failed_ratio * total) - 1
    if above > total:
        return None
    series = []
    for job_id, failed_records, cause in (
        ("j1", above, "provider"),
        ("j2", below, "provider"),
        ("j3", above, "user"),
    ):
        if failed_records < 0:
            continue
        series.append(
            input_series(
                catalogue.JOB_RECORDS.name, job_labels(labels, job_id, kind="total"), constant(total, n)
            )
        )
        series.append(
            input_series(
                catalogue.JOB_RECORDS.name,
                job_labels(labels, job_id, kind="failed"),
                constant(failed_records, n),
            )
        )
        error = job_labels(labels, job_id, reason="record_errors", cause=cause)
        series.append(input_series(catalogue.JOB_ERROR_INFO.name, error, constant(1, n)))
    return Scenario(name, 0, 1, series)


def records_failing(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    return _records_failing(cfg, labels, "AsyncJobRecordsFailing")


def user_records_failing(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    return _records_failing(cfg, labels, "AsyncJobUserRecordsFailing")


def awaiting_user(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = run_minutes(cfg)
    series = []
    for job_id, waiting in (("j1", 1), ("j2", 0)):
        series.append(
            input_series(catalogue.JOB_LAST_PROGRESS.name, job_labels(labels, job_id), constant(0, n))
        )
        series.append(
            input_series(
                catalogue.JOB_STATUS.name, job_labels(labels, job_id, status="running"), constant(1, n)
            )
        )
        series.append(
            input_series(catalogue.JOB_AWAITING_USER.name, job_labels(labels, job_id), constant(waiting, n))
        )
    return Scenario("AsyncJobAwaitingUser", 0, 1, series)


def _failure_rate(
    cfg: Config, labels: dict[str, str], name: str, ratio: float, cause: str
) -> Scenario | None:
    # Jobs finish at `per_minute` a minute; job type "above" fails just over the threshold,
    # "below" just under it.
    per_minute = max(100, cfg.failure_min_finished)
    n = run_minutes(cfg, seconds(cfg.failure_window))
    above = math.floor(ratio * per_minute) + 1
    below = math.ceil(ratio * per_minute) - 1
    if above > per_minute:
        return None
    series = []
    for job_type, failures in (("above", above), ("below", below)):
        if failures < 0:
            continue
        common = {**labels, "job_type": job_type}
        series.append(
            input_series(catalogue.JOBS_FINISHED.name, {**common, "status": "failed"}, f"0+{failures}x{n}")
        )
        ok = per_minute - failures
        series.append(
            input_series(catalogue.JOBS_FINISHED.name, {**common, "status": "succeeded"}, f"0+{ok}x{n}")
        )
        reason = "invalid-credentials" if cause == "user" else "connector-error"
        failed_labels = {**common, "reason": reason, "cause": cause}
        series.append(input_series(catalogue.JOBS_FAILED.name, failed_labels, f"0+{failures}x{n}"))
    # increase() needs two samples: the ratio holds from the second minute on.
    return Scenario(name, MINUTE, 1, series)


def failure_rate_high(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    return _failure_rate(cfg, labels, "AsyncJobFailureRateHigh", cfg.failure_ratio, "provider")


def user_failure_rate_high(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    if "AsyncJobUserFailureRateHigh" not in alerts_by_name(cfg):
        return None
    return _failure_rate(cfg, labels, "AsyncJobUserFailureRateHigh", cfg.user_failure_ratio, "user")


def _bucket_counts(low: float, high: float) -> dict[str, float]:
    """Cumulative bucket counts of observations that all fall in (low, high]."""
    return {f"{b:g}": (1.0 if b >= high else 0.0) for b in STEP_BUCKETS} | {"+Inf": 1.0}


def step_slow(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    n = run_minutes(cfg, seconds(cfg.step_window))
    thresholds = {"slow-step": cfg.step_slow_seconds, **cfg.step_slow_seconds_by_step}
    series, count = [], 0
    for step, threshold in sorted(thresholds.items()):
        # All observations in the first bucket whose lower bound is at least the threshold:
        # p95 lies inside it, above the threshold. A step whose threshold is past the last
        # bucket cannot be exceeded by a histogram_quantile, and is left out.
        bounds = [b for b in STEP_BUCKETS if b >= threshold]
        if len(bounds) < 2:
            continue
        count += 1
        for le, per_minute in _bucket_counts(bounds[0], bounds[1]).items():
            bucket = {**labels, "job_type": "connection", "step": step, "le": le}
            series.append(input_series(catalogue.STEP_DURATION.bucket, bucket, f"0+{per_minute * 10:g}x{n}"))
        # The same step, in another job type, just under the threshold: p95 below it.
        lower = [b for b in STEP_BUCKETS if b < threshold]
        if len(lower) >= 2:
            for le, per_minute in _bucket_counts(lower[-2], lower[-1]).items():
                bucket = {**labels, "job_type": "quick", "step": step, "le": le}
                series.append(
                    input_series(catalogue.STEP_DURATION.bucket, bucket, f"0+{per_minute * 10:g}x{n}")
                )
    if not count:
        return None
    return Scenario("AsyncJobStepSlow", MINUTE, count, series)
