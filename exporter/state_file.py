"""The state file (exporter.state.Store writes it): its schema and their migrations, how it is
opened, the statements that write it, and how a tracked job is encoded as a row and read back
(rows of older releases too). The PostgreSQL store (exporter.cluster) keeps jobs in the same
encoding."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from exporter import job_history, step_times
from exporter.model import interned
from exporter.parsing import load_json, may_hold_surrogates
from exporter.store import Retired
from exporter.tracked import QUARANTINE_SECONDS, TrackedJob

log = logging.getLogger("asyncjob.state")

# The WAL is cut back to this size once it is copied in after a busy spell.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# A file made before auto_vacuum was set is rebuilt with it at start (VACUUM) up to this size;
# a larger one reuses its free pages and is left as it is (a VACUUM of gigabytes takes minutes).
VACUUM_AT_START_MAX = 64 * 1024 * 1024

# Each entry migrates the schema from version i to i+1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        target TEXT NOT NULL, job_id TEXT NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (target, job_id)
    );
    CREATE TABLE cursors (
        target TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (target, name)
    );
    CREATE TABLE tombstones (
        target TEXT NOT NULL, job_id TEXT NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (target, job_id)
    );
    """,
    # Expired tombstones are found by age, not by a walk over every row.
    "CREATE INDEX tombstones_by_age ON tombstones (at);",
    # Jobs the event loop froze on (exporter.watchdog), written by the watchdog's thread.
    """
    CREATE TABLE quarantine (
        target TEXT NOT NULL, job_id TEXT NOT NULL, at REAL NOT NULL, why TEXT NOT NULL,
        PRIMARY KEY (target, job_id)
    );
    """,
    # Finished jobs kept after retention dropped them (exporter.job_history).
    job_history.SCHEMA,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StateError(Exception):
    """The state file cannot be used at all (not SQLite, a newer schema)."""


_TRACKED = TypeAdapter(TrackedJob)

# A batch's rows go to SQLite as one JSON array per statement: one step each, not one a row.
WRITES = (
    "INSERT INTO jobs (target, job_id, data) VALUES (?, ?, ?) "
    "ON CONFLICT(target, job_id) DO UPDATE SET data = excluded.data",
    "DELETE FROM jobs WHERE target = ? AND job_id = ?",
    "INSERT OR REPLACE INTO tombstones (target, job_id, at) VALUES (?, ?, ?)",
    "INSERT OR REPLACE INTO cursors (target, name, value) VALUES (?, ?, ?)",
)

PRUNE = "DELETE FROM tombstones WHERE rowid IN (SELECT rowid FROM tombstones WHERE at < ? LIMIT ?)"
PRUNE_QUARANTINE = "DELETE FROM quarantine WHERE at < ?"
BURIED = "SELECT at FROM tombstones WHERE target = ? AND job_id = ? AND at >= ?"
NEWEST_TOMBSTONES = "SELECT job_id, at FROM tombstones WHERE target = ? ORDER BY at DESC LIMIT ?"


def tracked_to_json(t: TrackedJob) -> str:
    try:
        return _TRACKED.dump_json(t).decode()
    except ValueError:  # text that is not valid Unicode (a lone surrogate): kept, replaced
        text = json.dumps(_TRACKED.dump_python(t, mode="python", round_trip=True), ensure_ascii=False)
        return text.encode("utf-8", "replace").decode()


# Keys of a row written before the step times were one field (three dicts a job).
_OLD_STEP_KEYS = ("step_started", "step_finished", "step_duration")


def _migrated(text: str | bytes) -> str | bytes:
    """A row as this release writes it: an older row's three step dicts become its step times
    (any error in them is named under their old key)."""
    old_form = b'"step_started"' in text if isinstance(text, bytes) else '"step_started"' in text
    if not old_form:
        return text
    row = load_json(text)
    if not isinstance(row, dict) or "step_times" in row:
        return text
    old = [row.pop(key, {}) for key in _OLD_STEP_KEYS]
    for key, value in zip(_OLD_STEP_KEYS, old, strict=True):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: not an object")
    row["step_times"] = step_times.from_dicts(*old)
    return json.dumps(row)


def tracked_from_json(text: str | bytes) -> TrackedJob:
    """A saved job, its every field checked against its type; ValueError names the first problem.
    Rows written by older releases are read too (`_migrated`)."""
    text = _migrated(text)
    if may_hold_surrogates(text):  # a lone surrogate in free text is replaced, not the row lost
        text = json.dumps(load_json(text))
    try:
        tracked = _TRACKED.validate_json(text, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "row"
        raise ValueError(f"{where}: {first['msg']}") from None
    # Each row is read into strings of its own: share them as a job polled since start would.
    tracked.job = interned(tracked.job)
    tracked.provider, tracked.source = sys.intern(tracked.provider), sys.intern(tracked.source)
    return tracked


def tracked_to_dict(t: TrackedJob) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(tracked_to_json(t))
    return data


def tracked_from_dict(data: dict[str, Any]) -> TrackedJob:
    return tracked_from_json(json.dumps(data))


def printable(raw: bytes | str) -> str:
    """A key from the file as log text, whatever bytes it holds."""
    if isinstance(raw, str):
        return raw.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")


def describe(e: sqlite3.Error) -> str:
    name = getattr(e, "sqlite_errorname", "")
    return f"{e} ({name})" if name else str(e)


def open_writable(path: str) -> sqlite3.Connection:
    """The file opened for writing, its schema brought up to date (StateError: a newer one)."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        # Before anything is written: a new file reuses freed pages and can give them back.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: a commit survives the process dying (kill -9), not power loss.
        db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (which fsync) run on another connection, in a worker thread.
        db.execute("PRAGMA wal_autocheckpoint=0")
        # After a busy spell the WAL is cut back to this size once it is copied in.
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        migrate(db, path)
        vacuum_at_start(db, path)
    except BaseException:
        db.close()
        raise
    return db


def vacuum_at_start(db: sqlite3.Connection, path: str) -> None:
    """A file written before auto_vacuum was set: rebuilt with it when it is small enough."""
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 0:
        return
    size = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    if size > VACUUM_AT_START_MAX:
        log.info(
            "state file made without auto_vacuum: its free pages are reused, never given back",
            extra={"path": path, "bytes": size},
        )
        return
    try:
        db.execute("VACUUM")  # with the auto_vacuum set above (a no-op on a new file)
    except sqlite3.OperationalError as e:  # busy (another process has it open): next start
        log.info("state file not rebuilt with auto_vacuum", extra={"path": path, "error": describe(e)})


def open_read_only(path: str) -> sqlite3.Connection | None:
    """A connection that only reads, for a file on a read-only mount; None when there is no file."""
    if not Path(path).exists():
        return None
    uri = Path(path).resolve().as_uri()
    for query in ("?mode=ro", "?mode=ro&immutable=1"):  # immutable: no -shm can be made
        try:
            db = sqlite3.connect(uri + query, uri=True, check_same_thread=False)
            check_version(db)
            return db
        except sqlite3.OperationalError:
            continue
    return None


def check_version(db: sqlite3.Connection) -> int:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StateError(f"schema version {version} is newer than this exporter knows ({SCHEMA_VERSION})")
    return version


def migrate(db: sqlite3.Connection, path: str) -> None:
    version = check_version(db)
    if version == SCHEMA_VERSION:
        return
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for i in range(version, SCHEMA_VERSION):
        db.executescript("BEGIN;" + MIGRATIONS[i] + "COMMIT;")
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(i + 1),),
        )
        log.info("state schema migrated", extra={"version": i + 1, "path": path})


@dataclass
class Saved:
    """What a state file holds for the tracker: jobs and quarantined jobs by target, cursors."""

    jobs: dict[str, list[TrackedJob]] = field(default_factory=dict)
    cursors: dict[tuple[str, str], str] = field(default_factory=dict)
    quarantined: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> job id -> since


def load(db: sqlite3.Connection, path: str) -> Saved:
    """Read every row; a row that does not read back as what it should be is skipped, named."""
    saved = Saved()
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "jobs" not in tables:
        return saved
    bad = 0

    def skip(target: bytes | str, key: bytes | str, problem: str, what: str = "job") -> None:
        nonlocal bad
        bad += 1
        log.warning(
            f"unreadable {what} in state file, skipped",
            extra={"target": printable(target), "key": printable(key), "problem": problem},
        )

    # As bytes: text that is not UTF-8 must not stop the reading of the rows after it.
    for target_b, key_b, data in db.execute(
        "SELECT CAST(target AS BLOB), CAST(job_id AS BLOB), CAST(data AS BLOB) FROM jobs"
    ):
        try:
            target, job_id = target_b.decode(), key_b.decode()
            tracked = tracked_from_json(data)
        except ValueError as e:  # UnicodeDecodeError is one
            skip(target_b, key_b, str(e))
            continue
        if tracked.job.id != job_id:
            skip(target, job_id, f"job.id: {tracked.job.id!r} differs from the row's key")
            continue
        saved.jobs.setdefault(target, []).append(tracked)
    for target_b, key_b, value in db.execute(
        "SELECT CAST(target AS BLOB), CAST(name AS BLOB), CAST(value AS BLOB) FROM cursors"
    ):
        try:
            saved.cursors[(target_b.decode(), key_b.decode())] = bytes(value).decode()
        except ValueError as e:
            skip(target_b, key_b, str(e), "cursor")
    if "quarantine" in tables:
        since = time.time() - QUARANTINE_SECONDS
        for target, job_id, at in db.execute(
            "SELECT target, job_id, at FROM quarantine WHERE at >= ?", (since,)
        ):
            if isinstance(target, str) and isinstance(job_id, str) and isinstance(at, int | float):
                saved.quarantined.setdefault(target, {})[job_id] = float(at)
                log.warning(
                    "job quarantined: the event loop froze while it was polled; it is skipped",
                    extra={"target": target, "job_id": job_id, "until": round(at + QUARANTINE_SECONDS)},
                )
    count = sum(len(v) for v in saved.jobs.values())
    log.info("state restored", extra={"path": path, "jobs": count, "skipped": bad})
    return saved


def history_row(target: str, tracked: TrackedJob, now: float) -> job_history.Row:
    job = tracked.job
    finished = job.finished or tracked.seen_terminal_at or now
    cause = "" if tracked.cause is None else str(tracked.cause)
    return job_history.row(
        target, job.id, str(job.status), job.reason or "", cause, finished, now, tracked_to_json(tracked)
    )


def retired_from(found: job_history.Found) -> Retired | None:
    try:
        return Retired(found.target, tracked_from_json(found.data), found.dropped_at)
    except ValueError as e:
        log.warning(
            "unreadable job in the history, skipped", extra={"target": found.target, "problem": str(e)}
        )
        return None
