"""Registrations: `POST /api/v1/targets/{target}/jobs` to the real CLI (state file on, each 202
after its commit) while it polls N jobs of the simulator, against a bare Starlette endpoint
that accepts the same body, on uvicorn too. Same run, same client: raw asyncio keep-alive
connections (an httpx client costs more CPU per request than the server under test).
/metrics is scraped meanwhile from its own thread, as Prometheus would."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.machine import load_average
from bench.simulated import api_key_file, simulator
from bench.synthetic import unused_port

ROOT = Path(__file__).resolve().parent.parent
TARGET = "registrations"

# The bare endpoint: reads the body, parses it, answers 202 with a small JSON document.
BARE_APP = """
import json, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def register(request):
    body = json.loads(await request.body())
    return JSONResponse({"target": request.path_params["target"], "id": body["id"]}, status_code=202)

app = Starlette(routes=[Route("/api/v1/targets/{target}/jobs", register, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False,
            lifespan="off", server_header=False)
"""


# With BENCH_PROFILE=FILE the exporter runs under a sampling profiler, switched on (SIGUSR1)
# for the measured registrations only, writing to FILE (SIGUSR2) how many samples of the main
# thread's stack each function was in (inclusive) and at the top of (leaf). Sampling, not
# cProfile: cProfile's cost per Python call makes Python code look dearer than system calls.
PROFILED = """
import asyncio.events, collections, heapq, json, signal, sys, threading, time
from exporter.__main__ import main
out, main_id, stop = sys.argv.pop(1), threading.get_ident(), threading.Event()
inclusive, leaf, total = collections.Counter(), collections.Counter(), [0]
slowest, on = [], [False]  # the longest callbacks of the event loop meanwhile (ms, what)
run = asyncio.events.Handle._run

def timed(handle):
    if not on[0]:
        return run(handle)
    t0 = time.perf_counter()
    try:
        return run(handle)
    finally:
        ms = (time.perf_counter() - t0) * 1000
        if ms > 5 and (len(slowest) < 40 or ms > slowest[0][0]):
            item = (ms, repr(handle)[:300])
            heapq.heappush(slowest, item) if len(slowest) < 40 else heapq.heappushpop(slowest, item)

asyncio.events.Handle._run = timed
turns = []  # the longest turns of the loop meanwhile (ms, callbacks run)
run_once = asyncio.base_events.BaseEventLoop._run_once

def timed_turn(loop):
    if not on[0]:
        return run_once(loop)
    n, t0 = len(loop._ready), time.perf_counter()
    try:
        return run_once(loop)
    finally:
        item = ((time.perf_counter() - t0) * 1000, n)
        heapq.heappush(turns, item) if len(turns) < 40 else heapq.heappushpop(turns, item)

asyncio.base_events.BaseEventLoop._run_once = timed_turn

RELEASING = (
    ":write", ":_read_ready__data_received", ":select", ":_begin", ":_write", ":_sock_write", ":is_readable",
    ":register", ":unregister", ":block",
)

def name(code):
    return f"{code.co_filename.rsplit('/site-packages/', 1)[-1]}:{code.co_firstlineno}:{code.co_name}"

def sample():
    while not stop.wait(0.0005):
        frame = sys._current_frames().get(main_id)
        if frame is None:
            continue
        top = name(frame.f_code)
        if top.endswith(RELEASING):
            # Caught inside a call that lets the GIL go (a socket send, select, SQLite): the
            # sampler gets the GIL at once there, so these would be counted far above their CPU.
            continue
        total[0] += 1
        leaf[top] += 1
        seen = set()
        while frame is not None:
            seen.add(name(frame.f_code))
            frame = frame.f_back
        inclusive.update(seen)

def start(*_):
    on[0] = True
    sys.setswitchinterval(0.0002)
    threading.Thread(target=sample, daemon=True).start()

def dump(*_):
    stop.set()
    with open(out, "w") as f:
        json.dump({"samples": total[0], "inclusive": inclusive.most_common(300), "leaf": leaf.most_common(100),
                   "slowest_callbacks_ms": sorted(slowest, reverse=True),
                   "longest_turns_ms_and_ready_callbacks": sorted(turns, reverse=True)}, f)

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, dump)
sys.exit(main())
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def request_bytes(target: str, job_id: str) -> bytes:
    body = json.dumps({"id": job_id}).encode()
    return (
        f"POST /api/v1/targets/{target}/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def drive(
    port: int | Sequence[int],
    target: str,
    n: int,
    concurrency: int,
    prefix: str,
    seconds: float | None = None,
) -> dict[str, Any]:
    """n registrations over `concurrency` keep-alive connections (or as many as fit in `seconds`);
    latency of each, from send to answer, and how many were answered in each second. Given
    several ports (replicas), the connections are spread over them in turn."""
    ports = [port] if isinstance(port, int) else list(port)
    latencies: list[float] = []
    finished: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(n)) if seconds is None else itertools.count()
    started = time.perf_counter()
    deadline = float("inf") if seconds is None else started + seconds

    async def connection(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[k % len(ports)])
        try:
            for i in counter:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    break
                writer.write(request_bytes(target, f"{prefix}-{i}"))
                status = await _read_response(reader)
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                finished.append(t1 - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    done = len(latencies)
    # The last answers come just after the deadline: counted in the last second.
    per_second = [0] * max(1, int(elapsed if seconds is None else seconds))
    for t in finished:
        per_second[min(int(t), len(per_second) - 1)] += 1
    return {
        "requests": done,
        "concurrency": concurrency,
        "seconds": elapsed,
        "per_second": done / elapsed,
        # Answers in each whole second of the run, and the slowest five seconds in a row.
        "each_second": per_second,
        "slowest_5s_per_second": min(
            (sum(per_second[i : i + 5]) / 5 for i in range(max(1, len(per_second) - 4))), default=0.0
        ),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


SCRAPE = (
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Prometheus/2.53.0\r\n"
    b"Accept: text/plain;version=0.0.4\r\nAccept-Encoding: gzip\r\n\r\n"
)


class Scraper:
    """Scrapes /metrics as Prometheus does (gzip, keep-alive) in a loop from its own thread until
    stopped; the latency is from the request sent to the last byte of the body."""

    def __init__(self, port: int, every: float) -> None:
        self.port, self.every = port, every
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            stream = sock.makefile("rb")
            while not self._stop.is_set():
                t0 = time.perf_counter()
                sock.sendall(SCRAPE)
                status = stream.readline()
                length = 0
                while (line := stream.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line[15:])
                stream.read(length)
                if b" 200 " not in status:
                    raise RuntimeError(f"/metrics answered {status!r}")
                self.latencies.append(time.perf_counter() - t0)
                self._stop.wait(self.every)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def summary(self) -> dict[str, Any]:
        return {
            "scrapes": len(self.latencies),
            "p50_ms": percentile(self.latencies, 0.50) * 1000,
            "p99_ms": percentile(self.latencies, 0.99) * 1000,
            "max_ms": max(self.latencies, default=0.0) * 1000,
        }


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measured(
    pid: int, port: int, n: int, concurrency: int, prefix: str, seconds: float | None = None
) -> dict[str, Any]:
    """`drive`, with the server's CPU per request (and the part of it in the kernel) and the
    machine's load beside it."""
    user, system = cpu_seconds(pid)
    out = asyncio.run(drive(port, TARGET, n, concurrency, prefix, seconds))
    user_after, system_after = cpu_seconds(pid)
    done = out["requests"]
    out["server_cpu_us_per_request"] = (user_after + system_after - user - system) / done * 1e6
    out["server_system_cpu_us_per_request"] = (system_after - system) / done * 1e6
    out["load_average"] = load_average()
    return out


@contextmanager
def process(
    args: list[str], ready: Callable[[], bool], timeout: float = 300
) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{args[2:4]} exited {proc.returncode}: {log.read()[-2000:]!r}")
                try:
                    if ready():
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args[2:4]} not ready within {timeout:g}s")
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def create_sim_jobs(url: str, n: int) -> list[str]:
    """n stuck Basiq jobs in the simulator (never finishing: every cycle polls all of them)."""
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"provider": "basiq", "scenario": "stuck", "fail_step": 1}).encode()
    request = (
        f"POST /_sim/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    ids: list[str] = []
    counter = iter(range(n))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in counter:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(ln[15:]) for ln in head.split(b"\r\n") if ln[:15].lower() == b"content-length:")
            ids.append(str(json.loads(await reader.readexactly(length))["id"]))
        writer.close()

    await asyncio.gather(*(connection() for _ in range(16)))
    return ids


def poll_requests(url: str, target: str = "polled") -> float:
    """Requests the exporter sent polling a target's jobs: "polled" (the N jobs) or TARGET
    (the registered ones, each polled once after it arrives)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f'asyncjob_poll_requests_total{{target="{target}"')
    )


def tracked_jobs(url: str) -> float:
    """Jobs the exporter tracks now, every target (`asyncjob_jobs`)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("asyncjob_jobs{")
    )


def run(
    n_jobs: int = 10_000,
    poll_interval: float = 30.0,
    concurrency: int = 64,
    scrape_every: float = 0.5,
    log: Callable[[str], None] = lambda _: None,
    state_file: bool = True,
    bare_seconds: float = 10.0,
) -> dict[str, Any]:
    py = [sys.executable]
    with tempfile.TemporaryDirectory() as tmp, simulator(step_seconds=3600) as sim_url:
        # The bare endpoint first, alone on the machine.
        bare_port = unused_port()
        with process(
            [*py, "-c", BARE_APP, str(bare_port)],
            lambda: httpx.get(f"http://127.0.0.1:{bare_port}/", timeout=1).status_code == 404,
        ) as proc:
            log(f"registration: bare Starlette, {bare_seconds:g}s at concurrency {concurrency}")
            asyncio.run(drive(bare_port, TARGET, 1000, concurrency, "warm"))
            bare = measured(proc.pid, bare_port, 0, concurrency, "bare", bare_seconds)

        log(f"registration: creating {n_jobs:,} simulator jobs")
        ids = asyncio.run(create_sim_jobs(sim_url, n_jobs))
        directory = Path(tmp)
        key = api_key_file(directory)
        basiq = {
            "provider": "basiq",
            "base_url": f"{sim_url}/basiq",
            "auth": {"type": "basiq", "api_key_file": str(key)},
        }
        config = {
            "global": {
                "poll_interval": f"{poll_interval:g}s",
                "max_jobs_per_target": 1_000_000,
                "per_job_series": "all",  # every job's series, as before `auto` (bench/series.py)
            },
            "state_file": str(directory / "state.db") if state_file else "",
            "targets": [{"name": "polled", **basiq, "jobs": ids}, {"name": TARGET, **basiq}],
        }
        (directory / "config.yml").write_text(yaml.safe_dump(config))
        port = unused_port()
        url = f"http://127.0.0.1:{port}"
        profile = os.environ.get("BENCH_PROFILE")
        args = [
            *py,
            *(["-c", PROFILED, str(Path(profile).resolve())] if profile else ["-m", "exporter"]),
            f"--config.file={directory / 'config.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        log(f"registration: the exporter, polling {n_jobs:,} jobs every {poll_interval:g}s")
        with process(args, lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200) as proc:
            asyncio.run(drive(port, TARGET, 1000, concurrency, "warm"))
            # From the start of a poll cycle of every job for one poll interval: the
            # registrations meet every poll of one interval, however the scheduler spreads them.
            first, first_registered = poll_requests(url), poll_requests(url, TARGET)
            deadline = time.monotonic() + poll_interval * 2
            while poll_requests(url) < first + min(100, n_jobs // 2) and time.monotonic() < deadline:
                time.sleep(0.1)
            log(
                f"registration: registrations for {poll_interval:g}s at concurrency {concurrency}, /metrics scraped meanwhile"
            )
            with Scraper(port, scrape_every) as scraper:
                if profile:
                    os.kill(proc.pid, signal.SIGUSR1)
                ours = measured(proc.pid, port, 0, concurrency, "reg", poll_interval)
                if profile:
                    os.kill(proc.pid, signal.SIGUSR2)
            polled_during = poll_requests(url) - first
            registered_polled_during = poll_requests(url, TARGET) - first_registered
            tracked_after = tracked_jobs(url)
            state_bytes = sum(p.stat().st_size for p in directory.glob("state.db*"))
    return {
        "jobs_polled": n_jobs,
        "poll_interval": poll_interval,
        "poll_requests_during": polled_during,
        "registered_poll_requests_during": registered_polled_during,
        "jobs_tracked_after": tracked_after,
        "bare": bare,
        "exporter": ours,
        "ratio": ours["per_second"] / bare["per_second"],
        "slowest_5s_ratio": ours["slowest_5s_per_second"] / bare["per_second"],
        "metrics": scraper.summary(),
        "state_file_bytes": state_bytes,
    }


if __name__ == "__main__":
    print(json.dumps(run(log=lambda m: print(m, file=sys.stderr)), indent=1))
