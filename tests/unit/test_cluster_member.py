"""A replica's tracker following its leases, against a real PostgreSQL: shards gained are taken in
as committed and never counted again, shards handed over leave the tracker, registrations and
listed jobs written by one replica reach the owner, and a database outage keeps the jobs
exported while nothing is polled past the lease deadline."""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any

import anyio
import psycopg
import pytest

from exporter import catalogue
from exporter.cluster.leases import Leases
from exporter.cluster.member import Member
from exporter.cluster.store import PostgresStore
from exporter.config import build_settings
from exporter.group_commit import StateUnwritable
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.runtime import connect_store
from exporter.sharding import shard_of
from exporter.store import StateStore
from exporter.tracker import Tracker
from tests.postgres import Postgres

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SHARDS = 16


class Scheduler:
    """What the member asks of the scheduler, recorded."""

    store: StateStore | None = None

    def __init__(self) -> None:
        self.soon: list[tuple[str, str]] = []
        self.taken: list[str] = []
        self.replicas = 1

    def poll_soon(self, target: str, job_id: str) -> None:
        self.soon.append((target, job_id))

    def share_budgets(self, replicas: int) -> None:
        self.replicas = replicas

    def taken_in(self, target: str, cursors: dict[str, str]) -> None:
        self.taken.append(target)


class Replica:
    def __init__(self, dsn: str, name: str, ttl: float = 3.0) -> None:
        async def connect() -> psycopg.AsyncConnection:
            return await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)

        self.leases = Leases(connect, name, SHARDS, ttl=ttl)
        self.store = PostgresStore(dsn, name, self.leases, connect)
        settings = build_settings(
            {"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
        )
        self.tracker = Tracker()
        self.scheduler = Scheduler()
        connect_store(self.store, self.tracker, self.scheduler)
        self.tracker.set_target(settings.resolved(settings.targets[0]))
        self.member = Member(self.tracker, self.scheduler, self.store, self.leases)

    @property
    def jobs(self) -> dict[str, Any]:
        return self.tracker.targets["t"].jobs

    @property
    def finished(self) -> int:
        return sum(self.tracker.targets["t"].agg.finished.values())

    async def commit(self) -> None:
        await self.store.flush()


def finished(job_id: str) -> Job:
    now = time.time()
    return Job(job_id, Status.SUCCEEDED, job_type="connection", created=now - 20, finished=now - 1)


def running(job_id: str) -> Job:
    return Job(job_id, Status.RUNNING, job_type="connection", created=time.time() - 20)


async def started(*replicas: Replica) -> None:
    for r in replicas:
        await r.store.open(SHARDS)
    for _ in range(3):
        for r in replicas:
            await r.member.step()


async def holding_a_running_job(dsn: str) -> Replica:
    """A lone replica (4 s leases) whose running job-1 is committed."""
    a = Replica(dsn, "a", ttl=4.0)
    await started(a)
    a.tracker.track("t", running("job-1"), "discovered")
    await a.commit()
    return a


def ids_of(shards: set[int], n: int) -> list[str]:
    found = (f"job-{i}" for i in itertools.count())
    return list(itertools.islice((i for i in found if shard_of("t", i, SHARDS) in shards), n))


async def test_a_replica_that_gains_shards_takes_their_jobs_in_as_committed_and_counts_nothing_again(
    dsn: str,
) -> None:
    a = Replica(dsn, "a")
    await started(a)
    assert a.member.kept == set(range(SHARDS))
    for i in range(40):
        a.tracker.track("t", finished(f"job-{i}") if i % 2 else running(f"job-{i}"), "discovered")
    await a.commit()
    assert a.finished == 20
    b = Replica(dsn, "b")
    await started(a, b)
    moved = b.member.kept
    assert moved and a.member.kept == set(range(SHARDS)) - moved  # each holds what prefers it
    in_b = {i for i in (f"job-{n}" for n in range(40)) if shard_of("t", i, SHARDS) in moved}
    assert set(b.jobs) == in_b  # taken in from the database ...
    assert not in_b & set(a.jobs)  # ... and let go by a, with no tombstone
    assert not in_b & set(a.tracker.targets["t"].tombstones)
    assert b.finished == 0  # counted by a, once: not again by b
    assert all(b.jobs[i].counted for i in in_b if b.jobs[i].job.status.terminal)
    assert b.scheduler.taken == ["t"]
    # b works them now: a running job of b's that finishes is counted by b
    running_in_b = next(i for i in sorted(in_b) if not b.jobs[i].job.status.terminal)
    assert b.member.owns("t", running_in_b) and not a.member.owns("t", running_in_b)
    b.tracker.track("t", finished(running_in_b), "discovered")
    await b.commit()
    assert b.finished == 1


async def test_a_registration_taken_by_another_replica_reaches_the_owner_which_polls_it_soon(
    dsn: str,
) -> None:
    a, b = Replica(dsn, "a"), Replica(dsn, "b")
    await started(a, b)
    await b.member.open()  # notes where b's catch-up starts
    (job_id,) = ids_of(b.member.kept, 1)
    assert not a.member.owns("t", job_id)
    tracked = a.member.register_for_owner("t", job_id)
    await a.store.flush()  # the 202 follows this commit
    assert tracked.source == "registered" and job_id not in a.jobs
    assert await b.member.catch_up() == 1
    assert b.jobs[job_id].source == "registered" and b.jobs[job_id].job.is_placeholder
    assert b.scheduler.soon == [("t", job_id)]
    assert await b.member.catch_up() == 0  # read again in the overlap: taken in once


async def test_a_listed_job_of_another_replica_is_written_once_and_counted_once_by_its_owner(
    dsn: str,
) -> None:
    a, b = Replica(dsn, "a"), Replica(dsn, "b")
    await started(a, b)
    await b.member.open()
    (job_id,) = ids_of(b.member.kept, 1)
    for _ in range(3):  # a list shows it at every cycle
        a.member.hand_over("t", [finished(job_id)])
    assert a.store.pending_writes == 1
    await a.store.flush()
    assert await b.member.catch_up() == 1
    assert b.jobs[job_id].job.status is Status.SUCCEEDED
    await b.commit()
    assert b.finished == 1 and a.finished == 0


async def test_while_the_database_is_out_of_reach_the_jobs_stay_and_are_not_worked_past_the_deadline(
    postgres_server: Postgres, dsn: str
) -> None:
    a = await holding_a_running_job(dsn)
    postgres_server.stop(immediate=True)
    try:
        await a.member.step()
        assert not a.member.reachable and a.member.owns("t", "job-1")  # still within its lease
        await anyio.sleep(4.0)
        await a.member.step()
        assert not a.member.owns("t", "job-1")  # not polled past the deadline ...
        assert "job-1" in a.jobs  # ... but still exported as last known
    finally:
        postgres_server.start()
    await a.member.step()
    assert a.member.reachable and a.member.owns("t", "job-1") and "job-1" in a.jobs
    assert a.leases.counters.takeovers == 0


async def test_changes_made_before_an_outage_that_outlasts_the_lease_are_committed_when_it_ends(
    postgres_server: Postgres, dsn: str
) -> None:
    a = await holding_a_running_job(dsn)
    postgres_server.stop(immediate=True)
    try:
        await a.member.step()
        assert a.member.owns("t", "job-1")  # within its lease: polled ...
        a.tracker.track("t", finished("job-1"), "discovered")  # ... and seen finished
        await anyio.sleep(4.5)  # the lease lapses on the server's clock; nobody claims the shard
    finally:
        postgres_server.start()
    with contextlib.suppress(StateUnwritable):
        await a.store.flush()  # on the connection the restart cut: dropped, kept pending
    await a.store.flush()  # the writer's retry, before the member's next renewal
    assert a.store.stale_writes == 0  # the generation still holds: nothing is stale
    assert a.finished == 1  # counted once, here: no other replica will
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT data FROM asyncjob.jobs WHERE target = 't' AND job_id = 'job-1'")
        row = await cur.fetchone()
    assert row is not None and '"succeeded"' in row[0]
    await a.member.step()
    assert a.member.owns("t", "job-1") and a.leases.counters.takeovers == 0


async def test_a_replica_whose_shards_were_taken_while_it_was_paused_lets_their_jobs_go(dsn: str) -> None:
    a, b = Replica(dsn, "a", ttl=3.0), Replica(dsn, "b", ttl=3.0)
    await started(a)
    a.tracker.track("t", running("job-1"), "discovered")
    await a.commit()
    a.tracker.track("t", finished("job-1"), "discovered")  # seen just before the pause ...
    await anyio.sleep(3.2)  # ... a is "paused": its leases lapse, b takes everything
    await started(b)
    assert "job-1" in b.jobs and b.leases.counters.takeovers == SHARDS
    await a.store.flush()  # ... and committed on waking
    assert a.store.stale_writes >= 1  # fenced: not written
    assert a.finished == 0  # and its held increment did not run: b counts the job
    assert not b.jobs["job-1"].job.status.terminal
    await a.member.step()
    assert "job-1" not in a.jobs  # let go once a round shows b holds it
    await started(a, b)
    assert a.member.kept | b.member.kept == set(range(SHARDS))
    assert not a.member.kept & b.member.kept
    assert {j for j in a.jobs} & {j for j in b.jobs} == set()


async def test_a_replica_serves_the_cluster_families_of_the_catalogue_in_its_order(dsn: str) -> None:
    a, b = Replica(dsn, "a"), Replica(dsn, "b")
    await started(a, b)
    served = a.member.metrics_text().decode() + a.store.metrics_text().decode()
    names = [line.split()[2] for line in served.splitlines() if line.startswith("# TYPE")]
    assert [n for n in names if n.startswith("asyncjob_cluster_")] == [f.name for f in catalogue.CLUSTER]
    assert catalogue.STATE_STALE_WRITES.name in names
    values = {
        line.split()[0]: float(line.split()[1]) for line in served.splitlines() if not line.startswith("#")
    }
    assert values["asyncjob_cluster_replicas"] == 2 and values["asyncjob_cluster_state_reachable"] == 1
    assert values["asyncjob_cluster_shards"] == SHARDS
    assert 0 < values["asyncjob_cluster_shards_held"] < SHARDS
