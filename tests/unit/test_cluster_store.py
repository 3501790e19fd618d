"""The PostgreSQL state store against a real PostgreSQL: what another replica reads back, group
commit in a fixed number of round trips, fencing of a replica paused past its lease, and the
server stopped or a connection cut mid-transaction with nothing acknowledged lost."""

from __future__ import annotations

import itertools
import time
from functools import partial
from pathlib import Path

import anyio
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.cluster.leases import Leases
from exporter.cluster.store import PostgresStore
from exporter.config import build_settings
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.runtime import connect_store
from exporter.sharding import shard_of
from exporter.state import StateUnwritable, tracked_from_json
from exporter.store import StateStore
from exporter.tracker import Tracker
from tests.postgres import Postgres

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SHARDS = 16
TTL = 1.5


class NoScheduler:
    store: StateStore | None = None


async def connect(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)


async def opened(dsn: str, replica: str = "r1", leases: Leases | None = None) -> PostgresStore:
    store = PostgresStore(dsn, replica, leases)
    await store.open(SHARDS)
    return store


def tracking(store: PostgresStore, *targets: str) -> Tracker:
    """A tracker whose changes go to `store`, with basiq targets of these names."""
    s = build_settings(
        {"targets": [{"name": t, "provider": "basiq", "base_url": "https://x"} for t in targets]}, PROVIDERS
    )
    tracker = Tracker()
    connect_store(store, tracker, NoScheduler())
    for t in s.targets:
        tracker.set_target(s.resolved(t))
    return tracker


def job(job_id: str, status: Status = Status.RUNNING) -> Job:
    return Job(job_id, status, job_type="connection", created=10.0)


def ids_in(shards: set[int], n: int, prefix: str = "job") -> list[str]:
    """`n` job ids of target `t` that fall into `shards`."""
    found = (f"{prefix}-{i}" for i in itertools.count())
    return list(itertools.islice((i for i in found if shard_of("t", i, SHARDS) in shards), n))


async def saved(dsn: str) -> dict[str, tuple[Status, str]]:
    """Each saved job of target `t`: its status and the replica that wrote it."""
    async with await connect(dsn) as conn:
        cur = await conn.execute("SELECT job_id, data, written_by FROM asyncjob.jobs WHERE target = 't'")
        return {i: (tracked_from_json(d).job.status, w) for i, d, w in await cur.fetchall()}


async def settle(*replicas: Leases, rounds: int = 3) -> None:
    for _ in range(rounds):
        for r in replicas:
            await r.round()


def leases(dsn: str, name: str) -> Leases:
    return Leases(connect=lambda: connect(dsn), replica=name, shards=SHARDS, ttl=TTL)


async def shut(replicas: list[Leases], stores: list[PostgresStore]) -> None:
    for r in replicas:
        await r.leave()
    for s in stores:
        await s.close()


async def until_committed(store: PostgresStore) -> None:
    """Wait through failed rounds until every change so far is committed."""
    with anyio.fail_after(30):
        while True:
            try:
                await store.committed()
                return
            except StateUnwritable:
                continue


# --- what is kept ------------------------------------------------------------------------


async def test_what_one_store_committed_another_restores_jobs_tombstones_and_cursors(dsn: str) -> None:
    store = await opened(dsn)
    tracker = tracking(store, "t")
    for i in range(3):
        tracker.track("t", job(f"job-{i}"), "registered", now=20)
    tracker.drop("t", "job-0", "deleted")
    store.save_cursors("t", {"queue": "42", "odd": "a\x00b\ud800"})  # PostgreSQL's text holds neither
    assert await store.flush() == 6  # three jobs (one of them removed), a tombstone, two cursors
    await store.close()

    again = await opened(dsn, "r2")
    state = tracking(again, "t").targets["t"]
    assert sorted(state.jobs) == ["job-1", "job-2"]
    assert state.jobs["job-1"] == tracker.targets["t"].jobs["job-1"]
    assert "job-0" in state.tombstones and again.buried("t", "job-0") is not None
    assert again.buried("t", "job-1") is None
    assert again.cursors("t") == {"queue": "42", "odd": "a\ufffdb?"}
    assert again.pending_writes == 0  # jobs handed back by restore are not changes
    await again.close()


async def test_a_replica_that_gains_shards_loads_only_the_jobs_of_those_shards(dsn: str) -> None:
    store = await opened(dsn)
    tracker = tracking(store, "t")
    for i in range(40):
        tracker.track("t", job(f"job-{i}"), "registered", now=20)
    await store.flush()
    gained = {1, 5, 9}
    other = await opened(dsn, "c", leases(dsn, "c"))  # a replica with leases loads what it gains
    theirs = {f"job-{i}" for i in range(40) if shard_of("t", f"job-{i}", SHARDS) in gained}
    assert theirs and await other.load(gained) == len(theirs)
    assert set(tracking(other, "t").targets["t"].jobs) == theirs
    # Loaded, then let go before the tracker took them in: nothing of them is handed out.
    more = {shard_of("t", f"job-{i}", SHARDS) for i in range(40)} - gained
    assert await other.load(more) == 40 - len(theirs)
    other.forget(more)
    assert tracking(other, "t").targets["t"].jobs == {}
    await shut([], [store, other])


async def test_every_job_of_the_cluster_is_read_with_the_replica_that_owns_it(dsn: str) -> None:
    a, b = leases(dsn, "a"), leases(dsn, "b")
    store_a, store_b = await opened(dsn, "a", a), await opened(dsn, "b", b)
    await settle(a, b)
    for store, held in ((store_a, a), (store_b, b)):
        tracker = tracking(store, "t")
        for i in ids_in(set(held.held()), 3, prefix=held.replica):
            tracker.track("t", job(i), "discovered", now=20)
        await store.flush()
    jobs = await store_a.cluster_jobs()
    assert len(jobs) == 6
    assert {(j.tracked.job.id[0], j.owner, j.written_by) for j in jobs} == {("a", "a", "a"), ("b", "b", "b")}
    first = await store_b.cluster_jobs(target="t", limit=4)
    rest = await store_b.cluster_jobs(target="t", after=(first[-1].target, first[-1].tracked.job.id))
    assert [j.tracked.job.id for j in first + rest] == [j.tracked.job.id for j in jobs]
    await b.leave()
    assert {j.owner for j in await store_a.cluster_jobs() if j.written_by == "b"} == {None}
    await shut([a], [store_a, store_b])


async def test_the_first_read_after_the_server_restarted_is_answered_not_failed(
    postgres_server: Postgres, dsn: str
) -> None:
    store = await opened(dsn)
    tracker = tracking(store, "t")
    tracker.track("t", job("job-1"), "discovered", now=20)
    await store.flush()
    assert len(await store.cluster_jobs()) == 1  # the pages' reading connection is open ...
    postgres_server.stop()
    postgres_server.start()  # ... and cut by the restart
    assert [j.tracked.job.id for j in await store.cluster_jobs()] == ["job-1"]
    assert [j for j in [await store.cluster_job("t", "job-1")] if j is not None]
    await store.close()


async def test_a_quarantined_job_is_recorded_from_another_thread_and_read_by_every_replica(dsn: str) -> None:
    store = await opened(dsn)
    await anyio.to_thread.run_sync(store.quarantine, "t", "job-9", "the loop froze")
    again = await opened(dsn, "r2")
    assert set(again.quarantined("t")) == {"job-9"}
    await shut([], [store, again])


# --- group commit ------------------------------------------------------------------------


async def test_registrations_made_while_the_writer_was_busy_are_acknowledged_by_one_commit(dsn: str) -> None:
    store = await opened(dsn)
    tracker = tracking(store, "t")
    acknowledged: list[str] = []

    async def register(job_id: str) -> None:
        tracker.track("t", job(job_id), "registered", now=20)
        await store.committed()
        acknowledged.append(job_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        await anyio.sleep(0.05)
        transactions = store.commit_duration.count
        async with anyio.create_task_group() as registrations:
            for i in range(200):
                registrations.start_soon(register, f"job-{i}")
        tg.cancel_scope.cancel()
    assert len(acknowledged) == 200
    assert store.commit_duration.count - transactions <= 2
    assert len(await saved(dsn)) == 200


async def test_a_batch_costs_the_same_round_trips_for_ten_jobs_as_for_a_thousand(
    dsn: str, tmp_path: Path
) -> None:
    trace = (tmp_path / "protocol").open("w")
    traced: list[psycopg.AsyncConnection] = []

    async def connect_traced() -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(dsn, prepare_threshold=None)
        conn.pgconn.trace(trace.fileno())
        traced.append(conn)
        return conn

    def round_trips() -> int:
        """Answers that end a round trip, as libpq saw them (untrace flushes its trace)."""
        for conn in traced:
            if not conn.closed:
                conn.pgconn.untrace()
                conn.pgconn.trace(trace.fileno())
        return (tmp_path / "protocol").read_text().count("ReadyForQuery")

    store = PostgresStore(dsn, "r1", connect=connect_traced)
    await store.open(SHARDS)
    tracker = tracking(store, "t")
    await store.flush()  # the connection made, and the first batch's prune done
    costs = []
    for n in (10, 1000):
        for i in range(n):
            tracker.track("t", job(f"{n}-{i}"), "registered", now=20)
        tracker.drop("t", f"{n}-0", "deleted")
        before = round_trips()
        await store.flush()
        costs.append(round_trips() - before)
    assert costs[0] == costs[1] and 0 < costs[0] <= 6, costs
    assert len(await saved(dsn)) == 1010 - 2
    await store.close()
    trace.close()


async def test_a_held_increment_runs_only_once_its_job_is_committed(dsn: str) -> None:
    store = await opened(dsn)
    tracker = tracking(store, "t")
    counted: list[str] = []
    tracker.track("t", job("job-1", Status.SUCCEEDED), "registered", now=20)
    store.after_commit(partial(counted.append, "job-1"), ("t", "job-1"))
    store.after_commit(partial(counted.append, "queue"))  # the one-argument form of the SQLite store
    assert counted == []
    await store.flush()
    assert counted == ["job-1", "queue"]
    await store.close()


# --- fencing -----------------------------------------------------------------------------


async def test_a_replica_paused_past_its_lease_commits_nothing_stale_and_counts_nothing(dsn: str) -> None:
    a, b = leases(dsn, "a"), leases(dsn, "b")
    store_a, store_b = await opened(dsn, "a", a), await opened(dsn, "b", b)
    await settle(a, b)
    paused = set(b.held())
    *ids, registered = ids_in(paused, 6)
    tracker_b = tracking(store_b, "t")
    for i in ids:
        tracker_b.track("t", job(i), "discovered", now=20)
    await store_b.flush()  # b's snapshot while it holds the shards
    # b finishes the jobs, takes a registration, and is stopped (SIGSTOP) before its writer runs.
    counted_b: list[str] = []
    state_b = tracker_b.targets["t"]
    for i in ids:
        tracker_b.update(state_b, job(i, Status.SUCCEEDED), now=30)
        store_b.after_commit(partial(counted_b.append, i), ("t", i))
    tracker_b.track("t", job(registered), "registered", now=30)
    await anyio.sleep(TTL + 0.2)
    await settle(a, rounds=2)
    assert paused <= set(a.held())
    # a takes over from b's last commit, sees the jobs finish and counts them.
    await store_a.load(paused)
    tracker_a = tracking(store_a, "t")
    counted_a: list[str] = []
    for i in ids:
        tracker_a.update(tracker_a.targets["t"], job(i, Status.FAILED), now=40)
        store_a.after_commit(partial(counted_a.append, i), ("t", i))
    await store_a.flush()
    # b wakes and its writer runs.
    await store_b.flush()
    assert counted_b == [] and store_b.stale_writes == len(ids) + 1
    assert sorted(counted_a) == sorted(ids)
    # Nothing of b's over a's; b's acknowledged registration kept, a job the owner did not have.
    assert await saved(dsn) == {**{i: (Status.FAILED, "a") for i in ids}, registered: (Status.RUNNING, "b")}
    assert "asyncjob_state_stale_writes_total 6" in store_b.metrics_text().decode()
    await shut([a, b], [store_a, store_b])


async def test_a_job_of_a_shard_another_replica_holds_is_written_for_its_owner_not_over_it(dsn: str) -> None:
    a, b = leases(dsn, "a"), leases(dsn, "b")
    store_a, store_b = await opened(dsn, "a", a), await opened(dsn, "b", b)
    await settle(a, b)
    owned, registered = ids_in(set(a.held()), 2)
    tracker_a = tracking(store_a, "t")
    tracker_a.track("t", job(owned, Status.SUCCEEDED), "discovered", now=20)
    await store_a.flush()
    # b takes two registrations of a's shards: one a already knows, one it does not.
    tracker_b = tracking(store_b, "t")
    for i in (owned, registered):
        tracker_b.track("t", job(i), "registered", now=30)
    await store_b.flush()
    assert store_b.stale_writes == 0
    assert await saved(dsn) == {owned: (Status.SUCCEEDED, "a"), registered: (Status.RUNNING, "b")}
    # b stops tracking them (it holds neither shard): a's rows stay, and nothing is stale.
    tracker_b.drop("t", owned, "deleted")
    tracker_b.drop("t", registered, "deleted")
    assert store_b.pending_writes == 0
    await store_b.flush()
    assert store_b.stale_writes == 0 and set(await saved(dsn)) == {owned, registered}
    await shut([a, b], [store_a, store_b])


# --- faults ------------------------------------------------------------------------------


async def test_while_postgres_is_stopped_writes_wait_and_are_committed_once_it_is_back(
    postgres_server: Postgres, dsn: str
) -> None:
    store = await opened(dsn)
    tracker = tracking(store, "t")
    counted: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        tracker.track("t", job("job-1"), "registered", now=20)
        await store.committed()
        postgres_server.stop(immediate=True)  # as a crash: what was committed must be there after recovery
        try:
            tracker.track("t", job("job-2", Status.SUCCEEDED), "registered", now=30)
            store.after_commit(partial(counted.append, "job-2"), ("t", "job-2"))
            with pytest.raises(StateUnwritable):
                await store.committed()
            assert store.error is not None and store.pending_writes == 1 and counted == []
            errors = store.write_errors
            await anyio.sleep(1.0)
            assert store.write_errors > errors  # retried, with a pause between attempts
            assert store.write_errors - errors < 8
            assert "asyncjob_state_pending_writes 1" in store.metrics_text().decode()
        finally:
            postgres_server.start()
        await until_committed(store)
        assert store.error is None and store.pending_writes == 0 and counted == ["job-2"]
        tg.cancel_scope.cancel()
    assert set(await saved(dsn)) == {"job-1", "job-2"}


async def test_a_connection_cut_mid_transaction_retries_the_batch(
    postgres_server: Postgres, dsn: str
) -> None:
    store = await opened(dsn, "cut")
    tracker = tracking(store, "t")
    tracker.track("t", job("job-1"), "registered", now=20)
    await store.flush()
    # Another session holds job-1's row: the next batch waits on it halfway through its transaction.
    locker = await connect(dsn)
    await locker.execute("SELECT 1 FROM asyncjob.jobs WHERE job_id = 'job-1' FOR UPDATE")
    state = tracker.targets["t"]
    tracker.update(state, job("job-1", Status.SUCCEEDED), now=30)
    tracker.track("t", job("job-2"), "registered", now=30)
    counted: list[str] = []
    store.after_commit(partial(counted.append, "job-1"), ("t", "job-1"))
    waiting = (
        "FROM pg_stat_activity WHERE application_name = 'asyncjob-exporter cut' AND wait_event_type = 'Lock'"
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run)
        with anyio.fail_after(10):
            while not postgres_server.psql(f"SELECT pid {waiting}"):
                await anyio.sleep(0.05)
        assert postgres_server.psql(f"SELECT pg_terminate_backend(pid) {waiting}") == "t"
        await locker.rollback()
        await until_committed(store)
        tg.cancel_scope.cancel()
    await locker.close()
    assert store.write_errors >= 1 and counted == ["job-1"]
    assert await saved(dsn) == {"job-1": (Status.SUCCEEDED, "cut"), "job-2": (Status.RUNNING, "cut")}


# --- metrics -----------------------------------------------------------------------------


async def test_the_state_metrics_parse_and_count_every_commit(dsn: str) -> None:
    store = await opened(dsn)
    tracker = tracking(store, "t")
    for n in range(3):
        tracker.track("t", job(f"job-{n}"), "registered", now=20)
        await store.flush()
    families = {f.name: f for f in text_string_to_metric_families(store.metrics_text().decode())}
    commits = {s.name: s.value for s in families["asyncjob_state_commit_duration_seconds"].samples}
    assert commits["asyncjob_state_commit_duration_seconds_count"] == 3
    assert commits["asyncjob_state_commit_duration_seconds_sum"] > 0
    assert families["asyncjob_state_pending_writes"].samples[0].value == 0
    assert families["asyncjob_state_write_errors"].samples[0].value == 0
    assert families["asyncjob_state_stale_writes"].samples[0].value == 0
    await store.close()


async def test_a_write_is_finished_by_the_server_while_the_replica_stalls_before_its_answer(
    postgres_server: Postgres, dsn: str
) -> None:
    store = await opened(dsn, "stall")
    tracker = tracking(store, "t")
    await store.flush()
    tracker.track("t", job("job-1"), "registered", now=20)
    database = dsn.split("?")[0].rsplit("/", 1)[1]
    session = "FROM pg_stat_activity WHERE application_name = 'asyncjob-exporter stall'"
    # Another session holds the table: the batch waits on it, its statements sent.
    locker = psycopg.connect(dsn)  # blocking: its release lets the event loop run nothing
    locker.execute("LOCK TABLE asyncjob.jobs IN SHARE MODE")
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.flush)
        with anyio.fail_after(10):
            while (
                postgres_server.psql(f"SELECT count(*) {session} AND wait_event_type = 'Lock'", database)
                == "0"
            ):
                await anyio.sleep(0.05)
        locker.rollback()
        # The replica stalls (SIGSTOP, a GC pause) before it reads the answer: its COMMIT went
        # with the statements, so no transaction, and none of its locks, is left open meanwhile.
        time.sleep(1.0)
        assert (
            postgres_server.psql(f"SELECT count(*) {session} AND state = 'idle in transaction'", database)
            == "0"
        )
    locker.close()
    assert await saved(dsn) == {"job-1": (Status.RUNNING, "stall")}
    await store.close()
