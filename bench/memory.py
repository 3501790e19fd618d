"""Memory and latency while polling: the real CLI polls N running Basiq jobs of the simulator
(each in its own process) every 2 s. Once every job was answered and a few cycles more went
by, a scraper in a third process asks for /metrics and /healthz for a while, and the exporter's
RSS is read meanwhile. Memory per job is the RSS growth between two fleet sizes."""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bench import fleet, scraper, synthetic
from exporter.history import EMPTY, HISTORY_MAX, entries, observe
from exporter.model import Status


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


def history_bytes(history: bytes) -> int:
    """Bytes a job's history holds of its own: the packed bytes alone (the (step, status)
    pairs its codes name are one table for the whole process)."""
    return sys.getsizeof(history)


def full_history_extra() -> dict[str, Any]:
    """What a full history (HISTORY_MAX transitions) holds beyond the one a job polled in this
    benchmark has (its first observation): added to the measured RSS growth per job."""
    job = synthetic.running_job(synthetic.job_id(0))
    first = observe(EMPTY, None, job, synthetic.T0)
    full = first
    n = 0
    while len(entries(full)) < HISTORY_MAX:
        n += 1
        name = synthetic.STEPS[n % len(synthetic.STEPS)].encode().decode()  # each poll parses its own
        step = replace(job.steps[1], name=name, status=(Status.RUNNING, Status.PENDING)[n % 2])
        full = observe(full, job, replace(job, steps=(job.steps[0], step, job.steps[2])), synthetic.T0 + n)
    extra = history_bytes(full) - history_bytes(first)
    added = len(entries(full)) - len(entries(first))
    return {
        "entries_first": len(entries(first)),
        "entries_full": len(entries(full)),
        "extra_bytes": extra,
        "bytes_per_transition": extra / added,
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
    return {
        "sizes": measured,
        "poll_interval_s": fleet.POLL_INTERVAL,
        "seconds": seconds,
        "history": full_history_extra(),
    }
