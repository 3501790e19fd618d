"""Memory and latency while polling: the real CLI polls N running Basiq jobs of the simulator
(each in its own process) every 2 s. Once every job was answered and a few cycles more went
by, a scraper in a third process asks for /metrics and /healthz for a while, and the exporter's
RSS is read meanwhile. Memory per job is the RSS growth between two fleet sizes."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench import fleet, scraper


def measure(n_jobs: int, seconds: float, settle: float, log: Callable[[str], None]) -> dict[str, Any]:
    with fleet.simulated(n_jobs) as f, fleet.polling_exporter(f) as (exp, first_poll_s):
        log(f"  memory: {n_jobs:,} jobs all answered after {first_poll_s:.1f} s")
        time.sleep(settle)
        proc = scraper.in_own_process(exp.url, seconds)
        rss = []
        while proc.poll() is None:
            rss.append(fleet.rss_bytes(exp.popen.pid))
            time.sleep(0.5)
        lat = scraper.result(proc, timeout=60)
        rss.append(fleet.rss_bytes(exp.popen.pid))
    return {
        "jobs": n_jobs,
        "all_answered_s": first_poll_s,
        "rss_bytes": statistics.median(rss),
        "rss_max_bytes": max(rss),
        "metrics": scraper.percentiles(lat["metrics"]),
        "healthz": scraper.percentiles(lat["healthz"]),
        "body_bytes": lat["body_bytes"],
        "content_encoding": lat["content_encoding"],
    }


def run(
    sizes: tuple[int, ...] = (1000, 10_000, 50_000),
    seconds: float = 10.0,
    settle: float = 2 * fleet.POLL_INTERVAL,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Each size in a fresh simulator and exporter; per job = RSS growth from the size before."""
    measured = [measure(n, seconds, settle, log) for n in sizes]
    for before, after in itertools.pairwise(measured):
        after["bytes_per_job"] = (after["rss_bytes"] - before["rss_bytes"]) / (after["jobs"] - before["jobs"])
        after["from_jobs"] = before["jobs"]
    return {"sizes": measured, "poll_interval_s": fleet.POLL_INTERVAL, "seconds": seconds}
