"""Leases on virtual shards against a real PostgreSQL: balance, join and leave, fencing of a
replica that was paused past its lease, and a database outage that every replica sits out."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from exporter.cluster import schema
from exporter.cluster.leases import LAPSE_MARGIN, Leases, fenced, preferred_owners
from tests.postgres import Postgres

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SHARDS = 64
TTL = 1.5


async def connect(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)


async def migrated(dsn: str, shards: int = SHARDS) -> int:
    async with await connect(dsn) as conn:
        return await schema.migrate(conn, shards)


def replica(dsn: str, name: str, ttl: float = TTL) -> Leases:
    return Leases(connect=lambda: connect(dsn), replica=name, shards=SHARDS, ttl=ttl)


async def owners(dsn: str) -> dict[int, str | None]:
    async with await connect(dsn) as conn:
        cur = await conn.execute("SELECT shard, owner FROM asyncjob.leases WHERE expires_at > now()")
        live = {int(s): o for s, o in await cur.fetchall()}
    return {s: live.get(s) for s in range(SHARDS)}


async def settle(replicas: list[Leases], rounds: int = 3) -> None:
    for _ in range(rounds):
        for r in replicas:
            await r.round()


# --- schema -------------------------------------------------------------------------------


async def test_the_schema_is_made_once_even_when_replicas_start_together(dsn: str) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(migrated, dsn)
    assert await migrated(dsn, shards=999) == SHARDS  # the cluster's count, not this replica's
    async with await connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*), min(shard), max(shard) FROM asyncjob.leases")
        assert await cur.fetchone() == (SHARDS, 0, SHARDS - 1)
        assert await schema.installed_version(conn) == (schema.SCHEMA_VERSION, 1)


async def test_a_schema_newer_than_the_binary_can_work_with_is_refused_in_one_line(dsn: str) -> None:
    await migrated(dsn)
    async with await connect(dsn) as conn:
        await conn.execute("UPDATE asyncjob.meta SET value = '7' WHERE key = 'schema_version'")
        await conn.execute("UPDATE asyncjob.meta SET value = '6' WHERE key = 'compatible_from'")
        await conn.commit()
    with pytest.raises(schema.SchemaError) as refused:
        await migrated(dsn)
    assert "\n" not in str(refused.value) and "version 7" in str(refused.value)


async def test_an_older_binary_runs_beside_a_newer_schema_that_says_it_may(dsn: str) -> None:
    await migrated(dsn)
    async with await connect(dsn) as conn:
        await conn.execute("UPDATE asyncjob.meta SET value = '2' WHERE key = 'schema_version'")
        await conn.commit()
    assert await migrated(dsn) == SHARDS  # expand-only migration since: still works


# --- balance ------------------------------------------------------------------------------


async def test_live_replicas_split_every_shard_between_them_about_evenly(dsn: str) -> None:
    await migrated(dsn)
    replicas = [replica(dsn, name) for name in ("a", "b", "c")]
    await settle(replicas)
    held = [set(r.held()) for r in replicas]
    assert set().union(*held) == set(range(SHARDS))
    assert sum(len(h) for h in held) == SHARDS  # no shard held twice
    assert all(SHARDS / 3 * 0.5 < len(h) < SHARDS / 3 * 1.5 for h in held), [len(h) for h in held]
    truth = await owners(dsn)
    for r, h in zip(replicas, held, strict=True):
        assert {s for s, o in truth.items() if o == r.replica} == h
    for r in replicas:
        await r.leave()


async def test_a_replica_that_joins_moves_only_the_shards_that_prefer_it(dsn: str) -> None:
    await migrated(dsn)
    replicas = [replica(dsn, name) for name in ("a", "b", "c")]
    await settle(replicas)
    before = await owners(dsn)
    handed_before = sum(r.counters.handovers for r in replicas)
    replicas.append(replica(dsn, "d"))
    await settle(replicas)
    after = await owners(dsn)
    moved = {s for s in range(SHARDS) if before[s] != after[s]}
    assert moved and all(after[s] == "d" for s in moved)
    assert moved == {s for s, m in preferred_owners(["a", "b", "c", "d"], SHARDS).items() if m == "d"}
    assert len(moved) < SHARDS / 4 * 1.6
    assert sum(r.counters.handovers for r in replicas) - handed_before == len(moved)
    for r in replicas:
        await r.leave()


async def test_a_replica_that_leaves_hands_its_shards_over_at_once(dsn: str) -> None:
    await migrated(dsn)
    a, b = replica(dsn, "a"), replica(dsn, "b")
    await settle([a, b])
    await b.leave()
    await a.round()
    assert set(a.held()) == set(range(SHARDS))
    assert a.counters.takeovers == 0  # handed over, not taken from a dead replica
    await a.leave()


# --- failure ------------------------------------------------------------------------------


async def test_a_dead_replicas_shards_are_taken_over_once_its_leases_lapse(dsn: str) -> None:
    await migrated(dsn)
    a, b = replica(dsn, "a"), replica(dsn, "b")
    await settle([a, b])
    b_shards = set(b.held())
    await b._drop_connection()  # b dies: no more rounds, nothing released
    await a.round()
    assert not set(a.held()) & b_shards  # b's leases still run: nobody takes them early
    await anyio.sleep(TTL + 0.2)
    await settle([a], rounds=2)
    assert set(a.held()) == set(range(SHARDS))
    assert a.counters.takeovers == len(b_shards)
    await a.leave()


async def test_the_round_after_a_dead_replicas_heartbeat_lapses_comes_at_once_and_claims_its_shards(
    dsn: str,
) -> None:
    await migrated(dsn)
    a, b = replica(dsn, "a"), replica(dsn, "b")
    await settle([a, b])
    assert a.pause() == pytest.approx(TTL / 3)  # both beat every TTL/3: no lapse due sooner
    b_shards = set(b.held())
    await b._drop_connection()  # b dies right after its round
    await anyio.sleep(0.8 * TTL)
    await a.round()
    # b's heartbeat (and with it its leases) lapses in about 0.2 TTL: the next round is then,
    # not a renewal period (TTL/3) later.
    assert a.pause() <= 0.2 * TTL + LAPSE_MARGIN < TTL / 3
    assert not set(a.held()) & b_shards
    await anyio.sleep(a.pause())
    await a.round()
    assert set(a.held()) == set(range(SHARDS))
    assert a.counters.takeovers == len(b_shards)
    assert a.pause() == pytest.approx(TTL / 3, abs=0.05)  # nobody else left to wait for
    await a.leave()


async def test_a_connection_cut_between_two_rounds_costs_no_round(dsn: str) -> None:
    await migrated(dsn)
    a = replica(dsn, "a")
    await a.round()
    held = a.held()
    assert a._conn is not None
    async with await connect(dsn) as admin:
        # What a failover or a restarted proxy does to a kept connection.
        await admin.execute("SELECT pg_terminate_backend(%s)", (a._conn.info.backend_pid,))
        await admin.commit()
    await a.round()
    assert a.counters.renew_errors == 0 and not a.failing
    assert a.held() == held
    await a.leave()


async def test_a_replica_stops_working_a_shard_before_the_database_could_give_it_away(dsn: str) -> None:
    await migrated(dsn)
    a = replica(dsn, "a")
    await a.round()
    local_left = a._valid_until - a.clock()
    async with await connect(dsn) as conn:
        cur = await conn.execute("SELECT extract(epoch FROM min(expires_at) - now()) FROM asyncjob.leases")
        row = await cur.fetchone()
    assert row is not None and local_left < float(row[0])
    await anyio.sleep(local_left + 0.05)
    assert a.held() == {} and not a.holds(0)
    await a.leave()


async def test_a_replica_paused_past_its_lease_cannot_commit_stale_work(dsn: str) -> None:
    await migrated(dsn)
    a, b = replica(dsn, "a"), replica(dsn, "b")
    await settle([a, b])
    paused = b.held()  # b is stopped (SIGSTOP) holding these generations
    await anyio.sleep(TTL + 0.2)
    await settle([a], rounds=2)
    assert set(paused) <= set(a.held())
    # b wakes and, before any renewal, tries to commit what it had in hand.
    async with await connect(dsn) as conn, conn.transaction():
        assert await fenced(conn, "b", paused) == set()
    assert b.held() == {}  # its own deadline passed too
    # Its next round learns the leases are gone and claims nothing that a holds.
    lost: set[int] = set()

    async def on_lost(shards: set[int]) -> None:
        lost.update(shards)

    b.on_lost = on_lost
    await b.round()
    assert lost == set(paused)
    assert not set(b.held()) & set(a.held())
    async with await connect(dsn) as conn, conn.transaction():
        assert await fenced(conn, "a", a.held()) == set(a.held())
    for r in (a, b):
        await r.leave()


async def test_a_second_process_under_the_same_name_fences_the_first_which_then_lets_go(dsn: str) -> None:
    await migrated(dsn)
    first = replica(dsn, "a")
    await settle([first])
    paused = first.held()  # the first is stopped (SIGSTOP) holding these generations
    assert len(paused) == SHARDS
    # A second process is started under the same name (a StatefulSet pod deleted by force, a
    # name set by hand twice): its first round takes the name's leases under new generations.
    second = replica(dsn, "a")
    await second.round(balance=False)
    assert set(second.held()) == set(paused)
    assert all(g > paused[s] for s, g in second.held().items())
    async with await connect(dsn) as conn, conn.transaction():
        assert await fenced(conn, "a", paused) == set()
        assert await fenced(conn, "a", second.held()) == set(paused)
    # The first wakes: its renewal finds none of its generations, so it works nothing.
    lost: set[int] = set()

    async def on_lost(shards: set[int]) -> None:
        lost.update(shards)

    first.on_lost = on_lost
    await first.round()
    assert lost == set(paused) and first.held() == {}
    # Its exit releases nothing of the second's, and the second goes on renewing them.
    await first.leave()
    assert set((await owners(dsn)).values()) == {"a"}
    await second.round()
    assert set(second.held()) == set(paused)
    await second.leave()
    assert set((await owners(dsn)).values()) == {None}


async def test_a_replica_paused_inside_a_write_holds_up_no_other_replicas_round(dsn: str) -> None:
    await migrated(dsn)
    a, b = replica(dsn, "a"), replica(dsn, "b")
    await settle([a, b])
    own = set(b.held())
    # a is paused (SIGSTOP) in the middle of a write: its fencing holds its leases' rows locked.
    async with await connect(dsn) as paused:
        await paused.execute("BEGIN")
        assert await fenced(paused, "a", a.held(), TTL) == set(a.held())
        await anyio.sleep(TTL + 0.2)  # a's heartbeat and leases lapse meanwhile
        # b's rounds go on: it renews its own leases, and claims a's once the server has ended a's
        # transaction (idle for a renewal period), not after a wakes.
        for _ in range(4):
            with anyio.fail_after(TTL / 2):
                await b.round()
            assert own <= set(b.held())
            await anyio.sleep(TTL / 3)
        assert set(b.held()) == set(range(SHARDS))
        # a wakes: its transaction is gone, and nothing it wrote in it lands.
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            await paused.execute("COMMIT")
    await b.leave()


async def test_a_database_outage_stops_the_work_at_the_deadline_and_resumes_without_takeover(
    postgres_server: Postgres, dsn: str
) -> None:
    await migrated(dsn)
    ttl = 6.0  # stopping the server takes a moment: the first failed round is well within it
    a, b = replica(dsn, "a", ttl), replica(dsn, "b", ttl)
    await settle([a, b])
    generations = {**a.held(), **b.held()}
    lost: dict[str, set[int]] = {"a": set(), "b": set()}
    for r in (a, b):

        async def on_lost(shards: set[int], name: str = r.replica) -> None:
            lost[name].update(shards)

        r.on_lost = on_lost
    postgres_server.stop(immediate=True)  # as a crash: no shutdown checkpoint to wait for
    try:
        await settle([a, b], rounds=1)
        assert a.counters.renew_errors == 1 and a.held()  # still within its lease: keeps working
        await anyio.sleep(max(a._valid_until, b._valid_until) - a.clock() + 0.05)
        assert a.held() == {} and b.held() == {}  # past the deadline, even before a round says so
        await settle([a, b], rounds=1)
        assert lost["a"] | lost["b"] == set(range(SHARDS))
    finally:
        postgres_server.start()
    await settle([a, b], rounds=2)
    assert {**a.held(), **b.held()} == generations  # same owners, same generations
    assert a.counters.takeovers == b.counters.takeovers == 0
    for r in (a, b):
        await r.leave()
