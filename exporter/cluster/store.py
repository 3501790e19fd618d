"""Durable state of the cluster mode in PostgreSQL: each job's last snapshot, tombstones, cursors
and quarantined jobs by virtual shard, written by group commit and fenced by the replica's leases.

The surface is exporter.state.Store's, so the runtime can take either: a tracker listener whose
changes wait in memory until the writer commits everything pending in one transaction and wakes
whoever waits (`committed()`); a held counter increment runs only once the change behind it is
committed. A transaction writes a statement per kind of change, its rows as arrays (`unnest`): a
batch of ten thousand jobs costs the round trips of a batch of ten. What the pages and the catch-up
read of other replicas' writes is exporter.cluster.reads'.

Fencing: a change carries the generation its shard's lease had when the change was made. The
transaction checks them (`leases.fenced`, which also holds the leases against a claim until the
commit); the changes made under a lease that passed to another replica since are stale: counted
(`stale_writes`) and not written, and the counter increments held behind them do not run (the new
owner counts those jobs). Of a shard this replica does not hold, or held no longer, only jobs are
written (a registration, which any replica takes and acknowledges; a listed job of another
shard), for the owner: inserted when absent, never over the owner's snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import psycopg

from exporter.catalogue import STATE_STALE_WRITES
from exporter.cluster import schema
from exporter.cluster.batch import ROWS_PER_TURN, Batch, Change, Fresh, JobKey
from exporter.cluster.leases import Leases, fenced
from exporter.cluster.reads import ClusterReads, Reader
from exporter.group_commit import GroupCommit
from exporter.sharding import shard_of
from exporter.state import StateUnwritable, state_metrics_text
from exporter.state_file import tracked_from_json
from exporter.tracked import (
    QUARANTINE_SECONDS,
    TOMBSTONE_SECONDS,
    TOMBSTONES_IN_MEMORY,
    TargetState,
    TrackedJob,
)

log = logging.getLogger("asyncjob.state")

# A transaction (or a connection attempt) that takes longer is abandoned with its connection and
# the batch retried on a new one: a server that stopped answering must not hold the writer.
COMMIT_TIMEOUT = 10.0
LOAD_TIMEOUT = 120.0  # reading the jobs of the shards a replica gains (tens of thousands of rows)
CONNECT_TIMEOUT = 3
# Expired tombstones and quarantine rows are deleted with a batch this often.
PRUNE_EVERY = 60.0
SIZE_EVERY = 60.0  # how often the tables' size on disk is read (asyncjob_state_size_bytes)

_SIZE = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'asyncjob' AND c.relkind = 'r'"
)


class PostgresStore(ClusterReads, GroupCommit):
    """One replica's state store. `leases` None: a lone replica that owns every shard (no fencing).
    `open()` migrates the schema and loads what the replica holds; `run()` is the writer task."""

    where = "state database"

    def __init__(
        self,
        conninfo: str,
        replica: str = "",
        leases: Leases | None = None,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection]] | None = None,
    ) -> None:
        super().__init__()
        self.conninfo, self.replica, self.leases = conninfo, replica, leases
        self.connect = connect or self._connect
        self.shards = schema.DEFAULT_SHARDS  # the cluster's count, once open() read it
        self._conn: psycopg.AsyncConnection | None = None  # the writer's
        self._reads = Reader(self.connect)  # the replica's own: loads, catch-up, sizes
        # The pages' and the API's reads of other replicas' jobs: a connection of their own, so a
        # page never waits behind a shard's load nor holds up the catch-up.
        self._shown = Reader(self.connect)
        self._pending = Batch()
        self._inflight = 0
        self.stale_writes = 0  # changes dropped: made under a lease another replica holds since
        self._pruned_at = 0.0  # so the first batch prunes
        self._size, self._sized_at = 0, 0.0
        # What load() read, until restore() hands it out; restored jobs' first notice is no change.
        self._loaded: dict[str, list[TrackedJob]] = {}
        self._loaded_tombstones: dict[str, dict[str, float]] = {}
        self._quarantined: dict[str, dict[str, float]] = {}
        self._unchanged: dict[int, TrackedJob] = {}
        self._cursors: dict[JobKey, str] = {}
        # Every tombstone of the held shards: the tracker asks without waiting (`buried`), and the
        # database is a network away.
        self._buried: dict[JobKey, float] = {}

    # --- opening and reading -------------------------------------------------------------
    async def _connect(self) -> psycopg.AsyncConnection:
        # No prepared statements: they do not survive a transaction-pooling proxy.
        return await psycopg.AsyncConnection.connect(
            self.conninfo,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"asyncjob-exporter {self.replica}".strip(),
            prepare_threshold=None,
        )

    async def open(self, shards: int = schema.DEFAULT_SHARDS) -> None:
        """Migrate the schema (raises schema.SchemaError for one too new) and, for a lone replica,
        load every shard; a replica with leases loads the shards it gains (`load`)."""
        async with await self.connect() as conn:
            self.shards = await schema.migrate(conn, shards)
        if self.leases is not None:
            self.leases.shards = self.shards  # the cluster's count, whatever this replica was told
        if self.leases is None:
            await self.load(range(self.shards))

    async def _read(
        self, sql: str, params: tuple[Any, ...], timeout: float = COMMIT_TIMEOUT
    ) -> list[tuple[Any, ...]]:
        """Rows of a query on the reading connection (opened again after a failure)."""
        return await self._reads.rows(sql, params, timeout)

    async def load(self, shards: Iterable[int]) -> int:
        """Read the jobs, tombstones, cursors and quarantined jobs of `shards` (those a replica
        just gained) for restore() to hand out; returns the jobs read. Unreadable rows are
        skipped, named in the log. Raises psycopg.Error (or TimeoutError) when the database cannot
        be read."""
        wanted = sorted(set(shards))
        rows = await self._read(
            "SELECT target, job_id, data FROM asyncjob.jobs WHERE shard = ANY(%s)", (wanted,), LOAD_TIMEOUT
        )
        read = 0
        for n, (target, job_id, data) in enumerate(rows):
            if n % ROWS_PER_TURN == ROWS_PER_TURN - 1:
                await anyio.lowlevel.checkpoint()
            try:
                tracked = tracked_from_json(data)
                if tracked.job.id != job_id:
                    raise ValueError(f"job.id: {tracked.job.id!r} differs from the row's key")
            except ValueError as e:
                log.warning(
                    "unreadable job in the state database, skipped",
                    extra={"target": target, "key": job_id, "problem": str(e)},
                )
                continue
            self._loaded.setdefault(target, []).append(tracked)
            read += 1
        since = time.time() - TOMBSTONE_SECONDS
        for target, job_id, at in await self._read(
            "SELECT target, job_id, at FROM asyncjob.tombstones WHERE shard = ANY(%s) AND at >= %s",
            (wanted, since),
        ):
            self._loaded_tombstones.setdefault(target, {})[job_id] = at
            self._buried[(target, job_id)] = at
        for target, name, value in await self._read(
            "SELECT target, name, value FROM asyncjob.cursors WHERE shard = ANY(%s)", (wanted,)
        ):
            self._cursors[(target, name)] = value
        for target, job_id, at in await self._read(
            "SELECT target, job_id, at FROM asyncjob.quarantine WHERE shard = ANY(%s) AND at >= %s",
            (wanted, time.time() - QUARANTINE_SECONDS),
        ):
            self._quarantined.setdefault(target, {})[job_id] = at
        log.info("state restored", extra={"shards": len(wanted), "jobs": read})
        return read

    # --- what the tracker asks (exporter.runtime.connect_store hands it over) -----------------
    def restore(self, state: TargetState) -> list[TrackedJob]:
        """Jobs loaded for `state`'s target, each handed out once; the newest of its tombstones go
        to memory, oldest first (the rest are found by `buried`), and its quarantined jobs."""
        name = state.config.name
        loaded = self._loaded_tombstones.pop(name, {})
        merged = sorted({**loaded, **state.tombstones}.items(), key=lambda kv: kv[1])
        state.tombstones.clear()
        state.tombstones.update(merged[-TOMBSTONES_IN_MEMORY:])
        quarantined = getattr(state, "quarantined", None)  # a field of TargetState since the watchdog
        if isinstance(quarantined, dict):
            quarantined.update(self.quarantined(name))
        jobs = self._loaded.pop(name, [])
        self._unchanged.update((id(t), t) for t in jobs)
        return jobs

    def quarantined(self, target: str) -> dict[str, float]:
        """Jobs of `target` loaded as quarantined (job id -> since), handed out once."""
        return self._quarantined.pop(target, {})

    def cursors(self, target: str) -> dict[str, str]:
        return {name: v for (t, name), v in self._cursors.items() if t == target}

    def buried(self, target: str, job_id: str) -> float | None:
        """When the job was dropped, if this replica keeps its tombstone; None when it does not."""
        at = self._buried.get((target, job_id))
        return at if at is not None and at >= time.time() - TOMBSTONE_SECONDS else None

    def quarantine(self, target: str, job_id: str, why: str) -> None:
        """Record that the event loop froze on this job: from the watchdog's thread while the loop
        is stuck, on a connection of its own. Not fenced: every replica should skip the job."""
        timeout = f"-c statement_timeout={int(COMMIT_TIMEOUT * 1000)}"  # the process ends after it
        with psycopg.connect(self.conninfo, connect_timeout=CONNECT_TIMEOUT, options=timeout) as conn:
            conn.execute(
                "INSERT INTO asyncjob.quarantine (target, job_id, shard, at, why) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (target, job_id) DO UPDATE SET at = excluded.at, why = excluded.why",
                (target, job_id, shard_of(target, job_id, self.shards), time.time(), why),
            )

    # --- changes -------------------------------------------------------------------------
    def _where(self, key: JobKey) -> tuple[int, int | None]:
        """The key's shard, and the generation this replica holds it under (None: not held)."""
        shard = shard_of(key[0], key[1], self.shards)
        return shard, 0 if self.leases is None else self.leases.generation(shard)

    # Of a shard this replica does not hold, only a job is written (for its owner): a removal, a
    # tombstone, a cursor or an increment is not this replica's to make (it dropped the shard's
    # jobs because it let the shard go, say), and is neither written nor counted as stale.

    def save_cursors(self, target: str, cursors: dict[str, str]) -> None:
        for name, value in cursors.items():
            key = (target, name)
            shard, generation = self._where(key)
            # PostgreSQL's text holds no NUL and no lone surrogate: such a value is kept, replaced.
            value = value.encode("utf-8", "replace").decode().replace("\x00", "\ufffd")
            if self._cursors.get(key) != value and generation is not None:
                self._cursors[key] = value
                self._pending.cursors[key] = Change(value, shard, generation)
                self._changed()

    def after_commit(self, apply: Callable[[], None], key: JobKey | None = None) -> None:
        """Run `apply` (a counter increment) once every change made so far is committed; with the
        `key` of the job it counts, only if that job's shard was this replica's, under the same
        lease, when the commit was made (else the new owner counts the job: counting it here too
        would count it twice)."""
        tied: Change[None] | None = None
        if key is not None:
            shard, generation = self._where(key)
            if generation is None:
                return
            tied = Change(None, shard, generation)
        self._pending.held.append((apply, tied))
        self._changed()

    def job_changed(self, state: TargetState, tracked: TrackedJob) -> None:
        if self._unchanged and self._unchanged.pop(id(tracked), None) is tracked:
            return  # handed back by restore: the database has it
        key = (state.config.name, tracked.job.id)
        self._pending.jobs[key] = Change(tracked, *self._where(key))
        self._changed()

    def write_for_owner(self, target: str, tracked: TrackedJob) -> None:
        """A job of a shard this replica does not hold (a registration it took, a job one of its
        lists showed): written for the shard's owner, who hears of it (NOTIFY and its catch-up
        read); never over the owner's own snapshot."""
        key = (target, tracked.job.id)
        self._pending.jobs[key] = Change(tracked, shard_of(target, tracked.job.id, self.shards), None)
        self._changed()

    def as_loaded(self, tracked: TrackedJob) -> TrackedJob:
        """A job read from the database and taken in as it is there: its first change notice
        writes nothing (as a job restore() hands out)."""
        self._unchanged[id(tracked)] = tracked
        return tracked

    def job_removed(self, state: TargetState, job_id: str) -> None:
        key = (state.config.name, job_id)
        shard, generation = self._where(key)
        if generation is None:
            return
        self._pending.jobs[key] = Change(None, shard, generation)
        at = state.tombstones.get(job_id)
        if at is not None:
            self._buried[key] = at
            self._pending.tombstones[key] = Change(at, shard, generation)
        self._changed()

    def tombstone_renewed(self, state: TargetState, job_id: str) -> None:
        key = (state.config.name, job_id)
        shard, generation = self._where(key)
        at = state.tombstones.get(job_id)
        if at is not None and generation is not None:
            self._buried[key] = at
            self._pending.tombstones[key] = Change(at, shard, generation)
            self._changed()

    def forget(self, shards: set[int]) -> None:
        """Let go of what is kept in memory for shards this replica no longer holds (tombstones,
        cursors, what was loaded and not handed out); their rows stay for the next owner."""

        def ours(key: JobKey) -> bool:
            return shard_of(key[0], key[1], self.shards) not in shards

        self._buried = {k: at for k, at in self._buried.items() if ours(k)}
        self._cursors = {k: v for k, v in self._cursors.items() if ours(k)}
        for target, jobs in self._loaded.items():
            jobs[:] = [t for t in jobs if ours((target, t.job.id))]

    @property
    def pending_writes(self) -> int:
        """Changes not committed yet: waiting, and in the transaction being written."""
        return len(self._pending) + self._inflight

    # --- writing -------------------------------------------------------------------------
    def _take(self) -> Batch:
        self._unchanged.clear()  # restored jobs the tracker did not take in (a cap, a duplicate)
        batch, self._pending = self._pending, Batch()
        batch.upto = self._changes  # every change so far is in it: they are made on this loop
        self._inflight = len(batch)
        now = time.time()
        if now - self._pruned_at >= PRUNE_EVERY:
            batch.prune_before, self._pruned_at = (now - TOMBSTONE_SECONDS, now - QUARANTINE_SECONDS), now
        return batch

    async def _commit(self, batch: Batch) -> Fresh:
        """One transaction; returns which of its changes were fresh (committed)."""
        if not len(batch) and not batch.held and batch.prune_before is None:
            return lambda c: True
        rows = await batch.serialised()
        started = time.perf_counter()
        with anyio.fail_after(COMMIT_TIMEOUT):
            if self._conn is None or self._conn.closed:
                self._conn = await self.connect()
            # The statements and the COMMIT go in one pipeline, sent together once the fencing is
            # read: the server finishes the transaction whatever the replica does meanwhile. A
            # replica paused with its transaction open would hold its leases' locks, and a session
            # left by a pipeline is not ended by the server when idle in its transaction
            # (idle_in_transaction_session_timeout; measured with PostgreSQL 15, psycopg 3.3).
            # psycopg's transaction() would wait for the statements' answers before its COMMIT,
            # so the COMMIT is sent here; a failure drops the connection (_write_round).
            conn = self._conn
            async with conn.pipeline():
                newest = batch.generations()
                live = (
                    set(newest)
                    if self.leases is None
                    else await fenced(conn, self.replica, newest, self.leases.ttl)
                )

                def fresh(c: Change[Any]) -> bool:
                    return c.generation is not None and c.shard in live and newest[c.shard] == c.generation

                statements, stale = batch.statements(rows, fresh, self.replica)
                for sql, params in statements:
                    await conn.execute(sql, params)
                await conn.execute("COMMIT")
        self.commit_duration.observe(time.perf_counter() - started)
        if stale:
            self.stale_writes += stale
            log.warning(
                "stale state writes dropped: their shards are another replica's now", extra={"changes": stale}
            )
        return fresh

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    def _put_back(self, batch: Batch) -> None:
        """A failed batch waits again, under any newer change of the same keys."""
        self._pending = batch.put_back(self._pending)
        self._inflight = 0

    def _done(self, batch: Batch, fresh: Fresh) -> None:
        self._inflight = 0
        self._committed(batch.upto, len(batch))
        for apply, tied in batch.held:
            if tied is None or fresh(tied):
                apply()

    def _has_pending(self) -> bool:
        return bool(len(self._pending) or self._pending.held)

    async def _write_round(self) -> bool:
        """Commit everything pending, then wake the waiters of this round: committed, or told why not."""
        batch = self._take()
        try:
            fresh = await self._commit(batch)
        except (psycopg.Error, OSError, TimeoutError) as e:
            await self._drop_connection()  # the next attempt starts on a new connection
            self._put_back(batch)
            self._failed(str(e).strip() or type(e).__name__, self.pending_writes)
            ok = False
        except BaseException:  # cancelled: rolled back; the last round writes it
            await self._drop_connection()
            self._put_back(batch)
            raise
        else:
            self._done(batch, fresh)
            ok = True
        self._round_ended()
        return ok

    async def flush(self) -> int:
        """Commit what is pending now; returns the changes written. Raises StateUnwritable with the
        changes still pending."""
        pending = len(self._pending)
        if not await self._write_round():
            raise StateUnwritable(self.error or "")
        return pending

    async def _after_round(self) -> None:
        """Now and then, the size of the tables (asyncjob_state_size_bytes)."""
        if time.monotonic() - self._sized_at < SIZE_EVERY:
            return
        self._sized_at = time.monotonic()
        with contextlib.suppress(psycopg.Error, OSError):
            self._size = int((await self._read(_SIZE, ()))[0][0])

    async def _last_round(self) -> None:
        await self.close()

    def size_bytes(self) -> int:
        """The state's tables and indexes on the server's disk, as last measured."""
        return self._size

    def metrics_text(self) -> bytes:
        return (
            state_metrics_text(self.write_errors, self.pending_writes, self.size_bytes())
            + (
                f"{STATE_STALE_WRITES.header_text}{STATE_STALE_WRITES.name} {self.stale_writes}\n"
                + self.commit_duration_text()
            ).encode()
        )

    async def close(self) -> None:
        """Commit what is pending (within COMMIT_TIMEOUT) and close the connections; says what is lost."""
        if self._has_pending():
            with anyio.move_on_after(COMMIT_TIMEOUT), contextlib.suppress(StateUnwritable):
                await self.flush()
            if self.pending_writes:
                log.error(
                    "state database could not be written at exit; these changes are lost",
                    extra={"error": self.error, "pending": self.pending_writes},
                )
        self._round_ended()
        await self._drop_connection()
        await self._reads.close()
        await self._shown.close()
