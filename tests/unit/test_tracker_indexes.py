"""The tracker's indexes for the scheduler and the sweep: the unfinished jobs and the retention
queue follow every change, so neither needs a pass over all jobs."""

from __future__ import annotations

from exporter.model import Job, Status
from exporter.providers.base import PollResult
from exporter.tracked import TOMBSTONE_SECONDS, TrackedJob
from tests.unit.test_tracker import tracker

R, P, S, F = Status.RUNNING, Status.PENDING, Status.SUCCEEDED, Status.FAILED


def test_pollable_follows_transitions_both_ways_in_arrival_order() -> None:
    tr = tracker()
    for job_id in ("a", "b", "c"):
        tr.track("t", Job(job_id, R), "static", now=1)
    tr.apply("t", PollResult(jobs=[Job("b", S)]), now=2)
    assert tr.pollable("t") == ["a", "c"]
    tr.apply("t", PollResult(jobs=[Job("b", P)]), now=3)  # a rerun brought it back
    assert tr.pollable("t") == ["a", "c", "b"]
    tr.drop("t", "a", "deleted")
    assert tr.pollable("t") == ["c", "b"]


def test_a_job_finished_again_is_kept_for_its_latest_finish() -> None:
    tr = tracker(retention="60s")
    tr.track("t", Job("1", S), "static", now=100)
    tr.apply("t", PollResult(jobs=[Job("1", R)]), now=120)
    tr.apply("t", PollResult(jobs=[Job("1", F)]), now=150)
    assert tr.sweep(now=170) == 0  # 60 s after the first finish: the second one counts
    assert "1" in tr.targets["t"].jobs
    assert tr.sweep(now=211) == 1
    assert not tr.targets["t"].retention_queue and not tr.targets["t"].queued


def test_finished_jobs_restored_from_the_state_file_drop_after_their_retention() -> None:
    tr = tracker(retention="60s")
    config = tr.targets["t"].config
    tr.remove_target("t")
    restored = [
        TrackedJob(Job("old", S), "basiq", first_seen=0, last_progress=0, seen_terminal_at=50),
        TrackedJob(Job("run", R), "basiq", first_seen=0, last_progress=0),
        TrackedJob(Job("new", F), "basiq", first_seen=0, last_progress=0, seen_terminal_at=90),
    ]
    tr.restore = lambda state: restored
    tr.set_target(config)
    assert tr.pollable("t") == ["run"]
    assert tr.sweep(now=111) == 1
    assert set(tr.targets["t"].jobs) == {"run", "new"}
    assert tr.sweep(now=151) == 1


def test_tombstones_are_forgotten_oldest_first_and_a_new_drop_renews_one() -> None:
    tr = tracker()
    state = tr.targets["t"]
    state.tombstones.update({"a": 0.0, "b": 10.0, "c": 20.0})
    state.tombstones.pop("a")
    state.tombstones["a"] = 30.0  # what drop() does to an id dropped again
    tr.sweep(now=TOMBSTONE_SECONDS + 15)
    assert list(state.tombstones) == ["c", "a"]
    tr.sweep(now=TOMBSTONE_SECONDS + 31)
    assert not state.tombstones
