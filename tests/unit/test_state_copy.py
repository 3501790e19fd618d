"""`asyncjob-exporter state copy` against a real PostgreSQL: a state file made with the SQLite store
arrives whole (jobs with their counted-once marks, tombstones, cursors, quarantined jobs) under
each row's virtual shard, as a replica reads it back; a second copy adds nothing and overwrites
nothing; a password in the URL, live replicas and an unreachable database are refused in one line
that never holds the password."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import anyio
import psycopg
import pytest

from exporter import logs
from exporter.__main__ import main
from exporter.cluster.batch import Batch
from exporter.cluster.leases import Leases
from exporter.cluster.state_copy import copy_state, read_state_file
from exporter.cluster.store import PostgresStore
from exporter.config import build_settings
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.runtime import connect_store
from exporter.sharding import shard_of
from exporter.state import Store, tracked_from_json
from exporter.tracker import Tracker
from tests.postgres import Postgres

pytestmark = pytest.mark.postgres


class NoScheduler:
    store = None


@pytest.fixture(autouse=True)
def _quiet_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "setup", lambda *args: None)  # pytest's log capture stays as it is


def tracking(store: object) -> Tracker:
    """A tracker whose changes go to `store`, with a Basiq target `t` that lists its users' jobs
    (only such a target keeps tombstones)."""
    target = {"name": "t", "provider": "basiq", "base_url": "https://x", "users": ["u"]}
    s = build_settings({"targets": [target]}, PROVIDERS)
    tracker = Tracker()
    connect_store(store, tracker, NoScheduler())  # type: ignore[arg-type]
    tracker.set_target(s.resolved(s.targets[0]))
    return tracker


def state_file(path: Path, jobs: int = 30) -> Tracker:
    """A state file as an exporter leaves it: running and finished (counted) jobs, a dropped one's
    tombstone, a queue's cursor and a job the watchdog quarantined. Returns the tracker that wrote it."""
    store = Store(str(path))
    tracker = tracking(store)
    for i in range(jobs):
        status = Status.SUCCEEDED if i % 3 == 0 else Status.RUNNING
        tracker.track("t", Job(f"job-{i}", status, job_type="connection", created=10.0), "registered")
    tracker.track("t", Job("gone", Status.SUCCEEDED), "discovered")
    tracker.drop("t", "gone", "deleted")
    store.save_cursors("t", {"queue-20": "41@1528112097"})
    store.flush()
    store.quarantine("t", "job-1", "the event loop did not turn for 30 s")
    store.close()
    return tracker


def url_of(dsn: str) -> str:
    return dsn.split("?")[0]


def password_file(pg: Postgres) -> str:
    return str(pg.password_file)


def password_file_text(pg: Postgres) -> str:
    return pg.password_file.read_text().strip()


def copy(state: Path, dsn: str, pg: Postgres, *more: str) -> int:
    to = ["--to", url_of(dsn), "--to-password-file", password_file(pg)]
    return main(["state", "copy", "--from", str(state), *to, *more])


async def restored(dsn: str) -> tuple[PostgresStore, Tracker]:
    store = PostgresStore(dsn, "r1", None)
    await store.open()
    return store, tracking(store)


async def rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await (await conn.execute(sql)).fetchall()


def test_every_job_mark_tombstone_cursor_and_quarantined_job_arrives(
    tmp_path: Path, dsn: str, postgres_server: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    source = state_file(tmp_path / "state.db")
    assert copy(tmp_path / "state.db", dsn, postgres_server) == 0
    out = capsys.readouterr().out
    assert "jobs: 30 added, 0 already there" in out and "10 finished and counted once" in out
    assert "tombstones: 1 added" in out and "cursors: 1 added" in out and "quarantined: 1 added" in out

    async def check() -> None:
        store, tracker = await restored(dsn)
        state, before = tracker.targets["t"], source.targets["t"]
        assert state.jobs == before.jobs  # every field, the counted-once mark with them
        assert sum(t.counted for t in state.jobs.values()) == 10
        assert store.buried("t", "gone") is not None and "gone" in state.tombstones
        assert store.cursors("t") == {"queue-20": "41@1528112097"}
        assert state.in_quarantine("job-1", time.time())
        await store.close()
        # Each row under its virtual shard (the cluster's default count), written by the copy.
        for target, job_id, shard, written_by in await rows(
            dsn, "SELECT target, job_id, shard, written_by FROM asyncjob.jobs"
        ):
            assert shard == shard_of(str(target), str(job_id), 256) and written_by == "state copy"
        for table, key in (("tombstones", "job_id"), ("cursors", "name"), ("quarantine", "job_id")):
            for target, name, shard in await rows(dsn, f"SELECT target, {key}, shard FROM asyncjob.{table}"):
                assert shard == shard_of(str(target), str(name), 256), table

    anyio.run(check)


def test_rows_go_under_the_shard_count_the_cluster_was_made_with(
    tmp_path: Path, dsn: str, postgres_server: Postgres
) -> None:
    async def make_cluster() -> None:
        store = PostgresStore(dsn, "r1", None)
        await store.open(16)
        await store.close()

    anyio.run(make_cluster)
    state_file(tmp_path / "state.db")
    assert copy(tmp_path / "state.db", dsn, postgres_server) == 0
    found = anyio.run(rows, dsn, "SELECT target, job_id, shard FROM asyncjob.jobs")
    assert len(found) == 30
    assert all(shard == shard_of(str(t), str(i), 16) for t, i, shard in found)


def test_copying_again_adds_nothing_and_leaves_newer_rows_alone(
    tmp_path: Path, dsn: str, postgres_server: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    state_file(tmp_path / "state.db")
    assert copy(tmp_path / "state.db", dsn, postgres_server) == 0

    async def a_replica_finishes_job_2() -> None:
        store, tracker = await restored(dsn)
        tracker.track("t", Job("job-2", Status.FAILED, job_type="connection", created=10.0), "registered")
        assert tracker.targets["t"].jobs["job-2"].counted
        await store.flush()
        await store.close()

    anyio.run(a_replica_finishes_job_2)
    capsys.readouterr()
    assert copy(tmp_path / "state.db", dsn, postgres_server) == 0
    out = capsys.readouterr().out
    for kind, n in (("jobs", 30), ("tombstones", 1), ("cursors", 1), ("quarantined", 1)):
        assert f"{kind}: 0 added, {n} already there" in out
    ((data,),) = anyio.run(rows, dsn, "SELECT data FROM asyncjob.jobs WHERE job_id = 'job-2'")
    job_2 = tracked_from_json(str(data))
    assert job_2.job.status is Status.FAILED and job_2.counted  # not the file's running snapshot
    assert anyio.run(rows, dsn, "SELECT count(*) FROM asyncjob.jobs") == [(30,)]


def test_a_password_in_the_url_is_refused_in_one_line_that_does_not_hold_it(
    tmp_path: Path, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state_file(tmp_path / "state.db", jobs=1)
    for url in (dsn, url_of(dsn).replace("asyncjob@", "asyncjob:hunter2@")):
        assert main(["state", "copy", "--from", str(tmp_path / "state.db"), "--to", url]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--to-password-file" in err
        assert "hunter2" not in err and "not-a-secret" not in err
    assert anyio.run(rows, dsn, "SELECT to_regclass('asyncjob.jobs')") == [(None,)]  # nothing made


def test_a_wrong_password_is_one_line_exit_1_without_the_password(
    tmp_path: Path, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state_file(tmp_path / "state.db", jobs=1)
    wrong = tmp_path / "pw"
    wrong.write_text("correct-horse-battery\n")
    argv = ["state", "copy", "--from", str(tmp_path / "state.db"), "--to", url_of(dsn)]
    assert main([*argv, "--to-password-file", str(wrong)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "password authentication failed" in err
    assert "correct-horse" not in err


def test_the_password_may_come_from_libpqs_pgpassfile(
    tmp_path: Path, dsn: str, postgres_server: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file(tmp_path / "state.db", jobs=3)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:asyncjob:{postgres_server.password_file.read_text().strip()}\n")
    os.chmod(pgpass, 0o600)  # libpq ignores a password file others can read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert main(["state", "copy", "--from", str(tmp_path / "state.db"), "--to", url_of(dsn)]) == 0
    assert anyio.run(rows, dsn, "SELECT count(*) FROM asyncjob.jobs") == [(3,)]


def test_the_copy_is_refused_while_replicas_hold_leases(
    tmp_path: Path, dsn: str, postgres_server: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    state_file(tmp_path / "state.db", jobs=3)

    async def scenario() -> None:
        store = PostgresStore(dsn, "r1", None)
        await store.open()
        await store.close()
        leases = Leases(lambda: psycopg.AsyncConnection.connect(dsn), "replica-a", 256, ttl=60)
        for _ in range(3):
            await leases.round()
        assert leases.held()
        assert await anyio.to_thread.run_sync(copy, tmp_path / "state.db", dsn, postgres_server) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "replica-a" in err and "stop them" in err
        assert await rows(dsn, "SELECT count(*) FROM asyncjob.jobs") == [(0,)]
        await leases.leave()
        assert await anyio.to_thread.run_sync(copy, tmp_path / "state.db", dsn, postgres_server) == 0

    anyio.run(scenario)


def test_a_replica_whose_leases_lapsed_but_whose_heartbeat_is_recent_counts_as_running(
    tmp_path: Path, dsn: str, postgres_server: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    state_file(tmp_path / "state.db", jobs=3)

    async def beat(ago: int) -> None:
        store = PostgresStore(dsn, "r1", None)
        await store.open()
        await store.close()
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute(
                "INSERT INTO asyncjob.members (replica, heartbeat_at) VALUES ('replica-b', now() - make_interval(secs => %s)) "
                "ON CONFLICT (replica) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (ago,),
            )

    anyio.run(beat, 5)  # back from a database outage, its leases not renewed yet
    assert copy(tmp_path / "state.db", dsn, postgres_server) == 2
    assert "replica-b" in capsys.readouterr().err
    anyio.run(beat, 600)  # killed long ago
    assert copy(tmp_path / "state.db", dsn, postgres_server) == 0


def test_a_file_that_is_missing_or_not_a_state_file_is_refused_in_one_line(
    tmp_path: Path, dsn: str, postgres_server: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    assert copy(tmp_path / "missing.db", dsn, postgres_server) == 2
    assert "no state file at" in capsys.readouterr().err
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    assert copy(tmp_path / "junk.db", dsn, postgres_server) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.db" in err


def test_an_unreadable_row_is_named_and_left_behind_and_the_rest_copied(
    tmp_path: Path, dsn: str, postgres_server: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    state_file(tmp_path / "state.db", jobs=5)
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("INSERT INTO jobs (target, job_id, data) VALUES ('t', 'broken', '{\"job\": 1}')")
    db.close()
    caplog.clear()  # what making the file logged
    assert copy(tmp_path / "state.db", dsn, postgres_server) == 0
    assert anyio.run(rows, dsn, "SELECT count(*) FROM asyncjob.jobs") == [(5,)]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("unreadable job") for m in messages), messages
    # What the loader says of an exporter starting is not what the copy does.
    assert not any(m.startswith(("job quarantined", "state restored")) for m in messages), messages


def test_a_replica_starting_during_the_copy_waits_for_it_and_loads_what_it_copied(
    tmp_path: Path, dsn: str, postgres_server: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file(tmp_path / "state.db")
    state = read_state_file(str(tmp_path / "state.db"))
    inside, go_on = anyio.Event(), anyio.Event()
    serialised = Batch.serialised

    async def held_up(batch: Batch) -> dict[tuple[str, str], str]:
        inside.set()  # the copy's transaction is open
        await go_on.wait()
        return await serialised(batch)

    monkeypatch.setattr(Batch, "serialised", held_up)
    done: list[str] = []

    async def scenario() -> None:
        async def copying() -> None:
            await copy_state(url_of(dsn), password_file_text(postgres_server), state)
            done.append("copy")

        async def replica_starting() -> None:
            store, tracker = await restored(dsn)
            done.append(f"replica with {len(tracker.targets['t'].jobs)} jobs")
            await store.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(copying)
            await inside.wait()
            tg.start_soon(replica_starting)
            await anyio.sleep(0.5)  # room to start, were it not held
            assert done == []
            go_on.set()

    anyio.run(scenario)
    assert done == ["copy", "replica with 30 jobs"]


def test_a_replica_claiming_shards_during_the_copy_takes_none_until_it_commits_then_loads_what_it_copied(
    tmp_path: Path, dsn: str, postgres_server: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file(tmp_path / "state.db")
    state = read_state_file(str(tmp_path / "state.db"))
    inside, go_on = anyio.Event(), anyio.Event()
    serialised = Batch.serialised

    async def held_up(batch: Batch) -> dict[tuple[str, str], str]:
        inside.set()
        await go_on.wait()
        return await serialised(batch)

    monkeypatch.setattr(Batch, "serialised", held_up)
    done: list[str] = []

    async def scenario() -> None:
        # A replica that started (and migrated) before the copy, and claims its shards during it.
        store = PostgresStore(dsn, "replica-a", None)
        await store.open()
        await store.close()
        leases = Leases(lambda: psycopg.AsyncConnection.connect(dsn), "replica-a", 256, ttl=60)

        async def copying() -> None:
            await copy_state(url_of(dsn), password_file_text(postgres_server), state)
            done.append("copy")

        async def claiming() -> None:
            await leases.round()
            done.append(f"claimed {len(leases.held())}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(copying)
            await inside.wait()
            tg.start_soon(claiming)
            await anyio.sleep(0.5)  # room to claim, were the leases not held
            # The copy holds the lease rows: a claim skips them (it never waits on a lock, so a
            # stalled transaction cannot stop the cluster's renewals), and takes none.
            assert done == ["claimed 0"]
            go_on.set()
        await leases.round()  # the copy is committed: the next round claims
        assert len(leases.held()) == 256
        loading = PostgresStore(dsn, "replica-a", None)
        await loading.open()  # a lone store loads every shard, as the claimer loads what it gained
        assert len(tracking(loading).targets["t"].jobs) == 30
        await loading.close()
        await leases.leave()

    anyio.run(scenario)
    assert done == ["claimed 0", "copy"]


def test_the_database_and_its_password_file_default_to_the_replicas_variables(
    tmp_path: Path, dsn: str, postgres_server: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file(tmp_path / "state.db", jobs=2)
    assert main(["state", "copy", "--from", str(tmp_path / "state.db")]) == 2  # no --to, no variable
    monkeypatch.setenv("ASYNCJOB_STATE_URL", url_of(dsn))
    monkeypatch.setenv("ASYNCJOB_STATE_PASSWORD_FILE", password_file(postgres_server))
    assert main(["state", "copy", "--from", str(tmp_path / "state.db")]) == 0
    assert anyio.run(rows, dsn, "SELECT count(*) FROM asyncjob.jobs") == [(2,)]
