"""Sharding: a stable hash spreads jobs, and a re-shard hands restored jobs over."""

from __future__ import annotations

from exporter.config import build_settings
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.scheduler import Scheduler
from exporter.sharding import shard_of
from exporter.tracker import Tracker


def test_the_hash_is_stable_and_spreads_jobs() -> None:
    ids = [str(i) for i in range(3000)]
    shards = [shard_of("t", i, 3) for i in ids]
    assert shards == [shard_of("t", i, 3) for i in ids]
    assert all(900 < shards.count(k) < 1100 for k in range(3))
    assert {shard_of("t", i, 1) for i in ids} == {0}


def test_after_a_reshard_restored_jobs_of_other_shards_are_dropped_but_registered_ones_stay() -> None:
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tracker = Tracker()
    tracker.set_target(s.resolved(s.targets[0]))
    for i in range(40):
        tracker.track("t", Job(f"d{i}", Status.RUNNING), "discovered")
        tracker.track("t", Job(f"r{i}", Status.RUNNING), "registered")
    scheduler = Scheduler(tracker, shard=1, total_shards=2)
    scheduler._hand_over("t")
    jobs = tracker.targets["t"].jobs
    assert {j for j in jobs if j.startswith("d")} == {
        f"d{i}" for i in range(40) if shard_of("t", f"d{i}", 2) == 1
    }
    assert {j for j in jobs if j.startswith("r")} == {f"r{i}" for i in range(40)}
    assert tracker.targets["t"].agg.dropped["resharded"] == 40 - sum(1 for j in jobs if j.startswith("d"))
