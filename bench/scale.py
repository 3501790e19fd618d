"""Scale: 100k jobs split over 4 shards with the exporter's own shard_of, each shard scraped as in the
scrape benchmark; and the series a job costs with `per_job_metrics: true` against `false`."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from bench import scrape, synthetic
from exporter.sharding import shard_of


def shards(total_jobs: int, total_shards: int) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(total_shards)]
    for i in range(total_jobs):
        jid = synthetic.job_id(i)
        out[shard_of(synthetic.TARGET, jid, total_shards)].append(jid)
    return out


def sharded(
    total_jobs: int,
    total_shards: int,
    unchanged: int,
    changed: int,
    baseline_reps: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Each shard scraped in turn (in process and over HTTP); generate_latest measured on shard 0
    only, as the baseline of all (the shards hold the same number of jobs to within a few %)."""
    per_shard = []
    for index, ids in enumerate(shards(total_jobs, total_shards)):
        log(f"  scale: shard {index} of {total_shards}: {len(ids)} jobs")
        r = scrape.run(
            ids=ids,
            unchanged=unchanged,
            changed=changed,
            baseline_reps=baseline_reps,
            strict_parser=False,
            with_baseline=index == 0,
            log=log,
        )
        r["shard"] = index
        per_shard.append(r)
        gc.collect()
    g = per_shard[0]["baseline"]["generate_latest_ms"]
    for r in per_shard:
        r["ratios"] = {
            "baseline_over_http_unchanged": g / r["http"]["unchanged_ms"],
            "baseline_over_http_all_changed": g / r["http"]["all_changed_ms"],
        }
    return {"total_jobs": total_jobs, "total_shards": total_shards, "shards": per_shard}


def series_count(n_jobs: int, per_job_metrics: bool) -> int:
    fleet = synthetic.fleet([synthetic.job_id(i) for i in range(n_jobs)], per_job_metrics)
    text = fleet.exposition.render(gz=False).decode()
    return sum(1 for _ in synthetic.samples(text))


def per_job_choice(n_jobs: int) -> dict[str, Any]:
    """Series exposed for n_jobs tracked jobs with per_job_metrics true and false."""
    with_jobs, without = series_count(n_jobs, True), series_count(n_jobs, False)
    return {
        "jobs": n_jobs,
        "series_per_job_metrics_true": with_jobs,
        "series_per_job_metrics_false": without,
        "series_per_job_true": (with_jobs - without) / n_jobs,
        "ratio_true_over_false": with_jobs / without,
    }


def run(
    total_jobs: int = 100_000,
    total_shards: int = 4,
    unchanged: int = 20,
    changed: int = 3,
    baseline_reps: int = 1,
    choice_jobs: int = 10_000,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    result = sharded(total_jobs, total_shards, unchanged, changed, baseline_reps, log)
    result["per_job_metrics"] = per_job_choice(choice_jobs)
    return result
