"""Soak at a steady job rate, as a busy user runs it: Basiq jobs that run a few seconds and
succeed are made in the simulator and registered through the real CLI's API, RATE a second,
polled every second with `retention: 20s` and a state file. After a warm-up, the exporter's RSS,
open files and state file are sampled over the measured span; at the end, registrations stop
and every acknowledged job must be counted once.

What it guards: memory and disk that grow with every job finished (each one dropped leaves a
tombstone), which a short benchmark never shows. The measured span is BENCH_SOAK_SECONDS
(default 600), after BENCH_SOAK_WARMUP (default 120): `BENCH_SOAK_SECONDS=3600` for an hour,
`BENCH_SOAK_SECONDS=30 BENCH_SOAK_WARMUP=10` for a quick look.

    python -m bench --only soak
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import fleet
from tests.harness import Exporter, exporter, simulator, write_secrets

TARGET = "basiq-soak"
RATE = 50.0  # registrations a second
POLL_INTERVAL, RETENTION = "1s", "20s"
HISTORY_MAX_JOBS = 2000  # reached in the warm-up's first minute at RATE
STEP_SECONDS = 1.0  # a Basiq job of the simulator: three steps, ~3 s
SAMPLE_EVERY = 5.0
DRAIN_SECONDS = 60.0
_SAMPLE = re.compile(r"^(asyncjob_[a-z_]+)(?:\{[^}]*\})? (\S+)$", re.MULTILINE)
_SUMMED = (
    "asyncjob_jobs_finished_total",
    "asyncjob_poll_errors_total",
    "asyncjob_poll_requests_total",
    "asyncjob_jobs",
    "asyncjob_state_size_bytes",
)


def seconds_from_env(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def sums(exp: Exporter) -> dict[str, float]:
    """The families the soak follows, each summed over its series."""
    out = dict.fromkeys(_SUMMED, 0.0)
    for name, value in _SAMPLE.findall(httpx.get(f"{exp.url}/metrics", timeout=10).text):
        if name in out:
            out[name] += float(value)
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Registrar(threading.Thread):
    """Makes RATE simulator jobs a second (one batch request) and registers each through the API."""

    def __init__(self, sim_url: str, exp_url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.sim_url, self.exp_url, self.rate = sim_url, exp_url, rate
        self.stop = threading.Event()
        self.acknowledged = 0
        self.refused = 0
        self.lag_max = 0.0  # how far the registrations fell behind their schedule, seconds

    def run(self) -> None:
        per_batch = max(1, round(self.rate))
        start = time.monotonic()
        made = 0
        with (
            httpx.Client(base_url=self.sim_url, timeout=10) as sim,
            httpx.Client(base_url=self.exp_url, timeout=10) as exp,
        ):
            while not self.stop.is_set():
                r = sim.post(
                    "/_sim/jobs", json={"provider": "basiq", "scenario": "success", "count": per_batch}
                )
                r.raise_for_status()
                for job_id in r.json()["ids"]:
                    due = start + made / self.rate
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        self.lag_max = max(self.lag_max, -wait)
                    made += 1
                    try:
                        answer = exp.post(f"/api/v1/targets/{TARGET}/jobs", json={"id": str(job_id)})
                    except httpx.HTTPError:
                        self.refused += 1
                        continue
                    if answer.status_code == 202:
                        self.acknowledged += 1
                    else:
                        self.refused += 1
                    if self.stop.is_set():
                        return


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y): y's growth a second."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0


def run(
    seconds: float | None = None,
    warmup: float | None = None,
    rate: float = RATE,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    seconds = seconds if seconds is not None else seconds_from_env("BENCH_SOAK_SECONDS", 600.0)
    warmup = warmup if warmup is not None else seconds_from_env("BENCH_SOAK_WARMUP", 120.0)
    tmp = Path(tempfile.mkdtemp(prefix="asyncjob-jobrate-"))
    state = tmp / "state.db"
    with simulator(tmp, step_seconds=STEP_SECONDS) as sim:
        secrets = write_secrets(tmp)
        cfg = {
            # The history fills to its bound during the warm-up: the span measures it pruned,
            # as a long run holds it, rather than 7 days of it filling.
            "global": {
                "poll_interval": POLL_INTERVAL,
                "retention": RETENTION,
                "history_max_jobs": HISTORY_MAX_JOBS,
            },
            "state_file": str(state),
            "targets": [
                {
                    "name": TARGET,
                    "provider": "basiq",
                    "base_url": f"{sim.url}/basiq",
                    "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                }
            ],
        }
        with exporter(tmp, cfg, extra=["--log.level=warn"]) as exp:
            return _soak(sim.url, exp, seconds, warmup, rate, log)


def _soak(
    sim_url: str, exp: Exporter, seconds: float, warmup: float, rate: float, log: Callable[[str], None]
) -> dict[str, Any]:
    pid = exp.popen.pid
    registrar = Registrar(sim_url, exp.url, rate)
    start = time.monotonic()
    registrar.start()
    samples: list[dict[str, float]] = []
    try:
        while (elapsed := time.monotonic() - start) < warmup + seconds:
            time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - start - elapsed)))
            at = time.monotonic() - start
            sample = {"t": at, "rss": float(fleet.rss_bytes(pid)), "fds": float(open_fds(pid))}
            sample.update(sums(exp))
            sample["acknowledged"] = float(registrar.acknowledged)
            samples.append(sample)
            if len(samples) % 12 == 0:
                log(
                    f"  soak: {at:5.0f} s, RSS {sample['rss'] / 2**20:.1f} MiB, "
                    f"{sample['asyncjob_jobs']:.0f} tracked, {registrar.acknowledged:,} acknowledged, "
                    f"state {sample['asyncjob_state_size_bytes'] / 2**20:.2f} MiB"
                )
            if not registrar.is_alive():
                raise RuntimeError("the registrations stopped")
    finally:
        registrar.stop.set()
        registrar.join(30)
    assert exp.popen.poll() is None, "the exporter died during the soak"
    # Every acknowledged job runs a few seconds: wait until each one is counted, or say so.
    deadline = time.monotonic() + DRAIN_SECONDS
    while (counted := sums(exp)["asyncjob_jobs_finished_total"]) < registrar.acknowledged:
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(2)  # a job counted twice would show now
    end = sums(exp)
    measured = [s for s in samples if s["t"] >= warmup]
    first, last = measured[0], measured[-1]
    span = last["t"] - first["t"]
    return {
        "rate": rate,
        "warmup_s": warmup,
        "measured_s": span,
        "poll_interval": POLL_INTERVAL,
        "retention": RETENTION,
        "acknowledged": registrar.acknowledged,
        "refused": registrar.refused,
        "registration_lag_max_s": registrar.lag_max,
        "counted": end["asyncjob_jobs_finished_total"],
        "counted_at_drain": counted,
        "finished_during_span": last["asyncjob_jobs_finished_total"] - first["asyncjob_jobs_finished_total"],
        "poll_errors": end["asyncjob_poll_errors_total"],
        "poll_requests": end["asyncjob_poll_requests_total"],
        "rss_first_bytes": first["rss"],
        "rss_last_bytes": last["rss"],
        "rss_max_bytes": max(s["rss"] for s in measured),
        # Growth over the measured span, from the fitted line: one sample's noise does not move it.
        "rss_growth_bytes": slope([(s["t"], s["rss"]) for s in measured]) * span,
        "fds": [min(s["fds"] for s in measured), max(s["fds"] for s in measured)],
        "tracked": [min(s["asyncjob_jobs"] for s in measured), max(s["asyncjob_jobs"] for s in measured)],
        "state_first_bytes": first["asyncjob_state_size_bytes"],
        "state_last_bytes": last["asyncjob_state_size_bytes"],
        "state_max_bytes": max(s["asyncjob_state_size_bytes"] for s in measured),
        "state_growth_bytes": slope([(s["t"], s["asyncjob_state_size_bytes"]) for s in measured]) * span,
        "samples": [
            {k: s[k] for k in ("t", "rss", "fds", "asyncjob_jobs", "asyncjob_state_size_bytes")}
            for s in samples
        ],
    }


def capacity(n: int = 20_000) -> dict[str, float]:
    """What a job costs the exporter on disk and in memory, measured in this process on Basiq-like
    jobs (36-character ids, three steps): a finished job's row in the state file (it stays
    there for `retention`), a tombstone in memory (at most TOMBSTONES_IN_MEMORY a target), and
    a tombstone row in the file (a target that discovers jobs, for TOMBSTONE_SECONDS)."""
    import sqlite3
    import tracemalloc
    from dataclasses import replace

    from bench import synthetic
    from exporter.config import build_settings
    from exporter.job_history import Bounds
    from exporter.model import Status, Step
    from exporter.providers import PROVIDERS
    from exporter.runtime import connect_store
    from exporter.state import Store
    from exporter.store import StateStore
    from exporter.tracked import TOMBSTONES_IN_MEMORY, TargetState
    from exporter.tracker import Tracker

    def file_bytes(path: Path) -> int:
        db = sqlite3.connect(path)
        used = (
            db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        )
        size = int(used * db.execute("PRAGMA page_size").fetchone()[0])
        db.close()
        return size

    tmp = Path(tempfile.mkdtemp(prefix="asyncjob-capacity-"))
    target = {"name": "cap", "provider": "basiq", "base_url": "https://x", "users": ["u"]}
    settings = build_settings({"global": {"max_jobs_per_target": n}, "targets": [target]}, PROVIDERS)
    tracker = Tracker()
    store = Store(str(tmp / "state.db"))

    class NoCursors:
        """The scheduler's side of the store: no provider of this run keeps cursors."""

        store: StateStore | None = None

    connect_store(store, tracker, NoCursors(), history=store)
    store.bounds = Bounds(period=0)  # the tombstones alone: the history is measured by its own gauges
    tracker.set_target(settings.resolved(settings.targets[0]))
    store.flush()
    empty = file_bytes(tmp / "state.db")
    done = tuple(Step(s, Status.SUCCEEDED, "success") for s in synthetic.STEPS)
    for i in range(n):
        running = synthetic.running_job(synthetic.job_id(i))
        tracker.track("cap", running, "registered", now=synthetic.T0 + 1)
        finished = replace(
            running, status=Status.SUCCEEDED, steps=done, percent=100.0, updated=synthetic.T0 + 4
        )
        tracker.update(tracker.targets["cap"], finished, now=synthetic.T0 + 5)
    store.flush()
    with_jobs = file_bytes(tmp / "state.db")
    for i in range(n):
        tracker.drop("cap", synthetic.job_id(i), "retention")
    store.flush()
    with_tombstones = file_bytes(tmp / "state.db")
    store.close()

    state = TargetState(settings.resolved(settings.targets[0]))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):  # the id, its stamp and the entry: the tombstone is all that holds them
        state.tombstones[synthetic.job_id(n + i)] = time.time()
    in_memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "jobs": n,
        "finished_job_row_bytes": (with_jobs - empty) / n,
        "tombstone_row_bytes": (with_tombstones - empty) / n,
        "tombstone_memory_bytes": in_memory / n,
        "tombstones_in_memory_max": TOMBSTONES_IN_MEMORY,
    }
