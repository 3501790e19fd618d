"""The SQLite state file: what survives a restart, and how its schema is versioned."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from exporter.config import build_settings
from exporter.model import NO_EXTRA, Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.runtime import connect_store
from exporter.state import (
    SCHEMA_VERSION,
    StateError,
    StateUnwritable,
    Store,
    tracked_from_dict,
    tracked_to_dict,
)
from exporter.store import StateStore
from exporter.tracked import TOMBSTONE_SECONDS
from exporter.tracker import Tracker


class NoScheduler:
    store: StateStore | None = None


def tracker_with_store(path: Path, lists: bool = False) -> tuple[Tracker, Store]:
    """A Basiq target "t" whose jobs are in the state file at `path`; with `lists`, a target that
    lists its users' jobs too (only such a target keeps tombstones in the file)."""
    target = {
        "name": "t",
        "provider": "basiq",
        "base_url": "https://x",
        **({"users": ["u"]} if lists else {}),
    }
    s = build_settings({"targets": [target]}, PROVIDERS)
    tracker = Tracker()
    store = Store(str(path))
    connect_store(store, tracker, NoScheduler(), history=store)
    tracker.set_target(s.resolved(s.targets[0]))
    return tracker, store


def test_a_tracked_job_round_trips_whole() -> None:
    tracker = Tracker()
    job = Job(
        "1",
        Status.FAILED,
        job_type="connection",
        created=10.0,
        reason="maintenance",
        message="down",
        steps=(Step("verify-credentials", Status.FAILED, "failed", "maintenance"),),
        records_total=5,
    )
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tracker.set_target(s.resolved(s.targets[0]))
    tracked = tracker.track("t", job, "registered", now=20)
    assert tracked_from_dict(tracked_to_dict(tracked)) == tracked


# A row as the release before packed step times and histories wrote it (three step dicts).
OLD_ROW = (
    '{"job":{"id":"job-1","status":"running","raw_status":"","job_type":"","percent":null,"created":90.0,'
    '"started":90.0,"finished":null,"updated":125.0,"steps":[{"name":"verify","status":"succeeded",'
    '"raw_status":"","reason":null,"message":null,"awaiting_user":false},{"name":"accounts",'
    '"status":"succeeded","raw_status":"","reason":null,"message":null,"awaiting_user":false},'
    '{"name":"transactions","status":"running","raw_status":"","reason":null,"message":null,'
    '"awaiting_user":false}],"records_total":null,"records_affected":null,"records_failed":null,'
    '"attempts":null,"reason":null,"message":null,"cause":null,"awaiting_user":false,"extra":{}},'
    '"provider":"basiq","first_seen":100.0,"last_progress":125.0,"source":"registered",'
    '"seen_terminal_at":null,"counted":false,"step_started":{"verify":90.0,"accounts":95.0,'
    '"transactions":130.0},"step_finished":{"verify":95.0,"accounts":130.0},"step_duration":'
    '{"accounts":35.0},"reruns":0,"polled":true,"is_history":false,"cause":null,"history":[100.0,"",'
    '"running",100.0,"verify","succeeded",110.0,"accounts","running",130.0,"accounts","succeeded",'
    '130.0,"transactions","running"]}'
)


def test_a_row_written_by_the_previous_release_reads_as_the_same_observations(tmp_path: Path) -> None:
    names = ("verify", "accounts", "transactions")

    def seen(*statuses: Status, updated: float) -> Job:
        steps = tuple(Step(n, st) for n, st in zip(names, statuses, strict=True))
        return Job("job-1", Status.RUNNING, created=90, started=90, updated=updated, steps=steps)

    R, P, S = Status.RUNNING, Status.PENDING, Status.SUCCEEDED
    # What the old release saw before writing OLD_ROW, seen by this one.
    tracker = Tracker()
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tracker.set_target(s.resolved(s.targets[0]))
    tracker.track("t", seen(S, P, P, updated=95), "registered", now=100)
    tracker.apply("t", PollResult(jobs=[seen(S, R, P, updated=105)]), now=110)
    tracker.apply("t", PollResult(jobs=[seen(S, S, R, updated=125)]), now=130)
    expected = tracker.targets["t"].jobs["job-1"]

    path = tmp_path / "state.db"
    Store(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO jobs (target, job_id, data) VALUES ('t', 'job-1', ?)", (OLD_ROW,))
    db.commit()
    db.close()
    again, store = tracker_with_store(path)
    restored = again.targets["t"].jobs["job-1"]
    assert restored == expected
    assert restored.step_duration == {"accounts": 35.0}
    # And it goes on as if never saved: the running step's start was kept.
    again.apply("t", PollResult(jobs=[seen(S, S, S, updated=145)]), now=150)
    assert restored.step_duration == {"accounts": 35.0, "transactions": 20.0}
    store.close()
    db = sqlite3.connect(path)
    (row,) = db.execute("SELECT data FROM jobs").fetchone()
    db.close()
    assert '"step_started"' not in row  # written again in this release's form
    assert json.loads(row)["step_times"]["transactions"] == [130.0, 150.0, 20.0]


def test_jobs_read_back_share_what_jobs_in_the_same_state_share() -> None:
    tracker = Tracker()
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tracker.set_target(s.resolved(s.targets[0]))
    steps = (Step("verify", Status.SUCCEEDED, "success"), Step("accounts", Status.RUNNING, "in-progress"))
    for job_id in ("1", "2"):
        job = Job(job_id, Status.RUNNING, "verify:success,accounts:in-progress", "connection", steps=steps)
        tracker.track("t", job, "static", now=1)
    # Each row is read into strings of its own, as a restart does.
    a, b = (tracked_from_dict(tracked_to_dict(t)) for t in tracker.targets["t"].jobs.values())
    assert a.job.steps == steps and a.job.steps is b.job.steps
    assert a.job.raw_status is b.job.raw_status and a.job.job_type is b.job.job_type
    assert a.job.extra is NO_EXTRA and a.provider is b.provider and a.source is b.source


def test_jobs_marks_cursors_and_tombstones_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path, lists=True)
    tracker.track("t", Job("done", Status.SUCCEEDED), "static", now=1)
    tracker.track("t", Job("run", Status.RUNNING, updated=5), "registered", now=6)
    tracker.track("t", Job("old", Status.SUCCEEDED), "discovered", now=1)
    tracker.drop("t", "old", "retention")
    store.save_cursors("t", {"queue-20": "41@1528112097"})
    store.close()

    tracker, store = tracker_with_store(path, lists=True)
    jobs = tracker.targets["t"].jobs
    assert set(jobs) == {"done", "run"}
    assert jobs["done"].counted and jobs["run"].last_progress == 5 and jobs["run"].source == "registered"
    assert "old" in tracker.targets["t"].tombstones
    assert store.cursors("t") == {"queue-20": "41@1528112097"}
    assert tracker.targets["t"].agg.finished == {}  # counters restart from zero
    store.close()


def test_the_schema_version_is_recorded_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(str(path)).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer"):
        Store(str(path))


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_text("not a database " * 100)
    with pytest.raises(StateError, match=r"state\.db"):
        Store(str(path))


# --- acknowledged means committed ------------------------------------------------------


@pytest.mark.anyio
async def test_committed_returns_only_once_the_change_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        tracker.track("t", Job("a", Status.RUNNING), "registered", now=1)
        assert Store(str(path)).restore(tracker.targets["t"]) == []  # not yet written
        await store.committed()
        other = Store(str(path))
        assert [t.job.id for t in other._restored["t"]] == ["a"]
        assert store.pending_writes == 0
        tg.cancel_scope.cancel()
    store.close()


@pytest.mark.anyio
async def test_many_changes_share_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    commits: list[int] = []
    real = store._begin

    def counting() -> sqlite3.Connection:
        commits.append(1)
        return real()

    store._begin = counting  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        await anyio.sleep(0.05)

        async def register(i: int) -> None:
            tracker.track("t", Job(f"j{i}", Status.PENDING), "registered", now=1)
            await store.committed()

        async with anyio.create_task_group() as clients:
            for i in range(200):
                clients.start_soon(register, i)
        tg.cancel_scope.cancel()
    assert 0 < len(commits) < 200
    store.close()
    assert len(Store(str(path))._restored["t"]) == 200


@pytest.mark.anyio
async def test_a_round_stopped_between_its_statements_is_rolled_back_and_written_on_the_way_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    real, statements = store._write, []

    def write(db: sqlite3.Connection, sql: str, rows: list[tuple[object, ...]] | tuple[object, ...]) -> int:
        statements.append(sql)
        if len(statements) == 1:
            tg.cancel_scope.cancel()  # the round stops at its next step, mid-transaction
        return real(db, sql, rows)

    store._write = write  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        for i in range(1200):  # three statements of jobs
            tracker.track("t", Job(f"j{i}", Status.PENDING), "registered", now=1)
        await anyio.sleep(5)
    assert store.pending_writes == 0  # the last round wrote it all: nothing was left half-done
    store.close()
    assert len(Store(str(path))._restored["t"]) == 1200


def test_a_finished_jobs_increment_is_visible_only_after_its_mark_is_committed(tmp_path: Path) -> None:
    tracker, store = tracker_with_store(tmp_path / "state.db")
    tracker.track("t", Job("a", Status.RUNNING, job_type="connection"), "registered", now=1)
    store.flush()
    tracker.track("t", Job("a", Status.SUCCEEDED, job_type="connection"), "registered", now=2)
    agg = tracker.targets["t"].agg
    assert tracker.targets["t"].jobs["a"].counted
    assert agg.finished[("connection", Status.SUCCEEDED)] == 0  # held back: the mark is not durable yet
    store.flush()
    assert agg.finished[("connection", Status.SUCCEEDED)] == 1
    store.close()


def test_queue_events_count_once_their_cursor_is_committed(tmp_path: Path) -> None:
    from exporter.providers.base import PollResult

    tracker, store = tracker_with_store(tmp_path / "state.db")
    tracker.apply("t", PollResult(queue_events=[("20", "SYNC_ALL_SUCCESS")]), now=1)
    store.save_cursors("t", {"20": "7@1"})
    assert tracker.targets["t"].agg.queue_events == {}
    store.flush()
    assert tracker.targets["t"].agg.queue_events == {("20", "SYNC_ALL_SUCCESS"): 1}
    store.close()


def test_restored_jobs_are_not_written_again_until_they_change(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    tracker.track("t", Job("a", Status.RUNNING), "registered", now=1)
    tracker.track("t", Job("b", Status.RUNNING), "registered", now=1)
    store.close()

    tracker, store = tracker_with_store(path)
    assert set(tracker.targets["t"].jobs) == {"a", "b"} and store.pending_writes == 0
    tracker.track("t", Job("b", Status.SUCCEEDED), "registered", now=2)
    tracker.track("t", Job("c", Status.PENDING), "registered", now=2)
    assert store.pending_writes == 2
    store.close()
    tracker, store = tracker_with_store(path)
    jobs = tracker.targets["t"].jobs
    assert set(jobs) == {"a", "b", "c"} and jobs["b"].job.status is Status.SUCCEEDED
    store.close()


# --- write failures are loud and lossless ----------------------------------------------


@pytest.mark.anyio
async def test_a_failing_write_keeps_every_change_and_writes_it_when_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    real = store._begin
    broken = True

    def begin() -> sqlite3.Connection:
        if broken:
            raise sqlite3.OperationalError("database or disk is full")
        return real()

    store._begin = begin  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        tracker.track("t", Job("a", Status.RUNNING), "registered", now=1)
        with pytest.raises(StateUnwritable, match="disk is full"):
            await store.committed()
        tracker.track("t", Job("b", Status.SUCCEEDED), "registered", now=1)
        while store.write_errors < 3:
            await anyio.sleep(0.05)
        assert store.error is not None and "disk is full" in store.error
        assert store.pending_writes == 2  # both jobs, kept
        assert tracker.targets["t"].agg.finished[("", Status.SUCCEEDED)] == 0
        text = store.metrics_text().decode()
        assert f"asyncjob_state_write_errors_total {store.write_errors}" in text
        broken = False
        await store.committed()
        assert store.error is None and store.pending_writes == 0
        assert tracker.targets["t"].agg.finished[("", Status.SUCCEEDED)] == 1
        tg.cancel_scope.cancel()
    store.close()
    logged = [r for r in caplog.records if r.name == "asyncjob.state" and r.levelname == "ERROR"]
    assert len(logged) == 1  # once per change of error, not once per attempt
    assert "disk is full" in logged[0].__dict__["error"]
    assert {t.job.id for t in Store(str(path))._restored["t"]} == {"a", "b"}


# --- a bad row is skipped and named ----------------------------------------------------


def test_bad_rows_are_skipped_and_named_and_good_ones_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    tracker.track("t", Job("good", Status.RUNNING, created=5), "registered", now=6)
    for i in range(6):
        tracker.track("t", Job(f"bad{i}", Status.RUNNING), "registered", now=6)
    store.close()
    good = sqlite3.connect(path).execute("SELECT data FROM jobs WHERE job_id = 'good'").fetchone()[0]
    db = sqlite3.connect(path)
    tampered = {
        "bad0": b"{not json",
        "bad1": good.replace('"created":5.0', '"created":"yesterday"').replace('"good"', '"bad1"').encode(),
        "bad2": good.replace('"good"', '"bad2\\ud800"').encode(),  # a lone surrogate
        "bad3": good.replace('"good"', '"bad3"').replace('"running"', '"exploded"', 1).encode(),
        "bad4": b'{"job": [], "provider": 1}',
        "bad5": good.replace('"good"', '"bad5"').encode().replace(b"registered", b"regis\xff\xfered"),
    }
    for job_id, data in tampered.items():
        db.execute("UPDATE jobs SET data = CAST(? AS TEXT) WHERE job_id = ?", (data, job_id))
    db.execute("INSERT INTO jobs VALUES ('t', CAST(? AS TEXT), ?)", (b"bad\xc3", good))
    db.execute("INSERT INTO jobs VALUES ('t', 'other-key', ?)", (good,))
    db.commit()
    db.close()

    caplog.set_level("WARNING", "asyncjob.state")
    tracker, store = tracker_with_store(path)
    assert set(tracker.targets["t"].jobs) == {"good"}
    skipped = {
        r.__dict__["key"]: r.__dict__["problem"] for r in caplog.records if "skipped" in r.getMessage()
    }
    assert set(skipped) == {*tampered, "bad\\xc3", "other-key"}
    assert all(r.__dict__["target"] == "t" for r in caplog.records if "skipped" in r.getMessage())
    assert "created" in skipped["bad1"] and "status" in skipped["bad3"]
    # The exporter goes on: the restored job renders, and the state is writable.
    from exporter.render import Exposition

    Exposition(tracker, dict).render()
    store.close()


def test_a_tombstone_the_provider_keeps_listing_is_renewed_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path, lists=True)
    tracker.track("t", Job("gone", Status.SUCCEEDED), "discovered", now=1)
    tracker.drop("t", "gone", "deleted")
    dropped_at = tracker.targets["t"].tombstones["gone"]
    listed = dropped_at + TOMBSTONE_SECONDS - 3600  # the provider still lists it a week later
    tracker.apply("t", PollResult(jobs=[Job("gone", Status.SUCCEEDED)]), now=listed)
    tracker.apply("t", PollResult(jobs=[Job("gone", Status.SUCCEEDED)]), now=listed + 60)
    assert tracker.targets["t"].tombstones == {"gone": listed}  # renewed once a day, not every poll
    store.close()

    tracker, store = tracker_with_store(path, lists=True)
    assert tracker.targets["t"].tombstones == {"gone": listed}
    tracker.sweep(now=dropped_at + TOMBSTONE_SECONDS + 3600)  # 8 days after the drop, not the renewal
    assert "gone" in tracker.targets["t"].tombstones
    tracker.apply("t", PollResult(jobs=[Job("gone", Status.SUCCEEDED)]), now=listed + 120)
    assert "gone" not in tracker.targets["t"].jobs
    store.close()


def test_forgotten_tombstones_leave_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path, lists=True)
    tracker.track("t", Job("recent", Status.SUCCEEDED), "discovered", now=1)
    tracker.drop("t", "recent", "deleted")
    store.close()
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO tombstones (target, job_id, at) VALUES ('t', 'ancient', 1.0)")
    db.close()

    tracker, store = tracker_with_store(path, lists=True)
    assert list(tracker.targets["t"].tombstones) == ["ancient", "recent"]  # oldest first
    tracker.track("t", Job("new", Status.RUNNING), "registered")  # any write: the batch prunes
    store.close()
    db = sqlite3.connect(path)
    rows = {r[0] for r in db.execute("SELECT job_id FROM tombstones")}
    db.close()
    assert rows == {"recent"}


def test_a_time_no_double_can_hold_skips_its_row_not_the_restore(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    tracker.track("t", Job("good", Status.RUNNING, created=5), "registered", now=6)
    store.close()
    good = sqlite3.connect(path).execute("SELECT data FROM jobs WHERE job_id = 'good'").fetchone()[0]
    huge = "1" + "0" * 400  # an integer, in JSON as in Python; past any double
    assert '"history":[6.0,"","running"]' in good and '"step_times":{}' in good
    tampered = {
        "history-huge": good.replace('[6.0,"","running"]', f'[{huge},"","running"]'),
        "history-nan": good.replace('[6.0,"","running"]', '[NaN,"","running"]'),
        "history-inf": good.replace('[6.0,"","running"]', '[1e400,"","running"]'),
        "steps-huge": good.replace('"step_times":{}', f'"step_times":{{"a":[{huge},null,null]}}'),
        "steps-nan": good.replace('"step_times":{}', '"step_times":{"a":[1.0,NaN,null]}'),
        "old-steps-huge": good.replace(
            '"step_times":{}', f'"step_started":{{"a":{huge}}},"step_finished":{{}},"step_duration":{{}}'
        ),
    }
    db = sqlite3.connect(path)
    for job_id, data in tampered.items():
        db.execute("INSERT INTO jobs VALUES ('t', ?, ?)", (job_id, data.replace('"good"', f'"{job_id}"')))
    db.commit()
    db.close()

    caplog.set_level("WARNING", "asyncjob.state")
    tracker, store = tracker_with_store(path)
    assert set(tracker.targets["t"].jobs) == {"good"}
    skipped = {
        r.__dict__["key"]: r.__dict__["problem"] for r in caplog.records if "skipped" in r.getMessage()
    }
    assert set(skipped) == set(tampered)
    assert all("history" in skipped[k] for k in tampered if k.startswith("history"))
    assert all("step_times" in skipped[k] for k in tampered if "steps" in k)
    store.close()


def tombstone_rows(path: Path) -> dict[str, float]:
    db = sqlite3.connect(path)
    rows = {str(r[0]): float(r[1]) for r in db.execute("SELECT job_id, at FROM tombstones")}
    db.close()
    return rows


def test_a_target_that_lists_no_jobs_keeps_no_tombstone_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    tracker.track("t", Job("done", Status.SUCCEEDED), "registered", now=1)
    tracker.drop("t", "done", "retention")
    store.close()
    assert tombstone_rows(path) == {}  # nothing can list it again: a restart forgets it


def test_a_finished_dropped_job_listed_again_after_a_restart_is_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Memory keeps the newest tombstone only: the older one is found in the file.
    monkeypatch.setattr("exporter.tracked.TOMBSTONES_IN_MEMORY", 1)
    monkeypatch.setattr("exporter.state.TOMBSTONES_IN_MEMORY", 1)
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path, lists=True)
    for job_id in ("first", "second"):
        tracker.apply("t", PollResult(jobs=[Job(job_id, Status.SUCCEEDED)]))
        tracker.drop("t", job_id, "retention")
    assert list(tracker.targets["t"].tombstones) == ["second"]
    store.close()

    tracker, store = tracker_with_store(path, lists=True)
    assert list(tracker.targets["t"].tombstones) == ["second"]
    # No finished stamp: without the tombstone it would be news again, and counted.
    tracker.apply("t", PollResult(jobs=[Job("first", Status.SUCCEEDED), Job("second", Status.SUCCEEDED)]))
    assert tracker.targets["t"].jobs == {}
    assert sum(tracker.targets["t"].agg.finished.values()) == 0
    store.close()


def test_a_tombstone_waiting_for_its_commit_is_found_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.tracked.TOMBSTONES_IN_MEMORY", 1)
    tracker, store = tracker_with_store(tmp_path / "state.db", lists=True)
    for job_id in ("first", "second"):
        tracker.apply("t", PollResult(jobs=[Job(job_id, Status.SUCCEEDED)]))
        tracker.drop("t", job_id, "retention")
    assert store.pending_writes  # not committed yet
    tracker.apply("t", PollResult(jobs=[Job("first", Status.SUCCEEDED)]))
    assert tracker.targets["t"].jobs == {}
    store.close()


def test_tombstones_past_their_horizon_leave_the_file_a_bounded_number_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.state_batch.PRUNE_ROWS", 10)
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path, lists=True)
    store.close()
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT INTO tombstones VALUES ('t', ?, 1.0)", [(f"a{i}",) for i in range(25)])
    db.close()
    tracker, store = tracker_with_store(path, lists=True)
    for i in range(3):
        tracker.track("t", Job(f"n{i}", Status.RUNNING), "registered")
        assert store.flush()
        assert len(tombstone_rows(path)) == max(0, 15 - 10 * i)
    store.close()


def test_the_file_reuses_and_gives_back_the_space_of_pruned_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.state_upkeep.VACUUM_PAGES", 16)
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path, lists=True)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    with db:
        db.executemany("INSERT INTO tombstones VALUES ('t', ?, 1.0)", [(f"{i:040d}",) for i in range(4000)])
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    tracker, store = tracker_with_store(path, lists=True)
    tracker.track("t", Job("n", Status.RUNNING), "registered")
    store.flush()
    store.close()
    db = sqlite3.connect(path)
    free, now = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("freelist_count", "page_count"))
    db.close()
    assert tombstone_rows(path) == {}
    assert now <= pages - 16  # a round's worth given back (VACUUM_PAGES); the rest reused or next time
    assert free > 0


def test_a_file_made_without_auto_vacuum_is_rebuilt_with_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    tracker.track("t", Job("kept", Status.RUNNING), "registered")
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA auto_vacuum=NONE")
    db.execute("VACUUM")
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    tracker, store = tracker_with_store(path)
    assert set(tracker.targets["t"].jobs) == {"kept"}
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    db.close()


def commits_timed(store: Store) -> int:
    text = store.metrics_text().decode()
    assert "# TYPE asyncjob_state_commit_duration_seconds histogram\n" in text
    return int(text.split("\nasyncjob_state_commit_duration_seconds_count ")[1].split()[0])


def test_each_commit_is_timed_whoever_makes_it(tmp_path: Path) -> None:
    tracker, store = tracker_with_store(tmp_path / "state.db")
    store.flush()
    before = commits_timed(store)
    tracker.track("t", Job("flushed", Status.RUNNING), "registered")
    store.flush()
    store.flush()  # nothing pending: no transaction
    assert commits_timed(store) == before + 1

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.run)
            tracker.track("t", Job("by the writer", Status.RUNNING), "registered")
            await store.committed()
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert commits_timed(store) == before + 2
    store.close()


def test_a_held_increment_given_the_key_of_its_job_runs_once_committed(tmp_path: Path) -> None:
    tracker, store = tracker_with_store(tmp_path / "state.db")
    ran: list[str] = []
    tracker.track("t", Job("j", Status.SUCCEEDED), "registered")
    store.after_commit(lambda: ran.append("counted"), key=("t", "j"))
    assert ran == []
    store.flush()
    assert ran == ["counted"]
    store.close()


def test_the_size_of_the_state_file_is_exported(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    tracker.track("t", Job("j", Status.RUNNING), "registered")
    store.flush()
    on_disk = path.stat().st_size + Path(f"{path}-wal").stat().st_size
    assert f"\nasyncjob_state_size_bytes {on_disk}\n".encode() in store.metrics_text()
    store.close()


def test_a_job_quarantined_by_the_watchdog_is_restored_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    tracker.track("t", Job("poisoned", Status.RUNNING), "registered")
    store.flush()
    store.quarantine("t", "poisoned", "the event loop did not turn for 30 s")  # its own connection
    store.close()

    tracker, store = tracker_with_store(path)
    state = tracker.targets["t"]
    assert set(state.quarantined) == {"poisoned"} and "poisoned" in state.jobs
    assert state.in_quarantine("poisoned", time.time())
    store.close()


def test_the_wal_starts_again_from_its_beginning_under_a_steady_stream_of_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.state_upkeep.CHECKPOINT_INTERVAL", 0.01)
    monkeypatch.setattr("exporter.state_upkeep.WAL_RESTART_BYTES", 256 * 1024)
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    written = 0

    async def main() -> None:
        nonlocal written
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.run)
            for i in range(1500):  # a commit every turn: never a quiet moment for a checkpoint
                tracker.track(
                    "t", Job(f"j{i % 200}", Status.RUNNING, message="x" * 2000, percent=i), "registered"
                )
                await store.committed()
                written += 2000
            tg.cancel_scope.cancel()

    anyio.run(main)
    wal = Path(f"{path}-wal").stat().st_size
    store.close()
    assert written > 2_000_000 and wal < 2 * 1024 * 1024, wal  # 7 MiB and growing when it never starts again
