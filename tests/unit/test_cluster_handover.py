"""A replica's member hands shards over to the replica now preferred, against a real PostgreSQL,
including shards it holds but had let go of (their jobs no longer in its tracker)."""

from __future__ import annotations

import psycopg
import pytest

from exporter.cluster.leases import Leases, preferred_owners
from exporter.cluster.member import Member
from exporter.cluster.store import PostgresStore
from exporter.tracker import Tracker

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SHARDS = 256  # the schema's default: the store migrates with it
TTL = 6.0


class Scheduler:
    """What a member asks of the scheduler: nothing to poll in these tests."""

    def poll_soon(self, target: str, job_id: str) -> None:
        return None

    def taken_in(self, target: str, cursors: dict[str, str]) -> None:
        return None

    def share_budgets(self, replicas: int) -> None:
        return None


async def member(dsn: str, name: str) -> Member:
    async def connect() -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)

    leases = Leases(connect=connect, replica=name, shards=SHARDS, ttl=TTL)
    store = PostgresStore(dsn, name, leases, connect)
    joined = Member(Tracker(), Scheduler(), store, leases)
    await joined.open()
    return joined


async def test_shards_held_but_let_go_are_still_released_to_the_replica_now_preferred(dsn: str) -> None:
    """A replica that let its shards go (its lease deadline passed while it took in a large
    shard set, under load) and renewed them must still release those that prefer a replica that
    joined: else they stay leased to it, and worked by nobody."""
    a = await member(dsn, "a")
    await a.leases.round()  # alone: claims every shard and takes them in
    assert a.kept == set(range(SHARDS))
    a._let_go(set(range(SHARDS)))  # as _follow does once the deadline passed
    b = await member(dsn, "b")
    await b.leases.round()  # a member now: preferred for about half the shards
    await a.leases.round()  # hands those over
    await b.leases.round()  # claims them
    wanted_by_b = {s for s, m in preferred_owners(["a", "b"], SHARDS).items() if m == "b"}
    assert set(b.leases.held()) == wanted_by_b
    assert a.leases.counters.handovers == len(wanted_by_b)
    assert not set(a.leases.held()) & wanted_by_b
    for m in (a, b):
        await m.leases.leave()
        await m.store.close()
