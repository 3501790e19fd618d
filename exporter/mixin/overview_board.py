"""The fleet overview dashboard: targets and polling, jobs by status and outcome, who must act,
steps, the jobs that need attention now, and Oxlin's connections, for the job, instance and
target chosen in its variables.

Every query goes through `queries.series` with a selector of the dashboard's variables, so each
one matches `job` and `instance`, and every rate uses `$__rate_interval`.
"""

from __future__ import annotations

from typing import Any

from exporter import catalogue

from . import queries as q
from .config import Config
from .grafana import (
    AGGREGATES,
    RATE,
    SCRAPE,
    TARGETS,
    Panel,
    Query,
    Row,
    dashboard,
    stacked,
    sum_rate,
    up_down,
)


def overview(cfg: Config) -> dict[str, Any]:
    s, a = TARGETS, AGGREGATES

    def quantile(phi: float, metric: str, by: str) -> str:
        buckets = q.series(metric, a)
        return f"histogram_quantile({phi}, sum by ({by}, le) (rate({buckets}[{RATE}])))"

    items: list[Panel | Row] = [
        Row("Targets"),
        Panel(
            "stat",
            "Targets up",
            "1 while the exporter's last poll of the target's API succeeded.",
            [Query(q.series(catalogue.TARGET_UP.name, s), "{{target}}", instant=True)],
            unit="none",
            width=6,
            field_config=up_down(),
        ),
        Panel(
            "timeseries",
            "Time since last successful poll",
            "Seconds since the exporter last polled each target successfully, and its poll interval.",
            [
                Query(q.seconds_since_successful_poll(cfg, s), "{{target}}"),
                Query(q.series(catalogue.TARGET_POLL_INTERVAL.name, s), "{{target}} poll interval"),
            ],
            unit="s",
            width=6,
        ),
        Panel(
            "timeseries",
            "Poll errors by reason",
            "Failed polls of the providers' APIs per second, by reason "
            "(timeout, connect, http_4xx, http_429, http_5xx, bad_body, auth, id_mismatch).",
            [
                Query(
                    sum_rate("target, reason", catalogue.POLL_ERRORS.name, s),
                    "{{target}} {{reason}}",
                )
            ],
            unit="reqps",
            width=6,
        ),
        Panel(
            "timeseries",
            "Poll requests and p95 duration",
            "Requests the exporter sends to each provider, and how long the slowest 5% take.",
            [
                Query(
                    sum_rate("target", catalogue.POLL_REQUESTS.name, s),
                    "{{target}} requests/s",
                ),
                Query(
                    f"histogram_quantile(0.95, sum by (target, le) "
                    f"(rate({q.series(catalogue.POLL_DURATION.bucket, s)}[{RATE}])))",
                    "{{target}} p95 seconds",
                ),
            ],
            unit="short",
            width=6,
        ),
        Row("Jobs"),
        Panel(
            "timeseries",
            "Jobs by status",
            "Jobs the exporter tracks now, by normalised status.",
            [Query(f"sum by (status) ({q.series(catalogue.JOBS.name, a)})", "{{status}}")],
            unit="short",
            width=8,
            field_config=stacked(),
        ),
        Panel(
            "timeseries",
            "Jobs finished",
            "Jobs reaching a terminal status per second, by job type and status.",
            [
                Query(
                    sum_rate("job_type, status", catalogue.JOBS_FINISHED.name, a),
                    "{{job_type}} {{status}}",
                )
            ],
            unit="ops",
            width=8,
        ),
        Panel(
            "timeseries",
            f"Failure ratio by cause ({cfg.failure_window})",
            f"Share of the jobs finished in the last {cfg.failure_window} that failed, by who must act; "
            f"AsyncJobFailureRateHigh fires above {cfg.failure_ratio:.0%} for provider and unknown causes "
            f"together, AsyncJobUserFailureRateHigh (info) above {cfg.user_failure_ratio:.0%} for the user.",
            [Query(q.series(q.failure_ratio(cfg), a), "{{target}} {{job_type}} {{cause}}")],
            unit="percentunit",
            width=8,
            field_config={"max": 1, "min": 0},
        ),
        Panel(
            "timeseries",
            "Job duration p50 / p95",
            "How long jobs take from creation to their terminal status, by job type.",
            [
                Query(quantile(0.5, catalogue.JOB_DURATION.bucket, "job_type"), "p50 {{job_type}}"),
                Query(quantile(0.95, catalogue.JOB_DURATION.bucket, "job_type"), "p95 {{job_type}}"),
            ],
            unit="s",
            width=8,
        ),
        Panel(
            "timeseries",
            "Failed jobs by reason",
            "Jobs that failed, by the provider's error code or state, and who must act.",
            [
                Query(
                    sum_rate("job_type, reason, cause", catalogue.JOBS_FAILED.name, a, "increase"),
                    "{{job_type}} {{reason}} ({{cause}})",
                )
            ],
            unit="short",
            width=8,
        ),
        Panel(
            "timeseries",
            "Failed records",
            "Share of the records processed by jobs that failed (WillSuite cases, generic records).",
            [
                Query(
                    sum_rate("target, job_type", catalogue.RECORDS_FAILED.name, a)
                    + "\n/ "
                    + sum_rate("target, job_type", catalogue.RECORDS_PROCESSED.name, a),
                    "{{target}} {{job_type}}",
                )
            ],
            unit="percentunit",
            width=8,
        ),
        Row("Who must act"),
        Panel(
            "timeseries",
            "Failures by cause",
            "Failed jobs by who must act: the end user (wrong credentials, an expired MFA, a lapsed "
            "consent: no operator is paged), the provider, or unknown.",
            [
                Query(
                    sum_rate("cause", catalogue.JOBS_FAILED.name, a, "increase"),
                    "{{cause}}",
                )
            ],
            unit="short",
            field_config=stacked(),
        ),
        Panel(
            "timeseries",
            "End-user failures by reason",
            "Failures only the end user can fix, by reason: for the application team (a login or "
            "consent flow that fails often shows here first).",
            [
                Query(
                    sum_rate("target, job_type, reason", catalogue.JOBS_FAILED.name, a, "increase", q.USER),
                    "{{target}} {{job_type}} {{reason}}",
                )
            ],
            unit="short",
        ),
        Row("Steps"),
        Panel(
            "heatmap",
            "Step duration",
            "Distribution of step durations across all tracked jobs.",
            [
                Query(
                    sum_rate("le", catalogue.STEP_DURATION.bucket, a),
                    "{{le}}",
                    heatmap=True,
                )
            ],
            unit="s",
            options={
                "calculate": False,
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "yAxis": {"axisPlacement": "left", "unit": "s"},
                "tooltip": {"show": True, "yHistogram": True},
            },
        ),
        Panel(
            "timeseries",
            f"Step duration p95 ({cfg.step_window})",
            f"p95 of each step's duration over the last {cfg.step_window}; AsyncJobStepSlow fires above "
            f"{cfg.step_slow_seconds:g}s (or the step's own threshold).",
            [Query(q.series(q.step_p95(cfg), a), "{{job_type}} {{step}}")],
            unit="s",
        ),
        Row("Jobs needing attention"),
        Panel(
            "table",
            "Stuck jobs",
            "Pending or running jobs without progress for longer than their target's stuck threshold "
            "(seconds since progress).",
            [Query(q.stuck(cfg, s), table=True)],
            unit="s",
        ),
        Panel(
            "table",
            "Overdue jobs",
            "Unfinished jobs running for longer than their target's max duration (seconds).",
            [Query(q.overdue(cfg, s), table=True)],
            unit="s",
        ),
        Panel(
            "table",
            "Failed jobs",
            "Failed jobs still tracked, with the provider's reason and who must act (cause=user pages "
            "no operator); they leave the table at retention.",
            [Query(q.failed_jobs(cfg, s, operator_only=False), table=True)],
            unit="none",
        ),
        Panel(
            "table",
            "Jobs with failed records",
            "Share of each job's records that failed.",
            [Query(f"{q.series(q.RECORDS_FAILED_RATIO, s)} > 0", table=True)],
            unit="percentunit",
        ),
        Panel(
            "table",
            "Jobs waiting for the end user",
            "Jobs waiting for an MFA code, a re-authentication or a consent: seconds since they last moved.",
            [Query(q.awaiting_user(cfg, s), table=True)],
            unit="s",
            width=24,
        ),
        Row("Oxlin connections"),
        Panel(
            "timeseries",
            "Connections by status",
            "Oxlin connections by their current status.",
            [
                Query(
                    f"count by (target, status) ({q.series(catalogue.CONNECTION_STATUS.name, s)} == 1)",
                    "{{target}} {{status}}",
                )
            ],
            unit="short",
            width=6,
            field_config=stacked(),
        ),
        Panel(
            "timeseries",
            "Queue events",
            "Events read from the Oxlin queues per second, by event type.",
            [
                Query(
                    sum_rate("target, event_type", catalogue.QUEUE_EVENTS.name, s),
                    "{{target}} {{event_type}}",
                )
            ],
            unit="ops",
            width=6,
        ),
        Panel(
            "table",
            "Time since last successful sync",
            "Seconds since each connection last synchronised successfully.",
            [Query(q.seconds_since_connection_sync(cfg, s), table=True)],
            unit="s",
            width=6,
        ),
        Panel(
            "table",
            "Consent expiry",
            "Seconds until each PSD2 channel's consent expires; negative when it already lapsed.",
            [Query(q.seconds_until_consent_expiry(cfg, s), table=True)],
            unit="s",
            width=6,
        ),
        *_cluster(cfg),
    ]
    return dashboard(
        cfg,
        cfg.overview_uid,
        "Asyncjob / Overview",
        "Asynchronous jobs of third-party APIs tracked by asyncjob-exporter: "
        "status, failures, durations, polling.",
        items,
        one_job=False,
    )


def _cluster(cfg: Config) -> list[Panel | Row]:
    """The replicas of a cluster sharing PostgreSQL (`state_url`), each about itself: empty for
    one process with its state file, which exports none of these series."""
    r = SCRAPE

    def per_replica(family: catalogue.Family) -> str:
        return sum_rate("instance", family.name, r)

    def commit_quantile(phi: float) -> str:
        buckets = q.series(catalogue.STATE_COMMIT_DURATION.bucket, r)
        return f"histogram_quantile({phi}, sum by (instance, le) (rate({buckets}[{RATE}])))"

    reachable = {
        "mappings": [
            {
                "options": {
                    "0": {"color": "red", "text": "Unreachable"},
                    "1": {"color": "green", "text": "Reachable"},
                },
                "type": "value",
            }
        ]
    }
    return [
        Row("Cluster"),
        Panel(
            "timeseries",
            "Replicas",
            "Live replicas of the cluster (state_url) as each replica sees them: they agree unless "
            "one cannot reach PostgreSQL.",
            [Query(q.series(catalogue.CLUSTER_REPLICAS.name, r), "seen by {{instance}}")],
            unit="short",
            width=6,
        ),
        Panel(
            "timeseries",
            "Shards held per instance",
            "Virtual shards each replica holds a lease on, and polls the jobs of; stacked, they reach "
            "the cluster's shards when every shard is held.",
            [Query(f"sum by (instance) ({q.series(catalogue.CLUSTER_SHARDS_HELD.name, r)})", "{{instance}}")],
            unit="short",
            width=6,
            field_config=stacked(),
        ),
        Panel(
            "timeseries",
            "Unowned shards",
            "Virtual shards held by no replica (with every instance selected): their jobs are neither "
            f"polled nor exported. AsyncJobClusterShardsUnowned fires when some stay so for "
            f"{cfg.cluster_unowned_for}, two lease TTLs.",
            [Query(q.cluster_shards_unowned(cfg, r), "{{job}}")],
            unit="short",
            width=6,
        ),
        Panel(
            "stat",
            "PostgreSQL reachable",
            "Whether each replica reaches PostgreSQL; one that cannot keeps exporting the jobs it held "
            "and polls them until its leases would lapse.",
            [Query(q.series(catalogue.CLUSTER_STATE_REACHABLE.name, r), "{{instance}}", instant=True)],
            unit="none",
            width=6,
            field_config=reachable,
        ),
        Panel(
            "timeseries",
            "Lease renewal errors, takeovers and handovers",
            "Per replica and second: lease renewals that failed, shards it claimed after another "
            "replica's lease lapsed (that replica died or froze), and shards it handed to the "
            "replica now preferred (one joined or left).",
            [
                Query(per_replica(catalogue.CLUSTER_LEASE_RENEW_ERRORS), "{{instance}} renewal errors"),
                Query(per_replica(catalogue.CLUSTER_TAKEOVERS), "{{instance}} takeovers"),
                Query(per_replica(catalogue.CLUSTER_HANDOVERS), "{{instance}} handovers"),
            ],
            unit="ops",
        ),
        Panel(
            "timeseries",
            "State commit duration p50 / p99",
            "How long each replica takes to commit a batch of state changes to PostgreSQL; a "
            "registration is answered once its batch is committed.",
            [
                Query(commit_quantile(0.5), "p50 {{instance}}"),
                Query(commit_quantile(0.99), "p99 {{instance}}"),
            ],
            unit="s",
        ),
    ]
