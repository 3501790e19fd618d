"""Finished jobs kept after `retention` dropped their series: the `history` table's rows, how they
are pruned (oldest first, by age, rows and bytes) and searched. The same SQL serves the state file
(exporter.state.Store, in its group commit) and the in-memory store of a process without one."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from exporter import catalogue

# The table, its size kept by triggers (read at every scrape and prune, never counted by a walk).
SCHEMA = """
CREATE TABLE history (
    target TEXT NOT NULL, job_id TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
    cause TEXT NOT NULL, finished_at REAL NOT NULL, dropped_at REAL NOT NULL,
    bytes INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (target, job_id)
);
CREATE INDEX history_by_age ON history (dropped_at);
-- Each filter of the search reads its index, newest first, not every row (a row holds the job).
CREATE INDEX history_by_status ON history (status, dropped_at);
CREATE INDEX history_by_cause ON history (cause, dropped_at);
CREATE INDEX history_by_reason ON history (reason, dropped_at);
CREATE INDEX history_by_finish ON history (finished_at);
CREATE INDEX history_by_id ON history (job_id);
CREATE TABLE history_size (rows INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO history_size (rows, bytes) VALUES (0, 0);
CREATE TRIGGER history_added AFTER INSERT ON history BEGIN
    UPDATE history_size SET rows = rows + 1, bytes = bytes + new.bytes;
END;
CREATE TRIGGER history_replaced AFTER UPDATE ON history BEGIN
    UPDATE history_size SET bytes = bytes - old.bytes + new.bytes;
END;
CREATE TRIGGER history_removed AFTER DELETE ON history BEGIN
    UPDATE history_size SET rows = rows - 1, bytes = bytes - old.bytes;
END;
"""

KEEP = (
    "INSERT INTO history (target, job_id, status, reason, cause, finished_at, dropped_at, bytes, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(target, job_id) DO UPDATE SET "
    "status = excluded.status, reason = excluded.reason, cause = excluded.cause, "
    "finished_at = excluded.finished_at, dropped_at = excluded.dropped_at, "
    "bytes = excluded.bytes, data = excluded.data"
)
_SIZE = "SELECT rows, bytes FROM history_size"
_FIND = "SELECT dropped_at, data FROM history WHERE target = ? AND job_id = ?"
_EXPIRED = "DELETE FROM history WHERE rowid IN (SELECT rowid FROM history WHERE dropped_at < ? LIMIT ?)"
_OLDEST = "DELETE FROM history WHERE rowid IN (SELECT rowid FROM history ORDER BY dropped_at LIMIT ?)"
_OLDEST_SIZES = "SELECT rowid, bytes FROM history ORDER BY dropped_at"
# Rows deleted a statement at most (a thousand take ~30 ms with the indexes, on the event loop
# in the writer's turn): a backlog, after the bounds were lowered, goes a batch at a time.
PRUNE_ROWS = 1000

DEFAULT_PERIOD = 7 * 86400.0
DEFAULT_MAX_JOBS = 100_000
DEFAULT_MAX_BYTES = 128 * 1024 * 1024

# One row: target, job id, status, reason, cause, finished at, dropped at, bytes, data.
Row = tuple[str, str, str, str, str, float, float, int, str]


@dataclass
class Bounds:
    """How long and how much history is kept; `period` 0 keeps none."""

    period: float = DEFAULT_PERIOD
    max_jobs: int = DEFAULT_MAX_JOBS
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Query:
    """A search of the history: every field narrows it; newest dropped first."""

    target: str | None = None
    id_prefix: str = ""
    status: str | None = None
    cause: str | None = None
    reason: str | None = None
    since: float | None = None  # finished at or after
    until: float | None = None  # finished before
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class Found:
    """A row of the history as its reader sees it; `data` is the job as the state file keeps it."""

    target: str
    dropped_at: float
    data: str


def row(
    target: str, job_id: str, status: str, reason: str, cause: str, finished_at: float, now: float, data: str
) -> Row:
    return (target, job_id, status, reason, cause, finished_at, now, len(data.encode()), data)


def size(db: sqlite3.Connection) -> tuple[int, int]:
    """Rows and bytes of job data kept (trigger-kept: one row read)."""
    found = db.execute(_SIZE).fetchone()
    return (int(found[0]), int(found[1])) if found else (0, 0)


def find(db: sqlite3.Connection, target: str, job_id: str) -> Found | None:
    got = db.execute(_FIND, (target, job_id)).fetchone()
    return Found(target, float(got[0]), got[1]) if got else None


def _where(q: Query) -> tuple[str, list[Any]]:
    terms: list[str] = []
    args: list[Any] = []
    if q.target is not None:
        terms.append("target = ?")
        args.append(q.target)
    if q.id_prefix:
        # A range on the key, not LIKE: no wildcard in an id can widen it, and the index serves it.
        terms.append("job_id >= ? AND job_id < ?")
        args += [q.id_prefix, q.id_prefix + "\U0010ffff"]
    for column, value in (("status", q.status), ("cause", q.cause), ("reason", q.reason)):
        if value is not None:
            terms.append(f"{column} = ?")
            args.append(value)
    if q.since is not None:
        terms.append("finished_at >= ?")
        args.append(q.since)
    if q.until is not None:
        terms.append("finished_at < ?")
        args.append(q.until)
    return (" WHERE " + " AND ".join(terms)) if terms else "", args


def search(db: sqlite3.Connection, q: Query) -> tuple[list[Found], int]:
    """One page of the rows `q` matches, newest dropped first, and how many match in all."""
    where, args = _where(q)
    total = int(db.execute("SELECT count(*) FROM history" + where, args).fetchone()[0])
    rows = db.execute(
        "SELECT target, dropped_at, data FROM history"
        + where
        + " ORDER BY dropped_at DESC, job_id LIMIT ? OFFSET ?",
        [*args, q.limit, q.offset],
    )
    return [Found(t, float(at), data) for t, at, data in rows], total


def prune_statements(db: sqlite3.Connection, bounds: Bounds, now: float) -> Iterator[tuple[str, Any]]:
    """The deletes that bring the history within `bounds`, oldest dropped first: past the period,
    then past the rows, then past the bytes. Run in the writer's transaction, after its inserts."""
    yield _EXPIRED, (now - bounds.period, PRUNE_ROWS)
    rows, held = size(db)
    if rows > bounds.max_jobs:
        yield _OLDEST, (min(rows - bounds.max_jobs, PRUNE_ROWS),)
        rows, held = size(db)
    if held > bounds.max_bytes:
        excess, ids = held - bounds.max_bytes, list[tuple[int]]()
        for rowid, n in db.execute(_OLDEST_SIZES):
            if excess <= 0 or len(ids) >= PRUNE_ROWS:
                break
            ids.append((rowid,))
            excess -= n
        yield "DELETE FROM history WHERE rowid = ?", ids


def prune(db: sqlite3.Connection, bounds: Bounds, now: float) -> int:
    """Delete what `bounds` do not keep; the rows deleted."""
    deleted = 0
    for sql, args in prune_statements(db, bounds, now):
        cursor = db.executemany(sql, args) if isinstance(args, list) else db.execute(sql, args)
        deleted += max(cursor.rowcount, 0)
    return deleted


def metrics_text(rows: int, held: int) -> bytes:
    jobs, size = catalogue.HISTORY_JOBS, catalogue.HISTORY_BYTES
    return f"{jobs.header_text}{jobs.name} {rows}\n{size.header_text}{size.name} {held}\n".encode()
