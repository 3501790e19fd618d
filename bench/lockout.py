"""The connection cap under a flood: the real CLI with one bcrypt user (cost 10) and the default
--web.max-connections (512); `clients` connections more than that, in their own process, each
pipelining wrong passwords and reading none of the answers (connecting again when closed); a
scraper with good, cached credentials that opens a new connection for every scrape, as one
whose keep-alive connection was closed must. Its latency during the flood is set against the
same scraper without it; a scrape refused or left unanswered counts as a miss.

`python -m bench.lockout flood URL SECONDS CLIENTS` is the flood process; it prints one JSON
line: the connections it opened and how many of them the server closed."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
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

from bench.scraper import ROOT, percentiles

USER, PASSWORD = "prometheus", "right-password"
CLIENTS = 520
SCRAPE_P99_MS = 50.0  # a scrape on a new connection, good cached credentials, during the flood


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()


# --- the flood (its own process) ------------------------------------------------------------


async def _flood_client(host: str, port: int, deadline: float, counts: dict[str, int], i: int) -> None:
    request = (
        f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: {_basic(f'wrong-{i}')}\r\n\r\n"
    ).encode()
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
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counts = {"opened": 0, "closed_by_server": 0}
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_flood_client(host, port, deadline, counts, i) for i in range(clients)))
    return counts


# --- the scraper: a new connection for every scrape -------------------------------------------


def _scrape_once(host: str, port: int) -> bool:
    """One GET /metrics on a new connection, read whole; False if refused or cut."""
    request = f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: {_basic(PASSWORD)}\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(request.encode())
            answer = b""
            while chunk := s.recv(1 << 20):
                answer += chunk
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.1 200 ")


def _scrape(url: str, seconds: float, every: float, out: dict[str, Any]) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = time.perf_counter()
        if _scrape_once(host, port):
            out["latencies"].append(time.perf_counter() - t)
        else:
            out["missed"] += 1
        time.sleep(max(0.0, every - (time.perf_counter() - t)))


def _scrape_for(url: str, seconds: float, every: float) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "missed": 0}
    thread = threading.Thread(target=_scrape, args=(url, seconds, every, out), daemon=True)
    thread.start()
    thread.join(seconds + 60)
    return out


# --- the run --------------------------------------------------------------------------------


def run(
    clients: int = CLIENTS,
    seconds: float = 8.0,
    cost: int = 10,
    every: float = 0.05,
    max_connections: int = 512,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from tests.harness import exporter, wait_for

    with tempfile.TemporaryDirectory(prefix="asyncjob-bench-lockout-") as tmp:
        tmp_path = Path(tmp)
        web = tmp_path / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=cost)).decode()
        web.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
        extra = [f"--web.config.file={web}", f"--web.max-connections={max_connections}", "--log.level=info"]
        with exporter(tmp_path, {"targets": []}, extra=extra, wait_ready=False) as exp:
            wait_for(lambda: httpx.get(f"{exp.url}/healthz", timeout=1).status_code == 200, what="exporter")
            first = httpx.get(f"{exp.url}/metrics", auth=(USER, PASSWORD), timeout=30)  # bcrypt once, cached
            assert first.status_code == 200, first.status_code

            log(f"lockout: scrapes on new connections alone, {seconds:g} s")
            alone = _scrape_for(exp.url, seconds, every)

            log(f"lockout: the same during {clients} connections pipelining wrong passwords, {seconds:g} s")
            flooder = subprocess.Popen(
                [sys.executable, "-m", "bench.lockout", "flood", exp.url, str(seconds + 2), str(clients)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.5)  # the flood's connections are open and past the cap
            flooded = _scrape_for(exp.url, seconds, every)
            out, _ = flooder.communicate(timeout=seconds + 120)
            if flooder.returncode != 0:
                raise RuntimeError(f"flood process exited {flooder.returncode}")
            flood = json.loads(out.strip().splitlines()[-1])
            cap_lines = exp.output().count("connection cap reached")
    return {
        "cost": cost,
        "clients": clients,
        "max_connections": max_connections,
        "seconds": seconds,
        "scrape_every_s": every,
        "alone": percentiles(alone["latencies"]),
        "alone_missed": alone["missed"],
        "flooded": percentiles(flooded["latencies"]),
        "flooded_missed": flooded["missed"],
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
    def lat(p: dict[str, float]) -> str:
        return f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f} / {p['max_ms']:.0f} ms"

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
        f"| /metrics on a new connection, alone | {lat(r['alone'])} | {r['alone_missed']} |",
        f"| /metrics on a new connection, during the flood | {lat(r['flooded'])} | {r['flooded_missed']} |",
        "",
        f"The flood opened {r['flood_connections']} connections; the server closed "
        f"{r['flood_closed_by_server']} of them to make room. The exporter logged the cap",
        f"{r['cap_log_lines']} time(s) (once per burst).",
    ]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "flood":
        print(json.dumps(asyncio.run(_flood(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))))
    else:
        print(json.dumps(run(), indent=2))
