"""Basic auth under a flood of wrong passwords: the real CLI with one bcrypt user (cost 10, as
`htpasswd -B` makes), `flood` clients in their own process sending wrong passwords as fast as
they are answered, and a scraper with the right credentials on its own connection. The
scraper's latency during the flood is set against the same scraper without it.

`python -m bench.auth flood URL SECONDS CLIENTS` is the flood process: raw asyncio keep-alive
connections (an httpx client would cost more CPU than the server under test), printing the
number of answers and their latencies as one JSON line."""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import httpx
import yaml

from bench.scraper import PROMETHEUS_HEADERS, ROOT, Connection, percentiles

USER, PASSWORD = "prometheus", "right-password"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the flood (its own process) ------------------------------------------------------------


async def _flood_client(host: str, port: int, deadline: float, latencies: list[float], i: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: {_basic(USER, f'wrong-{i}')}\r\n\r\n"
    ).encode()
    try:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
    finally:
        writer.close()


async def _flood(url: str, seconds: float, clients: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_flood_client(host, port, deadline, latencies, i) for i in range(clients)))
    return {"answers": len(latencies), "latencies": latencies}


# --- the run --------------------------------------------------------------------------------


def _scrape(url: str, seconds: float, every: float, out: list[float]) -> None:
    parts = urlsplit(url)
    conn = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
    headers = PROMETHEUS_HEADERS + f"Authorization: {_basic(USER, PASSWORD)}\r\n"
    try:
        conn.get("/metrics", headers)  # the one bcrypt of these credentials: cached from here on
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t = time.perf_counter()
            conn.get("/metrics", headers)
            out.append(time.perf_counter() - t)
            time.sleep(max(0.0, every - (time.perf_counter() - t)))
    finally:
        conn.close()


def _scrape_in_thread(url: str, seconds: float, every: float) -> tuple[threading.Thread, list[float]]:
    out: list[float] = []
    thread = threading.Thread(target=_scrape, args=(url, seconds, every, out), daemon=True)
    thread.start()
    return thread, out


def _wrong_password_ms(url: str, user: str, n: int) -> float:
    """Median time of a wrong password for `user`, one request at a time."""
    times = []
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            t = time.perf_counter()
            r = client.get(f"{url}/metrics", headers={"Authorization": _basic(user, f"nope-{i}")})
            times.append(time.perf_counter() - t)
            assert r.status_code == 401, r.status_code
    return statistics.median(times) * 1000


def run(
    flood: int = 40,
    seconds: float = 8.0,
    cost: int = 10,
    every: float = 0.05,
    timing_samples: int = 15,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from tests.harness import exporter, wait_for

    with tempfile.TemporaryDirectory(prefix="asyncjob-bench-auth-") as tmp:
        tmp_path = Path(tmp)
        web = tmp_path / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=cost)).decode()
        web.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
        with exporter(tmp_path, {"targets": []}, extra=[f"--web.config.file={web}"], wait_ready=False) as exp:
            wait_for(lambda: httpx.get(f"{exp.url}/healthz", timeout=1).status_code == 200, what="exporter")
            log(f"auth: timing wrong passwords, known and unknown user ({timing_samples} each)")
            known_ms = _wrong_password_ms(exp.url, USER, timing_samples)
            unknown_ms = _wrong_password_ms(exp.url, "nobody", timing_samples)

            log(f"auth: scrape alone, {seconds:g} s")
            thread, quiet = _scrape_in_thread(exp.url, seconds, every)
            thread.join(seconds + 60)

            log(f"auth: scrape during a {flood}-way wrong-password flood, {seconds:g} s")
            flooder = subprocess.Popen(
                [sys.executable, "-m", "bench.auth", "flood", exp.url, str(seconds + 1), str(flood)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)  # the flood's connections are open and queueing bcrypt
            thread, flooded = _scrape_in_thread(exp.url, seconds, every)
            thread.join(seconds + 60)
            out, _ = flooder.communicate(timeout=seconds + 120)
            if flooder.returncode != 0:
                raise RuntimeError(f"flood process exited {flooder.returncode}")
            flood_result = json.loads(out.strip().splitlines()[-1])
    return {
        "cost": cost,
        "clients": flood,
        "seconds": seconds,
        "scrape_every_s": every,
        "alone": percentiles(quiet),
        "flooded": percentiles(flooded),
        "flood_answers": flood_result["answers"],
        "flood_answers_per_s": flood_result["answers"] / (seconds + 1),
        "flood_latency": percentiles(flood_result["latencies"]),
        "wrong_password_known_user_ms": known_ms,
        "wrong_password_unknown_user_ms": unknown_ms,
    }


# --- its part of docs/benchmarks.md (bench/report.py's Section "auth") ------------------------

SCRAPE_P99_MS = 50.0  # authenticated /metrics during the flood


def targets(a: dict[str, Any]) -> list[dict[str, Any]]:
    f, q = a["flooded"], a["alone"]
    return [
        {
            "what": f"authenticated /metrics p99 during a {a['clients']}-way wrong-password flood",
            "measured": f"{f['p99_ms']:.1f} ms",
            "baseline": f"the same scraper without the flood {q['p99_ms']:.1f} ms",
            "ratio": f"{f['p99_ms'] / max(q['p99_ms'], 1e-9):.1f}x",
            "target": f"<= {SCRAPE_P99_MS:g} ms",
            "met": f["p99_ms"] <= SCRAPE_P99_MS,
        }
    ]


def body(a: dict[str, Any]) -> list[str]:
    def lat(p: dict[str, float]) -> str:
        return f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f} / {p['max_ms']:.0f} ms"

    return [
        "## Basic auth under a wrong-password flood",
        "",
        f"The real CLI with one `basic_auth_users` entry (bcrypt cost {a['cost']}). {a['clients']} clients",
        "in their own process (raw asyncio keep-alive connections) send wrong passwords as fast as they",
        f"are answered; a scraper with the right credentials asks for /metrics every {a['scrape_every_s'] * 1000:.0f} ms",
        f"on its own connection, {a['seconds']:g} s without the flood, then {a['seconds']:g} s with it.",
        "bcrypt runs in one worker thread, verified credentials are cached: the scraper pays no bcrypt",
        "after its first request, and the flood queues for the bcrypt thread instead of the event loop.",
        "",
        "| | p50 / p99 / max |",
        "|---|---|",
        f"| authenticated /metrics, alone | {lat(a['alone'])} |",
        f"| authenticated /metrics, during the flood | {lat(a['flooded'])} |",
        f"| a wrong password, during the flood | {lat(a['flood_latency'])} |",
        "",
        f"The flood got {a['flood_answers']} answers ({a['flood_answers_per_s']:.1f}/s: one bcrypt at a time).",
        f"A wrong password, one request at a time: {a['wrong_password_known_user_ms']:.0f} ms for a known user,",
        f"{a['wrong_password_unknown_user_ms']:.0f} ms for an unknown one (checked against a dummy hash of the",
        "same cost, so user names cannot be told apart by timing).",
    ]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "flood":
        print(json.dumps(asyncio.run(_flood(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))))
    else:
        print(json.dumps(run(), indent=2))
