"""Scrape under churn: a Runtime in this process polls N running Basiq jobs of the simulator (its
own process) every 2 s with its real scheduler, while every job also changes once a cycle (its
progress moved through `Tracker.update`, APPLY_SLICE jobs a loop turn, as the scheduler folds in
poll answers). A scraper in a third process asks for /metrics (gzip) and /healthz meanwhile.
Measured here, in the same run: how old the served body is (every change made before its moment
is in it), how long after every job changed the served body holds all of it, and the baselines:
prometheus-client's `generate_latest` (+ its gzip) over the same samples, and gzip of the whole
body at each scrape.
"""

from __future__ import annotations

import gc
import gzip
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from bench import fleet, machine, scraper, synthetic
from exporter.config import build_settings
from exporter.httpserver.server import Server
from exporter.providers import PROVIDERS
from exporter.render.groups import JobSeries
from exporter.render.jobs import render_job
from exporter.routes import build_app
from exporter.runtime import Runtime
from exporter.scheduler import APPLY_SLICE

# Jobs changed per loop turn: as many as the scheduler folds poll answers into the tracker.
SLICE = APPLY_SLICE


class Churn:
    """Every job's progress moves once a cycle; records, per pass, when the last job changed
    and when the served part held every change of the pass."""

    def __init__(self, runtime: Runtime, ids: list[str]) -> None:
        self.runtime, self.ids = runtime, ids
        self.passes = 0
        self.current_after: list[float] = []
        self.pass_seconds: list[float] = []

    async def run(self, interval: float) -> None:
        tracker = self.runtime.tracker
        state = tracker.targets[fleet.TARGET]
        jobs = self.runtime.exposition.jobs
        while True:
            started = time.monotonic()
            self.passes += 1
            for i in range(0, len(self.ids), SLICE):
                now = time.time()
                for jid in self.ids[i : i + SLICE]:
                    tracked = state.jobs.get(jid)
                    if tracked is not None:
                        job = synthetic.running_job(jid, self.passes)
                        tracker.update(state, replace(job, created=tracked.job.created or job.created), now)
                await anyio.sleep(0)
            done = time.monotonic()
            self.pass_seconds.append(done - started)
            while jobs.part is None or jobs.part.current_at < done:
                await anyio.sleep(0.005)
            self.current_after.append(time.monotonic() - done)
            await anyio.sleep(max(0.0, interval - (time.monotonic() - started)))


@contextmanager
def full_collections() -> Iterator[list[float]]:
    """Durations of the cyclic GC's generation-2 collections meanwhile: each one stops the whole
    process, event loop included, for as long as it walks the objects it collects (the
    exporter's ticks: those made since the last one; a full pass: every tracked object)."""
    pauses: list[float] = []
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append(time.perf_counter() - started.pop())

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)


def requests_sent(runtime: Runtime) -> int:
    return runtime.scheduler.http_stats().get(fleet.TARGET, (0, {}))[0]


async def sample_staleness(jobs: JobSeries, into: list[float]) -> None:
    while True:
        into.append(jobs.staleness())
        await anyio.sleep(0.02)


async def measure(
    runtime: Runtime, ids: list[str], seconds: float, log: Callable[[str], None]
) -> tuple[dict[str, Any], bytes, bytes]:
    server = Server(build_app(runtime), "127.0.0.1:0")
    churn = Churn(runtime, ids)
    ages: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        tg.start_soon(runtime.run)
        with anyio.fail_after(30):
            while server.port == 0:
                await anyio.sleep(0.01)
        url = f"http://127.0.0.1:{server.port}"
        tg.start_soon(churn.run, fleet.POLL_INTERVAL)
        with anyio.fail_after(300):  # one pass rendered and served: the warm-up
            while len(churn.current_after) < 1:
                await anyio.sleep(0.05)
        log(f"  scrape: churn under way, {len(ids):,} jobs; scraping for {seconds:.0f} s")
        tg.start_soon(sample_staleness, runtime.exposition.jobs, ages)
        counted = len(churn.current_after)
        requests, started, cpu = requests_sent(runtime), time.monotonic(), time.process_time()
        full_passes = runtime.gc.full_passes
        with full_collections() as pauses:
            proc = scraper.in_own_process(url, seconds)
            lat = await anyio.to_thread.run_sync(scraper.result, proc, seconds + 60)
        full_passes = runtime.gc.full_passes - full_passes
        current_after = churn.current_after[counted:]
        window = ages[:]  # the window only: the baselines below hold the GIL for seconds
        wall = time.monotonic() - started
        polls_per_s = (requests_sent(runtime) - requests) / wall
        cpu_share = (time.process_time() - cpu) / wall
        own = []  # what serving costs the exporter itself, between its other work
        for _ in range(10):
            t = time.perf_counter()
            runtime.exposition.render(gz=True, fresh=False)
            own.append(time.perf_counter() - t)
            await anyio.sleep(0.05)
        served, plain = await anyio.to_thread.run_sync(two_bodies, server.port)
        # Baselines, in a worker thread while the scheduler keeps polling.
        base = await anyio.to_thread.run_sync(baselines, plain)
        tg.cancel_scope.cancel()
    figures = {
        "metrics": scraper.percentiles(lat["metrics"]),
        "healthz": scraper.percentiles(lat["healthz"]),
        "content_encoding": lat["content_encoding"],
        "body_bytes": lat["body_bytes"],
        "render": scraper.percentiles(own),
        "gc_full": scraper.percentiles(pauses),
        "gc_full_passes": full_passes,
        "gc_tick_s": runtime.gc.every,
        "churn_slice": SLICE,
        "staleness": scraper.percentiles(window),
        "current_after": scraper.percentiles(current_after),
        "churn_passes": len(current_after),
        "churn_pass_s": statistics.median(churn.pass_seconds),
        "polls_per_s": polls_per_s,
        "cpu_share": cpu_share,
        "load_average": machine.load_average(),
        "baseline": base,
    }
    return figures, served, plain


def two_bodies(port: int) -> tuple[bytes, bytes]:
    """The body as a gzip-accepting client gets it (raw), and as one that does not."""
    conn = scraper.Connection("127.0.0.1", port)
    try:
        return conn.get("/metrics", scraper.PROMETHEUS_HEADERS)[1], conn.get("/metrics")[1]
    finally:
        conn.close()


def baseline_registry(text: str) -> CollectorRegistry:
    """Labelled Gauges holding every sample of `text` (one Gauge per sample name)."""
    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    for name, lbl, value in synthetic.samples(text):
        g = gauges.get(name)
        if g is None:
            g = gauges[name] = Gauge(name, "same samples as the exporter", list(lbl), registry=registry)
        (g.labels(**lbl) if lbl else g).set(value)
    return registry


def baselines(plain: bytes, reps: int = 3) -> dict[str, Any]:
    """Per scrape: gzip (level 1) of the whole body, and prometheus-client's generate_latest
    plus the gzip its ASGI app applies (level 9), over the same samples."""
    whole = [synthetic.timed(gzip.compress, plain, 1) for _ in range(reps)]
    registry = baseline_registry(plain.decode())
    gc.collect()
    gen, out = [], b""
    for _ in range(reps):
        t = time.perf_counter()
        out = generate_latest(registry)
        gen.append(time.perf_counter() - t)
    gz9 = synthetic.timed(gzip.compress, out)
    del registry
    gc.collect()
    return {
        "gzip_whole_body_ms": statistics.median(whole) * 1000,
        "generate_latest_ms": statistics.median(gen) * 1000,
        "generate_latest_gzip_ms": (statistics.median(gen) + gz9) * 1000,
        "plain_bytes": len(plain),
    }


def validate(served: bytes, n_jobs: int, per_job: int) -> dict[str, Any]:
    """The gzip body read by Python's gzip module (CRC and size checked) and the strict parser of
    its format (OpenMetrics, as Prometheus' headers get it); every job's series present, each
    family under one # TYPE."""
    text = gzip.decompress(served).decode()
    types = synthetic.type_lines(text)
    if len(types) != len(set(types)):
        raise AssertionError("a metric family appears twice: families are not contiguous")
    total = per_job_samples = 0
    openmetrics = text.endswith("# EOF\n")
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    for family in parse(text):
        for s in family.samples:
            total += 1
            per_job_samples += "job_id" in s.labels
    if per_job_samples < n_jobs * per_job:
        raise AssertionError(f"{per_job_samples} per-job samples served, expected {n_jobs} x {per_job}")
    return {
        "format": "OpenMetrics 1.0.0" if openmetrics else "text 0.0.4",
        "plain_bytes": len(text),
        "samples": total,
        "per_job_samples": per_job_samples,
        "families": len(types),
    }


def run(n_jobs: int = 10_000, seconds: float = 20.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    with fleet.simulated(n_jobs) as f:
        runtime = Runtime(build_settings(fleet.config(f.sim.url, f.secrets, f.ids), PROVIDERS))
        figures, served, _ = anyio.run(measure, runtime, f.ids, seconds, log)
    state = runtime.tracker.targets[fleet.TARGET]
    per_job = sum(b.count(b"\n") for b in render_job(state, state.jobs[f.ids[0]]))
    figures.update(jobs=n_jobs, series_per_job=per_job, poll_interval_s=fleet.POLL_INTERVAL)
    figures["served"] = validate(served, n_jobs, per_job)
    m, b = figures["metrics"], figures["baseline"]
    log(
        f"  scrape: /metrics p99 {m['p99_ms']:.1f} ms (gzip of the whole body {b['gzip_whole_body_ms']:.0f} ms, "
        f"generate_latest {b['generate_latest_ms']:.0f} ms); body current {figures['current_after']['p50_ms']:.0f} ms "
        "after every job changed"
    )
    return figures
