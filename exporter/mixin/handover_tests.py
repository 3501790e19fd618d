"""Handover tests: scraped every 15 s (as a replica is), a job's series stop on one replica and
start on another, and its page neither resolves nor fires again: one alert, firing at every
evaluation, with no replica label and an `activeAt` that never changes (`keep_firing_for` rides
out the gap while no replica exports the job).
"""

from __future__ import annotations

import math
from typing import Any

from exporter import catalogue

from .config import Config, seconds
from .promtest_inputs import MINUTE, alerts_by_name, constant, input_series, job_labels, run_minutes

# Scraped every 15 s; the rules are evaluated every minute.
STEP = 15
REPLICAS = ("exporter-a:10110", "exporter-b:10110")


def _steps(seconds_: float) -> int:
    return math.ceil(seconds_ / STEP)


def _handed_over(value: float, handover: int, resume: int, end: int) -> tuple[str, str]:
    """Values of one series on the replica that lets the job go at step `handover` (its last
    sample; the next scrape fails: a stale marker) and on the one that takes it from step
    `resume` (`resume` < `handover` + 1: both export it for a while)."""
    first = f"{value:g}x{handover} stale _x{end - handover - 1}"
    second = f"_x{resume} {value:g}x{end - resume}" if resume else f"{value:g}x{end}"
    return first, second


def _handover_checks(
    cfg: Config, name: str, fire: int, gap: int | None, end: int, job_id: str
) -> list[dict[str, Any]]:
    """From the first evaluation after the alert fired to `end` (seconds): one alert, firing
    at every evaluation, its labels naming no replica, its activeAt never changed."""
    window = f"{end - fire}s"
    # Rule evaluations in the range's closed interval, at every minute.
    evaluations = sum(1 for at in range(0, end + 1, MINUTE) if fire <= at)
    alert = f'alertname="{name}"'
    checks: list[dict[str, Any]] = [
        {
            "expr": f"count(ALERTS{{{alert}}}) or vector(0)",
            "eval_time": f"{fire}s",
            "exp_samples": [{"labels": "{}", "value": 1}],
        },
        # One label set over the whole window: no second alert, no pending again.
        {
            "expr": f"count(count_over_time(ALERTS{{{alert}}}[{window}]))",
            "eval_time": f"{end}s",
            "exp_samples": [{"labels": "{}", "value": 1}],
        },
        # Firing at every evaluation: never resolved.
        {
            "expr": f'sum(count_over_time(ALERTS{{{alert}, alertstate="firing"}}[{window}]))',
            "eval_time": f"{end}s",
            "exp_samples": [{"labels": "{}", "value": evaluations}],
        },
        {
            "expr": f"sum(changes(ALERTS_FOR_STATE{{{alert}}}[{window}]))",
            "eval_time": f"{end}s",
            "exp_samples": [{"labels": "{}", "value": 0}],
        },
    ]
    for label in cfg.replica_labels:
        checks.append(
            {
                "expr": f'count(count_over_time(ALERTS{{{alert}, {label}!=""}}[{window}])) or vector(0)',
                "eval_time": f"{end}s",
                "exp_samples": [{"labels": "{}", "value": 0}],
            }
        )
    if gap is not None:
        # The job was exported by no replica at that evaluation: keep_firing_for held the page.
        checks.append(
            {
                "expr": f'count({catalogue.JOB_STATUS.name}{{job_id="{job_id}"}}) or vector(0)',
                "eval_time": f"{gap}s",
                "exp_samples": [{"labels": "{}", "value": 0}],
            }
        )
    return checks


def _replicas(labels: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    first, second = ({**labels, "instance": instance} for instance in REPLICAS)
    return first, second


def handover_tests(cfg: Config, labels: dict[str, str]) -> list[dict[str, Any]]:
    """A stuck job that moves to another replica with a gap (its series go stale on one, and
    appear on the other a minute later), and a failed job both replicas export for two minutes
    before the first lets it go: each stays one page, firing throughout. Both replicas export
    the target's thresholds all along."""
    alerts = alerts_by_name(cfg)
    grace = seconds(cfg.handover_grace)
    if "instance" not in cfg.replica_labels or grace < MINUTE:
        return []
    tests = []
    first, second = _replicas(labels)
    if "AsyncJobStuck" in alerts:
        threshold = 600
        fire = (math.ceil((threshold + MINUTE + seconds(cfg.stuck_for)) / MINUTE) + 1) * MINUTE
        handover = fire + 2 * MINUTE + STEP  # last sample on the first replica
        end = handover + 6 * MINUTE
        last, resume, total = _steps(handover), _steps(handover) + 5, _steps(end)
        series = []
        for replica in (first, second):
            series.append(
                input_series(catalogue.TARGET_STUCK_THRESHOLD.name, replica, constant(threshold, total))
            )
            series.append(input_series(catalogue.TARGET_MAX_DURATION.name, replica, constant(10**9, total)))
        for metric, extra, value in (
            (catalogue.JOB_LAST_PROGRESS.name, {}, 0.0),
            (catalogue.JOB_STATUS.name, {"status": "running"}, 1.0),
            (catalogue.JOB_AWAITING_USER.name, {}, 0.0),
        ):
            values = _handed_over(value, last, resume, total)
            for replica, values_on in zip((first, second), values, strict=True):
                series.append(input_series(metric, job_labels(replica, "j1", **extra), values_on))
        # The first evaluation after the stale marker, before the second replica's first sample.
        gap = math.ceil((handover + STEP) / MINUTE) * MINUTE
        checks = _handover_checks(cfg, "AsyncJobStuck", fire, gap, end, "j1")
        tests.append({"interval": f"{STEP}s", "input_series": series, "promql_expr_test": checks})
    if "AsyncJobFailed" in alerts:
        fire = (math.ceil(seconds(cfg.failed_for) / MINUTE) + 1) * MINUTE
        handover = fire + 4 * MINUTE
        end = handover + 6 * MINUTE
        last, resume, total = _steps(handover), _steps(handover - 2 * MINUTE), _steps(end)
        series = []
        for metric, extra in (
            (catalogue.JOB_STATUS.name, {"status": "failed"}),
            (catalogue.JOB_ERROR_INFO.name, {"reason": "connector-error", "cause": "provider"}),
        ):
            values = _handed_over(1, last, resume, total)
            for replica, values_on in zip((first, second), values, strict=True):
                series.append(input_series(metric, job_labels(replica, "j1", **extra), values_on))
        checks = _handover_checks(cfg, "AsyncJobFailed", fire, None, end, "j1")
        tests.append({"interval": f"{STEP}s", "input_series": series, "promql_expr_test": checks})
    return tests


def shared_rate_tests(cfg: Config, labels: dict[str, str]) -> list[dict[str, Any]]:
    """Two replicas, each counting the jobs it works: the failure rate is judged over their sum.
    t1 fails as much on both (one alert, naming no replica, not one a replica); t2 fails on one
    only, under the ratio once both are counted (none); t3 finishes too few jobs on each replica
    to judge, enough on both (one alert, and its provider-failed job's page held back)."""
    alerts = alerts_by_name(cfg)
    name, ratio, least = "AsyncJobFailureRateHigh", cfg.failure_ratio, cfg.failure_min_finished
    if "instance" not in cfg.replica_labels or name not in alerts or not 0 < ratio <= 0.5 or least < 2:
        return []
    n = run_minutes(cfg, seconds(cfg.failure_window))
    per_minute = 100
    over = min(per_minute, math.ceil(ratio * per_minute) + 5)
    few = math.ceil(least / 2)  # jobs a replica finishes on t3: too few alone, enough with the other

    # (target, replica) -> values of its succeeded and failed jobs; t3's rise once, at the second minute.
    def rising(per: int) -> str:
        return f"0+{per}x{n}"

    spread = math.ceil(1.5 * ratio * per_minute)
    counts = {
        ("t1", 0): (rising(per_minute - over), rising(over)),
        ("t1", 1): (rising(per_minute - over), rising(over)),
        ("t2", 0): (rising(per_minute), rising(0)),
        ("t2", 1): (rising(per_minute - spread), rising(spread)),
        ("t3", 0): (rising(0), f"0 {few}x{n}"),
        ("t3", 1): (rising(0), f"0 {few}x{n}"),
    }
    series = []
    for (target, i), (succeeded, failed) in counts.items():
        common = {**_replicas({**labels, "target": target})[i], "job_type": "connection"}
        for status, values in (("succeeded", succeeded), ("failed", failed)):
            series.append(input_series(catalogue.JOBS_FINISHED.name, {**common, "status": status}, values))
        failed_labels = {**common, "reason": "connector-error", "cause": "provider"}
        series.append(input_series(catalogue.JOBS_FAILED.name, failed_labels, failed))
    held = _replicas({**labels, "target": "t3"})[0]
    for metric, extra in (
        (catalogue.JOB_STATUS.name, {"status": "failed"}),
        (catalogue.JOB_ERROR_INFO.name, {"reason": "connector-error", "cause": "provider"}),
    ):
        series.append(input_series(metric, job_labels(held, "j1", **extra), constant(1, n)))
    at = f"{(math.ceil((MINUTE + seconds(alerts[name].duration)) / MINUTE) + 2) * MINUTE}s"
    firing = f'ALERTS{{alertname="{name}", alertstate="firing"}}'
    checks: list[dict[str, Any]] = [
        {
            "expr": f"count by (target) ({firing})",
            "eval_time": at,
            "exp_samples": [{"labels": f'{{target="{t}"}}', "value": 1} for t in ("t1", "t3")],
        },
        {
            "expr": f'count(ALERTS{{alertname="{name}", instance!=""}}) or vector(0)',
            "eval_time": at,
            "exp_samples": [{"labels": "{}", "value": 0}],
        },
    ]
    if "AsyncJobFailed" in alerts:
        checks.append(
            {
                "expr": 'count(ALERTS{alertname="AsyncJobFailed"}) or vector(0)',
                "eval_time": at,
                "exp_samples": [{"labels": "{}", "value": 0}],
            }
        )
    return [{"interval": "1m", "input_series": series, "promql_expr_test": checks}]
