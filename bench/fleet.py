"""A polling fleet, as users run the exporter: the simulator in its own process holding N Basiq
jobs, and an exporter polling every one of them at a short interval, either the real CLI in
its own process (for RSS and latency) or a Runtime in this one (to read its internals)."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.harness import Exporter, Proc, exporter, simulator, write_secrets

TARGET = "basiq-fleet"
POLL_INTERVAL = 2.0
# A simulated step lasts this long: every job stays running (at its first step) for the run.
STEP_SECONDS = 3600.0


def create_jobs(sim_url: str, n: int, batch: int = 5000) -> list[str]:
    """N running Basiq jobs in the simulator, made `batch` at a time."""
    ids: list[str] = []
    with httpx.Client(base_url=sim_url, timeout=120) as client:
        while len(ids) < n:
            r = client.post("/_sim/jobs", json={"provider": "basiq", "count": min(batch, n - len(ids))})
            r.raise_for_status()
            ids += [str(i) for i in r.json()["ids"]]
    return ids


def config(
    sim_url: str, secrets: Path, ids: list[str], poll_interval: float = POLL_INTERVAL
) -> dict[str, Any]:
    return {
        "global": {
            "poll_interval": f"{poll_interval:g}s",
            "max_jobs_per_target": max(len(ids), 1) + 100,
            # Every job's series, the heaviest body, at every size (`auto` would serve only the
            # exceptions above 10,000 jobs: bench/series.py measures that).
            "per_job_series": "all",
        },
        "targets": [
            {
                "name": TARGET,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                "jobs": ids,
            }
        ],
    }


@dataclass
class Fleet:
    sim: Proc
    ids: list[str]
    tmp: Path
    secrets: Path


@contextmanager
def simulated(n_jobs: int) -> Iterator[Fleet]:
    """The simulator subprocess with `n_jobs` running Basiq jobs."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        secrets = write_secrets(tmp)
        with simulator(tmp, step_seconds=STEP_SECONDS, extra=["--log.level=warn"]) as sim:
            yield Fleet(sim, create_jobs(sim.url, n_jobs), tmp, secrets)


_RUNNING = re.compile(rb'^asyncjob_jobs\{[^}]*status="running"\} (\S+)$', re.M)


def running(body: bytes) -> int:
    """Jobs counted running in a plain /metrics body (each answered by the provider once)."""
    return sum(int(float(v)) for v in _RUNNING.findall(body))


def wait_all_polled(url: str, n_jobs: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> float:
    """Seconds until /metrics counts every job running (each polled at least once)."""
    started = time.monotonic()
    deadline = started + timeout
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline and alive():
            try:
                if running(client.get(f"{url}/metrics").content) >= n_jobs:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"the exporter did not poll all {n_jobs} jobs within {timeout:.0f}s (or it died)")


@contextmanager
def polling_exporter(fleet: Fleet, timeout: float = 300.0) -> Iterator[tuple[Exporter, float]]:
    """The real CLI polling every job of the fleet; yields it once every job was answered,
    with the seconds that took from start."""
    started = time.monotonic()
    with exporter(
        fleet.tmp,
        config(fleet.sim.url, fleet.secrets, fleet.ids),
        extra=["--log.level=warn"],
        wait_ready=False,
    ) as exp:
        wait_all_polled(exp.url, len(fleet.ids), timeout, lambda: exp.popen.poll() is None)
        yield exp, time.monotonic() - started


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
