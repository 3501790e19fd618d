"""Families rendered at each scrape, small and bounded by targets rather than jobs: counters and
histograms per target and job type, Oxlin connections, target settings, HTTP and drop counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from exporter.fetch import ERROR_REASONS
from exporter.model import STATUSES
from exporter.render.slos import render_slos
from exporter.render.text import Text, labels
from exporter.tracker import Aggregates, Histogram, TargetState


def _tl(state: TargetState, job_type: str, **more: str) -> str:
    return labels(target=state.config.name, job_type=job_type, **more)


# Counters and histograms per target and job type: (name, help, type, where in the target's
# Aggregates, the labels of the key's parts after the job type).
AGGREGATE_FAMILIES: tuple[
    tuple[str, str, str, Callable[[Aggregates], Mapping[Any, Any]], tuple[str, ...]], ...
] = (
    (
        "asyncjob_jobs_finished_total",
        "Jobs seen finishing, each counted once, by final status.",
        "counter",
        lambda a: a.finished,
        ("status",),
    ),
    (
        "asyncjob_jobs_failed_total",
        "Failed jobs by bounded reason and who must act (user, provider, unknown), each counted once.",
        "counter",
        lambda a: a.failed,
        ("reason", "cause"),
    ),
    (
        "asyncjob_job_duration_seconds",
        "Duration of finished jobs, start (else creation) to end.",
        "histogram",
        lambda a: a.job_duration,
        ("status",),
    ),
    (
        "asyncjob_step_duration_seconds",
        "Observed duration of finished steps (resolution: one poll).",
        "histogram",
        lambda a: a.step_duration,
        ("step",),
    ),
    (
        "asyncjob_records_processed_total",
        "Records of finished jobs (total), each job counted once.",
        "counter",
        lambda a: a.records_processed,
        (),
    ),
    (
        "asyncjob_records_failed_total",
        "Failed records of finished jobs, each job counted once.",
        "counter",
        lambda a: a.records_failed,
        (),
    ),
    (
        "asyncjob_job_reruns_total",
        "Reruns of failed jobs started by the exporter.",
        "counter",
        lambda a: a.reruns,
        (),
    ),
)


def render_aggregates(targets: Iterable[TargetState], openmetrics: bool = False) -> bytes:
    ts = list(targets)
    w = Text(openmetrics)
    w.family("asyncjob_jobs", "Jobs tracked now, by normalised status.", "gauge")
    for s in ts:
        # Job types with tracked jobs; a type whose jobs all went (or a registration
        # placeholder's empty type) leaves no rows of zeros behind.
        types = {jt for (jt, _), n in s.agg.by_status.items() if n} or {""}
        for jt in sorted(types):
            for st in STATUSES:
                w.sample("asyncjob_jobs", _tl(s, jt, status=st), s.agg.by_status.get((jt, st), 0))
    w.family(
        "asyncjob_jobs_undocumented",
        "Jobs tracked now in a state their provider does not document (status unknown), by the "
        "provider's raw status (the first 20 a target sees; later ones are other).",
        "gauge",
    )
    for s in ts:
        for (jt, raw), n in sorted(s.agg.undocumented.items()):
            w.sample("asyncjob_jobs_undocumented", _tl(s, jt, raw_status=raw), n)
    for name, help_, type_, of, names in AGGREGATE_FAMILIES:
        w.family(name, help_, type_)
        for s in ts:
            for key, value in sorted(of(s.agg).items()):
                parts = (key,) if isinstance(key, str) else key
                job_type, more = parts[0], {n: str(v) for n, v in zip(names, parts[1:], strict=True)}
                if isinstance(value, Histogram):
                    w.histogram(name, _tl(s, job_type, **more), value, s.config.name)
                else:
                    w.sample(name, _tl(s, job_type, **more), value)
    render_slos(w, ts)
    _render_connections(w, ts)
    _render_targets(w, ts)
    return w.bytes()


def _render_connections(w: Text, ts: list[TargetState]) -> None:
    conn_statuses = ("RUNNING", "SUCCESS", "PARTIAL_SUCCESS", "FAILED", "CLOSED", "NONE")
    w.family("asyncjob_connection_status", "Oxlin connection status as a state set.", "gauge")
    for s in ts:
        for cid, c in sorted(s.connections.items()):
            lbl = labels(target=s.config.name, connection_id=cid)
            known = c.status if c.status in conn_statuses else None
            for st in conn_statuses:
                w.sample("asyncjob_connection_status", f'{lbl},status="{st}"', 1 if st == known else 0)
    w.family(
        "asyncjob_connection_awaiting_user",
        "1 while only the end user can make the connection synchronise again (its last sync "
        "failed for them, or its consents lapsed).",
        "gauge",
    )
    for s in ts:
        for cid, c in sorted(s.connections.items()):
            w.sample(
                "asyncjob_connection_awaiting_user",
                labels(target=s.config.name, connection_id=cid),
                1 if c.awaiting_user else 0,
            )
    w.family(
        "asyncjob_connection_last_success_timestamp_seconds",
        "Last successful synchronisation of the connection.",
        "gauge",
    )
    for s in ts:
        for cid, c in sorted(s.connections.items()):
            if c.last_success is not None:
                w.sample(
                    "asyncjob_connection_last_success_timestamp_seconds",
                    labels(target=s.config.name, connection_id=cid),
                    c.last_success,
                )
    w.family(
        "asyncjob_channel_last_success_timestamp_seconds",
        "Last successful sync of a connection's channel.",
        "gauge",
    )
    for s in ts:
        for cid, c in sorted(s.connections.items()):
            for ch in c.channels:
                if ch.last_success is not None:
                    w.sample(
                        "asyncjob_channel_last_success_timestamp_seconds",
                        labels(target=s.config.name, connection_id=cid, channel=ch.id),
                        ch.last_success,
                    )
    w.family(
        "asyncjob_channel_consent_expiry_timestamp_seconds",
        "When a PSD2 channel's consent expires and needs the end user (SCA).",
        "gauge",
    )
    for s in ts:
        for cid, c in sorted(s.connections.items()):
            for ch in c.channels:
                if ch.expires is not None:
                    w.sample(
                        "asyncjob_channel_consent_expiry_timestamp_seconds",
                        labels(target=s.config.name, connection_id=cid, channel=ch.id),
                        ch.expires,
                    )
    w.family("asyncjob_queue_events_total", "Queue events read, each once, by event type.", "counter")
    for s in ts:
        for (queue, et), v in sorted(s.agg.queue_events.items()):
            w.sample(
                "asyncjob_queue_events_total", labels(target=s.config.name, queue=queue, event_type=et), v
            )


def _render_targets(w: Text, ts: list[TargetState]) -> None:
    def per_target(name: str, help_: str, value: Callable[[TargetState], float | None]) -> None:
        w.family(name, help_, "gauge")
        for s in ts:
            v = value(s)
            if v is not None:
                w.sample(name, labels(target=s.config.name), v)

    per_target(
        "asyncjob_target_up",
        "1 when the target's last poll cycle had no failed request.",
        lambda s: 1 if s.up else 0,
    )
    w.family("asyncjob_target_info", "Configured target and its provider.", "gauge")
    for s in ts:
        w.sample("asyncjob_target_info", labels(target=s.config.name, provider=s.config.provider), 1)
    per_target(
        "asyncjob_target_poll_interval_seconds",
        "How often the exporter polls the target, on its own schedule.",
        lambda s: s.config.poll_interval,
    )
    per_target(
        "asyncjob_target_stuck_threshold_seconds",
        "No progress for this long means stuck (stuck_after).",
        lambda s: s.config.stuck_after,
    )
    per_target(
        "asyncjob_target_max_duration_seconds",
        "Running longer than this means overdue (max_duration).",
        lambda s: s.config.max_duration,
    )
    per_target(
        "asyncjob_target_max_jobs", "Cap of tracked jobs (max_jobs_per_target).", lambda s: s.config.max_jobs
    )
    per_target(
        "asyncjob_target_retention_seconds",
        "How long finished jobs keep their series.",
        lambda s: s.config.retention,
    )
    per_target(
        "asyncjob_last_successful_poll_timestamp_seconds",
        "End of the last poll cycle without errors.",
        lambda s: s.last_success,
    )
    w.family(
        "asyncjob_source_missing_since_timestamp_seconds",
        "A configured source (a Basiq user, an Oxlin queue or connection, a list URL) answering "
        "404 since then (in this process): nothing of it is polled until it answers again.",
        "gauge",
    )
    for s in ts:
        for source, since in sorted(s.missing.items()):
            w.sample(
                "asyncjob_source_missing_since_timestamp_seconds",
                labels(target=s.config.name, source=source),
                since,
            )
    w.family("asyncjob_poll_duration_seconds", "Duration of HTTP requests to the target's API.", "histogram")
    for s in ts:
        w.histogram("asyncjob_poll_duration_seconds", labels(target=s.config.name), s.poll_duration)


def render_http_stats(w: Text, stats: dict[str, tuple[int, dict[str, int]]]) -> None:
    w.family("asyncjob_poll_requests_total", "HTTP requests sent to the target's API.", "counter")
    for name, (requests, _) in sorted(stats.items()):
        w.sample("asyncjob_poll_requests_total", labels(target=name), requests)
    w.family(
        "asyncjob_poll_errors_total", "Failed requests to the target's API by bounded reason.", "counter"
    )
    for name, (_, errors) in sorted(stats.items()):
        for reason in ERROR_REASONS:
            w.sample("asyncjob_poll_errors_total", labels(target=name, reason=reason), errors.get(reason, 0))


def render_dropped(w: Text, ts: list[TargetState]) -> None:
    w.family(
        "asyncjob_jobs_dropped_total",
        "Jobs no longer tracked, by reason (retention, gone, cap, deleted, rerun, resharded).",
        "counter",
    )
    for s in ts:
        for reason in sorted(set(s.agg.dropped) | {"cap", "gone", "retention"}):
            w.sample(
                "asyncjob_jobs_dropped_total",
                labels(target=s.config.name, reason=reason),
                s.agg.dropped.get(reason, 0),
            )
