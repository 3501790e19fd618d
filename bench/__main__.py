"""`python -m bench` (`make bench`): run every benchmark, keep the raw figures in bench/results/,
write docs/benchmarks.md. `--only scrape,poll` runs some of them (results only, docs untouched)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import detection, machine, memory, poll, report, scale, scrape

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
COMMAND = ".venv/bin/python -m bench"  # what `make bench` runs
NAMES = ("scrape", "poll", "memory", "scale", "detection")


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
    results: dict[str, Any] = {"machine": machine.describe(), "profiles": {}}
    profs: dict[str, list[str]] = {}
    if "scrape" in only:
        log("scrape: 10,000 jobs")
        profs["scrape"] = []
        results["scrape"] = scrape.run(n_jobs=10_000, log=log, profile=profs["scrape"])
    if "poll" in only:
        log("poll: 2,000 jobs against the simulator")
        profs["poll"] = []
        results["poll"] = poll.run(n_jobs=2000, rounds=3, profile=profs["poll"])
    if "memory" in only:
        log("memory: 10,000 and 50,000 jobs, a fresh process each")
        results["memory"] = memory.run((10_000, 50_000))
    if "scale" in only:
        log("scale: 100,000 jobs over 4 shards")
        results["scale"] = scale.run(log=log)
    if "detection" in only:
        results["detection"] = []
        for mode in detection.MODES:
            log(f"detection: {mode}")
            results["detection"].append(detection.run(mode=mode))
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = machine.load_average()

    titles = {
        "scrape": (
            "Scrape right after every job changed: `Exposition.render(gz=True)` (by own time)",
            "Re-rendering every job: `Tracker.update` + `render_job` x N (by own time)",
        ),
        "poll": (
            "One poll cycle of the exporter's poll path (by own time)",
            "The same, the exporter's own functions (by cumulative time)",
        ),
    }
    for name, texts in profs.items():
        for title, text in zip(titles[name], texts, strict=False):
            results["profiles"][title] = text

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    raw = json.dumps(results, indent=1)
    (RESULTS / f"{stamp}.json").write_text(raw)
    (RESULTS / "latest.json").write_text(raw)
    if set(only) == set(NAMES):
        DOC.write_text(report.render(results, COMMAND))
        log(f"wrote {DOC.relative_to(ROOT)}")
    rows = report.targets(results)
    for row in rows:
        log(f"  {'met   ' if row['met'] else 'MISSED'}  {row['what']}: {row['measured']} ({row['ratio']})")
    log(f"raw figures in {(RESULTS / f'{stamp}.json').relative_to(ROOT)}; {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
