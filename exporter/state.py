"""Durable state in SQLite: tracked jobs with their last snapshot, progress stamps and
counted-once marks, tombstones, and provider cursors (Oxlin queues).

The store is a tracker listener, written by group commit (exporter.group_commit): changes wait
in memory until the writer commits everything pending in one transaction, then wakes whoever
waits for it: a registration is acknowledged, and a counter increment becomes visible on
/metrics, only once the change behind it is committed. A write that fails keeps its changes
pending and is retried; the error is logged once per change of error, counted, and makes
/readyz answer 503.

Durability: WAL with `synchronous=NORMAL`. A commit is in the WAL, through the kernel,
before anyone hears of it, so it survives `kill -9` and any crash of the process; an
operating-system crash or power loss may roll back the last commits (never corrupt the
file), as the WAL is not synced at every commit.

Where the work runs: a commit is a WAL append into the page cache (tens of microseconds for
a batch), made on the event loop; handing it to a worker thread costs two thread switches a
round, which on a busy machine took longer than the commit itself (5-150 ms each, measured:
docs/benchmarks.md). Checkpoints, which fsync, run on their own connection in a worker thread
(exporter.state_upkeep).

Size: a job dropped leaves a tombstone row only where something can list it again (a target
that discovers jobs), for TOMBSTONE_SECONDS; rows past it are deleted a few thousand at a time
(exporter.state_batch), and the space they held is reused, the surplus given back to the file
system.

Also kept: the jobs the event loop froze on (exporter.watchdog), written by the watchdog's
thread on a connection of its own and restored as the tracker's quarantine.

The file's schema, how it is opened and read, and the encoding of its rows are in
exporter.state_file; a batch and its statements in exporter.state_batch; this module is the
writer.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Generator
from pathlib import Path

import anyio

from exporter import catalogue, job_history
from exporter.group_commit import GroupCommit, StateUnwritable
from exporter.memory_history import MemoryHistory
from exporter.state_batch import Batch, JobKey, Rows
from exporter.state_file import (
    BURIED,
    MIGRATIONS,
    NEWEST_TOMBSTONES,
    PRUNE,
    SCHEMA_VERSION,
    StateError,
    describe,
    load,
    open_read_only,
    open_writable,
    retired_from,
    tracked_from_dict,
    tracked_from_json,
    tracked_to_dict,
    tracked_to_json,
)
from exporter.state_upkeep import Upkeep
from exporter.store import Retired
from exporter.tracked import TOMBSTONE_SECONDS, TOMBSTONES_IN_MEMORY, TargetState, TrackedJob

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

# Errors that mean "cannot write here now" (a read-only mount, a full disk, an I/O error),
# as opposed to a file that is not a state file at all.
_UNWRITABLE = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_PERM")
# Tombstones older than the tracker forgets them are deleted this often, with a batch.
PRUNE_EVERY = 60.0


def _unwritable(e: sqlite3.Error) -> bool:
    return str(getattr(e, "sqlite_errorname", "")).startswith(_UNWRITABLE)


class Store(GroupCommit):
    where = "state file"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.log_fields = {"path": path}
        self._db: sqlite3.Connection | None = None
        self._pending = Batch()
        self._inflight = 0
        self._cursors: dict[JobKey, str] = {}
        self._writer_turn = anyio.Lock()  # a write round, or a checkpoint that needs the WAL still
        self.upkeep = Upkeep(path)
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
            if isinstance(e, sqlite3.Error) and not _unwritable(e):
                raise StateError(f"{path}: {e}") from None
            # Read what the file holds, serve it, and retry writing until it works.
            self._failed(describe(e) if isinstance(e, sqlite3.Error) else str(e), 0)
            reader = None
        try:
            reader = reader or open_read_only(self.path)
            if reader is not None:
                saved = load(reader, path)
                self._restored, self._cursors = saved.jobs, saved.cursors
                self._quarantined = saved.quarantined
        except sqlite3.DatabaseError as e:
            raise StateError(f"{path}: {e}") from None
        finally:
            if reader is not None and reader is not self._db:
                reader.close()

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
        self._pending.history[(state.config.name, tracked.job.id)] = (tracked, time.time())
        self._changed()

    def retired(self, target: str, job_id: str) -> Retired | None:
        key = (target, job_id)
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
    def save_cursors(self, target: str, cursors: dict[str, str]) -> None:
        for name, value in cursors.items():
            if self._cursors.get((target, name)) != value:
                self._cursors[(target, name)] = value
                self._pending.cursors[(target, name)] = value
                self._changed()

    def after_commit(self, apply: Callable[[], None], key: JobKey | None = None) -> None:
        """Run `apply` (a counter increment) once every change made so far is committed: the
        increment behind a counted-once mark or a queue cursor is never seen before the mark is
        durable, so a kill -9 cannot make the next lifetime count it again. `key`, the job it
        counts, matters only where another replica may own that job (exporter.cluster.store)."""
        self._pending.held.append(apply)
        self._changed()

    def job_changed(self, state: TargetState, tracked: TrackedJob) -> None:
        if self._unchanged and self._unchanged.pop(id(tracked), None) is tracked:
            return  # handed back by restore: the file has it
        self._pending.jobs[(state.config.name, tracked.job.id)] = tracked
        self._changed()

    def job_removed(self, state: TargetState, job_id: str) -> None:
        key = (state.config.name, job_id)
        # Only a target that lists jobs can bring a dropped one back after a restart.
        at = state.tombstones.get(job_id) if state.discovers else None
        self._pending.jobs[key] = None
        if at is not None:
            self._pending.tombstones[key] = at
        self._changed()

    def tombstone_renewed(self, state: TargetState, job_id: str) -> None:
        at = state.tombstones.get(job_id)
        if at is not None and state.discovers:
            self._pending.tombstones[(state.config.name, job_id)] = at
            self._changed()

    @property
    def pending_writes(self) -> int:
        """Changes not committed yet: waiting, and in the transaction being written."""
        return len(self._pending) + self._inflight

    # --- writing -----------------------------------------------------------------------
    def _has_pending(self) -> bool:
        return bool(len(self._pending) or self._pending.held)

    def _take(self) -> Batch:
        """Everything pending, for one transaction."""
        self._unchanged.clear()  # restored jobs the tracker did not take in (a cap, a duplicate)
        batch, self._pending = self._pending, Batch()
        batch.upto = self._changes  # every change so far is in it: they are made on this loop
        self._inflight = len(batch)
        self._writing = batch
        now = time.time()
        if now - self._pruned_at >= PRUNE_EVERY:
            # Forgotten tombstones leave the file too, else it grows with every job ever dropped.
            batch.prune_before, self._pruned_at = now - TOMBSTONE_SECONDS, now
        return batch

    @staticmethod
    def _write(db: sqlite3.Connection, sql: str, rows: Rows) -> int:
        """Run one statement; the rows it changed."""
        cursor = db.executemany(sql, rows) if isinstance(rows, list) else db.execute(sql, rows)
        return cursor.rowcount

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

    def _transaction(self, batch: Batch) -> Generator[None, None, None]:
        """One transaction, a step a statement: the caller may let other work in between steps
        (a poll cycle that changed thousands of jobs does not hold a scrape up while it is
        written). Rolled back when it fails or is closed before its end."""
        try:
            started = time.perf_counter()
            db = self._begin()
            for n, (sql, rows) in enumerate(batch.statements(db, self.bounds)):
                if n:
                    yield
                changed = self._write(db, sql, rows)
                batch.pruned += changed if sql is PRUNE else 0
            db.execute("COMMIT")
            self.commit_duration.observe(time.perf_counter() - started)
            if batch.prune_before is not None:
                if batch.left_a_backlog:
                    self._pruned_at = 0.0  # the rest with the next batch
                self.upkeep.give_back(db)
        except BaseException as e:
            self._abort(drop=isinstance(e, sqlite3.Error))
            raise

    def _put_back(self, batch: Batch) -> None:
        """A failed batch waits again, under any newer change of the same keys."""
        batch.put_back(self._pending)
        self._inflight = 0
        self._writing = None

    def _done(self, batch: Batch) -> None:
        self._inflight = 0
        self._writing = None
        self._committed(batch.upto, len(batch))
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
            for _ in self._transaction(batch):
                pass
        except sqlite3.Error as e:
            self._put_back(batch)
            self._failed(describe(e), self.pending_writes)
            raise
        self._done(batch)
        return len(batch)

    async def _write_round(self) -> bool:
        """Commit everything pending, then wake the waiters of this round: committed, or told
        why not. On the event loop: WAL appends into the page cache, no fsync."""
        async with self._writer_turn:
            batch = self._take()
            steps = self._transaction(batch)
            try:
                for _ in steps:
                    await anyio.lowlevel.checkpoint()
            except sqlite3.Error as e:
                self._put_back(batch)
                self._failed(describe(e), self.pending_writes)
                ok = False
            except BaseException:  # cancelled at shutdown: rolled back, written by the last round
                steps.close()
                self._put_back(batch)
                raise
            else:
                self._done(batch)
                self.upkeep.uncheckpointed += 1
                ok = True
        self._round_ended()
        return ok

    async def run(self) -> None:
        """The writer (exporter.group_commit), with the checkpoints beside it in a worker thread."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.upkeep.checkpoints, self._writer_turn)
            await super().run()

    async def _last_round(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # logged; close() tries again, says what is lost
            self.flush()

    def size_bytes(self) -> int:
        """The state file and its WAL, as they take space on disk now."""
        return self.upkeep.size_bytes()

    def metrics_text(self) -> bytes:
        text = state_metrics_text(self.write_errors, self.pending_writes, self.size_bytes())
        return text + self.commit_duration_text().encode()

    def close(self) -> None:
        self.upkeep.close()
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
