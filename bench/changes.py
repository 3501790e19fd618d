"""Cost per change: adding, updating and dropping jobs at a small and a large fleet, through
`Tracker` with the exposition listening (no network: what a change costs the exporter, not a
scrape). Each operation touches the jobs of the same number of whole groups at both sizes, so
the render share (one group of GROUP_SIZE jobs per dirty group) is the same; the figures are the
tracker's and the group cache's bookkeeping, then the same plus rendering the dirty groups."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench import synthetic
from exporter.render import Exposition
from exporter.render.groups import GROUP_SIZE
from exporter.tracker import Tracker

BATCH = 10 * GROUP_SIZE  # jobs per timed batch: ten whole groups


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(n_jobs: int, reps: int) -> dict[str, Any]:
    ids = [synthetic.job_id(i) for i in range(n_jobs)]
    settings = synthetic.settings(n_jobs + BATCH * (reps + 1))
    tracker = Tracker()
    exposition = Exposition(tracker, lambda: {})
    state = tracker.set_target(settings.resolved(settings.targets[0]))
    synthetic.track(tracker, ids)
    exposition.render(gz=True)  # every group rendered and assembled once
    jobs = exposition.jobs
    gc.collect()
    gc.disable()  # a collection inside one batch and not the other is noise, not cost
    try:
        add, add_r, upd, upd_r, drop, drop_r, assemble = [], [], [], [], [], [], []
        for rep in range(reps):
            new = [synthetic.job_id(n_jobs + rep * BATCH + i) for i in range(BATCH)]
            add.append(_timed(lambda new=new: synthetic.track(tracker, new)))  # type: ignore[misc]
            add_r.append(add[-1] + _timed(jobs.refresh))
            start = (rep * BATCH) % max(1, n_jobs - BATCH)
            start -= start % GROUP_SIZE  # whole groups, as filled in order
            some = ids[start : start + BATCH]
            version = rep + 100

            def update(some: list[str] = some, version: int = version) -> None:
                for jid in some:
                    tracker.update(state, synthetic.running_job(jid, version), synthetic.T0 + version)

            upd.append(_timed(update))
            upd_r.append(upd[-1] + _timed(jobs.refresh))
            assemble.append(_timed(jobs.assemble))

            def remove(new: list[str] = new) -> None:
                for jid in new:
                    tracker.drop(synthetic.TARGET, jid, "deleted")

            drop.append(_timed(remove))
            drop_r.append(drop[-1] + _timed(jobs.refresh))
    finally:
        gc.enable()

    def us(xs: list[float]) -> float:
        return statistics.median(xs) / BATCH * 1e6

    return {
        "jobs": n_jobs,
        "add_us": us(add),
        "add_rendered_us": us(add_r),
        "update_us": us(upd),
        "update_rendered_us": us(upd_r),
        "drop_us": us(drop),
        "drop_rendered_us": us(drop_r),
        "assemble_ms": statistics.median(assemble) * 1000,
    }


def run(sizes: tuple[int, int] = (1000, 100_000), reps: int = 7) -> dict[str, Any]:
    small, large = (measure(n, reps) for n in sizes)
    keys = ("add_us", "add_rendered_us", "update_us", "update_rendered_us", "drop_us", "drop_rendered_us")
    return {
        "batch": BATCH,
        "small": small,
        "large": large,
        "ratios": {k: large[k] / small[k] for k in keys},
    }
