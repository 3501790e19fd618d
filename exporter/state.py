"""Durable state in SQLite: tracked jobs with their last snapshot, progress stamps and
counted-once marks, tombstones, and provider cursors (Oxlin queues).

The store is a tracker listener. Changes wait in memory until the writer commits everything
pending in one transaction (group commit: all changes made while the event loop served other
requests), then wakes whoever waits for it: a registration is acknowledged, and a counter
increment becomes visible on /metrics, only once the change behind it is committed. A write
that fails keeps its changes pending and is retried; the error is logged once per change of
error, counted, and makes /readyz answer 503.

Durability: WAL with `synchronous=NORMAL`. A commit is in the WAL, through the kernel,
before anyone hears of it, so it survives `kill -9` and any crash of the process; an
operating-system crash or power loss may roll back the last commits (never corrupt the
file), as the WAL is not synced at every commit.

Where the work runs: a commit is a WAL append into the page cache (tens of microseconds for
a batch), made on the event loop; handing it to a worker thread costs two thread switches a
round, which on a busy machine took longer than the commit itself (5-150 ms each, measured:
docs/benchmarks.md). Checkpoints, which fsync, run on their own connection in a worker thread.

Size: a job dropped leaves a tombstone row only where something can list it again (a target
that discovers jobs), for TOMBSTONE_SECONDS; rows past it are deleted a few thousand at a time,
and the space they held is reused (`auto_vacuum=INCREMENTAL`, the surplus given back to the
file system). The WAL is copied in every second; past WAL_RESTART_BYTES with the writer held
off, so that it starts again from its beginning instead of growing.

Also kept: the jobs the event loop froze on (exporter.watchdog), written by the watchdog's
thread on a connection of its own and restored as the tracker's quarantine.

The file's schema, how it is opened and read, and the encoding of its rows are in
exporter.state_file; this module is the writer.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import anyio

from exporter import catalogue, job_history
from exporter.memory_history import MemoryHistory
from exporter.state_file import (
    BURIED,
    MIGRATIONS,
    NEWEST_TOMBSTONES,
    PRUNE,
    PRUNE_QUARANTINE,
    SCHEMA_VERSION,
    WRITES,
    StateError,
    describe,
    history_row,
    load,
    open_read_only,
    open_writable,
    retired_from,
    tracked_from_dict,
    tracked_from_json,
    tracked_to_dict,
    tracked_to_json,
)
from exporter.store import Retired
from exporter.tracker import (
    QUARANTINE_SECONDS,
    TOMBSTONE_SECONDS,
    TOMBSTONES_IN_MEMORY,
    TargetState,
    TrackedJob,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "MemoryHistory",
    "StateError",
    "StateUnwritable",
    "Store",
    "state_metrics_text",
    "tracked_from_dict",
    "tracked_from_json",
    "tracked_to_dict",
    "tracked_to_json",
]

log = logging.getLogger("asyncjob.state")

# Waits between attempts while the state cannot be written.
RETRY_FIRST, RETRY_MAX = 0.25, 2.0
# How often the WAL is copied into the file (in a worker thread).
CHECKPOINT_INTERVAL = 1.0
# A WAL past this is copied in with the writer held off (it waits; the event loop does not):
# under a steady stream of commits a checkpoint beside the writer never sees the WAL's end, so
# the WAL is never started again from its beginning and grows for ever.
WAL_RESTART_BYTES = 4 * 1024 * 1024
# Jobs serialised and written per statement; the event loop serves others between statements.
ROWS_PER_STATEMENT = 500
# Errors that mean "cannot write here now" (a read-only mount, a full disk, an I/O error),
# as opposed to a file that is not a state file at all.
_UNWRITABLE = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_PERM")
# Tombstones older than the tracker forgets them are deleted this often (with a batch), at most
# PRUNE_ROWS a time: a day's backlog at 50 jobs a second is millions of rows, not one statement.
PRUNE_EVERY = 60.0
PRUNE_ROWS = 5000
# Free pages kept for reuse, as a share of the file; past it, up to VACUUM_PAGES a round are
# given back to the file system (`PRAGMA incremental_vacuum`, on the writer's connection).
FREE_SHARE = 0.25
VACUUM_PAGES = 2048


class StateUnwritable(Exception):
    """A change could not be committed: the state file cannot be written now."""


JobKey = tuple[str, str]
# A statement's parameters: many rows (executemany) or one.
Rows: TypeAlias = list[tuple[Any, ...]] | tuple[Any, ...]


@dataclass
class Batch:
    """Changes taken for one transaction, and what waits on it."""

    jobs: dict[JobKey, TrackedJob | None] = field(default_factory=dict)
    tombstones: dict[JobKey, float] = field(default_factory=dict)
    cursors: dict[JobKey, str] = field(default_factory=dict)
    # Jobs retention dropped, for the history: (the job, when), serialised as they are written.
    history: dict[JobKey, tuple[TrackedJob, float]] = field(default_factory=dict)
    held: list[Callable[[], None]] = field(default_factory=list)
    upto: int = 0  # the last change number it holds
    # Tombstones stamped before this are deleted with the batch (None: not this time).
    prune_before: float | None = None
    pruned: int = 0  # tombstone rows the prune deleted

    def __len__(self) -> int:
        return len(self.jobs) + len(self.tombstones) + len(self.cursors) + len(self.history)


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending = Batch()
        self._inflight = 0
        self._changes = 0  # numbered changes so far
        self._durable = 0  # every change up to this number is committed
        self.write_errors = 0
        self.error: str | None = None  # the current write error; None while writes succeed
        self._wake: anyio.Event | None = None
        self._round: anyio.Event | None = None
        self._cursors: dict[JobKey, str] = {}
        self._uncheckpointed = 0
        self._writer_turn = anyio.Lock()  # a write round, or a checkpoint that needs the WAL still
        self._checkpointer: sqlite3.Connection | None = None
        # Restored jobs, as they are in the file: their first notice (the tracker taking them in)
        # is not a change. Held by reference, so no new job can reuse an id of theirs.
        self._unchanged: dict[int, TrackedJob] = {}
        self._restored: dict[str, list[TrackedJob]] = {}
        self._quarantined: dict[str, dict[str, float]] = {}  # target -> job id -> since
        self._writing: Batch | None = None  # the batch being committed
        self._reader: sqlite3.Connection | None = None  # reads while the file cannot be written
        self._pruned_at = 0.0  # so the first batch after start prunes
        self.bounds = job_history.Bounds()
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = open_writable(self.path)
            reader = self._db
        except (sqlite3.Error, OSError) as e:
            if isinstance(e, sqlite3.Error) and not self._unwritable(e):
                raise StateError(f"{path}: {e}") from None
            # Read what the file holds, serve it, and retry writing until it works.
            self._failed(e if isinstance(e, sqlite3.Error) else sqlite3.OperationalError(str(e)), 0)
            reader = None
        try:
            reader = reader or open_read_only(self.path)
            if reader is not None:
                saved = load(reader, path)
                self._restored, self._cursors, self._quarantined = (
                    saved.jobs,
                    saved.cursors,
                    saved.quarantined,
                )
        except sqlite3.DatabaseError as e:
            raise StateError(f"{path}: {e}") from None
        finally:
            if reader is not None and reader is not self._db:
                reader.close()

    # --- opening -----------------------------------------------------------------------
    @staticmethod
    def _unwritable(e: sqlite3.Error) -> bool:
        return str(getattr(e, "sqlite_errorname", "")).startswith(_UNWRITABLE)

    # --- what the tracker asks (exporter.runtime.connect_store hands it over) -----------------
    def restore(self, state: TargetState) -> list[TrackedJob]:
        """Jobs saved for `state`'s target, each handed out once; its newest tombstones go to
        memory (the rest are looked up when their id appears: `buried`)."""
        name = state.config.name
        newest: list[tuple[str, float]] = []
        with contextlib.suppress(sqlite3.Error):  # unreadable: looked up one by one instead
            db = self._reading()
            if db is not None:
                for key_b, at in db.execute(NEWEST_TOMBSTONES, (name, TOMBSTONES_IN_MEMORY)):
                    if isinstance(key_b, str) and isinstance(at, int | float):
                        newest.append((key_b, float(at)))
        # Oldest first, as the tracker keeps them (its sweep reads them so).
        state.tombstones.update(reversed(newest))
        state.quarantined.update(self._quarantined.pop(name, {}))
        jobs = self._restored.pop(name, [])
        self._unchanged.update((id(t), t) for t in jobs)
        return jobs

    def _reading(self) -> sqlite3.Connection | None:
        """A connection to read with: the writer's, else (the file cannot be written) a reader."""
        if self._db is not None:
            return self._db
        if self._reader is None:
            self._reader = open_read_only(self.path)
        return self._reader

    def quarantine(self, target: str, job_id: str, why: str) -> None:
        """Record that the event loop froze on this job, from the watchdog's thread while the loop
        is stuck: on a connection of its own, committed before the process ends."""
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        try:
            db.execute(
                "INSERT OR REPLACE INTO quarantine (target, job_id, at, why) VALUES (?, ?, ?, ?)",
                (target, job_id, time.time(), why),
            )
        finally:
            db.close()

    def buried(self, target: str, job_id: str) -> float | None:
        """When the job was dropped, if its tombstone is kept (a point query: one per id that is
        listed again and not in memory); None when it is not."""
        key = (target, job_id)
        with self._lock:
            at = self._pending.tombstones.get(key)
            if at is None and self._writing is not None:
                at = self._writing.tombstones.get(key)
        if at is not None:
            return at
        try:
            db = self._reading()
            row = (
                db.execute(BURIED, (target, job_id, time.time() - TOMBSTONE_SECONDS)).fetchone()
                if db
                else None
            )
        except sqlite3.Error as e:  # not remembered then: a job listed again is history, not counted
            log.debug("tombstone look-up failed", extra={"path": self.path, "error": describe(e)})
            return None
        return float(row[0]) if row is not None and isinstance(row[0], int | float) else None

    def cursors(self, target: str) -> dict[str, str]:
        return {name: v for (t, name), v in self._cursors.items() if t == target}

    # --- history ---------------------------------------------------------------------
    def keep(self, state: TargetState, tracked: TrackedJob) -> None:
        """Keep a job retention drops, written with the change that drops it (one transaction)."""
        if self.bounds.period <= 0:
            return
        key = (state.config.name, tracked.job.id)
        with self._lock:
            self._pending.history[key] = (tracked, time.time())
            self._changed()

    def retired(self, target: str, job_id: str) -> Retired | None:
        key = (target, job_id)
        with self._lock:
            got = self._pending.history.get(key)
            if got is None and self._writing is not None:
                got = self._writing.history.get(key)
        if got is not None:
            return Retired(target, *got)
        try:
            db = self._reading()
            found = job_history.find(db, target, job_id) if db is not None else None
        except sqlite3.Error as e:
            log.debug("history look-up failed", extra={"path": self.path, "error": describe(e)})
            return None
        return retired_from(found) if found is not None else None

    def search(self, query: job_history.Query) -> tuple[list[Retired], int]:
        try:
            db = self._reading()
            if db is None:
                return [], 0
            found, total = job_history.search(db, query)
        except sqlite3.Error as e:
            log.debug("history search failed", extra={"path": self.path, "error": describe(e)})
            return [], 0
        return [r for r in map(retired_from, found) if r is not None], total

    def history_metrics_text(self) -> bytes:
        try:
            db = self._reading()
            rows, held = job_history.size(db) if db is not None else (0, 0)
        except sqlite3.Error:  # a file from before the history: nothing kept yet
            rows, held = 0, 0
        return job_history.metrics_text(rows, held)

    # --- changes -----------------------------------------------------------------------
    def _changed(self) -> None:
        self._changes += 1
        self._pending.upto = self._changes
        if self._wake is not None:
            self._wake.set()

    def save_cursors(self, target: str, cursors: dict[str, str]) -> None:
        with self._lock:
            for name, value in cursors.items():
                if self._cursors.get((target, name)) != value:
                    self._cursors[(target, name)] = value
                    self._pending.cursors[(target, name)] = value
                    self._changed()

    def after_commit(self, apply: Callable[[], None], key: tuple[str, str] | None = None) -> None:
        """Run `apply` (a counter increment) once every change made so far is committed: the
        increment behind a counted-once mark or a queue cursor is never seen before the mark is
        durable, so a kill -9 cannot make the next lifetime count it again."""
        with self._lock:
            self._pending.held.append(apply)
            self._changed()

    def job_changed(self, state: TargetState, tracked: TrackedJob) -> None:
        if self._unchanged and self._unchanged.pop(id(tracked), None) is tracked:
            return  # handed back by restore: the file has it
        with self._lock:
            self._pending.jobs[(state.config.name, tracked.job.id)] = tracked
            self._changed()

    def job_removed(self, state: TargetState, job_id: str) -> None:
        key = (state.config.name, job_id)
        # Only a target that lists jobs can bring a dropped one back after a restart.
        at = state.tombstones.get(job_id) if state.discovers else None
        with self._lock:
            self._pending.jobs[key] = None
            if at is not None:
                self._pending.tombstones[key] = at
            self._changed()

    def tombstone_renewed(self, state: TargetState, job_id: str) -> None:
        at = state.tombstones.get(job_id)
        if at is not None and state.discovers:
            with self._lock:
                self._pending.tombstones[(state.config.name, job_id)] = at
                self._changed()

    @property
    def pending_writes(self) -> int:
        """Changes not committed yet: waiting, and in the transaction being written."""
        return len(self._pending) + self._inflight

    # --- writing -----------------------------------------------------------------------
    def _take(self) -> Batch:
        """Everything pending, for one transaction."""
        self._unchanged.clear()  # restored jobs the tracker did not take in (a cap, a duplicate)
        with self._lock:
            batch, self._pending = self._pending, Batch(upto=self._changes)
            self._inflight = len(batch)
            self._writing = batch
        now = time.time()
        if now - self._pruned_at >= PRUNE_EVERY:
            # Forgotten tombstones leave the file too, else it grows with every job ever dropped.
            batch.prune_before, self._pruned_at = now - TOMBSTONE_SECONDS, now
        return batch

    def _statements(self, db: sqlite3.Connection, batch: Batch) -> Iterator[tuple[str, Rows]]:
        """The statements that write a batch, each with its rows (executemany: a row costs
        less bound as parameters than folded into one JSON array that SQLite parses again); jobs
        are serialised ROWS_PER_STATEMENT at a time, as they are now (on the event loop, the
        only thread that changes them: a job changed since is in the next batch too)."""
        upserts = [(key, tr) for key, tr in batch.jobs.items() if tr is not None]
        for i in range(0, len(upserts), ROWS_PER_STATEMENT):
            part = upserts[i : i + ROWS_PER_STATEMENT]
            yield WRITES[0], [(t, j, tracked_to_json(tr)) for (t, j), tr in part]
        rest: tuple[list[tuple[Any, ...]], ...] = (
            [key for key, tr in batch.jobs.items() if tr is None],
            [(t, j, at) for (t, j), at in batch.tombstones.items()],
            [(t, n, v) for (t, n), v in batch.cursors.items()],
        )
        for sql, rows in zip(WRITES[1:], rest, strict=True):
            if rows:
                yield sql, rows
        kept = list(batch.history.items())
        for i in range(0, len(kept), ROWS_PER_STATEMENT):
            yield (
                job_history.KEEP,
                [history_row(t, tr, at) for (t, _), (tr, at) in kept[i : i + ROWS_PER_STATEMENT]],
            )
        if batch.history or batch.prune_before is not None:
            yield from job_history.prune_statements(db, self.bounds, time.time())
        if batch.prune_before is not None:
            yield PRUNE, (batch.prune_before, PRUNE_ROWS)
            yield PRUNE_QUARANTINE, (time.time() - QUARANTINE_SECONDS,)

    @staticmethod
    def _write(db: sqlite3.Connection, sql: str, rows: Rows) -> int:
        """Run one statement; the rows it changed."""
        cursor = db.executemany(sql, rows) if isinstance(rows, list) else db.execute(sql, rows)
        return cursor.rowcount

    def _after_prune(self, db: sqlite3.Connection, batch: Batch) -> None:
        """After a commit that pruned: the rest of a backlog at the next batch, and free pages past
        FREE_SHARE of the file given back (after the commit: the pragma runs in a transaction of
        its own)."""
        if batch.prune_before is None:
            return
        if batch.pruned >= PRUNE_ROWS:
            self._pruned_at = 0.0
        try:
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            if free > max(VACUUM_PAGES, pages * FREE_SHARE):
                n = min(VACUUM_PAGES, free - int(pages * FREE_SHARE))
                db.executescript(f"PRAGMA incremental_vacuum({n});")
        except sqlite3.Error as e:  # committed already; the pages are given back another time
            log.debug("state vacuum failed", extra={"path": self.path, "error": describe(e)})

    def _begin(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            db = self._db = open_writable(self.path)
        db.execute("BEGIN IMMEDIATE")
        return db

    def _abort(self, drop: bool) -> None:
        """Roll back; after an error drop the connection too, so the next attempt opens the file
        again (a mount made writable again, a freed disk)."""
        db = self._db
        if db is None:
            return
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            drop = True
        if drop:
            db.close()
            self._db = None

    def _commit(self, batch: Batch) -> None:
        """One transaction, in the calling thread."""
        try:
            db = self._begin()
            for sql, rows in self._statements(db, batch):
                changed = self._write(db, sql, rows)
                batch.pruned += changed if sql is PRUNE else 0
            db.execute("COMMIT")
            self._after_prune(db, batch)
        except sqlite3.Error:
            self._abort(drop=True)
            raise

    async def _commit_in_turns(self, batch: Batch) -> None:
        """One transaction on the event loop, letting other work in between its statements: a
        poll cycle that changed thousands of jobs does not hold a scrape up while it is written."""
        try:
            db = self._begin()
            for n, (sql, rows) in enumerate(self._statements(db, batch)):
                if n:
                    await anyio.lowlevel.checkpoint()
                changed = self._write(db, sql, rows)
                batch.pruned += changed if sql is PRUNE else 0
            db.execute("COMMIT")
            self._after_prune(db, batch)
        except BaseException as e:
            self._abort(drop=isinstance(e, sqlite3.Error))
            raise

    def _put_back(self, batch: Batch) -> None:
        """A failed batch waits again, under any newer change of the same keys."""
        with self._lock:
            p = self._pending
            p.jobs = {**batch.jobs, **p.jobs}
            p.tombstones = {**batch.tombstones, **p.tombstones}
            p.cursors = {**batch.cursors, **p.cursors}
            p.history = {**batch.history, **p.history}
            p.held = batch.held + p.held
            self._inflight = 0
            self._writing = None

    def _failed(self, e: sqlite3.Error, pending: int) -> None:
        self.write_errors += 1
        text = describe(e)
        if text != self.error:
            log.error(
                "state file cannot be written; changes are kept and retried",
                extra={"path": self.path, "error": text, "pending": pending},
            )
        self.error = text

    def _done(self, batch: Batch) -> None:
        with self._lock:
            self._inflight = 0
            self._writing = None
            self._durable = max(self._durable, batch.upto)
        if self.error is not None:
            log.info("state file written again", extra={"path": self.path, "changes": len(batch)})
            self.error = None
        for apply in batch.held:
            apply()

    def flush(self) -> int:
        """Write what is pending (in the calling thread). Returns changes written; raises
        sqlite3.Error with the changes still pending."""
        batch = self._take()
        if not len(batch) and not batch.held:
            self._done(batch)
            return 0
        try:
            self._commit(batch)
        except sqlite3.Error as e:
            self._put_back(batch)
            self._failed(e, self.pending_writes)
            raise
        self._done(batch)
        return len(batch)

    async def _write_round(self) -> bool:
        """Commit everything pending, then wake the waiters of this round: committed, or told
        why not. On the event loop: WAL appends into the page cache, no fsync."""
        batch = self._take()
        try:
            await self._commit_in_turns(batch)
        except sqlite3.Error as e:
            self._put_back(batch)
            self._failed(e, self.pending_writes)
            ok = False
        except BaseException:  # cancelled at shutdown: rolled back, written by the last flush
            self._put_back(batch)
            raise
        else:
            self._done(batch)
            self._uncheckpointed += 1
            ok = True
        if self._round is not None:
            self._round.set()
        self._round = anyio.Event()
        return ok

    async def run(self) -> None:
        """The writer: commit whatever is pending, many changes a transaction (all those made
        while the event loop was busy elsewhere); while writes fail, retry with a growing pause.
        Checkpoints run beside it in a worker thread. One last commit on the way out."""
        self._wake = anyio.Event()
        self._round = self._round or anyio.Event()
        retry = RETRY_FIRST
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._checkpoints)
                while True:
                    if not len(self._pending) and not self._pending.held and self.error is None:
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    async with self._writer_turn:
                        ok = await self._write_round()
                    if ok:
                        retry = RETRY_FIRST
                        await anyio.sleep(0)  # let the waiters and new changes in
                    else:
                        await anyio.sleep(retry)
                        retry = min(RETRY_MAX, retry * 2)
        finally:
            self._last_flush()

    def _last_flush(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # logged; close() tries again, says what is lost
            self.flush()
        if self._round is not None:
            self._round.set()

    async def _checkpoints(self) -> None:
        """Copy the WAL into the file now and then, off the event loop (a checkpoint fsyncs)."""
        while True:
            await anyio.sleep(CHECKPOINT_INTERVAL)
            if self._uncheckpointed:
                self._uncheckpointed = 0
                if self._wal_bytes() < WAL_RESTART_BYTES:
                    await anyio.to_thread.run_sync(self._checkpoint)
                    continue
                async with self._writer_turn:  # all of it copied: the next commit starts it again
                    await anyio.to_thread.run_sync(self._checkpoint)

    def _wal_bytes(self) -> int:
        try:
            return Path(self.path + "-wal").stat().st_size
        except OSError:
            return 0

    def _checkpoint(self) -> None:
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:  # the WAL keeps the data; the next checkpoint tries again
            log.debug("state checkpoint failed", extra={"path": self.path, "error": describe(e)})
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None

    async def committed(self) -> None:
        """Return once every change made so far is committed; StateUnwritable when a write
        attempt fails first. No timeout: the writer commits on the event loop, so a round
        ends within a turn of the loop (a disk that stalls a write stalls the loop too)."""
        want = self._changes
        while self._durable < want:
            if self._round is None:
                self._round = anyio.Event()
            await self._round.wait()
            if self._durable < want and self.error is not None:
                raise StateUnwritable(self.error)

    def size_bytes(self) -> int:
        """The state file and its WAL, as they take space on disk now."""
        total = 0
        for path in (self.path, self.path + "-wal"):
            with contextlib.suppress(OSError):
                total += Path(path).stat().st_size
        return total

    def metrics_text(self) -> bytes:
        return state_metrics_text(self.write_errors, self.pending_writes, self.size_bytes())

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        try:
            self.flush()
        except sqlite3.Error as e:
            log.error(
                "state file could not be written at exit; these changes are lost",
                extra={"path": self.path, "error": describe(e), "pending": self.pending_writes},
            )
        if self._db is not None:
            self._db.close()
            self._db = None


def state_metrics_text(write_errors: int, pending: int, size: int = 0) -> bytes:
    errors, waiting, disk = catalogue.STATE_WRITE_ERRORS, catalogue.STATE_PENDING_WRITES, catalogue.STATE_SIZE
    return (
        f"{errors.header_text}{errors.name} {write_errors}\n"
        f"{waiting.header_text}{waiting.name} {pending}\n"
        f"{disk.header_text}{disk.name} {size}\n"
    ).encode()
