"""Families rendered at each scrape, small and bounded by targets rather than jobs: counters and
histograms per target and job type, Oxlin connections, target settings, HTTP and drop counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from exporter import catalogue as c
from exporter.catalogue import Family
from exporter.histogram import Histogram
from exporter.model import STATUSES
from exporter.poll_errors import ERROR_REASONS
from exporter.render.slos import render_slos
from exporter.render.text import Text, labels
from exporter.tracked import Aggregates, TargetState


def _tl(state: TargetState, job_type: str, **more: str) -> str:
    return labels(target=state.config.name, job_type=job_type, **more)


# Counters and histograms per target and job type: (family, where in the target's Aggregates);
# the keys' parts after the job type are the family's labels after `target` and `job_type`.
AGGREGATE_FAMILIES: tuple[tuple[Family, Callable[[Aggregates], Mapping[Any, Any]]], ...] = (
    (c.JOBS_FINISHED, lambda a: a.finished),
    (c.JOBS_FAILED, lambda a: a.failed),
    (c.JOB_DURATION, lambda a: a.job_duration),
    (c.STEP_DURATION, lambda a: a.step_duration),
    (c.RECORDS_PROCESSED, lambda a: a.records_processed),
    (c.RECORDS_FAILED, lambda a: a.records_failed),
    (c.JOB_RERUNS, lambda a: a.reruns),
)


def render_aggregates(targets: Iterable[TargetState], openmetrics: bool = False) -> bytes:
    ts = list(targets)
    w = Text(openmetrics)
    w.family(c.JOBS)
    for s in ts:
        # Job types with tracked jobs; a type whose jobs all went (or a registration
        # placeholder's empty type) leaves no rows of zeros behind.
        types = {jt for (jt, _), n in s.agg.by_status.items() if n} or {""}
        for jt in sorted(types):
            for st in STATUSES:
                w.sample(c.JOBS.name, _tl(s, jt, status=st), s.agg.by_status.get((jt, st), 0))
    w.family(c.JOBS_UNDOCUMENTED)
    for s in ts:
        for (jt, raw), n in sorted(s.agg.undocumented.items()):
            w.sample(c.JOBS_UNDOCUMENTED.name, _tl(s, jt, raw_status=raw), n)
    for family, of in AGGREGATE_FAMILIES:
        name, names = family.name, family.labels[2:]
        w.family(family)
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
    w.family(c.CONNECTION_STATUS)
    for s in ts:
        for cid, conn in sorted(s.connections.items()):
            lbl = labels(target=s.config.name, connection_id=cid)
            known = conn.status if conn.status in conn_statuses else None
            for st in conn_statuses:
                w.sample(c.CONNECTION_STATUS.name, f'{lbl},status="{st}"', 1 if st == known else 0)
    w.family(c.CONNECTION_AWAITING_USER)
    for s in ts:
        for cid, conn in sorted(s.connections.items()):
            w.sample(
                c.CONNECTION_AWAITING_USER.name,
                labels(target=s.config.name, connection_id=cid),
                1 if conn.awaiting_user else 0,
            )
    w.family(c.CONNECTION_LAST_SUCCESS)
    for s in ts:
        for cid, conn in sorted(s.connections.items()):
            if conn.last_success is not None:
                w.sample(
                    c.CONNECTION_LAST_SUCCESS.name,
                    labels(target=s.config.name, connection_id=cid),
                    conn.last_success,
                )
    w.family(c.CHANNEL_LAST_SUCCESS)
    for s in ts:
        for cid, conn in sorted(s.connections.items()):
            for ch in conn.channels:
                if ch.last_success is not None:
                    w.sample(
                        c.CHANNEL_LAST_SUCCESS.name,
                        labels(target=s.config.name, connection_id=cid, channel=ch.id),
                        ch.last_success,
                    )
    w.family(c.CHANNEL_CONSENT_EXPIRY)
    for s in ts:
        for cid, conn in sorted(s.connections.items()):
            for ch in conn.channels:
                if ch.expires is not None:
                    w.sample(
                        c.CHANNEL_CONSENT_EXPIRY.name,
                        labels(target=s.config.name, connection_id=cid, channel=ch.id),
                        ch.expires,
                    )
    w.family(c.QUEUE_EVENTS)
    for s in ts:
        for (queue, et), v in sorted(s.agg.queue_events.items()):
            w.sample(c.QUEUE_EVENTS.name, labels(target=s.config.name, queue=queue, event_type=et), v)


def _render_targets(w: Text, ts: list[TargetState]) -> None:
    def per_target(family: Family, value: Callable[[TargetState], float | None]) -> None:
        w.family(family)
        for s in ts:
            v = value(s)
            if v is not None:
                w.sample(family.name, labels(target=s.config.name), v)

    per_target(c.TARGET_UP, lambda s: 1 if s.up else 0)
    w.family(c.TARGET_INFO)
    for s in ts:
        w.sample(c.TARGET_INFO.name, labels(target=s.config.name, provider=s.config.provider), 1)
    per_target(c.TARGET_POLL_INTERVAL, lambda s: s.config.poll_interval)
    per_target(c.TARGET_STUCK_THRESHOLD, lambda s: s.config.stuck_after)
    per_target(c.TARGET_MAX_DURATION, lambda s: s.config.max_duration)
    per_target(c.TARGET_MAX_JOBS, lambda s: s.config.max_jobs)
    per_target(c.TARGET_RETENTION, lambda s: s.config.retention)
    per_target(c.LAST_SUCCESSFUL_POLL, lambda s: s.last_success)
    w.family(c.SOURCE_MISSING_SINCE)
    for s in ts:
        for source, since in sorted(s.missing.items()):
            w.sample(c.SOURCE_MISSING_SINCE.name, labels(target=s.config.name, source=source), since)
    w.family(c.POLL_DURATION)
    for s in ts:
        w.histogram(c.POLL_DURATION.name, labels(target=s.config.name), s.poll_duration)


def render_http_stats(w: Text, stats: dict[str, tuple[int, dict[str, int]]]) -> None:
    w.family(c.POLL_REQUESTS)
    for name, (requests, _) in sorted(stats.items()):
        w.sample(c.POLL_REQUESTS.name, labels(target=name), requests)
    w.family(c.POLL_ERRORS)
    for name, (_, errors) in sorted(stats.items()):
        for reason in ERROR_REASONS:
            w.sample(c.POLL_ERRORS.name, labels(target=name, reason=reason), errors.get(reason, 0))


def render_dropped(w: Text, ts: list[TargetState]) -> None:
    w.family(c.JOBS_DROPPED)
    for s in ts:
        for reason in sorted(set(s.agg.dropped) | {"cap", "gone", "retention"}):
            w.sample(
                c.JOBS_DROPPED.name, labels(target=s.config.name, reason=reason), s.agg.dropped.get(reason, 0)
            )
