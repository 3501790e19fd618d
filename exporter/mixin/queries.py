"""PromQL shared by the alert rules and the dashboards, built for any label selector.

The rules pass the exporter selector from `config`; the dashboards pass their template
variables (`job=~"$job", instance=~"$instance", ...`). Names of recording rules live here too,
so a rule and the panel that reads its output cannot drift apart.
"""

from __future__ import annotations

from exporter import catalogue

from .config import Config

# Recording rules, named level:metric:operations. "active" = pending, running or in a state no one
# documented (unknown: it may never end), and not waiting for the end user (a job waiting for an
# MFA code or a consent is nobody's fault).
SECONDS_SINCE_PROGRESS = "target_job_id:asyncjob_job_seconds_since_progress:active"
RUNTIME = "target_job_id:asyncjob_job_runtime_seconds:active"
RECORDS_FAILED_RATIO = "target_job_id:asyncjob_job_records_failed:ratio"


def finished_increase(cfg: Config) -> str:
    return f"target_job_type_status:asyncjob_jobs_finished:increase{cfg.failure_window}"


def failed_increase(cfg: Config) -> str:
    return f"target_job_type_cause:asyncjob_jobs_failed:increase{cfg.failure_window}"


def failure_ratio(cfg: Config) -> str:
    """Share of the finished jobs that failed, per cause: who must act on those failures."""
    return f"target_job_type_cause:asyncjob_jobs_failure_ratio:increase{cfg.failure_window}"


def step_p95(cfg: Config) -> str:
    return f"target_job_type_step:asyncjob_step_duration_seconds:p95_rate{cfg.step_window}"


def series(metric: str, selector: str, *matchers: str) -> str:
    """`metric{selector, matchers...}`: every query goes through here, so none forgets the selector."""
    parts = [part for part in (selector, *matchers) if part]
    return f"{metric}{{{', '.join(parts)}}}"


UNFINISHED = 'status=~"pending|running|unknown"'
# Failures the end user must fix (cause="user") page no operator.
NOT_USER = 'cause!="user"'
USER = 'cause="user"'


def _active(cfg: Config, selector: str) -> str:
    unfinished = series(catalogue.JOB_STATUS.name, selector, UNFINISHED)
    waiting = series(catalogue.JOB_AWAITING_USER.name, selector)
    on = cfg.on_job_in_replica
    return f"  and {on} ({unfinished} == 1)\n  unless {on} ({waiting} == 1)"


def seconds_since_progress_source(cfg: Config, selector: str) -> str:
    return f"(time() - {series(catalogue.JOB_LAST_PROGRESS.name, selector)})\n{_active(cfg, selector)}"


def runtime_source(cfg: Config, selector: str) -> str:
    started = series(catalogue.JOB_STARTED.name, selector)
    created = series(catalogue.JOB_CREATED.name, selector)
    return f"(time() - ({started} or {cfg.on_job_in_replica} {created}))\n{_active(cfg, selector)}"


def records_failed_ratio_source(cfg: Config, selector: str) -> str:
    failed = series(catalogue.JOB_RECORDS.name, selector, 'kind="failed"')
    total = series(catalogue.JOB_RECORDS.name, selector, 'kind="total"')
    return f"{failed}\n  / {cfg.on_job_in_replica} ({total} > 0)"


def finished_increase_source(cfg: Config, selector: str) -> str:
    by = ", ".join((*cfg.target_labels, "job_type", "status"))
    counter = series(catalogue.JOBS_FINISHED.name, selector)
    return f"sum by ({by}) (increase({counter}[{cfg.failure_window}]))"


def failed_increase_source(cfg: Config, selector: str) -> str:
    by = ", ".join((*cfg.target_labels, "job_type", "cause"))
    counter = series(catalogue.JOBS_FAILED.name, selector)
    return f"sum by ({by}) (increase({counter}[{cfg.failure_window}]))"


def failure_ratio_source(cfg: Config, selector: str) -> str:
    # The failed counters exist at zero per known reason and cause, so a job_type that never
    # failed has a ratio of 0 rather than no data.
    by = ", ".join((*cfg.target_labels, "job_type"))
    failed = series(failed_increase(cfg), selector)
    finished = series(finished_increase(cfg), selector)
    return f"{failed}\n/ on({by}) group_left()\n  sum by ({by}) ({finished})"


def step_p95_source(cfg: Config, selector: str) -> str:
    by = ", ".join((*cfg.target_labels, "job_type", "step", "le"))
    buckets = series(catalogue.STEP_DURATION.bucket, selector)
    return f"histogram_quantile(0.95, sum by ({by}) (rate({buckets}[{cfg.step_window}])))"


def _over_threshold(cfg: Config, value: str, threshold: str) -> str:
    """A job's value over its target's threshold; every replica exports the threshold and any
    may export the job: both sides lose the replica labels before they meet."""
    return f"{cfg.merged(value)}\n  > {cfg.on_target} group_left() {cfg.merged(threshold)}"


def stuck(cfg: Config, selector: str) -> str:
    threshold = series(catalogue.TARGET_STUCK_THRESHOLD.name, selector)
    return _over_threshold(cfg, series(SECONDS_SINCE_PROGRESS, selector), threshold)


def overdue(cfg: Config, selector: str) -> str:
    threshold = series(catalogue.TARGET_MAX_DURATION.name, selector)
    return _over_threshold(cfg, series(RUNTIME, selector), threshold)


def stuck_not_overdue(cfg: Config, selector: str) -> str:
    """Stuck jobs that are not also overdue: an overdue job pages once, as overdue."""
    return f"({stuck(cfg, selector)})\nunless {cfg.on_job}\n({overdue(cfg, selector)})"


def stuck_or_overdue_jobs(cfg: Config, selector: str) -> str:
    """Every job stuck or overdue, once each (a job both is counted once)."""
    return f"({stuck(cfg, selector)})\nor {cfg.on_job}\n({overdue(cfg, selector)})"


def many_stuck(cfg: Config, selector: str) -> str:
    """Targets with at least `many_stuck_jobs` jobs stuck or overdue: one alert for the target."""
    by = ", ".join(cfg.target_keys)
    return f"count by ({by}) (\n{stuck_or_overdue_jobs(cfg, selector)}\n) >= {cfg.many_stuck_jobs}"


def unless_many_stuck(cfg: Config, selector: str) -> str:
    """The clause that holds back a per-job stuck or overdue alert while its target's is firing."""
    return f"unless {cfg.on_target}\n({many_stuck(cfg, selector)})"


def failed_jobs(cfg: Config, selector: str, operator_only: bool = True) -> str:
    """Failed jobs with their reason and cause; `operator_only` leaves out those the end user
    must fix (a wrong password, an expired MFA): they page no operator."""
    failed = cfg.merged("{} == 1".format(series(catalogue.JOB_STATUS.name, selector, 'status="failed"')))
    error = cfg.merged(
        series(catalogue.JOB_ERROR_INFO.name, selector, *((NOT_USER,) if operator_only else ()))
    )
    every_error = cfg.merged(series(catalogue.JOB_ERROR_INFO.name, selector))
    # Reason and cause join in where the exporter knows them; a failed job without them still counts.
    return (
        f"{failed}\n  * {cfg.on_job} group_left(reason, cause) {error}\n"
        f"or {cfg.on_job}\n  ({failed} unless {cfg.on_job} {every_error})"
    )


def records_failing(cfg: Config, selector: str, for_user: bool = False) -> str:
    """Jobs failing on many records; the records' cause (asyncjob_job_error_info of reason
    record_errors) decides whose: the application's data (cause="user") pages no operator."""
    users = cfg.merged(series(catalogue.JOB_ERROR_INFO.name, selector, USER))
    join = "and" if for_user else "unless"
    ratio = cfg.merged(series(RECORDS_FAILED_RATIO, selector))
    return f"{ratio} > {cfg.records_failed_ratio:g}\n  {join} {cfg.on_job} {users}"


def _failure_rate(cfg: Config, selector: str, causes: str, ratio: float) -> str:
    """Jobs of one target and job_type that finished over the window, and the share of them that
    failed for `causes`, past `ratio` on at least `failure_min_finished` jobs. Counted across the
    replicas: each counts the jobs it works, so the share is the sum of their failures over the
    sum of their finished jobs (a ratio per replica would page once per replica, each on its
    share, and move when a job's shard does)."""
    by = ", ".join((*cfg.target_keys, "job_type"))
    failed = f"sum by ({by}) ({series(failed_increase(cfg), selector, causes)})"
    finished = f"sum by ({by}) ({series(finished_increase(cfg), selector)})"
    return (
        f"{failed}\n/ on({by}) {finished} > {ratio:g}\nand on({by}) {finished} >= {cfg.failure_min_finished}"
    )


def failure_rate_high(cfg: Config, selector: str) -> str:
    """Failures an operator must act on (provider or unknown cause) over every finished job."""
    return _failure_rate(cfg, selector, NOT_USER, cfg.failure_ratio)


def failed_paged(cfg: Config, selector: str) -> str:
    """Failed jobs that page one by one: those the end user must fix never do, and those the
    provider failed are held back while their target's failure rate is high (that alert pages
    once for the outage; the jobs stay listed on the pages)."""
    provider = cfg.merged(series(catalogue.JOB_ERROR_INFO.name, selector, 'cause="provider"'))
    return (
        f"(\n{failed_jobs(cfg, selector)}\n)\nunless {cfg.on_job}\n"
        f"  ({provider}\n  and {cfg.on_target}\n  ({failure_rate_high(cfg, selector)}))"
    )


def user_failure_rate_high(cfg: Config, selector: str) -> str:
    """Failures the end users must act on (wrong credentials, expired MFA, lapsed consent)."""
    return _failure_rate(cfg, selector, USER, cfg.user_failure_ratio)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _regex_escape(value: str) -> str:
    return "".join("\\\\" + char if char in r".^$*+?()[]{}|\\" else char for char in value)


def step_slow(cfg: Config, selector: str) -> str:
    name = step_p95(cfg)
    overrides = sorted(cfg.step_slow_seconds_by_step.items())
    branches = [
        f"{series(name, selector, 'step=' + _quote(step))} > {seconds:g}" for step, seconds in overrides
    ]
    others = "|".join(_regex_escape(step) for step, _ in overrides)
    rest = series(name, selector, f'step!~"{others}"') if others else series(name, selector)
    branches.append(f"{rest} > {cfg.step_slow_seconds:g}")
    return "\nor ".join(branches)


def target_down(cfg: Config, selector: str) -> str:
    """A target some replica cannot poll: one alert for the target, whichever replica fails."""
    up = series(catalogue.TARGET_UP.name, selector)
    if not cfg.replica_labels:
        return f"{up} == 0"
    return f"min without({', '.join(cfg.replica_labels)}) ({up}) == 0"


def seconds_since_successful_poll(cfg: Config, selector: str) -> str:
    return f"time() - {series(catalogue.LAST_SUCCESSFUL_POLL.name, selector)}"


def polling_stale(cfg: Config, selector: str) -> str:
    interval = cfg.merged(series(catalogue.TARGET_POLL_INTERVAL.name, selector))
    since = cfg.merged(seconds_since_successful_poll(cfg, selector))
    return f"{since}\n  > {cfg.on_target} ({cfg.polling_stale_intervals} * {interval})"


def exporter_down(cfg: Config, selector: str) -> str:
    up = series("up", selector)
    return f"{up} == 0\nor absent({up})"


def cluster_shards_unowned(cfg: Config, selector: str) -> str:
    """Virtual shards of a cluster that no replica holds: the shards the cluster has (every
    replica exports the same count) less those its replicas hold together. Empty where nothing
    exports the cluster's series (one process with its state file)."""
    replicas = ", ".join(cfg.cluster_replica_labels)
    shards = series(catalogue.CLUSTER_SHARDS.name, selector)
    held = series(catalogue.CLUSTER_SHARDS_HELD.name, selector)
    return f"max without({replicas}) ({shards})\n  - sum without({replicas}) ({held})"


def tracking_cap_reached(cfg: Config, selector: str) -> str:
    by = ", ".join(cfg.target_labels)
    dropped = series(catalogue.JOBS_DROPPED.name, selector, 'reason="cap"')
    return f"sum by ({by}) (increase({dropped}[{cfg.tracking_cap_window}])) > 0"


def _unless_closed(cfg: Config, selector: str) -> str:
    closed = series(catalogue.CONNECTION_STATUS.name, selector, 'status=~"(?i)closed"')
    on = f"on({', '.join((*cfg.target_labels, 'connection_id'))})"
    return f"unless {on} ({closed} == 1)"


def seconds_since_connection_sync(cfg: Config, selector: str) -> str:
    return f"time() - {series(catalogue.CONNECTION_LAST_SUCCESS.name, selector)}"


def connection_sync_stale(cfg: Config, selector: str, for_user: bool = False) -> str:
    """Connections without a successful sync for too long; those only their end user can make
    synchronise again (asyncjob_connection_awaiting_user) go to the application team instead."""
    on = f"on({', '.join((*cfg.target_labels, 'connection_id'))})"
    waiting = series(catalogue.CONNECTION_AWAITING_USER.name, selector)
    join = "and" if for_user else "unless"
    return (
        f"({seconds_since_connection_sync(cfg, selector)}) > {cfg.connection_sync_stale_seconds}\n"
        f"{_unless_closed(cfg, selector)}\n{join} {on} ({waiting} == 1)"
    )


def source_missing(cfg: Config, selector: str) -> str:
    """Seconds a configured source has answered 404 (in the exporter's current run)."""
    return cfg.merged(f"time() - {series(catalogue.SOURCE_MISSING_SINCE.name, selector)}")


def state_undocumented(cfg: Config, selector: str) -> str:
    return f"{series(catalogue.JOBS_UNDOCUMENTED.name, selector)} > 0"


def seconds_until_consent_expiry(cfg: Config, selector: str) -> str:
    return f"{series(catalogue.CHANNEL_CONSENT_EXPIRY.name, selector)} - time()"


def consent_expiring(cfg: Config, selector: str) -> str:
    # Includes consents that already lapsed: those need the end user's SCA just as much.
    return (
        f"({seconds_until_consent_expiry(cfg, selector)}) < {cfg.consent_expiry_warning_days * 86400}\n"
        f"{_unless_closed(cfg, selector)}"
    )


def awaiting_user(cfg: Config, selector: str) -> str:
    waiting = cfg.merged(f"{series(catalogue.JOB_AWAITING_USER.name, selector)} == 1")
    unfinished = cfg.merged(f"{series(catalogue.JOB_STATUS.name, selector, UNFINISHED)} == 1")
    since = cfg.merged(f"time() - {series(catalogue.JOB_LAST_PROGRESS.name, selector)}")
    return f"{since}\n  and {cfg.on_job} {waiting}\n  and {cfg.on_job} {unfinished}"
