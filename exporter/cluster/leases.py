"""Membership and leases: which live replica works which virtual shards.

Every replica writes a heartbeat; a replica is live while its heartbeat is younger than the
lease TTL. Each virtual shard prefers one live replica, by rendezvous hashing of (replica,
shard): every replica computes the same preference from the same member list, each holds about
1/N of the shards, and a replica that joins or leaves moves only the shards that prefer it.

A replica claims the free or lapsed shards that prefer it, and hands back (releases) those that
now prefer another live replica. Each claim raises the shard's generation: a fencing token that
every write checks (`fenced`), so a replica that was paused past its lease and then woke cannot
commit work for a shard another replica holds since.

Time: lease expiry is PostgreSQL's clock (`now()` at renewal). A replica's own deadline for a
lease is measured on its monotonic clock from when the renewal was sent, less a margin, so it
stops working a shard before the database can hand it to anyone else.

Locks: a transaction on the leases (a renewal, a claim, a fenced write) locks their rows until it
ends, and a replica paused in the middle of one (SIGSTOP, a GC pause, a starved loop) would hold
them for as long as it sleeps. So each such transaction asks the server to end it once it sits idle
for a renewal period (`stalls_end`), and a claim skips the rows another transaction holds (taken
at a later round) rather than wait for them: no replica's round waits on a sleeping one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
import psycopg

log = logging.getLogger("asyncjob.cluster")

DEFAULT_LEASE_TTL = 15.0
# Renewals per TTL: a lease survives two failed renewals in a row.
RENEWALS_PER_TTL = 3
# The share of the TTL a replica keeps in hand: it stops working a shard this long before the
# database could give the shard to another replica (clock rates drift; a round takes time).
SAFETY = 0.2
# A round due when another member's heartbeat lapses runs this long after (the two clocks differ
# by the round trip), and never sooner than MIN_PAUSE after the last.
LAPSE_MARGIN = 0.1
MIN_PAUSE = 0.05
# The leases of given shards under given generations (two arrays: `_these`).
_THESE = "(shard, generation) IN (SELECT * FROM unnest(%s::int[], %s::bigint[]))"
# A transaction on the leases idle this long at least is a stalled replica's (`stalls_end`): a
# busy loop (a scrape of a large exposition between two statements) takes a good deal less.
STALL_FLOOR = 1.0
# Members silent for a day are deleted every this many rounds.
FORGET_EVERY = 100


def _these(pairs: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(shard, generation) pairs as _THESE's two arrays, in shard order."""
    ordered = sorted(pairs)
    return [s for s, _ in ordered], [g for _, g in ordered]


def preference(replica: str, shard: int) -> int:
    """The rendezvous weight of `replica` for `shard`: the highest weight wins the shard."""
    digest = hashlib.blake2b(f"{replica}\x00{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred_owners(members: list[str], shards: int) -> dict[int, str]:
    """Each shard's preferred replica among `members` (none when there are no members)."""
    if not members:
        return {}
    return {s: max(members, key=lambda m: preference(m, s)) for s in range(shards)}


@dataclass(frozen=True)
class Peer:
    """A live member as the last round read it, for the landing page."""

    replica: str
    address: str  # its `cluster.advertise_url`; "" when it gave none
    shards: int  # unexpired leases it held when the round read them (before this round's claims)


@dataclass
class Counters:
    renew_errors: int = 0
    takeovers: int = 0  # shards claimed after another replica's lease lapsed
    handovers: int = 0  # shards released because another live replica is now preferred


@dataclass
class Leases:
    """One replica's view: its membership, the shards it holds and until when it may work them.

    `connect` opens a new connection (autocommit off) when the last one failed; `on_lost` is
    awaited with shards the replica stops working before they are released, so their pending
    writes can be committed first (it must not block for long: the lease is still running)."""

    connect: Callable[[], Awaitable[psycopg.AsyncConnection]]
    replica: str
    shards: int
    address: str = ""
    ttl: float = DEFAULT_LEASE_TTL
    on_gained: Callable[[set[int]], Awaitable[None]] | None = None
    on_lost: Callable[[set[int]], Awaitable[None]] | None = None
    clock: Callable[[], float] = time.monotonic
    counters: Counters = field(default_factory=Counters)
    members: list[str] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)  # the members with what each holds
    _held: dict[int, int] = field(default_factory=dict)  # shard -> generation
    _valid_until: float = 0.0
    # Until then, lapsed leases of other replicas are not claimed (see `round`).
    _patient_until: float = 0.0
    _failing: bool = False
    _rounds: int = 0
    # Every lease this process took (shard -> generation) and has not given up, lapsed or not:
    # what it renews. None until its first renewal committed.
    _known: dict[int, int] | None = None
    _conn: psycopg.AsyncConnection | None = None
    # When (this replica's clock) the next other live member's heartbeat lapses.
    _next_lapse: float = float("inf")

    # --- what the rest of the replica asks -------------------------------------------------
    def valid(self) -> bool:
        return self.clock() < self._valid_until

    def held(self) -> dict[int, int]:
        """Shards this replica may work now, with their generations (none once lapsed)."""
        return dict(self._held) if self.valid() else {}

    def holds(self, shard: int) -> bool:
        return shard in self._held and self.valid()

    def generation(self, shard: int) -> int | None:
        """The generation this replica may work `shard` under now; None when it may not."""
        return self._held.get(shard) if self.valid() else None

    def pause(self) -> float:
        """Seconds to the next round: a renewal period, or less when another member's heartbeat
        lapses sooner. A replica that died has its shards claimed as soon as its leases lapse
        (they lapse with its heartbeat), not up to a renewal period later."""
        period = self.ttl / RENEWALS_PER_TTL
        return max(MIN_PAUSE, min(period, self._next_lapse + LAPSE_MARGIN - self.clock()))

    @property
    def failing(self) -> bool:
        """The last round did not reach the database."""
        return self._failing

    # --- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Renew, balance and heartbeat every TTL/3 until cancelled; then hand everything back."""
        try:
            while True:
                await self.round()
                await anyio.sleep(self.pause())
        finally:
            with anyio.CancelScope(shield=True):
                await self.leave()

    async def round(self, balance: bool = True) -> None:
        """One renewal: heartbeat, renew what is held, release what prefers another replica,
        claim what prefers this one (not with `balance` False: a replica's first round, so that
        replicas started together see each other before any claims). A failure is counted; the
        leases run out at their deadline."""
        sent = self.clock()
        self._next_lapse = float("inf")
        try:
            conn, peers, renewed = await self._beat(sent)
            members = [p.replica for p in peers]
            self._valid_until = sent + self.ttl * (1 - SAFETY)
            if self._failing:
                # Back after the database (or the way to it) failed: every other replica that
                # lived through it sees its heartbeat and leases lapsed, as this one did. Each gets
                # one TTL to renew its own before any of them counts as dead and is taken from.
                self._failing, self._patient_until = False, sent + self.ttl
            lost = set(self._held) - set(renewed)
            self._held, self._known = renewed, dict(renewed)
            if lost:
                log.warning("cluster leases lost to another replica", extra={"shards": len(lost)})
                await self._lose(lost)
            self.members, self.peers = members, peers
            if balance:
                wanted = {s for s, m in preferred_owners(members, self.shards).items() if m == self.replica}
                await self._release(conn, set(self._held) - wanted)
                await self._claim(conn, wanted - set(self._held), sent)
        except (psycopg.Error, OSError) as e:
            self.counters.renew_errors += 1
            self._failing = True
            log.warning(
                "cluster lease renewal failed; shards are worked until their deadline",
                extra={"error": str(e).strip(), "shards": len(self._held), "valid": self.valid()},
            )
            await self._drop_connection()
            if not self.valid() and self._held:
                lapsed, self._held = set(self._held), {}
                await self._lose(lapsed)

    async def _beat(self, sent: float) -> tuple[psycopg.AsyncConnection, list[Peer], dict[int, int]]:
        """Heartbeat and renewal, one transaction. A kept connection found cut (the server
        restarted, a proxy or a failover dropped it) is replaced at once and the transaction
        run again: a connection cut between two rounds costs no round, and the replica does not
        count as unable to reach the database for a renewal period."""
        kept = self._conn is not None and not self._conn.closed
        conn = await self._connection()
        try:
            return (conn, *await self._beat_on(conn, sent))
        except psycopg.OperationalError:
            if not (kept and conn.broken):
                raise
        await self._drop_connection()
        conn = await self._connection()
        return (conn, *await self._beat_on(conn, sent))

    async def _beat_on(self, conn: psycopg.AsyncConnection, sent: float) -> tuple[list[Peer], dict[int, int]]:
        async with conn.transaction():
            await stalls_end(conn, self.ttl)
            return await self._heartbeat(conn, sent), await self._renew(conn)

    async def leave(self) -> None:
        """Release every lease and the membership, so others take over at once, not after a TTL."""
        held, self._held, self._valid_until = set(self._held), {}, 0.0
        known, self._known = _these((self._known or {}).items()), {}
        if held:
            await self._lose(held)
        try:
            conn = await self._connection()
            async with conn.transaction():
                await stalls_end(conn, self.ttl)
                # Only its own: not those another process of the same name raised since.
                await conn.execute(
                    "UPDATE asyncjob.leases SET owner = NULL, expires_at = '-infinity' "
                    f"WHERE owner = %s AND {_THESE}",
                    (self.replica, *known),
                )
                await conn.execute("DELETE FROM asyncjob.members WHERE replica = %s", (self.replica,))
        except (psycopg.Error, OSError) as e:
            log.warning("cluster leases not released; they lapse after the TTL", extra={"error": str(e)})
        finally:
            await self._drop_connection()

    # --- steps ------------------------------------------------------------------------------
    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await self.connect()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def _heartbeat(self, conn: psycopg.AsyncConnection, sent: float) -> list[Peer]:
        """Beat; the live members, and when the next other one's heartbeat lapses (`pause`)."""
        await conn.execute(
            "INSERT INTO asyncjob.members (replica, address, heartbeat_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (replica) DO UPDATE SET heartbeat_at = now(), address = excluded.address",
            (self.replica, self.address),
        )
        self._rounds += 1
        if self._rounds % FORGET_EVERY == 1:
            # Replicas gone for a day (killed pods under names never used again) leave the table.
            await conn.execute("DELETE FROM asyncjob.members WHERE heartbeat_at < now() - interval '1 day'")
        # With the leases each holds, in the same round trip (asyncjob.leases is indexed by owner).
        cur = await conn.execute(
            "SELECT m.replica, m.address, count(l.shard), "
            "extract(epoch FROM m.heartbeat_at + make_interval(secs => %s) - now())::float8 "
            "FROM asyncjob.members m "
            "LEFT JOIN asyncjob.leases l ON l.owner = m.replica AND l.expires_at > now() "
            "WHERE m.heartbeat_at > now() - make_interval(secs => %s) "
            "GROUP BY m.replica, m.address, m.heartbeat_at ORDER BY m.replica",
            (self.ttl, self.ttl),
        )
        rows = await cur.fetchall()
        # now() is when the transaction began, after `sent`: a lapse is never seen late.
        lapses = (float(left) for r, _, _, left in rows if r != self.replica)
        self._next_lapse = sent + min(lapses, default=float("inf"))
        return [Peer(str(r), str(a), int(n)) for r, a, n, _ in rows]

    async def _renew(self, conn: psycopg.AsyncConnection) -> dict[int, int]:
        """Extend the leases this process holds, under the generations it holds them with, lapsed
        ones too when nobody claimed them since (a database outage that every replica sat out):
        the generation proves nobody did. This process's first renewal takes every lease its name
        holds and raises their generations: an earlier process of the same name (restarted, or
        only paused while a second one started) can neither commit nor renew under them."""
        if self._known is None:
            cur = await conn.execute(
                "UPDATE asyncjob.leases SET expires_at = now() + make_interval(secs => %s), "
                "generation = generation + 1 WHERE owner = %s RETURNING shard, generation",
                (self.ttl, self.replica),
            )
        else:
            cur = await conn.execute(
                "UPDATE asyncjob.leases SET expires_at = now() + make_interval(secs => %s) "
                f"WHERE owner = %s AND {_THESE} RETURNING shard, generation",
                (self.ttl, self.replica, *_these(self._known.items())),
            )
        return {int(s): int(g) for s, g in await cur.fetchall()}

    async def _release(self, conn: psycopg.AsyncConnection, shards: set[int]) -> None:
        if not shards:
            return
        # Stop working them first (and commit what is pending), then let them go.
        these = _these((s, g) for s, g in self._held.items() if s in shards)
        for s in shards:
            self._held.pop(s, None)
            if self._known is not None:
                self._known.pop(s, None)
        await self._lose(shards)
        async with conn.transaction():
            await stalls_end(conn, self.ttl)
            await conn.execute(
                f"UPDATE asyncjob.leases SET owner = NULL, expires_at = '-infinity' WHERE owner = %s AND {_THESE}",
                (self.replica, *these),
            )
        self.counters.handovers += len(shards)
        log.info("cluster shards handed over", extra={"shards": len(shards)})

    async def _claim(self, conn: psycopg.AsyncConnection, shards: set[int], sent: float) -> None:
        if not shards:
            return
        async with conn.transaction():
            await stalls_end(conn, self.ttl)
            # SKIP LOCKED: a row another transaction holds (a replica paused inside a write) is
            # claimed at a later round, once the server has ended that transaction; waiting for it
            # here would stop this replica's renewals too.
            cur = await conn.execute(
                "WITH free AS ("
                "  SELECT shard, owner FROM asyncjob.leases"
                "  WHERE shard = ANY(%s) AND (owner IS NULL OR (%s AND expires_at < now()))"
                "  FOR UPDATE SKIP LOCKED"
                ") UPDATE asyncjob.leases l SET owner = %s, generation = l.generation + 1,"
                "  expires_at = now() + make_interval(secs => %s)"
                " FROM free WHERE l.shard = free.shard RETURNING l.shard, l.generation, free.owner",
                (sorted(shards), self.clock() >= self._patient_until, self.replica, self.ttl),
            )
            claimed = await cur.fetchall()
        gained = {int(s) for s, _, _ in claimed}
        self.counters.takeovers += sum(
            1 for _, _, prev in claimed if prev is not None and prev != self.replica
        )
        self._held.update({int(s): int(g) for s, g, _ in claimed})
        if self._known is not None:
            self._known.update({int(s): int(g) for s, g, _ in claimed})
        # The claim was sent after `sent`: its leases end no earlier than the renewed ones.
        self._valid_until = max(self._valid_until, sent + self.ttl * (1 - SAFETY))
        if gained and self.on_gained is not None:
            await self.on_gained(gained)

    async def _lose(self, shards: set[int]) -> None:
        if self.on_lost is not None:
            await self.on_lost(shards)


async def stalls_end(conn: psycopg.AsyncConnection, ttl: float) -> None:
    """Inside a transaction on the leases: the server ends it (and the connection) once it sits
    idle for a renewal period, releasing its locks: a replica paused inside it holds up no other
    replica's claim for longer. Transaction-scoped, so it holds behind a transaction-pooling proxy."""
    await conn.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, true)",
        (str(round(max(STALL_FLOOR, ttl / RENEWALS_PER_TTL) * 1000)),),
    )


async def fenced(
    conn: psycopg.AsyncConnection, replica: str, generations: dict[int, int], ttl: float = DEFAULT_LEASE_TTL
) -> set[int]:
    """Inside a write transaction: the shards of `generations` this replica still holds with that
    very generation, locked against a claim until the transaction ends (or the server ends it,
    idle for a renewal period of `ttl`: see `stalls_end`). Writes for any other shard are stale
    (another replica holds it since) and must be dropped. A lease that lapsed while nobody claimed
    it (a database outage every replica sat out) still fences nothing: every claim raises the
    generation, so the same generation proves no other replica worked the shard since, and the
    changes made under it before the lapse are committed, as `_renew` keeps the lease."""
    if not generations:
        return set()
    await stalls_end(conn, ttl)
    cur = await conn.execute(
        "SELECT shard, generation FROM asyncjob.leases WHERE owner = %s AND shard = ANY(%s) FOR SHARE",
        (replica, sorted(generations)),
    )
    return {int(s) for s, g in await cur.fetchall() if generations.get(int(s)) == int(g)}
