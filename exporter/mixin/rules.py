"""The Prometheus rule groups: recording rules first in each group, then the alerts reading them.

A recording rule sits in the same group as the alerts that read it: rules of one group run in
order, so an alert never sees the previous evaluation's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from exporter import catalogue

from . import queries as q
from .config import Config


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    duration: str
    summary: str
    description: str
    per_job: bool  # links to the job drill-down dashboard rather than the overview
    # Only the end user can act (a one-time code, a consent): labelled cause="user", so
    # Alertmanager can route it to the application team rather than an operator.
    for_end_user: bool = False
    # Its expression aggregates the replica labels away (Config.replica_labels).
    merged: bool = False
    # A job's page: keep_firing_for rides out the job moving to another replica.
    handover: bool = False


def _instance_param(cfg: Config, merged: bool = True) -> str:
    # Alerts that aggregate the replicas away link to every instance (Grafana's All).
    if merged and "instance" in cfg.replica_labels:
        return ""
    return "&var-instance={{ $labels.instance }}"


def _job_link(cfg: Config) -> str:
    return (
        f"{cfg.grafana_url}/d/{cfg.job_uid}/asyncjob-job?var-job={{{{ $labels.job }}}}"
        f"{_instance_param(cfg)}&var-target={{{{ $labels.target }}}}"
        "&var-job_id={{ $labels.job_id }}"
    )


def _exporting_instance(cfg: Config, job: bool) -> str:
    """The instance that exports the job (or the target) when Prometheus renders the alert: the
    alert itself carries no replica label, so the annotation asks for it."""
    names = (*cfg.target_keys, *(("job_id",) if job else ()))
    # A job's own series (a dozen), or a threshold every replica polling the target exports.
    metric = "asyncjob_job_.+" if job else catalogue.TARGET_STUCK_THRESHOLD.name
    selector = ", ".join((f'__name__=~"{metric}"', *(f"{name}=%q" for name in names)))
    args = " ".join(f"$labels.{name}" for name in names)
    return (
        f"{{{{ with printf `{{{selector}}}` {args} | query }}}}"
        '{{ . | first | label "instance" }}{{ end }}'
    )


def _exporter(cfg: Config, job: bool = True) -> str:
    """The exporter's pages: under its external URL when the mixin names it, else at the address
    Prometheus scraped (for alerts without the instance label, that of a replica exporting the
    job now, looked up when the alert is rendered)."""
    if cfg.external_url:
        return cfg.external_url
    if "instance" in cfg.replica_labels:
        return f"{cfg.job_page_scheme}://{_exporting_instance(cfg, job)}"
    return f"{cfg.job_page_scheme}://{{{{ $labels.instance }}}}"


def job_page(cfg: Config) -> str:
    """The job's page on the exporter that reported it: its error text and timeline."""
    return f"{_exporter(cfg)}/jobs/{{{{ $labels.target }}}}/{{{{ $labels.job_id | urlquery }}}}"


def _jobs_list(cfg: Config) -> str:
    """The target's list of jobs on the exporter that reported them (filters to append)."""
    return f"{_exporter(cfg, job=False)}/jobs?target={{{{ $labels.target | urlquery }}}}"


def _overview_link(cfg: Config, merged: bool) -> str:
    return (
        f"{cfg.grafana_url}/d/{cfg.overview_uid}/asyncjob-overview?var-job={{{{ $labels.job }}}}"
        f"{_instance_param(cfg, merged)}&var-target={{{{ $labels.target }}}}"
    )


JOB = "job {{ $labels.job_id }} on target {{ $labels.target }}"


def job_alerts(cfg: Config, sel: str) -> list[Alert]:
    return [
        Alert(
            "AsyncJobFailed",
            q.failed_paged(cfg, sel),
            cfg.failed_for,
            "An asynchronous job failed, and not for its end user.",
            f"The provider reports {JOB} as failed"
            "{{ with $labels.reason }} with reason {{ . }}{{ end }}"
            "{{ with $labels.cause }} (cause: {{ . }}"
            '{{ if eq . "provider" }}: the provider or the institution failed, retry later'
            '{{ else if eq . "unknown" }}: nobody knows who must act; read the message{{ end }})'
            "{{ end }}. Its message and timeline: "
            f"{job_page(cfg)}",
            per_job=True,
            merged=True,
            handover=True,
        ),
        Alert(
            "AsyncJobStuck",
            f"{q.stuck_not_overdue(cfg, sel)}\n{q.unless_many_stuck(cfg, sel)}",
            cfg.stuck_for,
            "An asynchronous job has made no progress for longer than its target allows.",
            f"The {JOB} has made no progress for {{{{ $value | humanizeDuration }}}}, "
            "longer than the target's stuck threshold.",
            per_job=True,
            merged=True,
            handover=True,
        ),
        Alert(
            "AsyncJobOverdue",
            f"{q.overdue(cfg, sel)}\n{q.unless_many_stuck(cfg, sel)}",
            cfg.overdue_for,
            "An asynchronous job has been running for longer than its target's maximum duration.",
            f"The {JOB} has been running for {{{{ $value | humanizeDuration }}}}, "
            "longer than the target's max duration.",
            per_job=True,
            merged=True,
            handover=True,
        ),
        Alert(
            "AsyncJobRecordsFailing",
            q.records_failing(cfg, sel),
            cfg.records_failed_for,
            "An asynchronous job is failing on many of its records.",
            f"{{{{ $value | humanizePercentage }}}} of the records of {JOB} failed "
            f"(threshold {cfg.records_failed_ratio:.0%}).",
            per_job=True,
            merged=True,
            handover=True,
        ),
        Alert(
            "AsyncJobUserRecordsFailing",
            q.records_failing(cfg, sel, for_user=True),
            cfg.records_failed_for,
            "An asynchronous job is refusing many records of the application's data.",
            f"{{{{ $value | humanizePercentage }}}} of the records of {JOB} failed "
            f"(threshold {cfg.records_failed_ratio:.0%}) for reasons in the data sent (e.g. a case "
            "that does not exist): for the application team, not an operator.",
            per_job=True,
            merged=True,
            handover=True,
            for_end_user=True,
        ),
        Alert(
            "AsyncJobAwaitingUser",
            q.awaiting_user(cfg, sel),
            cfg.awaiting_user_for,
            "An asynchronous job is waiting for its end user.",
            f"The {JOB} has been waiting for the end user (a one-time code, a re-authentication "
            "or a consent) for {{ $value | humanizeDuration }}; no operator action is needed.",
            per_job=True,
            merged=True,
            handover=True,
            for_end_user=True,
        ),
    ]


def job_count_alerts(cfg: Config, sel: str) -> list[Alert]:
    """Target-level alerts counted from the per-job records (so in the same group as those)."""
    return [
        Alert(
            "AsyncJobManyStuck",
            q.many_stuck(cfg, sel),
            cfg.many_stuck_for,
            "Many asynchronous jobs of one target are stuck or overdue.",
            "{{ $value | humanize }} jobs on target {{ $labels.target }} are stuck or overdue "
            f"({cfg.many_stuck_jobs} or more page once, for the target; their own AsyncJobStuck and "
            "AsyncJobOverdue are held back meanwhile). Stuck: "
            f"{_jobs_list(cfg)}&stuck=1, overdue: {_jobs_list(cfg)}&overdue=1",
            per_job=False,
            merged=True,
            handover=True,
        ),
    ]


def aggregate_alerts(cfg: Config, sel: str) -> list[Alert]:
    return [
        Alert(
            "AsyncJobFailureRateHigh",
            q.failure_rate_high(cfg, sel),
            cfg.failure_for,
            "Many asynchronous jobs of one type are failing for reasons an operator must act on.",
            "{{ $value | humanizePercentage }} of the {{ $labels.job_type }} jobs on target "
            f"{{{{ $labels.target }}}} that finished in the last {cfg.failure_window} failed "
            "for the provider or for an unknown cause, not for their end users "
            f"(threshold {cfg.failure_ratio:.0%}).",
            per_job=False,
            merged=True,
        ),
        Alert(
            "AsyncJobUserFailureRateHigh",
            q.user_failure_rate_high(cfg, sel),
            cfg.failure_for,
            "Many asynchronous jobs of one type are failing for their end users.",
            "{{ $value | humanizePercentage }} of the {{ $labels.job_type }} jobs on target "
            f"{{{{ $labels.target }}}} that finished in the last {cfg.failure_window} failed "
            "for a reason only their end users can fix (credentials, MFA, consent) "
            f"(threshold {cfg.user_failure_ratio:.0%}); for the application team, not an operator.",
            per_job=False,
            merged=True,
            for_end_user=True,
        ),
        Alert(
            "AsyncJobStepSlow",
            q.step_slow(cfg, sel),
            cfg.step_slow_for,
            "A step of asynchronous jobs is slower than usual.",
            "Step {{ $labels.step }} of {{ $labels.job_type }} jobs on target {{ $labels.target }} "
            f"took {{{{ $value | humanizeDuration }}}} at p95 over the last {cfg.step_window}.",
            per_job=False,
        ),
        Alert(
            "AsyncJobTrackingCapReached",
            q.tracking_cap_reached(cfg, sel),
            "0m",
            "The exporter is dropping jobs because a target tracks as many as it may.",
            "Target {{ $labels.target }} dropped {{ $value | humanize }} jobs in the last "
            f"{cfg.tracking_cap_window} because it already tracks max_jobs_per_target jobs.",
            per_job=False,
        ),
        Alert(
            "AsyncJobStateUndocumented",
            q.state_undocumented(cfg, sel),
            cfg.state_undocumented_for,
            "Asynchronous jobs are in a state their provider does not document.",
            "{{ $value | humanize }} {{ $labels.job_type }} jobs on target {{ $labels.target }} are "
            'in state "{{ $labels.raw_status }}", which the exporter does not know: they count as '
            "unknown and are polled until they end. Map it (a generic target's status_map) or "
            "report it.",
            per_job=False,
        ),
    ]


def target_alerts(cfg: Config, sel: str) -> list[Alert]:
    return [
        Alert(
            "AsyncJobTargetDown",
            q.target_down(cfg, sel),
            cfg.target_down_for,
            "The exporter cannot poll a target's API.",
            "The exporter{{ with $labels.instance }} on {{ . }}{{ end }} has failed to poll target "
            "{{ $labels.target }} "
            f"for more than {cfg.target_down_for} ({catalogue.TARGET_UP.name} is {{{{ $value }}}}).",
            per_job=False,
            merged=True,
        ),
        Alert(
            "AsyncJobSourceMissing",
            q.source_missing(cfg, sel),
            cfg.source_missing_for,
            "A configured source of jobs no longer exists at the provider.",
            "Target {{ $labels.target }}'s {{ $labels.source }} has answered 404 for "
            "{{ $value | humanizeDuration }}: deleted at the provider, or a wrong id in the config. "
            "Nothing of it is monitored until it answers again.",
            per_job=False,
            merged=True,
        ),
        Alert(
            "AsyncJobPollingStale",
            q.polling_stale(cfg, sel),
            cfg.polling_stale_for,
            "A target has not been polled successfully for several poll intervals.",
            "The exporter{{ with $labels.instance }} on {{ . }}{{ end }} last polled target "
            "{{ $labels.target }} "
            "successfully {{ $value | humanizeDuration }} ago, more than "
            f"{cfg.polling_stale_intervals} of its poll intervals.",
            per_job=False,
            merged=True,
        ),
        Alert(
            "AsyncJobExporterDown",
            q.exporter_down(cfg, sel),
            cfg.exporter_down_for,
            "Prometheus cannot scrape the asyncjob exporter.",
            "Prometheus has not scraped the asyncjob exporter{{ with $labels.instance }} on {{ . }}"
            "{{ end }}{{ with $labels.job }} (scrape job {{ . }}){{ end }} for "
            f"{cfg.exporter_down_for}: no job of any target is watched.",
            per_job=False,
        ),
    ]


def oxlin_alerts(cfg: Config, sel: str) -> list[Alert]:
    return [
        Alert(
            "AsyncJobConnectionSyncStale",
            q.connection_sync_stale(cfg, sel),
            cfg.connection_sync_stale_for,
            "A bank connection has not synchronised successfully for too long.",
            "Connection {{ $labels.connection_id }} on target {{ $labels.target }} last "
            "synchronised successfully {{ $value | humanizeDuration }} ago.",
            per_job=False,
        ),
        Alert(
            "AsyncJobUserConnectionSyncStale",
            q.connection_sync_stale(cfg, sel, for_user=True),
            cfg.connection_sync_stale_for,
            "A bank connection has not synchronised for too long, and only its end user can fix it.",
            "Connection {{ $labels.connection_id }} on target {{ $labels.target }} last "
            "synchronised successfully {{ $value | humanizeDuration }} ago; its last sync failed "
            "for its end user (credentials, consent): for the application team, not an operator.",
            per_job=False,
            for_end_user=True,
        ),
        Alert(
            "AsyncJobConsentExpiring",
            q.consent_expiring(cfg, sel),
            cfg.consent_expiry_for,
            "A PSD2 consent of a bank connection expires soon or has expired.",
            "The consent of channel {{ $labels.channel }} of connection {{ $labels.connection_id }} "
            "on target {{ $labels.target }} {{ if lt $value 0.0 }}has expired"
            "{{ else }}expires in {{ $value | humanizeDuration }}{{ end }}; "
            "the end user must renew it with strong customer authentication.",
            per_job=False,
            for_end_user=True,
        ),
    ]


def cluster_alerts(cfg: Config, sel: str) -> list[Alert]:
    """The cluster's own health (replicas sharing PostgreSQL); nothing fires for one process,
    which exports none of the cluster's series."""
    return [
        Alert(
            "AsyncJobClusterShardsUnowned",
            f"{q.cluster_shards_unowned(cfg, sel)}\n> 0",
            cfg.cluster_unowned_for,
            "Virtual shards of the exporter's cluster are held by no replica: their jobs are not polled.",
            "{{ $value | humanize }} virtual shards of the cluster{{ with $labels.job }} scraped as "
            "{{ . }}{{ end }} have been held by no replica for more than "
            f"{cfg.cluster_unowned_for} (two lease TTLs of {cfg.cluster_lease_ttl}): their jobs are "
            "neither polled nor exported until a replica claims them.",
            per_job=False,
            merged=True,
        ),
    ]


def _recording(record: str, expr: str) -> dict[str, Any]:
    return {"record": record, "expr": expr}


def _alerting(cfg: Config, alert: Alert) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": alert.name, "expr": alert.expr}
    if alert.duration != "0m":
        rule["for"] = alert.duration
    if alert.handover and cfg.replica_labels:
        rule["keep_firing_for"] = cfg.handover_grace
    rule["labels"] = {"severity": cfg.severity[alert.name]}
    if alert.for_end_user:
        rule["labels"]["cause"] = "user"
    rule["annotations"] = {
        "summary": alert.summary,
        "description": alert.description,
        "runbook_url": f"{cfg.runbook_base_url}#{alert.name.lower()}",
        "dashboard_url": _job_link(cfg) if alert.per_job else _overview_link(cfg, alert.merged),
    }
    if alert.per_job:
        rule["annotations"]["job_url"] = job_page(cfg)
    return rule


def rule_groups(cfg: Config) -> dict[str, Any]:
    """The whole rule file, as the dict that becomes alerts/asyncjob.rules.yml."""
    sel = cfg.exporter_selector
    jobs = [
        _recording(q.SECONDS_SINCE_PROGRESS, q.seconds_since_progress_source(cfg, sel)),
        _recording(q.RUNTIME, q.runtime_source(cfg, sel)),
        _recording(q.RECORDS_FAILED_RATIO, q.records_failed_ratio_source(cfg, sel)),
        *(_alerting(cfg, alert) for alert in job_alerts(cfg, sel)),
        *(_alerting(cfg, alert) for alert in job_count_alerts(cfg, sel)),
    ]
    aggregates = [
        _recording(q.finished_increase(cfg), q.finished_increase_source(cfg, sel)),
        _recording(q.failed_increase(cfg), q.failed_increase_source(cfg, sel)),
        _recording(q.failure_ratio(cfg), q.failure_ratio_source(cfg, sel)),
        _recording(q.step_p95(cfg), q.step_p95_source(cfg, sel)),
        *(_alerting(cfg, alert) for alert in aggregate_alerts(cfg, sel)),
    ]
    return {
        "groups": [
            {"name": "asyncjob.jobs", "rules": jobs},
            {"name": "asyncjob.aggregates", "rules": aggregates},
            {"name": "asyncjob.targets", "rules": [_alerting(cfg, a) for a in target_alerts(cfg, sel)]},
            {"name": "asyncjob.oxlin", "rules": [_alerting(cfg, a) for a in oxlin_alerts(cfg, sel)]},
            {"name": "asyncjob.cluster", "rules": [_alerting(cfg, a) for a in cluster_alerts(cfg, sel)]},
        ]
    }


def alert_names(cfg: Config) -> list[str]:
    sel = cfg.exporter_selector
    alerts = [
        *job_alerts(cfg, sel),
        *job_count_alerts(cfg, sel),
        *aggregate_alerts(cfg, sel),
        *target_alerts(cfg, sel),
    ]
    return [alert.name for alert in (*alerts, *oxlin_alerts(cfg, sel), *cluster_alerts(cfg, sel))]


class _RuleDumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line PromQL reads best as a literal block.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RuleDumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """YAML for rule files (ours and the PrometheusRule wrapping them): keys in order, PromQL
    on one line unless it has several."""
    return yaml.dump(data, Dumper=_RuleDumper, sort_keys=False, width=1000)
