"""Every metric family the exporter writes on /metrics, in the order it serves them: name, type,
help text and label names, each in one place (as kube-state-metrics' family generators). The
renderers, the alert and dashboard mixin and docs/generate.py take names from here.

prometheus-client's process_* and python_* families are not listed: its collectors describe
themselves (exporter/render/scrape.py serves them as they are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Type = Literal["gauge", "counter", "histogram"]

# The series a histogram family is queried by; a counter's samples keep its `_total` name.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Family:
    """One family: what its HELP and TYPE lines say, and the labels its series carry (a
    histogram's `le` aside). `header` is those two lines, built once at import: the per-job
    renderer serves them as they are."""

    name: str
    type: Type
    help: str
    labels: tuple[str, ...] = ()
    header_text: str = field(init=False, repr=False, compare=False)
    header: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.type}\n"
        object.__setattr__(self, "header_text", text)
        object.__setattr__(self, "header", text.encode())

    @property
    def bucket(self) -> str:
        """A histogram's `_bucket` series, which quantiles and heatmaps read."""
        return f"{self.name}_bucket"

    def series_names(self) -> tuple[str, ...]:
        """The sample names this family writes."""
        if self.type == "histogram":
            return tuple(self.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        return (self.name,)


JOB = ("target", "job_id")

# Per job: rendered when a job changes (exporter/render/jobs.py).
JOB_INFO = Family(
    "asyncjob_job_info",
    "gauge",
    "Tracked job, with its provider and type. Polled on the exporter's own schedule.",
    (*JOB, "provider", "job_type"),
)
JOB_ERROR_INFO = Family(
    "asyncjob_job_error_info",
    "gauge",
    "A failed job's bounded error reason (provider's code or state), or that of the records a "
    "job refused, and who must act: user, provider, unknown.",
    (*JOB, "reason", "cause"),
)
JOB_STATUS = Family(
    "asyncjob_job_status",
    "gauge",
    "Normalised job status as a state set: 1 for the current status.",
    (*JOB, "status"),
)
JOB_PERCENT_COMPLETED = Family(
    "asyncjob_job_percent_completed",
    "gauge",
    "Completion 0-100: the provider's, else the share of finished steps.",
    JOB,
)
JOB_CREATED = Family(
    "asyncjob_job_created_timestamp_seconds", "gauge", "When the provider created the job.", JOB
)
JOB_STARTED = Family(
    "asyncjob_job_started_timestamp_seconds", "gauge", "When the job started, when known.", JOB
)
JOB_FINISHED = Family(
    "asyncjob_job_finished_timestamp_seconds", "gauge", "When the job finished, when known.", JOB
)
JOB_LAST_PROGRESS = Family(
    "asyncjob_job_last_progress_timestamp_seconds",
    "gauge",
    "Last time anything about the job moved (status, step, percent, records, provider's update time).",
    JOB,
)
JOB_STEP_STATUS = Family(
    "asyncjob_job_step_status",
    "gauge",
    "Each step's normalised status as a state set.",
    (*JOB, "step", "status"),
)
JOB_STEP_DURATION = Family(
    "asyncjob_job_step_duration_seconds",
    "gauge",
    "Observed step duration; resolution is one poll interval when the provider gives no step times.",
    (*JOB, "step"),
)
JOB_RECORDS = Family(
    "asyncjob_job_records",
    "gauge",
    "Records of the job by kind: total, affected, failed.",
    (*JOB, "kind"),
)
JOB_ATTEMPTS = Family("asyncjob_job_attempts", "gauge", "Attempts the provider reports for the job.", JOB)
JOB_AWAITING_USER = Family(
    "asyncjob_job_awaiting_user",
    "gauge",
    "1 while the job waits for its end user (MFA, consent, re-authentication): not stuck.",
    JOB,
)

PER_JOB = (
    JOB_INFO,
    JOB_ERROR_INFO,
    JOB_STATUS,
    JOB_PERCENT_COMPLETED,
    JOB_CREATED,
    JOB_STARTED,
    JOB_FINISHED,
    JOB_LAST_PROGRESS,
    JOB_STEP_STATUS,
    JOB_STEP_DURATION,
    JOB_RECORDS,
    JOB_ATTEMPTS,
    JOB_AWAITING_USER,
)

# Per target and job type: rendered at each scrape (exporter/render/aggregates.py).
JOB_TYPE = ("target", "job_type")

JOBS = Family("asyncjob_jobs", "gauge", "Jobs tracked now, by normalised status.", (*JOB_TYPE, "status"))
JOBS_UNDOCUMENTED = Family(
    "asyncjob_jobs_undocumented",
    "gauge",
    "Jobs tracked now in a state their provider does not document (status unknown), by the "
    "provider's raw status (the first 20 a target sees; later ones are other).",
    (*JOB_TYPE, "raw_status"),
)
JOBS_FINISHED = Family(
    "asyncjob_jobs_finished_total",
    "counter",
    "Jobs seen finishing, each counted once, by final status.",
    (*JOB_TYPE, "status"),
)
JOBS_FAILED = Family(
    "asyncjob_jobs_failed_total",
    "counter",
    "Failed jobs by bounded reason and who must act (user, provider, unknown), each counted once.",
    (*JOB_TYPE, "reason", "cause"),
)
JOB_DURATION = Family(
    "asyncjob_job_duration_seconds",
    "histogram",
    "Duration of finished jobs, start (else creation) to end.",
    (*JOB_TYPE, "status"),
)
STEP_DURATION = Family(
    "asyncjob_step_duration_seconds",
    "histogram",
    "Observed duration of finished steps (resolution: one poll).",
    (*JOB_TYPE, "step"),
)
RECORDS_PROCESSED = Family(
    "asyncjob_records_processed_total",
    "counter",
    "Records of finished jobs (total), each job counted once.",
    JOB_TYPE,
)
RECORDS_FAILED = Family(
    "asyncjob_records_failed_total",
    "counter",
    "Failed records of finished jobs, each job counted once.",
    JOB_TYPE,
)
JOB_RERUNS = Family(
    "asyncjob_job_reruns_total", "counter", "Reruns of failed jobs started by the exporter.", JOB_TYPE
)
# The service level objectives of `slos` (exporter/slos.py, exporter/render/slos.py).
SLO_JOBS = Family(
    "asyncjob_slo_jobs_total",
    "counter",
    "Jobs judged once for each objective of slos: result good (succeeded within its latency), "
    "bad (failed not for its end user, succeeded late, or unfinished past the latency) or user "
    "(the end user's failure or wait: outside the SLI).",
    (*JOB_TYPE, "slo", "result"),
)

# Oxlin connections, their channels and queues.
CONNECTION = ("target", "connection_id")
CHANNEL = (*CONNECTION, "channel")

CONNECTION_STATUS = Family(
    "asyncjob_connection_status",
    "gauge",
    "Oxlin connection status as a state set.",
    (*CONNECTION, "status"),
)
CONNECTION_AWAITING_USER = Family(
    "asyncjob_connection_awaiting_user",
    "gauge",
    "1 while only the end user can make the connection synchronise again (its last sync "
    "failed for them, or its consents lapsed).",
    CONNECTION,
)
CONNECTION_LAST_SUCCESS = Family(
    "asyncjob_connection_last_success_timestamp_seconds",
    "gauge",
    "Last successful synchronisation of the connection.",
    CONNECTION,
)
CHANNEL_LAST_SUCCESS = Family(
    "asyncjob_channel_last_success_timestamp_seconds",
    "gauge",
    "Last successful sync of a connection's channel.",
    CHANNEL,
)
CHANNEL_CONSENT_EXPIRY = Family(
    "asyncjob_channel_consent_expiry_timestamp_seconds",
    "gauge",
    "When a PSD2 channel's consent expires and needs the end user (SCA).",
    CHANNEL,
)
QUEUE_EVENTS = Family(
    "asyncjob_queue_events_total",
    "counter",
    "Queue events read, each once, by event type.",
    ("target", "queue", "event_type"),
)

# Per target: its health and the settings alert rules compare against.
TARGET = ("target",)

TARGET_UP = Family(
    "asyncjob_target_up", "gauge", "1 when the target's last poll cycle had no failed request.", TARGET
)
TARGET_INFO = Family(
    "asyncjob_target_info", "gauge", "Configured target and its provider.", (*TARGET, "provider")
)
TARGET_POLL_INTERVAL = Family(
    "asyncjob_target_poll_interval_seconds",
    "gauge",
    "How often the exporter polls the target, on its own schedule.",
    TARGET,
)
TARGET_STUCK_THRESHOLD = Family(
    "asyncjob_target_stuck_threshold_seconds",
    "gauge",
    "No progress for this long means stuck (stuck_after).",
    TARGET,
)
TARGET_MAX_DURATION = Family(
    "asyncjob_target_max_duration_seconds",
    "gauge",
    "Running longer than this means overdue (max_duration).",
    TARGET,
)
TARGET_MAX_JOBS = Family(
    "asyncjob_target_max_jobs", "gauge", "Cap of tracked jobs (max_jobs_per_target).", TARGET
)
TARGET_RETENTION = Family(
    "asyncjob_target_retention_seconds", "gauge", "How long finished jobs keep their series.", TARGET
)
LAST_SUCCESSFUL_POLL = Family(
    "asyncjob_last_successful_poll_timestamp_seconds",
    "gauge",
    "End of the last poll cycle without errors.",
    TARGET,
)
SOURCE_MISSING_SINCE = Family(
    "asyncjob_source_missing_since_timestamp_seconds",
    "gauge",
    "A configured source (a Basiq user, an Oxlin queue or connection, a list URL) answering "
    "404 since then (in this process): nothing of it is polled until it answers again.",
    (*TARGET, "source"),
)
POLL_DURATION = Family(
    "asyncjob_poll_duration_seconds", "histogram", "Duration of HTTP requests to the target's API.", TARGET
)
POLL_REQUESTS = Family(
    "asyncjob_poll_requests_total", "counter", "HTTP requests sent to the target's API.", TARGET
)
POLL_ERRORS = Family(
    "asyncjob_poll_errors_total",
    "counter",
    "Failed requests to the target's API by bounded reason.",
    (*TARGET, "reason"),
)
JOBS_DROPPED = Family(
    "asyncjob_jobs_dropped_total",
    "counter",
    "Jobs no longer tracked, by reason (retention, gone, cap, deleted, rerun, resharded).",
    (*TARGET, "reason"),
)

# The exporter itself: its build, its event loop, its web server, its config, its state file, the
# jobs its watchdog quarantined and the history of finished jobs.
BUILD_INFO = Family("asyncjob_exporter_build_info", "gauge", "The exporter's version.", ("version",))
EXPORTER_TASKS = Family(
    "asyncjob_exporter_tasks", "gauge", "Tasks on the exporter's event loop (flat when healthy)."
)
WEB_CONNECTIONS_REFUSED = Family(
    "asyncjob_web_connections_refused_total",
    "counter",
    "New connections refused at --web.max-connections: every open one had authenticated and was being answered.",
)
WEB_CONNECTIONS_CLOSED = Family(
    "asyncjob_web_connections_closed_total",
    "counter",
    "Connections the exporter closed before its client did, by reason: to make room at the cap "
    "(cap_not_authenticated, cap_not_reading, cap_idle), header_timeout, write_timeout.",
    ("reason",),
)
CONFIG_RELOAD_SUCCESSFUL = Family(
    "asyncjob_config_last_reload_successful", "gauge", "Whether the last config reload succeeded."
)
CONFIG_RELOAD_SUCCESS_TIMESTAMP = Family(
    "asyncjob_config_last_reload_success_timestamp_seconds", "gauge", "When the config was last loaded."
)
STATE_WRITE_ERRORS = Family(
    "asyncjob_state_write_errors_total",
    "counter",
    "Failed attempts to write the state file (each retried; nothing is dropped).",
)
STATE_PENDING_WRITES = Family(
    "asyncjob_state_pending_writes", "gauge", "Changes not yet committed to the state file."
)
STATE_SIZE = Family(
    "asyncjob_state_size_bytes",
    "gauge",
    "Bytes the state file and its WAL take on disk (0 with state in memory only).",
)
HISTORY_JOBS = Family(
    "asyncjob_history_jobs",
    "gauge",
    "Finished jobs kept in the history after retention dropped their series (their pages and API "
    "answers stay readable).",
)
HISTORY_BYTES = Family("asyncjob_history_bytes", "gauge", "Bytes of job data the history keeps.")
JOBS_QUARANTINED = Family(
    "asyncjob_jobs_quarantined",
    "gauge",
    "Jobs skipped because the event loop froze while they were polled (exporter.watchdog).",
    TARGET,
)

# Written by every state store (exporter.group_commit) with the state families: served with a state
# file or state_url, not with state in memory only. docs/metrics.md names it in its state file
# section; its tables list what the exporter serves with state in memory (tests/unit/test_docs.py
# compares them with the demo's /metrics), which it joins once that serves an empty histogram.
STATE_COMMIT_DURATION = Family(
    "asyncjob_state_commit_duration_seconds", "histogram", "Time to commit a batch of state changes."
)
WITH_A_STATE_STORE: tuple[Family, ...] = (STATE_COMMIT_DURATION,)

# Written by the PostgreSQL state store (exporter/cluster/store.py) beside the state families:
# served only with state_url.
STATE_STALE_WRITES = Family(
    "asyncjob_state_stale_writes_total",
    "counter",
    "Changes dropped because their shard's lease passed to another replica before they were committed.",
)

# The cluster mode (`state_url`): each replica's view of the members and of the leases on the
# virtual shards (exporter/cluster/leases.py). Per replica, no labels of their own: the scrape's
# `instance` tells the replicas apart, and the cluster's shards are held by no replica when
# max(asyncjob_cluster_shards) exceeds sum(asyncjob_cluster_shards_held). Served only with
# state_url (exporter.cluster.member), as the stale writes above.
CLUSTER_REPLICAS = Family(
    "asyncjob_cluster_replicas",
    "gauge",
    "Live replicas of the cluster this replica sees (a heartbeat younger than the lease TTL), itself included.",
)
CLUSTER_SHARDS = Family(
    "asyncjob_cluster_shards",
    "gauge",
    "Virtual shards the cluster's jobs and discovery sources fall into (set in the schema).",
)
CLUSTER_SHARDS_HELD = Family(
    "asyncjob_cluster_shards_held",
    "gauge",
    "Virtual shards this replica holds a valid lease on: it polls their jobs and exports their series.",
)
CLUSTER_STATE_REACHABLE = Family(
    "asyncjob_cluster_state_reachable",
    "gauge",
    "1 while this replica reaches PostgreSQL; 0 while it cannot, and keeps exporting the jobs it "
    "held and polling them until its leases would lapse.",
)
CLUSTER_LEASE_RENEW_ERRORS = Family(
    "asyncjob_cluster_lease_renew_errors_total",
    "counter",
    "Lease renewals that failed; the leases lapse at their deadline unless a later renewal succeeds.",
)
CLUSTER_TAKEOVERS = Family(
    "asyncjob_cluster_takeovers_total",
    "counter",
    "Virtual shards this replica claimed after another replica's lease on them lapsed.",
)
CLUSTER_HANDOVERS = Family(
    "asyncjob_cluster_handovers_total",
    "counter",
    "Virtual shards this replica handed back because another live replica is now preferred for them.",
)
CLUSTER: tuple[Family, ...] = (
    CLUSTER_REPLICAS,
    CLUSTER_SHARDS,
    CLUSTER_SHARDS_HELD,
    CLUSTER_STATE_REACHABLE,
    CLUSTER_LEASE_RENEW_ERRORS,
    CLUSTER_TAKEOVERS,
    CLUSTER_HANDOVERS,
)
# Served only by a replica of a cluster (state_url): documented in a section of their own.
WITH_STATE_URL: tuple[Family, ...] = (*CLUSTER, STATE_STALE_WRITES)

# Every family served with state in memory only (the default), in the order /metrics serves them; a
# state store serves WITH_A_STATE_STORE with the state families too.
CATALOGUE: tuple[Family, ...] = (
    *PER_JOB,
    JOBS,
    JOBS_UNDOCUMENTED,
    JOBS_FINISHED,
    JOBS_FAILED,
    JOB_DURATION,
    STEP_DURATION,
    RECORDS_PROCESSED,
    RECORDS_FAILED,
    JOB_RERUNS,
    SLO_JOBS,
    CONNECTION_STATUS,
    CONNECTION_AWAITING_USER,
    CONNECTION_LAST_SUCCESS,
    CHANNEL_LAST_SUCCESS,
    CHANNEL_CONSENT_EXPIRY,
    QUEUE_EVENTS,
    TARGET_UP,
    TARGET_INFO,
    TARGET_POLL_INTERVAL,
    TARGET_STUCK_THRESHOLD,
    TARGET_MAX_DURATION,
    TARGET_MAX_JOBS,
    TARGET_RETENTION,
    LAST_SUCCESSFUL_POLL,
    SOURCE_MISSING_SINCE,
    POLL_DURATION,
    POLL_REQUESTS,
    POLL_ERRORS,
    JOBS_DROPPED,
    BUILD_INFO,
    EXPORTER_TASKS,
    WEB_CONNECTIONS_REFUSED,
    WEB_CONNECTIONS_CLOSED,
    CONFIG_RELOAD_SUCCESSFUL,
    CONFIG_RELOAD_SUCCESS_TIMESTAMP,
    STATE_WRITE_ERRORS,
    STATE_PENDING_WRITES,
    STATE_SIZE,
    JOBS_QUARANTINED,
    HISTORY_JOBS,
    HISTORY_BYTES,
)

BY_NAME: dict[str, Family] = {
    family.name: family for family in (*CATALOGUE, *WITH_A_STATE_STORE, *WITH_STATE_URL)
}


def family_of(series: str) -> Family | None:
    """The family a sample or query names: its own name, or a histogram's _bucket/_sum/_count."""
    if series in BY_NAME:
        return BY_NAME[series]
    for suffix in HISTOGRAM_SUFFIXES:
        family = BY_NAME.get(series.removesuffix(suffix))
        if series.endswith(suffix) and family is not None and family.type == "histogram":
            return family
    return None
