"""`python -m bench` (`make bench`): run every benchmark, keep the raw figures in bench/results/,
print each target's figure beside its baseline, write docs/benchmarks.md whole.
`--only scrape,poll` runs some of them (results only, docs untouched).

To add a benchmark: a module with `run(log) -> results`, an entry in BENCHMARKS, and a Section
in bench/report.py's SECTIONS that reads its results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    auth,
    changes,
    cluster,
    detection,
    jobrate,
    lockout,
    machine,
    memory,
    pgdriver,
    poll,
    registration,
    report,
    scrape,
    series,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
COMMAND = ".venv/bin/python -m bench"  # what `make bench` runs

Log = Callable[[str], None]


def _detection(log: Log) -> list[dict[str, Any]]:
    out = []
    for mode in detection.MODES:
        log(f"detection: {mode}")
        out.append(detection.run(mode=mode))
    return out


# (name, what it does, run): in the order they run.
BENCHMARKS: list[tuple[str, str, Callable[[Log], Any]]] = [
    ("scrape", "10,000 jobs polled and changing, scraped", lambda log: scrape.run(log=log)),
    (
        "series",
        "series and scrape size of 10,000 jobs in each per_job_series mode",
        lambda log: series.run(log=log),
    ),
    ("changes", "cost per change at 1,000 and 100,000 jobs", lambda log: changes.run()),
    ("memory", "1,000, 10,000 and 50,000 jobs polled by the CLI", lambda log: memory.run(log=log)),
    ("poll", "2,000 jobs against the simulator", lambda log: poll.run(n_jobs=2000, rounds=3)),
    ("detection", "failures to /metrics", _detection),
    (
        "fleet",
        "a labelled fleet through Prometheus and Alertmanager, every job's series and the exceptions' only: "
        "precision, recall, time to page",
        lambda log: detection.fleet_in_both_modes(log=log),
    ),
    (
        "registration",
        "registrations at concurrency 64 while 10,000 jobs are polled, against bare Starlette",
        lambda log: registration.run(log=log),
    ),
    ("auth", "authenticated scrapes during a wrong-password flood", lambda log: auth.run(log=log)),
    (
        # The longest by far: 12 minutes and the drain (BENCH_SOAK_SECONDS, BENCH_SOAK_WARMUP).
        "soak",
        "50 registrations a second through the CLI for 10 minutes after 2 of warm-up",
        lambda log: jobrate.run(log=log),
    ),
    ("pgdriver", "psycopg and asyncpg against one PostgreSQL", lambda log: pgdriver.run()),
    (
        "cluster",
        "3 replicas sharing PostgreSQL and one SQLite process, on the same 30,000 jobs: first full poll, "
        "CPU a poll, registrations, kill -9 of a replica, statements a poll cycle",
        lambda log: cluster.run(log=log),
    ),
    (
        "lockout",
        "scrapes on new connections while more connections than the cap pipeline wrong passwords",
        lambda log: lockout.run(log=log),
    ),
]
NAMES = tuple(name for name, _, _ in BENCHMARKS)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {', '.join(NAMES)}")
    args = p.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(only) - set(NAMES)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine.describe()}
    for name, what, run in BENCHMARKS:
        if name in only:
            log(f"{name}: {what}")
            t = time.perf_counter()
            results[name] = run(log)
            log(f"{name}: {time.perf_counter() - t:.0f} s")
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = machine.load_average()

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    raw = json.dumps(results, indent=1)
    (RESULTS / f"{stamp}.json").write_text(raw)
    (RESULTS / "latest.json").write_text(raw)
    if set(only) == set(NAMES):
        DOC.write_text(report.render(results, COMMAND))
        log(f"wrote {DOC.relative_to(ROOT)}")
    for row in report.targets(results):
        log(
            f"  {'met   ' if row['met'] else 'MISSED'}  {row['what']}: {row['measured']}"
            f" (target {row['target']}; baseline {row['baseline'] or '-'})"
        )
    log(f"raw figures in {(RESULTS / f'{stamp}.json').relative_to(ROOT)}; {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
