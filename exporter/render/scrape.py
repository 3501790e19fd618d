"""A scrape, top to bottom: the job part assembled in the background from the per-job groups
(groups.py), then the families rendered at scrape time (aggregates.py) and prometheus-client's
process metrics, compressed as the last block of one gzip member (deflate.py). Every client gets
the same job part, in text 0.0.4 or OpenMetrics alike (formats.py); one that does not accept
gzip gets the body decompressed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from exporter import __version__, catalogue
from exporter.httpserver.front_door import WEB_COUNTS, WebCounts
from exporter.render.aggregates import render_aggregates, render_dropped, render_http_stats
from exporter.render.deflate import gzip_member, inflate
from exporter.render.formats import EOF, openmetrics_counters
from exporter.render.groups import JobSeries
from exporter.render.text import Text, labels
from exporter.tracker import Tracker

# prometheus-client's process, platform and GC metrics, collected at each scrape (cheap).
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=PROCESS_REGISTRY)
PlatformCollector(registry=PROCESS_REGISTRY)
GCCollector(registry=PROCESS_REGISTRY)


def render_web_counts(w: Text, counts: WebCounts = WEB_COUNTS) -> None:
    w.family(catalogue.WEB_CONNECTIONS_REFUSED)
    w.out.append(f"{catalogue.WEB_CONNECTIONS_REFUSED.name} {counts.refused}\n")
    w.family(catalogue.WEB_CONNECTIONS_CLOSED)
    for reason, n in counts.closed.items():
        w.sample(catalogue.WEB_CONNECTIONS_CLOSED.name, labels(reason=reason), n)


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
        # False (--web.disable-exporter-metrics) leaves out process_* and python_*.
        self.exporter_metrics = True
        # What the front door refused and closed: the process's own, or a test's.
        self.web_counts: WebCounts = WEB_COUNTS

    def scrape_time_text(self, openmetrics: bool = False) -> bytes:
        ts = list(self.tracker.targets.values())
        w = Text(openmetrics)
        render_http_stats(w, self._http_stats())
        render_dropped(w, ts)
        w.family(catalogue.BUILD_INFO)
        w.sample(catalogue.BUILD_INFO.name, labels(version=__version__), 1)
        w.family(catalogue.EXPORTER_TASKS)
        w.out.append(f"{catalogue.EXPORTER_TASKS.name} {_task_count()}\n")
        render_web_counts(w, self.web_counts)
        if not openmetrics:
            process = generate_latest(PROCESS_REGISTRY) if self.exporter_metrics else b""
            return render_aggregates(ts) + w.bytes() + self._extra() + process
        process = (
            openmetrics_exposition.generate_latest(PROCESS_REGISTRY).removesuffix(EOF)  # type: ignore[no-untyped-call]
            if self.exporter_metrics
            else b""
        )
        extra = openmetrics_counters(self._extra())
        return render_aggregates(ts, openmetrics=True) + w.bytes() + extra + process + EOF

    def render(self, gz: bool = False, fresh: bool = True, openmetrics: bool = False) -> bytes:
        """The body; one gzip member when `gz`; OpenMetrics 1.0.0 when `openmetrics` (the same
        job part, the families of scrape time written for it, exemplars, `# EOF`), else text 0.0.4.

        `fresh=False` (the server, with the background refresh running) serves the job part
        last assembled (again at least every MAX_AGE seconds while jobs change, once their
        groups are rendered); `fresh=True` renders and assembles every change first.
        """
        part = self.jobs.current(fresh)
        tail = self.scrape_time_text(openmetrics)
        if gz:
            return gzip_member(part.parts, part.crc, part.size, tail)
        return inflate(part.parts) + tail
