"""Soak: the exporter against the simulator with faults switched on, for a bounded time.

Tracks 2,000 jobs (and a steady trickle of new ones), injects 5xx, 429, timeouts,
truncated bodies and token expiry in turns, and samples the exporter's RSS, open files
and event-loop tasks from its own /metrics. Healthy means flat: the last third of the run
is compared with the first third. Writes docs/soak.md.

    python -m bench.soak [--seconds 300] [--jobs 2000]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.harness import Exporter, Proc, create_job, exporter, simulator, wait_for, write_secrets

ROOT = Path(__file__).resolve().parent.parent
FAULTS: list[dict[str, str | int]] = [
    {"kind": "status", "status": 503, "retry_after": 2},
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 429, "retry_after": 1},
    {"kind": "timeout", "delay": 3},
    {"kind": "truncated"},
    {"kind": "not_json"},
    {"kind": "expire_token"},
    {"kind": "reset"},
]
USERS = [f"user{i}" for i in range(20)]


def sample(exp: Exporter) -> dict[str, float]:
    values = {}
    for name in ("process_resident_memory_bytes", "process_open_fds", "asyncjob_exporter_tasks"):
        v = exp.value(name)
        values[name] = float(v) if v is not None else float("nan")
    jobs = sum(v for n, _, v in exp.samples() if n == "asyncjob_jobs")
    values["tracked_jobs"] = jobs
    return values


def run(seconds: float, jobs: int) -> list[tuple[float, dict[str, float]]]:
    tmp = Path(tempfile.mkdtemp(prefix="asyncjob-soak-"))
    with simulator(tmp, step_seconds=10) as sim:
        secrets = write_secrets(tmp)
        scenarios = itertools.cycle(["success", "success", "fail", "slow", "stuck", "partial"])
        for i in range(jobs):
            create_job(sim, "basiq", scenario=next(scenarios), owner=USERS[i % len(USERS)])
        cfg = {
            "global": {"poll_interval": "2s", "timeout": "1s", "retention": "30s", "stuck_after": "1m"},
            "targets": [
                {
                    "name": "soak",
                    "provider": "basiq",
                    "base_url": f"{sim.url}/basiq",
                    "users": USERS,
                    "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                }
            ],
        }
        with exporter(tmp, cfg, extra=["--log.level=warn"], wait_ready=False) as exp:
            wait_for(
                lambda: exp.value("asyncjob_target_up", target="soak") is not None,
                timeout=60,
                what="first poll",
            )
            return _loop(sim, exp, seconds, jobs)


def _loop(sim: Proc, exp: Exporter, seconds: float, jobs: int) -> list[tuple[float, dict[str, float]]]:
    start = time.monotonic()
    samples: list[tuple[float, dict[str, float]]] = []
    faults = itertools.cycle(FAULTS)
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        httpx.delete(f"{sim.url}/_sim/faults", timeout=5)
        httpx.post(
            f"{sim.url}/_sim/faults", json={"provider": "basiq", "remaining": 20, **next(faults)}, timeout=5
        )
        for _ in range(10):  # a trickle of new jobs: ~1 a second
            create_job(sim, "basiq", scenario="success", owner=USERS[n % len(USERS)])
            n += 1
        samples.append((elapsed, sample(exp)))
        print(f"{elapsed:6.0f}s {samples[-1][1]}", file=sys.stderr, flush=True)
        time.sleep(max(0.0, 10 - (time.monotonic() - start - elapsed)))
    assert exp.popen.poll() is None, "the exporter died during the soak"
    return samples


def report(samples: list[tuple[float, dict[str, float]]], seconds: float, jobs: int, command: str) -> str:
    third = max(1, len(samples) // 3)
    # Skip the first minute of warm-up (imports, first polls, caches) in the baseline.
    warm = [s for t, s in samples if t >= 60] or [s for _, s in samples]
    first, last = warm[:third], warm[-third:]
    rows = []
    # Tasks come and go with each poll cycle (one per request in flight): their floor, the idle
    # count, is what shows a leak. RSS and open files are compared by their means.
    measures = (
        ("process_resident_memory_bytes", "MiB", 1 / 2**20, statistics.mean, "mean"),
        ("process_open_fds", "", 1, statistics.mean, "mean"),
        ("asyncjob_exporter_tasks", "", 1, min, "idle (min)"),
    )
    for key, unit, scale, how, label in measures:
        a = how(s[key] for s in first) * scale
        b = how(s[key] for s in last) * scale
        peak = max(s[key] for _, s in samples) * scale
        ratio = b / a if a else float("nan")
        rows.append(f"| {key}, {label} | {a:.1f}{unit} | {b:.1f}{unit} | {ratio:.2f} | {peak:.1f}{unit} |")
    return "\n".join(
        [
            "# Soak",
            "",
            f"`{command}` — {seconds:.0f} s, {jobs} jobs tracked at the start plus about one new job a second,",
            "faults injected in turns (503 with Retry-After, 500, 429, hung answers, truncated and non-JSON",
            "bodies, token expiry, connection resets), 2 s poll interval, 30 s retention.",
            f"Machine: {platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
            "",
            "The first third of the run after a minute of warm-up against the last third; flat is a ratio",
            "near 1. Tracked jobs fall over the run as the initial 2,000 finish and leave after retention.",
            "",
            "| measure | first third | last third | ratio | peak |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "soak.md")
    args = p.parse_args()
    samples = run(args.seconds, args.jobs)
    text = report(samples, args.seconds, args.jobs, "make soak")
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
