"""Every threshold, selector and URL of the shipped alerts and dashboards, in one place.

Edit a value here, run `python dashboards/generate.py`, and commit the regenerated files.
Per-target thresholds (stuck after, max duration, poll interval) are not here: the exporter
exports them as metrics from its own config, so one rule serves every target.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from exporter.config.slos import SLO, duration

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(value: str) -> float:
    """Seconds of a Prometheus duration (`5m`, `1h30m`, `0m`)."""
    text, total, pos = value.strip(), 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h")
    return total


@dataclass(frozen=True)
class Config:
    # Selects the exporter's series by the scrape job; the only place that names the job.
    exporter_selector: str = 'job=~"asyncjob.*"'
    # The labels that identify one exporter target across all its series.
    target_labels: tuple[str, ...] = ("job", "instance", "target")
    # The labels that name the exporter process rather than what it watches: replicas taking
    # over each other's jobs (a restart on another pod, --shard resharding, a cluster's lease
    # moving) export the same job under another instance and pod. Per-job and per-target alerts
    # aggregate them away on both sides of every join, so a job moving between replicas stays
    # one alert, with its activeAt, and two replicas exporting the same threshold match once.
    replica_labels: tuple[str, ...] = ("instance", "pod")
    # keep_firing_for of the per-job alerts: a firing page rides out the gap while its job moves
    # to another replica. At least lease_ttl (15s) + 2 poll intervals + 2 scrape intervals.
    handover_grace: str = "2m"

    runbook_base_url: str = (
        "https://github.com/asyncjob-exporter/asyncjob-exporter/blob/main/docs/runbooks.md"
    )
    grafana_url: str = "http://localhost:3000"
    # Where people open the exporter's job pages (the exporter's --web.external-url: an ingress,
    # a proxy, a port-forward; with replicas, their Service): alerts link to
    # <external_url>/jobs/<target>/<id>. Unset, they link to <job_page_scheme>://<instance>/...,
    # the address Prometheus scraped (for alerts without the replica labels, that of the replica
    # exporting the job when the alert is rendered), which opens only where that address is
    # reachable (not a pod IP or a compose service name from a laptop).
    external_url: str | None = None
    job_page_scheme: str = "http"
    overview_uid: str = "asyncjob-overview"
    job_uid: str = "asyncjob-job"

    # AsyncJobStuck / AsyncJobOverdue: the thresholds come from the exporter; `for` only rides
    # out a single late poll.
    stuck_for: str = "5m"
    overdue_for: str = "5m"
    # AsyncJobManyStuck: this many of one target's jobs stuck or overdue page once, for the
    # target; the per-job AsyncJobStuck / AsyncJobOverdue are held back meanwhile (the jobs
    # stay listed on the exporter's pages).
    many_stuck_jobs: int = 10
    many_stuck_for: str = "5m"

    # AsyncJobFailed: long enough for a mass failure to show in AsyncJobFailureRateHigh's
    # ratio, which then holds back the per-job pages of the provider's failures.
    failed_for: str = "2m"

    # AsyncJobFailureRateHigh: share of finished jobs that failed, per target and job_type.
    failure_ratio: float = 0.25
    failure_window: str = "1h"
    failure_min_finished: int = 5
    failure_for: str = "15m"
    # AsyncJobUserFailureRateHigh (info): share of finished jobs that failed for their end user
    # (cause="user"): for the application team, never an operator page.
    user_failure_ratio: float = 0.25

    # AsyncJobRecordsFailing: share of one job's records that failed (AsyncJobUserRecordsFailing,
    # info, when the records are the application's or end user's data to fix).
    records_failed_ratio: float = 0.05
    records_failed_for: str = "5m"

    # AsyncJobStepSlow: p95 of a step's duration over the window, per target, job_type and step.
    step_window: str = "1h"
    step_slow_seconds: float = 900
    step_slow_seconds_by_step: dict[str, float] = field(
        default_factory=lambda: {"retrieve-transactions": 1800, "create-report": 1800}
    )
    step_slow_for: str = "15m"

    target_down_for: str = "5m"
    # AsyncJobPollingStale: no successful poll for this many of the target's poll intervals.
    polling_stale_intervals: int = 3
    polling_stale_for: str = "5m"
    exporter_down_for: str = "5m"

    tracking_cap_window: str = "15m"

    # AsyncJobSourceMissing: a configured source (a Basiq user, an Oxlin queue, a list URL) has
    # answered 404 for this long.
    source_missing_for: str = "15m"
    # AsyncJobStateUndocumented (info): jobs in a state their provider does not document.
    state_undocumented_for: str = "5m"

    # Oxlin: a connection that has not synchronised successfully for this long (for the
    # application team instead, AsyncJobUserConnectionSyncStale, when only its end user can act).
    connection_sync_stale_seconds: int = 36 * 3600
    connection_sync_stale_for: str = "15m"
    # Oxlin PSD2 channels: warn this many days before the consent lapses (and after).
    consent_expiry_warning_days: int = 7
    consent_expiry_for: str = "15m"

    awaiting_user_for: str = "15m"

    # The exporter config's cluster.lease_ttl (replicas sharing PostgreSQL through state_url):
    # AsyncJobClusterShardsUnowned fires when virtual shards stay held by no replica for two of
    # them, longer than a replica that dies takes to lose its leases to the others.
    cluster_lease_ttl: str = "15s"
    # The exporters are replicas of a cluster (state_url): any of them serves every job's page,
    # so the alerts link to external_url (their Service or ingress), which is then required: a
    # replica's own address would stop answering when it dies.
    cluster: bool = False

    severity: dict[str, str] = field(
        default_factory=lambda: {
            "AsyncJobFailed": "warning",
            "AsyncJobStuck": "warning",
            "AsyncJobOverdue": "warning",
            "AsyncJobManyStuck": "critical",
            "AsyncJobFailureRateHigh": "critical",
            "AsyncJobUserFailureRateHigh": "info",
            "AsyncJobRecordsFailing": "warning",
            "AsyncJobUserRecordsFailing": "info",
            "AsyncJobStepSlow": "warning",
            "AsyncJobTargetDown": "critical",
            "AsyncJobPollingStale": "warning",
            "AsyncJobExporterDown": "critical",
            "AsyncJobTrackingCapReached": "warning",
            "AsyncJobSourceMissing": "warning",
            "AsyncJobStateUndocumented": "info",
            "AsyncJobConnectionSyncStale": "warning",
            "AsyncJobUserConnectionSyncStale": "info",
            # The end user must renew the consent: for the application team, never a page.
            "AsyncJobConsentExpiring": "info",
            "AsyncJobAwaitingUser": "info",
            # Shards no replica holds: their jobs are neither polled nor exported.
            "AsyncJobClusterShardsUnowned": "critical",
            # Job objectives (slos): the fast burn pages, the slow one is a ticket.
            "AsyncJobSLOBurnFast": "critical",
            "AsyncJobSLOBurnSlow": "warning",
        }
    )

    # Job objectives, the exporter config's `slos:` list (docs/slos.md): with any, `mixin` writes
    # their rules, tests and a dashboard each. None: the files above, unchanged.
    slos: tuple[SLO, ...] = ()
    # Divides every SLO window (alert windows and objectives' own), for tests and demonstrations.
    slo_windows_divisor: int = 1

    @property
    def target_keys(self) -> tuple[str, ...]:
        """The labels of a target whichever replica exports it: `target_labels` without the
        replica labels."""
        return tuple(name for name in self.target_labels if name not in self.replica_labels)

    @property
    def on_target(self) -> str:
        """The vector-matching clause that joins a series to its target's threshold metrics."""
        return f"on({', '.join(self.target_keys)})"

    @property
    def on_job(self) -> str:
        """The vector-matching clause that joins two series of the same tracked job."""
        return f"on({', '.join((*self.target_keys, 'job_id'))})"

    @property
    def on_job_in_replica(self) -> str:
        """Joins two series of one job as one replica exports them (the recording rules: one
        replica's series stay together, whatever another exports meanwhile)."""
        return f"on({', '.join((*self.target_labels, 'job_id'))})"

    @property
    def cluster_unowned_for(self) -> str:
        """`for` of AsyncJobClusterShardsUnowned: two lease TTLs, in whole seconds."""
        return duration(math.ceil(2 * seconds(self.cluster_lease_ttl)))

    @property
    def cluster_replica_labels(self) -> tuple[str, ...]:
        """The labels that tell a cluster's replicas apart: the replica labels, else `instance`
        (the cluster alert adds up its replicas' shards whatever the per-job alerts do)."""
        return self.replica_labels or ("instance",)

    def merged(self, expr: str) -> str:
        """`expr` with the replica labels aggregated away: one series per job (or target)
        however many replicas export it, the same labels whichever does. Without replica labels,
        `expr` in parentheses: it keeps its precedence wherever it goes (`a == 1` before a `*`)."""
        if not self.replica_labels:
            return f"({expr})"
        return f"max without({', '.join(self.replica_labels)}) ({expr})"


CONFIG = Config()
