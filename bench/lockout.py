"""The connection cap under a flood: the real CLI with one bcrypt user (cost 10) and the default
--web.max-connections (512); `clients` connections more than that, in their own process, each
pipelining wrong passwords and reading none of the answers (connecting again when closed); a
scraper with good, cached credentials that opens a new connection for every scrape, as one
whose keep-alive connection was closed must. Its latency during the flood is set against the
same scraper without it; a scrape refused or left unanswered counts as a miss.

`python -m bench.lockout flood URL SECONDS CLIENTS` is the flood process; it prints one JSON
line: the connections it opened and how many of them the server closed. The set-up, the flood's
driver and the paced scraper are bench/flood.py's, shared with bench.auth."""

from __future__ import annotations

import asyncio
import socket
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
from bench.scraper import latency_cell, percentiles

CLIENTS = 520
SCRAPE_P99_MS = 50.0  # a scrape on a new connection, good cached credentials, during the flood


# --- the flood (its own process) ------------------------------------------------------------


async def _flood_client(host: str, port: int, deadline: float, counts: dict[str, int], i: int) -> None:
    request = wrong_password(host, i)
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        counts["opened"] += 1
        try:
            while time.monotonic() < deadline:
                writer.write(request * 4)  # pipelined, never read
                await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
                await asyncio.sleep(0.2)
        except (TimeoutError, OSError):
            counts["closed_by_server"] += 1
        finally:
            writer.close()
        await asyncio.sleep(0.01)


async def _flood(url: str, seconds: float, clients: int) -> dict[str, int]:
    return await flood_clients(url, seconds, clients, _flood_client, {"opened": 0, "closed_by_server": 0})


# --- the scraper: a new connection for every scrape -------------------------------------------


def _scrape_once(host: str, port: int) -> bool:
    """One GET /metrics on a new connection, read whole; False if refused or cut."""
    request = f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: {basic(USER, PASSWORD)}\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(request.encode())
            answer = b""
            while chunk := s.recv(1 << 20):
                answer += chunk
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.1 200 ")


# --- the run --------------------------------------------------------------------------------


def run(
    clients: int = CLIENTS,
    seconds: float = 8.0,
    cost: int = 10,
    every: float = 0.05,
    max_connections: int = 512,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    extra = [f"--web.max-connections={max_connections}", "--log.level=info"]
    with exporter_with_one_user(cost, "asyncjob-bench-lockout-", extra) as exp:
        first = httpx.get(f"{exp.url}/metrics", auth=(USER, PASSWORD), timeout=30)  # bcrypt once, cached
        assert first.status_code == 200, first.status_code
        host, port = host_port(exp.url)

        log(f"lockout: scrapes on new connections alone, {seconds:g} s")
        alone = paced(lambda: _scrape_once(host, port), seconds, every)

        log(f"lockout: the same during {clients} connections pipelining wrong passwords, {seconds:g} s")
        flooder = Flood("bench.lockout", exp.url, seconds + 2, clients)
        time.sleep(1.5)  # the flood's connections are open and past the cap
        flooded = paced(lambda: _scrape_once(host, port), seconds, every)
        flood = flooder.result()
        cap_lines = exp.output().count("connection cap reached")
    return {
        "cost": cost,
        "clients": clients,
        "max_connections": max_connections,
        "seconds": seconds,
        "scrape_every_s": every,
        "alone": percentiles(alone.latencies),
        "alone_missed": alone.missed,
        "flooded": percentiles(flooded.latencies),
        "flooded_missed": flooded.missed,
        "flood_connections": flood["opened"],
        "flood_closed_by_server": flood["closed_by_server"],
        "cap_log_lines": cap_lines,
    }


# --- its part of docs/benchmarks.md (bench/report.py's Section "lockout") ---------------------


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    f, a = r["flooded"], r["alone"]
    met = f["p99_ms"] <= SCRAPE_P99_MS and r["flooded_missed"] == 0 and f["n"] > 0
    return [
        {
            "what": f"authenticated /metrics p99 on new connections, {r['clients']} connections flooding a cap of "
            f"{r['max_connections']}",
            "measured": f"{f['p99_ms']:.1f} ms, {r['flooded_missed']} refused",
            "baseline": f"the same scraper without the flood {a['p99_ms']:.1f} ms",
            "ratio": f"{f['p99_ms'] / max(a['p99_ms'], 1e-9):.1f}x",
            "target": f"<= {SCRAPE_P99_MS:g} ms, none refused",
            "met": met,
        }
    ]


def body(r: dict[str, Any]) -> list[str]:
    return [
        "## The connection cap under a flood",
        "",
        f"The real CLI with one `basic_auth_users` entry (bcrypt cost {r['cost']}) and "
        f"`--web.max-connections={r['max_connections']}`.",
        f"{r['clients']} connections in their own process pipeline wrong passwords and read none of the",
        "answers, connecting again when closed. A scraper with good credentials (verified once, then",
        f"cached) opens a new connection for every scrape, every {r['scrape_every_s'] * 1000:.0f} ms,",
        f"{r['seconds']:g} s without the flood, then {r['seconds']:g} s with it. Past the cap the server",
        "closes the oldest connection that has not authenticated a request; before, only connections",
        "waiting for headers made room and every new connection was reset while the flood lasted.",
        "",
        "| | p50 / p99 / max | refused or cut |",
        "|---|---|---|",
        f"| /metrics on a new connection, alone | {latency_cell(r['alone'])} | {r['alone_missed']} |",
        f"| /metrics on a new connection, during the flood | {latency_cell(r['flooded'])} | {r['flooded_missed']} |",
        "",
        f"The flood opened {r['flood_connections']} connections; the server closed "
        f"{r['flood_closed_by_server']} of them to make room. The exporter logged the cap",
        f"{r['cap_log_lines']} time(s) (once per burst).",
    ]


if __name__ == "__main__":
    main("bench.lockout", __doc__ or "", _flood, run)
