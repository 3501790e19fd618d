"""A scrape, top to bottom: the per-job groups' cached members (groups.py), then the families
rendered at scrape time (aggregates.py) and prometheus-client's process metrics, joined into
one body. A gzip stream may be a concatenation of members (RFC 1952 §2.2).
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from exporter import __version__
from exporter.render.aggregates import render_aggregates, render_dropped, render_http_stats
from exporter.render.deflate import GZIP_LEVEL, gzip_member
from exporter.render.groups import JobSeries
from exporter.render.text import Text, labels
from exporter.tracker import Tracker

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
        # False (--web.disable-exporter-metrics) leaves out process_* and python_*.
        self.exporter_metrics = True

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
        process = generate_latest(PROCESS_REGISTRY) if self.exporter_metrics else b""
        return render_aggregates(ts) + w.bytes() + self._extra() + process

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
