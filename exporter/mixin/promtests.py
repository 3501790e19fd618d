"""promtool unit tests generated from the same config as the rules: each alert fires just past the
thresholds and `for` durations of that config, with its severity, and a series just short of a
threshold does not fire. `asyncjob-exporter mixin` writes them beside the rules it generates.

The tests read `ALERTS` through `promql_expr_test`: they check when and with which severity an
alert fires, not its annotation texts (those are the hand-written tests' concern).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from exporter import catalogue

from . import queries as q
from . import rules
from .config import Config

# The exporter's step duration buckets (exporter.tracker.STEP_DURATION_BUCKETS).
STEP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
INSTANCE = "exporter:10110"
MINUTE = 60

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(duration: str) -> float:
    """Seconds of a Prometheus duration (`5m`, `1h30m`, `0m`)."""
    text, total, pos = duration.strip(), 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"{duration!r} is not a duration such as 30s, 5m or 1h")
    return total


_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _regex_sample(pattern: str) -> str | None:
    """A value the (anchored) regex matches: its literal text with wildcards filled in."""
    for candidate in (
        pattern.replace(".*", "").replace(".+", "x"),
        pattern.replace(".*", "x").replace(".+", "x"),
        re.sub(r"[\\^$()]", "", pattern.split("|")[0]).replace(".*", "").replace(".+", "x"),
    ):
        try:
            if re.fullmatch(pattern, candidate):
                return candidate
        except re.error:
            return None
    return None


def selector_labels(cfg: Config) -> dict[str, str]:
    """Labels of one exporter's series that the config's selector selects."""
    out: dict[str, str] = {}
    text = cfg.exporter_selector
    pos = 0
    while pos < len(text.strip()):
        m = _MATCHER.match(text, pos)
        if m is None:
            raise ValueError(f"exporter_selector: cannot read {text[pos:]!r}")
        name, op, value = m.group(1), m.group(2), m.group(3).replace('\\"', '"')
        if op == "=":
            out[name] = value
        elif op == "=~":
            sample = _regex_sample(value)
            if sample is None:
                raise ValueError(f"exporter_selector: no test value found for {name}=~{value!r}")
            out[name] = sample
        pos = m.end()
    for name in cfg.target_labels:
        out.setdefault(name, {"instance": INSTANCE, "target": "t1"}.get(name, "x"))
    return out


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _constant(value: float, minutes: int) -> str:
    return f"{value:g}x{minutes}"


def _firing(name: str, severity: str, at: float, count: int) -> dict[str, Any]:
    expr = f'count(ALERTS{{alertname="{name}", alertstate="firing", severity="{severity}"}}) or vector(0)'
    return {"expr": expr, "eval_time": f"{int(at)}s", "exp_samples": [{"labels": "{}", "value": count}]}


class Scenario:
    """Input series under which alert `name` first holds at `onset` seconds (its expression is
    true from that evaluation on); `count` alerts fire once its `for` has passed."""

    def __init__(
        self,
        name: str,
        onset: float,
        count: int,
        series: list[dict[str, str]],
        others: dict[str, int] | None = None,
    ) -> None:
        self.name, self.onset, self.count, self.series = name, onset, count, series
        # Other alerts firing (or held back: 0) at the same time, with their counts.
        self.others = others or {}


def _minutes(cfg: Config, extra: float = 0) -> int:
    longest = max(seconds(a.duration) for a in _alerts(cfg).values())
    return math.ceil((longest + extra) / MINUTE) + 30


def _alerts(cfg: Config) -> dict[str, rules.Alert]:
    sel = cfg.exporter_selector
    groups = (
        rules.job_alerts,
        rules.job_count_alerts,
        rules.aggregate_alerts,
        rules.target_alerts,
        rules.oxlin_alerts,
    )
    return {a.name: a for group in groups for a in group(cfg, sel)}


def _job(labels: dict[str, str], job_id: str, **more: str) -> dict[str, str]:
    return {**labels, "job_id": job_id, **more}


def stuck(cfg: Config, labels: dict[str, str]) -> Scenario:
    threshold, n = 600, _minutes(cfg, 3600)
    series = [_series(catalogue.TARGET_STUCK_THRESHOLD.name, labels, _constant(threshold, n))]
    series.append(_series(catalogue.TARGET_MAX_DURATION.name, labels, _constant(10**9, n)))
    # j2 moved 5 minutes later; j3 is in a state no one documented, stuck as much as j1.
    for job_id, progress_at, status in (("j1", 0, "running"), ("j2", 300, "running"), ("j3", 0, "unknown")):
        series.append(
            _series(
                catalogue.JOB_LAST_PROGRESS.name,
                _job(labels, job_id),
                _constant(progress_at, n),
            )
        )
        series.append(
            _series(catalogue.JOB_STATUS.name, _job(labels, job_id, status=status), _constant(1, n))
        )
        series.append(_series(catalogue.JOB_AWAITING_USER.name, _job(labels, job_id), _constant(0, n)))
    return Scenario("AsyncJobStuck", threshold + MINUTE, 2, series)


def overdue_silences_stuck(cfg: Config, labels: dict[str, str]) -> Scenario:
    """A job both stuck and overdue pages once, as overdue."""
    stuck_after, max_duration, n = 600, 1800, _minutes(cfg, 3600)
    series = [
        _series(catalogue.TARGET_STUCK_THRESHOLD.name, labels, _constant(stuck_after, n)),
        _series(catalogue.TARGET_MAX_DURATION.name, labels, _constant(max_duration, n)),
        _series(catalogue.JOB_STARTED.name, _job(labels, "j1"), _constant(0, n)),
        _series(catalogue.JOB_LAST_PROGRESS.name, _job(labels, "j1"), _constant(0, n)),
        _series(catalogue.JOB_STATUS.name, _job(labels, "j1", status="running"), _constant(1, n)),
        _series(catalogue.JOB_AWAITING_USER.name, _job(labels, "j1"), _constant(0, n)),
    ]
    return Scenario("AsyncJobOverdue", max_duration + MINUTE, 1, series, others={"AsyncJobStuck": 0})


def many_stuck(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    """`many_stuck_jobs` stuck jobs on t1 page once for t1, none for its jobs; one fewer on t2
    page one by one."""
    if "AsyncJobManyStuck" not in _alerts(cfg) or cfg.many_stuck_jobs < 2:
        return None
    threshold, n = 600, _minutes(cfg, 3600)
    series = []
    for target, count in (("t1", cfg.many_stuck_jobs), ("t2", cfg.many_stuck_jobs - 1)):
        at = {**labels, "target": target}
        series.append(_series(catalogue.TARGET_STUCK_THRESHOLD.name, at, _constant(threshold, n)))
        series.append(_series(catalogue.TARGET_MAX_DURATION.name, at, _constant(10**9, n)))
        for i in range(count):
            job = _job(at, f"j{i}")
            series.append(_series(catalogue.JOB_LAST_PROGRESS.name, job, _constant(0, n)))
            # Half of them in a state the provider does not document: they count too.
            status = "unknown" if i % 2 else "running"
            series.append(_series(catalogue.JOB_STATUS.name, {**job, "status": status}, _constant(1, n)))
            series.append(_series(catalogue.JOB_AWAITING_USER.name, job, _constant(0, n)))
    others = {"AsyncJobStuck": cfg.many_stuck_jobs - 1}
    if seconds(cfg.stuck_for) > seconds(cfg.many_stuck_for):
        others = {}  # the per-job alerts would not have fired yet at the target's firing time
    return Scenario("AsyncJobManyStuck", threshold + MINUTE, 1, series, others=others)


def overdue(cfg: Config, labels: dict[str, str]) -> Scenario:
    threshold, n = 1800, _minutes(cfg, 3600)
    series = [_series(catalogue.TARGET_MAX_DURATION.name, labels, _constant(threshold, n))]
    series.append(_series(catalogue.TARGET_STUCK_THRESHOLD.name, labels, _constant(10**9, n)))
    for job_id, started, status in (("j1", 0, "running"), ("j2", 600, "running"), ("j3", 0, "unknown")):
        series.append(_series(catalogue.JOB_STARTED.name, _job(labels, job_id), _constant(started, n)))
        series.append(_series(catalogue.JOB_LAST_PROGRESS.name, _job(labels, job_id), _constant(0, n)))
        series.append(
            _series(catalogue.JOB_STATUS.name, _job(labels, job_id, status=status), _constant(1, n))
        )
        series.append(_series(catalogue.JOB_AWAITING_USER.name, _job(labels, job_id), _constant(0, n)))
    return Scenario("AsyncJobOverdue", threshold + MINUTE, 2, series)


def failed(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = _minutes(cfg)
    series = []
    for job_id, cause in (("j1", "provider"), ("j2", "user")):  # the end user's failure pages nobody
        series.append(
            _series(catalogue.JOB_STATUS.name, _job(labels, job_id, status="failed"), _constant(1, n))
        )
        error = _job(
            labels, job_id, reason="connector-error" if cause == "provider" else "invalid-credentials"
        )
        series.append(_series(catalogue.JOB_ERROR_INFO.name, {**error, "cause": cause}, _constant(1, n)))
    return Scenario("AsyncJobFailed", 0, 1, series)


def failed_during_outage(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    """While t1's failure rate is high, its jobs the provider failed page no more one by one;
    those of t2, whose rate is low, still do."""
    if "AsyncJobFailureRateHigh" not in _alerts(cfg):
        return None
    n = _minutes(cfg, seconds(cfg.failure_window))
    per_minute = max(100, cfg.failure_min_finished)
    if cfg.failure_ratio >= 1:
        return None
    series = []
    for target, failures in (("t1", per_minute), ("t2", 0)):
        at = {**labels, "target": target}
        common = {**at, "job_type": "connection"}
        series.append(
            _series(catalogue.JOBS_FINISHED.name, {**common, "status": "failed"}, f"0+{failures}x{n}")
        )
        series.append(
            _series(
                catalogue.JOBS_FINISHED.name,
                {**common, "status": "succeeded"},
                f"0+{per_minute - failures}x{n}",
            )
        )
        failed_labels = {**common, "reason": "connector-error", "cause": "provider"}
        series.append(_series(catalogue.JOBS_FAILED.name, failed_labels, f"0+{failures}x{n}"))
        job = _job(at, "j1")
        # Failed from the third minute on: by then t1's rate has held for a minute (increase()
        # needs two samples), whatever `failed_for` is.
        series.append(_series(catalogue.JOB_STATUS.name, {**job, "status": "failed"}, f"0x1 1x{n}"))
        error = {**job, "reason": "connector-error", "cause": "provider"}
        series.append(_series(catalogue.JOB_ERROR_INFO.name, error, f"0x1 1x{n}"))
    return Scenario("AsyncJobFailed", 2 * MINUTE, 1, series)


def _records_failing(cfg: Config, labels: dict[str, str], name: str) -> Scenario | None:
    # j1's records fail for a cause an operator owns, j3's for the application's data
    # (cause="user"): each fires one of the two alerts. j2 stays just under the threshold.
    total, n = 10000, _minutes(cfg)
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
            _series(catalogue.JOB_RECORDS.name, _job(labels, job_id, kind="total"), _constant(total, n))
        )
        series.append(
            _series(
                catalogue.JOB_RECORDS.name, _job(labels, job_id, kind="failed"), _constant(failed_records, n)
            )
        )
        error = _job(labels, job_id, reason="record_errors", cause=cause)
        series.append(_series(catalogue.JOB_ERROR_INFO.name, error, _constant(1, n)))
    return Scenario(name, 0, 1, series)


def records_failing(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    return _records_failing(cfg, labels, "AsyncJobRecordsFailing")


def user_records_failing(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    return _records_failing(cfg, labels, "AsyncJobUserRecordsFailing")


def awaiting_user(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = _minutes(cfg)
    series = []
    for job_id, waiting in (("j1", 1), ("j2", 0)):
        series.append(_series(catalogue.JOB_LAST_PROGRESS.name, _job(labels, job_id), _constant(0, n)))
        series.append(
            _series(catalogue.JOB_STATUS.name, _job(labels, job_id, status="running"), _constant(1, n))
        )
        series.append(_series(catalogue.JOB_AWAITING_USER.name, _job(labels, job_id), _constant(waiting, n)))
    return Scenario("AsyncJobAwaitingUser", 0, 1, series)


def _failure_rate(
    cfg: Config, labels: dict[str, str], name: str, ratio: float, cause: str
) -> Scenario | None:
    # Jobs finish at `per_minute` a minute; job type "above" fails just over the threshold,
    # "below" just under it.
    per_minute = max(100, cfg.failure_min_finished)
    n = _minutes(cfg, seconds(cfg.failure_window))
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
            _series(catalogue.JOBS_FINISHED.name, {**common, "status": "failed"}, f"0+{failures}x{n}")
        )
        ok = per_minute - failures
        series.append(_series(catalogue.JOBS_FINISHED.name, {**common, "status": "succeeded"}, f"0+{ok}x{n}"))
        reason = "invalid-credentials" if cause == "user" else "connector-error"
        failed_labels = {**common, "reason": reason, "cause": cause}
        series.append(_series(catalogue.JOBS_FAILED.name, failed_labels, f"0+{failures}x{n}"))
    # increase() needs two samples: the ratio holds from the second minute on.
    return Scenario(name, MINUTE, 1, series)


def failure_rate_high(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    return _failure_rate(cfg, labels, "AsyncJobFailureRateHigh", cfg.failure_ratio, "provider")


def user_failure_rate_high(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    if "AsyncJobUserFailureRateHigh" not in _alerts(cfg):
        return None
    return _failure_rate(cfg, labels, "AsyncJobUserFailureRateHigh", cfg.user_failure_ratio, "user")


def _bucket_counts(low: float, high: float) -> dict[str, float]:
    """Cumulative bucket counts of observations that all fall in (low, high]."""
    return {f"{b:g}": (1.0 if b >= high else 0.0) for b in STEP_BUCKETS} | {"+Inf": 1.0}


def step_slow(cfg: Config, labels: dict[str, str]) -> Scenario | None:
    n = _minutes(cfg, seconds(cfg.step_window))
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
            series.append(_series(catalogue.STEP_DURATION.bucket, bucket, f"0+{per_minute * 10:g}x{n}"))
        # The same step, in another job type, just under the threshold: p95 below it.
        lower = [b for b in STEP_BUCKETS if b < threshold]
        if len(lower) >= 2:
            for le, per_minute in _bucket_counts(lower[-2], lower[-1]).items():
                bucket = {**labels, "job_type": "quick", "step": step, "le": le}
                series.append(_series(catalogue.STEP_DURATION.bucket, bucket, f"0+{per_minute * 10:g}x{n}"))
    if not count:
        return None
    return Scenario("AsyncJobStepSlow", MINUTE, count, series)


def target_down(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = _minutes(cfg)
    other = {**labels, "target": "t2"}
    series = [
        _series(catalogue.TARGET_UP.name, labels, _constant(0, n)),
        _series(catalogue.TARGET_UP.name, other, _constant(1, n)),
    ]
    return Scenario("AsyncJobTargetDown", 0, 1, series)


def polling_stale(cfg: Config, labels: dict[str, str]) -> Scenario:
    interval = 60
    stale = cfg.polling_stale_intervals * interval
    n = _minutes(cfg, stale)
    other = {**labels, "target": "t2"}
    series = [
        _series(catalogue.LAST_SUCCESSFUL_POLL.name, labels, _constant(0, n)),
        _series(catalogue.TARGET_POLL_INTERVAL.name, labels, _constant(interval, n)),
        _series(catalogue.LAST_SUCCESSFUL_POLL.name, other, f"0+{MINUTE}x{n}"),
        _series(catalogue.TARGET_POLL_INTERVAL.name, other, _constant(interval, n)),
    ]
    return Scenario("AsyncJobPollingStale", stale + MINUTE, 1, series)


def exporter_down(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = _minutes(cfg)
    base = {k: v for k, v in labels.items() if k != "target"}
    return Scenario("AsyncJobExporterDown", 0, 1, [_series("up", base, _constant(0, n))])


def tracking_cap_reached(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = _minutes(cfg, seconds(cfg.tracking_cap_window))
    other = {**labels, "target": "t2"}
    series = [
        _series(catalogue.JOBS_DROPPED.name, {**labels, "reason": "cap"}, f"0+1x{n}"),
        _series(catalogue.JOBS_DROPPED.name, {**other, "reason": "cap"}, _constant(0, n)),
    ]
    return Scenario("AsyncJobTrackingCapReached", MINUTE, 1, series)


def _connection_sync_stale(cfg: Config, labels: dict[str, str], name: str) -> Scenario:
    # c1 is stale for an operator, c3 for its end user (its last sync failed for them); c2
    # synchronised later, c4 is closed.
    stale = cfg.connection_sync_stale_seconds
    n = _minutes(cfg, stale + 3600)
    series = []
    for connection, last, waiting, status in (
        ("c1", 0, 0, "FAILED"),
        ("c2", 1800, 0, "SUCCESS"),
        ("c3", 0, 1, "FAILED"),
        ("c4", 0, 0, "CLOSED"),
    ):
        conn = {**labels, "connection_id": connection}
        series.append(_series(catalogue.CONNECTION_LAST_SUCCESS.name, conn, _constant(last, n)))
        series.append(_series(catalogue.CONNECTION_STATUS.name, {**conn, "status": status}, _constant(1, n)))
        series.append(_series(catalogue.CONNECTION_AWAITING_USER.name, conn, _constant(waiting, n)))
    return Scenario(name, stale + MINUTE, 1, series)


def connection_sync_stale(cfg: Config, labels: dict[str, str]) -> Scenario:
    return _connection_sync_stale(cfg, labels, "AsyncJobConnectionSyncStale")


def user_connection_sync_stale(cfg: Config, labels: dict[str, str]) -> Scenario:
    return _connection_sync_stale(cfg, labels, "AsyncJobUserConnectionSyncStale")


def source_missing(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = _minutes(cfg)
    source = {**labels, "source": "user ea3a81"}
    series = [_series(catalogue.SOURCE_MISSING_SINCE.name, source, _constant(0, n))]
    return Scenario("AsyncJobSourceMissing", 0, 1, series)


def state_undocumented(cfg: Config, labels: dict[str, str]) -> Scenario:
    n = _minutes(cfg)
    series = []
    for raw, jobs in (("ON_HOLD", 2), ("PAUSED", 0)):
        common = {**labels, "job_type": "connection", "raw_status": raw}
        series.append(_series(catalogue.JOBS_UNDOCUMENTED.name, common, _constant(jobs, n)))
    return Scenario("AsyncJobStateUndocumented", 0, 1, series)


def consent_expiring(cfg: Config, labels: dict[str, str]) -> Scenario:
    warning = cfg.consent_expiry_warning_days * 86400
    n = _minutes(cfg, 7200)
    series = []
    for connection, expires in (("c1", warning + 1800), ("c2", warning + 10**6)):
        conn = {**labels, "connection_id": connection, "channel": "REDIRECT"}
        series.append(_series(catalogue.CHANNEL_CONSENT_EXPIRY.name, conn, _constant(expires, n)))
    return Scenario("AsyncJobConsentExpiring", 1800 + MINUTE, 1, series)


SCENARIOS: tuple[Callable[[Config, dict[str, str]], Scenario | None], ...] = (
    failed,
    failed_during_outage,
    stuck,
    overdue,
    overdue_silences_stuck,
    many_stuck,
    records_failing,
    user_records_failing,
    awaiting_user,
    failure_rate_high,
    user_failure_rate_high,
    step_slow,
    target_down,
    polling_stale,
    exporter_down,
    tracking_cap_reached,
    source_missing,
    state_undocumented,
    connection_sync_stale,
    user_connection_sync_stale,
    consent_expiring,
)


# Handover tests: scraped every 15 s (as a replica is), a job's series stop on one replica and
# start on another; the rules are evaluated every minute.
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
    alerts = _alerts(cfg)
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
                _series(catalogue.TARGET_STUCK_THRESHOLD.name, replica, _constant(threshold, total))
            )
            series.append(_series(catalogue.TARGET_MAX_DURATION.name, replica, _constant(10**9, total)))
        for metric, extra, value in (
            (catalogue.JOB_LAST_PROGRESS.name, {}, 0.0),
            (catalogue.JOB_STATUS.name, {"status": "running"}, 1.0),
            (catalogue.JOB_AWAITING_USER.name, {}, 0.0),
        ):
            values = _handed_over(value, last, resume, total)
            for replica, values_on in zip((first, second), values, strict=True):
                series.append(_series(metric, _job(replica, "j1", **extra), values_on))
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
                series.append(_series(metric, _job(replica, "j1", **extra), values_on))
        checks = _handover_checks(cfg, "AsyncJobFailed", fire, None, end, "j1")
        tests.append({"interval": f"{STEP}s", "input_series": series, "promql_expr_test": checks})
    return tests


def rule_tests(cfg: Config, rule_file: str = "../asyncjob.rules.yml") -> dict[str, Any]:
    """The promtool test file for the rules generated from `cfg`."""
    labels = selector_labels(cfg)
    alerts = _alerts(cfg)
    tests = []
    for make in SCENARIOS:
        scenario = make(cfg, labels)
        if scenario is None or scenario.name not in alerts:
            continue
        hold = seconds(alerts[scenario.name].duration)
        severity = cfg.severity[scenario.name]
        checks = []
        # Not yet: one evaluation before the alert can have held for its `for`.
        quiet = scenario.onset + hold - MINUTE if hold >= MINUTE else scenario.onset - MINUTE
        if quiet >= 0:
            checks.append(_firing(scenario.name, severity, quiet, 0))
        # Firing: a minute past the onset and the `for`, rounded up to an evaluation.
        fire = (math.ceil((scenario.onset + hold) / MINUTE) + 1) * MINUTE
        checks.append(_firing(scenario.name, severity, fire, scenario.count))
        for other, count in scenario.others.items():
            if other in alerts:
                checks.append(_firing(other, cfg.severity[other], fire, count))
        tests.append({"interval": "1m", "input_series": scenario.series, "promql_expr_test": checks})
    tests.extend(handover_tests(cfg, labels))
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


__all__ = ["q", "rule_tests", "seconds", "selector_labels"]
