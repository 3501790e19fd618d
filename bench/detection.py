"""Detection latency: from a job failing at the provider to `status="failed"` in /metrics, with the
real CLI against the simulator (both subprocesses, as tests/harness.py starts them)."""

from __future__ import annotations

import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.harness import exporter, simulator, write_secrets

TARGET = "basiq-latency"
USER = "ea3a81"  # a Basiq user of the simulator, for discovery through its job list
MODES = ("discovery", "registration")


def config(sim_url: str, secrets: Path, poll_interval: float, mode: str) -> dict[str, Any]:
    discovery = {"users": [USER]} if mode == "discovery" else {}
    return {
        "global": {"poll_interval": f"{poll_interval:g}s", "retention": "10m"},
        "targets": [
            {
                "name": TARGET,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                **discovery,
            }
        ],
    }


def failed_line(job_id: str) -> re.Pattern[str]:
    return re.compile(
        rf'^asyncjob_job_status\{{target="{TARGET}",job_id="{re.escape(job_id)}",status="failed"\}} 1$', re.M
    )


def run(
    jobs: int = 6,
    mode: str = "discovery",
    poll_interval: float = 2.0,
    step_seconds: float = 1.0,
    fail_step: int = 1,
    scrape_every: float = 0.05,
    seed: int = 7,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Jobs are created at random offsets against the poll schedule and fail at the provider.

    The simulator answers "failed" from created + (fail_step + 1) * step_seconds on (no queue
    time; the failing step runs its full length), the finished time it reports
    (SimJob.finished_at). Latency is measured from that moment.

    `discovery`: the exporter finds them in the user's job list at its own pace.
    `registration`: each is registered through the API as it is created (which wakes the
    target's poll loop: a poll follows about a second later).
    """
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        secrets = write_secrets(tmp)
        with (
            simulator(tmp, step_seconds=step_seconds) as sim,
            exporter(tmp, config(sim.url, secrets, poll_interval, mode)) as exp,
            httpx.Client(timeout=5) as client,
        ):
            failed_at: dict[str, float] = {}
            seen_at: dict[str, float] = {}
            next_create = time.time()
            deadline = time.time() + timeout
            while len(seen_at) < jobs and time.time() < deadline:
                if len(failed_at) < jobs and time.time() >= next_create:
                    r = client.post(
                        f"{sim.url}/_sim/jobs",
                        json={"provider": "basiq", "scenario": "fail", "fail_step": fail_step, "owner": USER},
                    )
                    r.raise_for_status()
                    job = r.json()
                    failed_at[job["id"]] = job["created"] + (fail_step + 1) * step_seconds
                    if mode == "registration":
                        client.post(
                            f"{exp.url}/api/v1/targets/{TARGET}/jobs", json={"id": job["id"]}
                        ).raise_for_status()
                    next_create = time.time() + rng.uniform(0.3, 1.3) * poll_interval
                text = client.get(f"{exp.url}/metrics").text
                now = time.time()
                for jid in failed_at.keys() - seen_at.keys():
                    if failed_line(jid).search(text):
                        seen_at[jid] = now
                time.sleep(scrape_every)
            if len(seen_at) < jobs:
                raise RuntimeError(f"only {len(seen_at)} of {jobs} failures reached /metrics in {timeout}s")
    latencies = sorted(seen_at[j] - failed_at[j] for j in seen_at)
    return {
        "mode": mode,
        "jobs": jobs,
        "poll_interval_s": poll_interval,
        "step_seconds": step_seconds,
        "scrape_every_s": scrape_every,
        "latencies_s": latencies,
        "max_s": max(latencies),
        "median_s": statistics.median(latencies),
        "max_over_poll_interval": max(latencies) / poll_interval,
    }
