"""Scrape: /metrics of N tracked jobs, in process and through the real Starlette app on uvicorn,
against prometheus-client's `generate_latest` over labelled Gauges holding the same samples."""

from __future__ import annotations

import gc
import gzip
import socket
import statistics
import time
import zlib
from collections.abc import Callable
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench import profiles, synthetic
from exporter.render.jobs import render_job
from exporter.runtime import Runtime
from exporter.server import Server, build_app


def scrape_request(user_agent: str) -> bytes:
    return (
        "GET /metrics HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"User-Agent: {user_agent}\r\n"
        "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1\r\n"
        "Accept-Encoding: gzip\r\n"
        "\r\n"
    ).encode()


# What Prometheus 2.42 sends; the server gives the multi-member gzip body only to this agent.
PROMETHEUS = scrape_request("Prometheus/2.42.0")
# Any other agent asking for gzip (Grafana Alloy, vmagent, curl) gets one member compressed at scrape.
OTHER_AGENT = scrape_request("Alloy/v1.4.2")


def median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def series_per_job(fleet: synthetic.Fleet) -> int:
    tracked = fleet.state.jobs[fleet.ids[0]]
    return sum(block.count(b"\n") for block in render_job(fleet.state, tracked))


# --- in process -------------------------------------------------------------------------------


def in_process(
    fleet: synthetic.Fleet, unchanged: int, changed: int, profile: list[str] | None = None
) -> dict[str, Any]:
    """Median Exposition.render(gz=True) time, nothing changed / all changed."""
    exposition = fleet.exposition

    def scrape() -> bytes:  # as the server does: dirty groups are refreshed in the background
        return exposition.render(gz=True, fresh=False)

    exposition.render(gz=True)  # the first scrape compresses every group
    quiet = [synthetic.timed(scrape) for _ in range(unchanged)]
    after, change, refresh = [], [], []
    for _ in range(changed):
        change.append(synthetic.timed(fleet.change_all))
        after.append(synthetic.timed(scrape))
        refresh.append(synthetic.timed(exposition.jobs.refresh))
    if profile is not None:
        fleet.change_all()
        with profiles.profiled(profile, top=12):
            exposition.jobs.refresh()
        with profiles.profiled(profile, top=12):
            fleet.change_all()
    return {
        "unchanged_ms": median_ms(quiet),
        "all_changed_ms": median_ms(after),
        "refresh_all_changed_ms": median_ms(refresh),
        "change_all_ms": median_ms(change),
        "update_render_us_per_job": (statistics.median(change) + statistics.median(refresh))
        / len(fleet.ids)
        * 1e6,
    }


# --- over HTTP --------------------------------------------------------------------------------


class ScrapeClient:
    """One kept-alive HTTP/1.1 connection asking as Prometheus does; reads the raw (gzip) body.

    It reads from its own thread, as a scraper in another process would, so its reads do not
    take turns with the server on the server's event loop.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""

    async def __aenter__(self) -> ScrapeClient:
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.sock is not None
        self.sock.close()

    async def scrape(self, request: bytes = PROMETHEUS) -> tuple[dict[str, str], bytes]:
        return await anyio.to_thread.run_sync(self._scrape, request)

    def _scrape(self, request: bytes) -> tuple[dict[str, str], bytes]:
        assert self.sock is not None
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if " 200 " not in lines[0] + " ":
            raise RuntimeError(f"/metrics answered {lines[0]!r}")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
        length = int(headers["content-length"])
        chunks, have = [self.buffer], len(self.buffer)
        while have < length:
            chunk = self._recv()
            chunks.append(chunk)
            have += len(chunk)
        data = b"".join(chunks)
        body, self.buffer = data[:length], data[length:]
        return headers, body

    def _recv(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("/metrics connection closed")
        return chunk


def runtime_for(n_jobs: int, per_job_metrics: bool = True) -> Runtime:
    """A Runtime whose scheduler never starts: its one basiq target points at a port nothing serves."""
    return Runtime(synthetic.settings(max(n_jobs, 1), per_job_metrics))


async def over_http(
    fleet: synthetic.Fleet, runtime: Runtime, unchanged: int, changed: int
) -> tuple[dict[str, Any], dict[str, str], bytes]:
    """Median scrape time through uvicorn + Starlette, and the last unchanged body served."""
    server = Server(build_app(runtime), "127.0.0.1:0")
    jobs = runtime.exposition.jobs
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        tg.start_soon(jobs.refresh_in_background, 0.01)
        with anyio.fail_after(10):
            while server.port == 0:
                await anyio.sleep(0.01)
        try:
            async with ScrapeClient(server.port) as client:
                headers, body = await client.scrape()  # compresses every group
                while jobs.dirty:  # "nothing changed": no refresh under way either
                    await anyio.sleep(0.01)
                quiet = []
                for _ in range(unchanged):
                    t = time.perf_counter()
                    headers, body = await client.scrape()
                    quiet.append(time.perf_counter() - t)
                await client.scrape(OTHER_AGENT)  # the first one compresses the single member
                other = []
                for _ in range(max(1, unchanged // 10)):
                    t = time.perf_counter()
                    await client.scrape(OTHER_AGENT)
                    other.append(time.perf_counter() - t)
                after, fresh = [], []
                for _ in range(changed):
                    fleet.change_all()
                    t = time.perf_counter()
                    await client.scrape()  # served while the refresh of every group is under way
                    after.append(time.perf_counter() - t)
                    while jobs.dirty:  # until the background refresh has caught up
                        await anyio.sleep(0.001)
                    fresh.append(time.perf_counter() - t)
        finally:
            server.stop()
            tg.cancel_scope.cancel()
    figures = {
        "unchanged_ms": median_ms(quiet),
        "all_changed_ms": median_ms(after),
        "current_after_all_changed_ms": median_ms(fresh),
        "other_agent_unchanged_ms": median_ms(other),
        "body_bytes": len(body),
        "content_encoding": headers.get("content-encoding", ""),
    }
    return figures, headers, body


# --- checking what was served -------------------------------------------------------------------


def validate(body: bytes, n_jobs: int, per_job: int, strict_parser: bool = True) -> dict[str, Any]:
    """Gunzip every member, parse, and count: each job's series present, every family contiguous."""
    text = gzip.decompress(body).decode()  # reads all members, as Prometheus does
    types = synthetic.type_lines(text)
    if len(types) != len(set(types)):
        raise AssertionError("a metric family appears twice: families are not contiguous")
    if strict_parser:
        per_job_samples = total = 0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                total += 1
                per_job_samples += "job_id" in s.labels
    else:
        parsed = list(synthetic.samples(text))
        total, per_job_samples = len(parsed), sum("job_id" in lbl for _, lbl, _ in parsed)
    if per_job_samples != n_jobs * per_job:
        raise AssertionError(f"{per_job_samples} per-job samples served, expected {n_jobs} x {per_job}")
    # A client that stops after the first member (httpx, some browsers) would see only this much.
    first_member = zlib.decompressobj(31).decompress(body)
    return {
        "plain_bytes": len(text),
        "samples": total,
        "per_job_samples": per_job_samples,
        "families": len(types),
        "first_member_bytes": len(first_member),
        "parser": "prometheus_client.parser" if strict_parser else "line reader",
    }


# --- the baseline --------------------------------------------------------------------------------


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


def baseline(text: str, reps: int) -> dict[str, Any]:
    """generate_latest (median of reps) and, once, prometheus-client's own gzip of its output."""
    registry = baseline_registry(text)
    gc.collect()
    times, out = [], b""
    for _ in range(reps):
        t = time.perf_counter()
        out = generate_latest(registry)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    gzip.compress(out)  # what prometheus_client's ASGI/WSGI apps do when gzip is accepted (level 9)
    gzip_s = time.perf_counter() - t
    del registry
    gc.collect()
    return {
        "generate_latest_ms": median_ms(times),
        "gzip_level9_ms": gzip_s * 1000,
        "generate_latest_gzip_ms": median_ms(times) + gzip_s * 1000,
        "bytes": len(out),
    }


def gzip_from_scratch(text: bytes, reps: int = 3) -> float:
    """Median ms to gzip (level 1) the whole plain body at once: the cost a scrape would pay
    with a single compressed member and no cache."""

    def once() -> None:
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
        c.compress(text)
        c.flush()

    return median_ms([synthetic.timed(once) for _ in range(reps)])


# --- the benchmark -------------------------------------------------------------------------------


def run(
    n_jobs: int = 10_000,
    unchanged: int = 30,
    changed: int = 5,
    baseline_reps: int = 3,
    strict_parser: bool = True,
    ids: list[str] | None = None,
    with_baseline: bool = True,
    log: Callable[[str], None] = print,
    profile: list[str] | None = None,
) -> dict[str, Any]:
    ids = ids if ids is not None else [synthetic.job_id(i) for i in range(n_jobs)]
    n_jobs = len(ids)
    gc.collect()
    runtime = runtime_for(n_jobs)
    t = time.perf_counter()
    fleet = synthetic.fleet(ids, runtime=runtime)
    populate_s = time.perf_counter() - t
    per_job = series_per_job(fleet)
    log(f"  scrape: {n_jobs} jobs tracked in {populate_s:.2f}s, {per_job} series per job")
    local = in_process(fleet, unchanged, changed, profile)
    log(
        f"  scrape: in process {local['unchanged_ms']:.2f} ms unchanged, {local['all_changed_ms']:.1f} ms all changed"
    )
    http, _, body = anyio.run(over_http, fleet, runtime, unchanged, changed)
    log(
        f"  scrape: over HTTP {http['unchanged_ms']:.2f} ms unchanged, {http['all_changed_ms']:.1f} ms all changed"
    )
    checked = validate(body, n_jobs, per_job, strict_parser)
    plain = fleet.exposition.render(gz=False)
    result: dict[str, Any] = {
        "jobs": n_jobs,
        "series_per_job": per_job,
        "populate_s": populate_s,
        "in_process": local,
        "http": http,
        "served": checked,
        "gzip_whole_body_level1_ms": gzip_from_scratch(plain),
    }
    if with_baseline:
        base = baseline(plain.decode(), baseline_reps)
        log(f"  scrape: baseline generate_latest {base['generate_latest_ms']:.0f} ms")
        result["baseline"] = base
        g = base["generate_latest_ms"]
        result["ratios"] = {
            "baseline_over_http_unchanged": g / http["unchanged_ms"],
            "baseline_over_http_all_changed": g / http["all_changed_ms"],
            "baseline_over_in_process_unchanged": g / local["unchanged_ms"],
            "baseline_over_in_process_all_changed": g / local["all_changed_ms"],
        }
    return result
