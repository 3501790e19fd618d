"""Basic auth under a flood of wrong passwords: the real CLI with one bcrypt user (cost 10, as
`htpasswd -B` makes), `flood` clients in their own process sending wrong passwords as fast as
they are answered, and a scraper with the right credentials on its own connection. The
scraper's latency during the flood is set against the same scraper without it.

`python -m bench.auth flood URL SECONDS CLIENTS` is the flood process: raw asyncio keep-alive
connections (an httpx client would cost more CPU than the server under test), printing the
number of answers and their latencies as one JSON line. The set-up, the flood's driver and the
paced scraper are bench/flood.py's, shared with bench.lockout."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.flood import (
    PASSWORD,
    USER,
    Flood,
    basic,
    exporter_with_one_user,
    flood_clients,
    host_port,
    main,
    paced,
    wrong_password,
)
from bench.scraper import PROMETHEUS_HEADERS, Connection, latency_cell, percentiles

# --- the flood (its own process) ------------------------------------------------------------


async def _flood_client(host: str, port: int, deadline: float, latencies: list[float], i: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = wrong_password(host, i)
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
    latencies: list[float] = await flood_clients(url, seconds, clients, _flood_client, [])
    return {"answers": len(latencies), "latencies": latencies}


# --- the run --------------------------------------------------------------------------------


def _scrapes(url: str, seconds: float, every: float) -> list[float]:
    """Latencies of /metrics with the right credentials on one kept-alive connection."""
    conn = Connection(*host_port(url))
    headers = PROMETHEUS_HEADERS + f"Authorization: {basic(USER, PASSWORD)}\r\n"
    try:
        conn.get("/metrics", headers)  # the one bcrypt of these credentials: cached from here on
        return paced(lambda: bool(conn.get("/metrics", headers)), seconds, every).latencies
    finally:
        conn.close()


def _wrong_password_ms(url: str, user: str, n: int) -> float:
    """Median time of a wrong password for `user`, one request at a time."""
    times = []
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            t = time.perf_counter()
            r = client.get(f"{url}/metrics", headers={"Authorization": basic(user, f"nope-{i}")})
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
    with exporter_with_one_user(cost, "asyncjob-bench-auth-") as exp:
        log(f"auth: timing wrong passwords, known and unknown user ({timing_samples} each)")
        known_ms = _wrong_password_ms(exp.url, USER, timing_samples)
        unknown_ms = _wrong_password_ms(exp.url, "nobody", timing_samples)

        log(f"auth: scrape alone, {seconds:g} s")
        quiet = _scrapes(exp.url, seconds, every)

        log(f"auth: scrape during a {flood}-way wrong-password flood, {seconds:g} s")
        flooder = Flood("bench.auth", exp.url, seconds + 1, flood)
        time.sleep(0.5)  # the flood's connections are open and queueing bcrypt
        flooded = _scrapes(exp.url, seconds, every)
        flood_result = flooder.result()
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
        f"| authenticated /metrics, alone | {latency_cell(a['alone'])} |",
        f"| authenticated /metrics, during the flood | {latency_cell(a['flooded'])} |",
        f"| a wrong password, during the flood | {latency_cell(a['flood_latency'])} |",
        "",
        f"The flood got {a['flood_answers']} answers ({a['flood_answers_per_s']:.1f}/s: one bcrypt at a time).",
        f"A wrong password, one request at a time: {a['wrong_password_known_user_ms']:.0f} ms for a known user,",
        f"{a['wrong_password_unknown_user_ms']:.0f} ms for an unknown one (checked against a dummy hash of the",
        "same cost, so user names cannot be told apart by timing).",
    ]


if __name__ == "__main__":
    main("bench.auth", __doc__ or "", _flood, run)
