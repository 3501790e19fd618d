"""The /metrics exposition. Per-job series are rendered when a job changes and kept as bytes,
grouped, with each group's compressed gzip member cached: a scrape only joins bytes
(a gzip stream may be a concatenation of members, RFC 1952 §2.2). Aggregates and target
metrics are small and rendered at each scrape.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from exporter import __version__
from exporter.fetch import ERROR_REASONS
from exporter.model import STATUSES, Status
from exporter.tracker import Aggregates, Histogram, TargetState, TrackedJob, Tracker

# Jobs per compressed group: a refresh of one group (~1 ms) is the longest a scrape waits
# on the background refresh; more jobs per group would compress a little better.
GROUP_SIZE = 32
GZIP_LEVEL = 1

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def escape(value: str) -> str:
    """Escape a label value for the text format."""
    return value.translate(_ESCAPES)


def fmt(value: float) -> str:
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def labels(**kv: str) -> str:
    return ",".join(f'{k}="{escape(v)}"' for k, v in kv.items())


def gzip_member(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


# --- per-job families ---------------------------------------------------------------------
# Each family: (name, help, type, fn(tracked, prefix) -> text lines). `prefix` is the
# `target="…",job_id="…"` part every per-job series carries.

Lines = Callable[[TrackedJob, str], str]


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    type: str
    lines: Lines

    def header(self) -> bytes:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.type}\n".encode()


def _info(t: TrackedJob, p: str) -> str:
    return f'asyncjob_job_info{{{p},provider="{escape(t.provider)}",job_type="{escape(t.job.job_type)}"}} 1\n'


def _error_info(t: TrackedJob, p: str) -> str:
    if t.job.status is not Status.FAILED:
        return ""
    reason, cause = escape(t.job.reason or "unknown"), t.cause or "unknown"
    return f'asyncjob_job_error_info{{{p},reason="{reason}",cause="{cause}"}} 1\n'


def _status(t: TrackedJob, p: str) -> str:
    cur = t.job.status
    return "".join(f'asyncjob_job_status{{{p},status="{s}"}} {1 if s is cur else 0}\n' for s in STATUSES)


def _percent(t: TrackedJob, p: str) -> str:
    v = t.job.effective_percent()
    return "" if v is None else f"asyncjob_job_percent_completed{{{p}}} {fmt(v)}\n"


def _stamp(name: str, get: Callable[[TrackedJob], float | None]) -> Lines:
    def lines(t: TrackedJob, p: str) -> str:
        v = get(t)
        return "" if v is None else f"{name}{{{p}}} {fmt(v)}\n"

    return lines


def _step_status(t: TrackedJob, p: str) -> str:
    out = []
    for step in t.job.steps:
        s_label = escape(step.name)
        for s in STATUSES:
            out.append(
                f'asyncjob_job_step_status{{{p},step="{s_label}",status="{s}"}} {1 if s is step.status else 0}\n'
            )
    return "".join(out)


def _step_duration(t: TrackedJob, p: str) -> str:
    return "".join(
        f'asyncjob_job_step_duration_seconds{{{p},step="{escape(name)}"}} {fmt(v)}\n'
        for name, v in t.step_duration.items()
    )


def _records(t: TrackedJob, p: str) -> str:
    j = t.job
    out = []
    for kind, v in (
        ("total", j.records_total),
        ("affected", j.records_affected),
        ("failed", j.records_failed),
    ):
        if v is not None:
            out.append(f'asyncjob_job_records{{{p},kind="{kind}"}} {v}\n')
    return "".join(out)


def _attempts(t: TrackedJob, p: str) -> str:
    return "" if t.job.attempts is None else f"asyncjob_job_attempts{{{p}}} {t.job.attempts}\n"


def _awaiting(t: TrackedJob, p: str) -> str:
    return f"asyncjob_job_awaiting_user{{{p}}} {1 if t.job.awaiting_user else 0}\n"


JOB_FAMILIES: tuple[Family, ...] = (
    Family(
        "asyncjob_job_info",
        "Tracked job, with its provider and type. Polled on the exporter's own schedule.",
        "gauge",
        _info,
    ),
    Family(
        "asyncjob_job_error_info",
        "A failed job's bounded error reason (provider's code or state) and who must act: user, provider, unknown.",
        "gauge",
        _error_info,
    ),
    Family(
        "asyncjob_job_status",
        "Normalised job status as a state set: 1 for the current status.",
        "gauge",
        _status,
    ),
    Family(
        "asyncjob_job_percent_completed",
        "Completion 0-100: the provider's, else the share of finished steps.",
        "gauge",
        _percent,
    ),
    Family(
        "asyncjob_job_created_timestamp_seconds",
        "When the provider created the job.",
        "gauge",
        _stamp("asyncjob_job_created_timestamp_seconds", lambda t: t.job.created),
    ),
    Family(
        "asyncjob_job_started_timestamp_seconds",
        "When the job started, when known.",
        "gauge",
        _stamp("asyncjob_job_started_timestamp_seconds", lambda t: t.job.started),
    ),
    Family(
        "asyncjob_job_finished_timestamp_seconds",
        "When the job finished, when known.",
        "gauge",
        _stamp(
            "asyncjob_job_finished_timestamp_seconds",
            lambda t: (t.job.finished or t.seen_terminal_at) if t.job.status.terminal else None,
        ),
    ),
    Family(
        "asyncjob_job_last_progress_timestamp_seconds",
        "Last time anything about the job moved (status, step, percent, records, provider's update time).",
        "gauge",
        _stamp("asyncjob_job_last_progress_timestamp_seconds", lambda t: t.last_progress),
    ),
    Family(
        "asyncjob_job_step_status", "Each step's normalised status as a state set.", "gauge", _step_status
    ),
    Family(
        "asyncjob_job_step_duration_seconds",
        "Observed step duration; resolution is one poll interval when the provider gives no step times.",
        "gauge",
        _step_duration,
    ),
    Family("asyncjob_job_records", "Records of the job by kind: total, affected, failed.", "gauge", _records),
    Family("asyncjob_job_attempts", "Attempts the provider reports for the job.", "gauge", _attempts),
    Family(
        "asyncjob_job_awaiting_user",
        "1 while the job waits for its end user (MFA, consent, re-authentication): not stuck.",
        "gauge",
        _awaiting,
    ),
)
JOB_FAMILY_HEADERS = tuple(f.header() for f in JOB_FAMILIES)
JOB_FAMILY_HEADERS_GZ = tuple(gzip_member(h) for h in JOB_FAMILY_HEADERS)


def job_prefix(state: TargetState, tracked: TrackedJob) -> str:
    return f'target="{escape(state.config.name)}",job_id="{escape(tracked.job.id)}"'


def render_job(state: TargetState, tracked: TrackedJob) -> tuple[bytes, ...]:
    """One job's lines, per family (the groups render many jobs at once the same way)."""
    prefix = job_prefix(state, tracked)
    return tuple(f.lines(tracked, prefix).encode() for f in JOB_FAMILIES)


class Group:
    """Up to GROUP_SIZE jobs of one target and their cached gzip members, one per family.

    Only the members are kept: a refresh renders the group's jobs again from the tracker's
    state, so memory per job is the tracker's own plus a share of compressed bytes.
    """

    __slots__ = ("gz", "jobs", "state")

    def __init__(self, state: TargetState) -> None:
        self.state = state
        self.jobs: dict[str, TrackedJob] = {}
        self.gz: tuple[bytes, ...] | None = None  # None until first rendered

    def refresh(self) -> None:
        parts: list[list[str]] = [[] for _ in JOB_FAMILIES]
        state = self.state
        for tracked in self.jobs.values():
            prefix = job_prefix(state, tracked)
            for part, family in zip(parts, JOB_FAMILIES, strict=True):
                part.append(family.lines(tracked, prefix))
        self.gz = tuple(gzip_member("".join(p).encode()) if any(p) else b"" for p in parts)


class JobSeries:
    """The per-job part of the exposition; a Tracker listener.

    A change only marks the job's group dirty. Dirty groups are rendered and compressed
    again by `refresh` (in the background while the server runs, a group at a time so the
    event loop stays responsive), so a scrape joins cached members and does not grow with
    polling work. A scrape that comes before the refresh serves the group's previous
    members: every group is a consistent snapshot, at most one refresh old.
    """

    def __init__(self) -> None:
        self.groups: dict[str, list[Group]] = {}  # target -> groups
        self.where: dict[tuple[str, str], Group] = {}  # (target, job_id) -> its group
        self.dirty: set[Group] = set()
        self.version = 0  # bumped whenever a group's members changed
        self.scrapes = 0  # scrapes being served; the background refresh waits for them

    def job_changed(self, state: TargetState, tracked: TrackedJob) -> None:
        key = (state.config.name, tracked.job.id)
        # History (first seen finished long ago) is not news: no series, so nothing pages for it.
        if not state.config.config.per_job_metrics or tracked.history:
            if key in self.where:
                self.job_removed(state, tracked.job.id)
            return
        group = self.where.get(key)
        if group is None:
            groups = self.groups.setdefault(key[0], [])
            group = next((g for g in groups if len(g.jobs) < GROUP_SIZE), None)
            if group is None:
                group = Group(state)
                groups.append(group)
            self.where[key] = group
        group.jobs[key[1]] = tracked
        group.state = state
        self.dirty.add(group)

    def job_removed(self, state: TargetState, job_id: str) -> None:
        group = self.where.pop((state.config.name, job_id), None)
        if group is None:
            return
        group.jobs.pop(job_id, None)
        if group.jobs:
            self.dirty.add(group)
            return
        groups = self.groups.get(state.config.name, [])
        if group in groups:
            groups.remove(group)
        self.dirty.discard(group)
        self.version += 1

    def _all(self) -> list[Group]:
        return [g for gs in self.groups.values() for g in gs]

    def _refresh(self, group: Group) -> None:
        self.dirty.discard(group)
        group.refresh()
        self.version += 1

    def refresh(self) -> None:
        """Render every dirty group now."""
        for g in list(self.dirty):
            self._refresh(g)

    async def refresh_in_background(self, period: float = 0.1) -> None:
        """Keep the cached members current, a group at a time; scrapes go first."""
        while True:
            while self.dirty:
                with anyio.move_on_after(0.25):  # a scrape is being served: let it finish
                    while self.scrapes > 0:
                        await anyio.sleep(0.001)
                if self.dirty:
                    self._refresh(next(iter(self.dirty)))
                await anyio.sleep(0)
            await anyio.sleep(period)

    def members(self, fresh: bool) -> Iterator[bytes]:
        """Every family's header member, then each group's member of that family."""
        if fresh:
            self.refresh()
        groups = self._all()
        for g in groups:
            if g.gz is None:  # never rendered yet: nothing older to serve
                self._refresh(g)
        for i, header in enumerate(JOB_FAMILY_HEADERS_GZ):
            yield header
            for g in groups:
                chunk = g.gz[i] if g.gz else b""
                if chunk:
                    yield chunk


# --- aggregates and target metrics, rendered at each scrape --------------------------------


class Text:
    """A small writer for the families rendered at scrape time."""

    def __init__(self) -> None:
        self.out: list[str] = []

    def family(self, name: str, help_: str, type_: str) -> None:
        self.out.append(f"# HELP {name} {help_}\n# TYPE {name} {type_}\n")

    def sample(self, name: str, lbl: str, value: float) -> None:
        self.out.append(f"{name}{{{lbl}}} {fmt(value)}\n")

    def histogram(self, name: str, lbl: str, h: Histogram) -> None:
        for bound, count in zip(h.buckets, h.counts, strict=True):
            self.out.append(f'{name}_bucket{{{lbl},le="{fmt(bound)}"}} {count}\n')
        self.out.append(f'{name}_bucket{{{lbl},le="+Inf"}} {h.count}\n')
        self.out.append(f"{name}_sum{{{lbl}}} {fmt(h.total)}\n")
        self.out.append(f"{name}_count{{{lbl}}} {h.count}\n")

    def bytes(self) -> bytes:
        return "".join(self.out).encode()


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


def render_aggregates(targets: Iterable[TargetState]) -> bytes:
    ts = list(targets)
    w = Text()
    w.family("asyncjob_jobs", "Jobs tracked now, by normalised status.", "gauge")
    for s in ts:
        # Job types with tracked jobs; a type whose jobs all went (or a registration
        # placeholder's empty type) leaves no rows of zeros behind.
        types = {jt for (jt, _), n in s.agg.by_status.items() if n} or {""}
        for jt in sorted(types):
            for st in STATUSES:
                w.sample("asyncjob_jobs", _tl(s, jt, status=st), s.agg.by_status.get((jt, st), 0))
    for name, help_, type_, of, names in AGGREGATE_FAMILIES:
        w.family(name, help_, type_)
        for s in ts:
            for key, value in sorted(of(s.agg).items()):
                parts = (key,) if isinstance(key, str) else key
                job_type, more = parts[0], {n: str(v) for n, v in zip(names, parts[1:], strict=True)}
                if isinstance(value, Histogram):
                    w.histogram(name, _tl(s, job_type, **more), value)
                else:
                    w.sample(name, _tl(s, job_type, **more), value)
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


# prometheus-client's process, platform and GC metrics, collected at each scrape (cheap).
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=PROCESS_REGISTRY)
PlatformCollector(registry=PROCESS_REGISTRY)
GCCollector(registry=PROCESS_REGISTRY)


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (rendering outside the server)
        return 0


class Exposition:
    """Builds the /metrics body: cached per-job groups + scrape-time families + process metrics."""

    def __init__(
        self,
        tracker: Tracker,
        http_stats: Callable[[], dict[str, tuple[int, dict[str, int]]]],
        extra: Callable[[], bytes] = lambda: b"",
    ) -> None:
        self.tracker = tracker
        self.jobs = JobSeries()
        tracker.listeners.append(self.jobs)
        self._http_stats = http_stats
        self._extra = extra
        self._single: tuple[int, bytes, Any] | None = None

    def scrape_time_text(self) -> bytes:
        ts = list(self.tracker.targets.values())
        w = Text()
        render_http_stats(w, self._http_stats())
        render_dropped(w, ts)
        w.family("asyncjob_exporter_build_info", "The exporter's version.", "gauge")
        w.sample("asyncjob_exporter_build_info", labels(version=__version__), 1)
        w.family(
            "asyncjob_exporter_tasks", "Tasks on the exporter's event loop (flat when healthy).", "gauge"
        )
        w.out.append(f"asyncjob_exporter_tasks {_task_count()}\n")
        return render_aggregates(ts) + w.bytes() + self._extra() + generate_latest(PROCESS_REGISTRY)

    def render(self, gz: bool = False, multi_member: bool = True, fresh: bool = True) -> bytes:
        """The body; gzip-compressed when `gz`.

        With `multi_member` the cached per-group gzip members are sent back to back
        (Prometheus reads such a stream whole). Some clients (httpx, a few browsers) stop
        after the first member: they get a single member, whose compressed job part is
        cached until the jobs change. `fresh=False` (the server, with the background
        refresh running) serves dirty groups' previous members instead of rendering them.
        """
        tail = self.scrape_time_text()
        members = b"".join(self.jobs.members(fresh))
        if gz and multi_member:
            return members + gzip_member(tail)
        if not gz:
            return gzip.decompress(members) + tail
        cached = self._single
        if cached is None or cached[0] != self.jobs.version:
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            head = compressor.compress(gzip.decompress(members))
            cached = self._single = (self.jobs.version, head, compressor)
        compressor = cached[2].copy()
        return cached[1] + compressor.compress(tail) + compressor.flush()
