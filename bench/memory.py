"""Memory: resident set per tracked job, each size in a fresh interpreter
(`python -m bench.memory N` prints one JSON line).

Baseline: VmRSS after every import. Then N jobs are tracked, rendered and scraped once (so the
per-group caches exist, as in a running exporter), and VmRSS is read again.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def breakdown(fleet: Any) -> dict[str, int]:
    """Bytes held by the renderer's caches (objects included): only compressed members."""
    gz = 0
    for groups in fleet.exposition.jobs.groups.values():
        for g in groups:
            gz += sum(sys.getsizeof(b.data) for b in g.blocks or ())
    return {"group_gzip_members": gz}


def measure(n_jobs: int) -> dict[str, Any]:
    from bench import synthetic

    ids = [synthetic.job_id(i) for i in range(n_jobs)]  # the ids exist in any exporter: not counted
    gc.collect()
    before = rss_bytes()
    fleet = synthetic.fleet(ids)
    fleet.exposition.render(gz=True)  # a first scrape fills each group's caches
    gc.collect()
    after = rss_bytes()
    caches = breakdown(fleet)
    return {
        "jobs": n_jobs,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_job": (after - before) / n_jobs,
        "renderer_bytes_per_job": {k: v / n_jobs for k, v in caches.items()},
    }


def in_fresh_process(n_jobs: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", str(n_jobs)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(sizes: tuple[int, ...] = (10_000, 50_000)) -> dict[str, Any]:
    return {"sizes": [in_fresh_process(n) for n in sizes]}


if __name__ == "__main__":
    import bench.synthetic  # noqa: F401  (imported before the baseline reading, with all it imports)

    print(json.dumps(measure(int(sys.argv[1]))))
