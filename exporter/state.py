"""Durable state in SQLite: tracked jobs with their last snapshot, progress stamps and
counted-once marks, tombstones, and provider cursors (Oxlin queues).

The store is a tracker listener: changes are collected in memory and written in batches
from a worker thread, so the event loop never waits on the disk. A crash loses at most
the last FLUSH_INTERVAL of changes; a finished job already counted is never counted
again after a restart, and stuck clocks keep their old stamps.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import anyio

from exporter.model import Cause, Job, Status, Step
from exporter.parsing import load_json
from exporter.tracker import TargetState, TrackedJob, Tracker

log = logging.getLogger("asyncjob.state")

FLUSH_INTERVAL = 1.0

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
)
SCHEMA_VERSION = len(MIGRATIONS)

_JOB_FIELDS = {f.name for f in fields(Job)}
_STEP_FIELDS = {f.name for f in fields(Step)}


class StateError(Exception):
    pass


def tracked_to_dict(t: TrackedJob) -> dict[str, Any]:
    data = asdict(t)
    data["job"]["steps"] = [asdict(s) for s in t.job.steps]
    return data


def tracked_from_dict(data: dict[str, Any]) -> TrackedJob:
    job_data = {k: v for k, v in data["job"].items() if k in _JOB_FIELDS}
    job_data["status"] = Status(job_data["status"])
    if job_data.get("cause") is not None:
        job_data["cause"] = Cause(job_data["cause"])
    job_data["steps"] = tuple(
        Step(**{**{k: v for k, v in s.items() if k in _STEP_FIELDS}, "status": Status(s["status"])})
        for s in job_data.get("steps", ())
    )
    tracked_data = {k: v for k, v in data.items() if k != "job" and k in TrackedJob.__dataclass_fields__}
    return TrackedJob(job=Job(**job_data), **tracked_data)


class Store:
    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._dirty: dict[tuple[str, str], TrackedJob | None] = {}
        self._tombstones: dict[tuple[str, str], float] = {}
        self._cursors: dict[tuple[str, str], str] = {}
        self._dirty_cursors = False
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StateError(f"{path}: {e}") from None
        self._restored: dict[str, list[TrackedJob]] = {}
        self._restored_tombstones: dict[str, dict[str, float]] = {}
        self._load()

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StateError(f"schema version {version} is newer than this exporter knows ({SCHEMA_VERSION})")
        for i in range(version, SCHEMA_VERSION):
            self._db.executescript("BEGIN;" + MIGRATIONS[i] + "COMMIT;")
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(i + 1),),
            )
            log.info("state schema migrated", extra={"version": i + 1, "path": self.path})

    def _load(self) -> None:
        bad = 0
        for target, job_id, data in self._db.execute("SELECT target, job_id, data FROM jobs"):
            try:
                # load_json: lone surrogates replaced, depth bounded (a tampered row is skipped).
                self._restored.setdefault(target, []).append(tracked_from_dict(load_json(data)))
            except (ValueError, TypeError, KeyError):
                bad += 1
                log.warning(
                    "unreadable job in state file, skipped", extra={"target": target, "job_id": job_id}
                )
        for target, job_id, at in self._db.execute("SELECT target, job_id, at FROM tombstones"):
            self._restored_tombstones.setdefault(target, {})[job_id] = at
        for target, name, value in self._db.execute("SELECT target, name, value FROM cursors"):
            self._cursors[(target, name)] = value
        count = sum(len(v) for v in self._restored.values())
        log.info("state restored", extra={"path": self.path, "jobs": count, "skipped": bad})

    # --- wiring ----------------------------------------------------------------------
    def attach(self, tracker: Tracker, scheduler: Any) -> None:
        tracker.listeners.append(self)
        tracker.restore = self.restore
        scheduler.store = self

    def restore(self, state: TargetState) -> list[TrackedJob]:
        """Jobs saved for `state`'s target; each is handed out once."""
        name = state.config.name
        state.tombstones.update(self._restored_tombstones.pop(name, {}))
        return self._restored.pop(name, [])

    def cursors(self, target: str) -> dict[str, str]:
        return {name: v for (t, name), v in self._cursors.items() if t == target}

    def save_cursors(self, target: str, cursors: dict[str, str]) -> None:
        with self._lock:
            for name, value in cursors.items():
                self._cursors[(target, name)] = value
                self._dirty_cursors = True

    # --- tracker listener --------------------------------------------------------------
    def job_changed(self, state: TargetState, tracked: TrackedJob) -> None:
        with self._lock:
            self._dirty[(state.config.name, tracked.job.id)] = tracked

    def job_removed(self, state: TargetState, job_id: str) -> None:
        key = (state.config.name, job_id)
        with self._lock:
            self._dirty[key] = None
            at = state.tombstones.get(job_id)
            if at is not None:
                self._tombstones[key] = at

    # --- writing -----------------------------------------------------------------------
    def _take(
        self,
    ) -> tuple[
        list[tuple[str, str, str]],
        list[tuple[str, str]],
        list[tuple[str, str, float]],
        list[tuple[str, str, str]],
    ]:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            tombs, self._tombstones = self._tombstones, {}
            cursors = [(t, n, v) for (t, n), v in self._cursors.items()] if self._dirty_cursors else []
            self._dirty_cursors = False
        upserts = [(t, j, json.dumps(tracked_to_dict(tr))) for (t, j), tr in dirty.items() if tr is not None]
        deletes = [(t, j) for (t, j), tr in dirty.items() if tr is None]
        return upserts, deletes, [(t, j, at) for (t, j), at in tombs.items()], cursors

    def flush(self) -> int:
        """Write pending changes (in the calling thread). Returns rows written."""
        upserts, deletes, tombs, cursors = self._take()
        if not (upserts or deletes or tombs or cursors):
            return 0
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO jobs (target, job_id, data) VALUES (?, ?, ?) "
                "ON CONFLICT(target, job_id) DO UPDATE SET data = excluded.data",
                upserts,
            )
            db.executemany("DELETE FROM jobs WHERE target = ? AND job_id = ?", deletes)
            db.executemany("INSERT OR REPLACE INTO tombstones (target, job_id, at) VALUES (?, ?, ?)", tombs)
            db.executemany("INSERT OR REPLACE INTO cursors (target, name, value) VALUES (?, ?, ?)", cursors)
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        return len(upserts) + len(deletes) + len(tombs) + len(cursors)

    async def run(self) -> None:
        """Flush every FLUSH_INTERVAL in a worker thread, and once more on the way out."""
        try:
            while True:
                await anyio.sleep(FLUSH_INTERVAL)
                try:
                    await anyio.to_thread.run_sync(self.flush)
                except sqlite3.Error as e:
                    log.error("state write failed; will retry", extra={"error": str(e)})
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.flush)

    def close(self) -> None:
        self.flush()
        self._db.close()
