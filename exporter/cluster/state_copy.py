"""`asyncjob-exporter state copy`: a state file's tracked jobs (their counted-once marks with them),
tombstones, cursors and quarantined jobs carried into a cluster's PostgreSQL, each row under its
virtual shard and in the encoding PostgresStore writes (exporter.cluster.batch).

One transaction, insert-only: a row whose key the database already holds is left as it is. Run
again, the copy adds nothing twice; and an older snapshot never replaces a replica's newer one,
which would count again a job counted since. It refuses while replicas hold leases on the
database: they load a shard's rows when they gain it, so the copy goes in before they start. One
starting or claiming shards during the copy waits for it (on the migration lock and on the leases
it holds until it commits) and then loads what it copied.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from exporter.cluster import schema
from exporter.cluster.batch import Batch, Change, JobKey
from exporter.sharding import shard_of
from exporter.state_file import StateError, load, open_read_only
from exporter.tracked import QUARANTINE_SECONDS, TOMBSTONE_SECONDS, TrackedJob

CONNECT_TIMEOUT = 10
# Jobs a statement carries at most: the copy of a large file is one transaction of a few statements.
JOBS_PER_STATEMENT = 5000
# The replica named as the writer of the copied jobs (`written_by`, shown on the jobs pages).
WRITER = "state copy"

_QUARANTINE_IF_ABSENT = (
    "INSERT INTO asyncjob.quarantine (target, job_id, shard, at, why) "
    "SELECT * FROM unnest(%b::text[], %b::text[], %b::int[], %b::float8[], %b::text[]) "
    "ON CONFLICT (target, job_id) DO NOTHING"
)
# Every lease, locked until the copy commits: a replica claiming shards meanwhile skips them (claims
# never wait on a lock) and claims them at a round after the commit, loading the copied rows.
_LEASES = "SELECT owner, expires_at > now() FROM asyncjob.leases FOR SHARE"
# A replica whose leases lapsed while the database was away is running all the same: its heartbeat
# says so (a replica that stops cleanly removes its row; one killed stops sending it).
HEARTBEAT_RECENT = 60
_RECENT_MEMBERS = (
    "SELECT replica FROM asyncjob.members WHERE heartbeat_at > now() - make_interval(secs => %s)"
)


class CopyRefused(Exception):
    """The copy cannot be made as asked (exit 2): a bad argument, a file or database it must not use."""


@dataclass
class FileState:
    """What a state file holds that the cluster keeps."""

    jobs: dict[JobKey, TrackedJob] = field(default_factory=dict)
    tombstones: dict[JobKey, float] = field(default_factory=dict)
    cursors: dict[JobKey, str] = field(default_factory=dict)
    quarantine: dict[JobKey, tuple[float, str]] = field(default_factory=dict)  # since, why
    skipped: int = 0  # rows PostgreSQL's text cannot hold (a NUL in a key)


@dataclass
class Copied:
    """Rows added to the database, and those whose key it held already, by kind."""

    shards: int = schema.DEFAULT_SHARDS
    added: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)


def text(value: str) -> str:
    """A value as PostgreSQL's text can hold it (no NUL, no lone surrogate), as PostgresStore
    keeps a cursor."""
    return value.encode("utf-8", "replace").decode().replace("\x00", "\ufffd")


def checked_url(url: str) -> str:
    """The URL of the state database, refused (CopyRefused) when it is not one or holds a password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise CopyRefused(f"--to is not a PostgreSQL URL: {' '.join(str(e).split())}") from None
    if "password" in params:
        raise CopyRefused(
            "--to must not hold a password: put it in --to-password-file (or libpq's PGPASSFILE)"
        )
    return url


def read_password(path: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CopyRefused(f"--to-password-file: {e}") from None
    if not lines or not lines[0]:
        raise CopyRefused(f"--to-password-file: {path} holds no password on its first line")
    return lines[0]


class _RowProblems(logging.Filter):
    """While the file is read, only its unreadable rows are news: the copy reports the rest (the
    loader's "restored" and "quarantined, skipped" lines speak of an exporter starting)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return str(record.msg).startswith("unreadable")


def _unreadable_wal(path: str) -> Path | None:
    """The file's WAL when it holds commits this process cannot read. SQLite reads a WAL only with
    its -shm beside it, which it makes when the directory lets it; without, a read-only opening
    falls back to the main file alone, and the last commits (an exporter killed before they were
    copied in) would be left behind without a word."""
    wal = Path(f"{path}-wal")
    if not wal.is_file() or wal.stat().st_size == 0:
        return None
    try:
        probe = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            probe.close()
    except sqlite3.Error:
        return wal
    return None


def read_state_file(path: str, now: float | None = None) -> FileState:
    """Everything the cluster keeps from the state file at `path`, read in one snapshot and without
    writing to it (an exporter may have it open; what it commits after the snapshot is not read).
    Unreadable rows are skipped and named in the log, as the exporter does at start."""
    now = time.time() if now is None else now
    if not Path(path).is_file():
        raise CopyRefused(f"--from: no state file at {path}")
    wal = _unreadable_wal(path)
    if wal is not None:
        raise CopyRefused(
            f"--from: the last commits of {path} are in {wal}, which cannot be read here without "
            f"{path}-shm beside it: copy from a directory the copy may write (the file is not written)"
        )
    try:
        db = open_read_only(path)
        if db is None:
            raise CopyRefused(f"--from: {path} cannot be opened for reading")
        try:
            db.execute("BEGIN")  # one snapshot for every table
            loader, only_problems = logging.getLogger("asyncjob.state"), _RowProblems()
            loader.addFilter(only_problems)
            try:
                saved = load(db, path)
            finally:
                loader.removeFilter(only_problems)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            tombstones = (
                db.execute(
                    "SELECT target, job_id, at FROM tombstones WHERE at >= ?", (now - TOMBSTONE_SECONDS,)
                ).fetchall()
                if "tombstones" in tables
                else []
            )
            quarantine = (
                db.execute(
                    "SELECT target, job_id, at, why FROM quarantine WHERE at >= ?",
                    (now - QUARANTINE_SECONDS,),
                ).fetchall()
                if "quarantine" in tables
                else []
            )
        finally:
            db.close()
    except (sqlite3.Error, StateError) as e:
        raise CopyRefused(f"--from: {path}: {e}") from None
    state = FileState()

    def keep(key: tuple[object, ...]) -> bool:
        ok = all(isinstance(k, str) and "\x00" not in k for k in key)
        state.skipped += not ok
        return ok

    for target, jobs in saved.jobs.items():
        for tracked in jobs:
            if keep((target, tracked.job.id)):
                state.jobs[(target, tracked.job.id)] = tracked
    for (target, name), value in saved.cursors.items():
        if keep((target, name)):
            state.cursors[(target, name)] = text(value)
    for target, job_id, at in tombstones:
        if keep((target, job_id)) and isinstance(at, int | float):
            state.tombstones[(target, job_id)] = float(at)
    for target, job_id, at, why in quarantine:
        if keep((target, job_id)) and isinstance(at, int | float):
            state.quarantine[(target, job_id)] = (float(at), text(str(why)))
    return state


def _batches(state: FileState, shards: int) -> list[Batch]:
    """The state as batches of at most JOBS_PER_STATEMENT jobs, each change under its shard (and no
    generation: the copy holds no lease, and writes only where nothing is)."""

    def shard(key: JobKey) -> int:
        return shard_of(key[0], key[1], shards)

    keys = sorted(state.jobs)
    batches = [
        Batch(jobs={k: Change(state.jobs[k], shard(k), None) for k in keys[n : n + JOBS_PER_STATEMENT]})
        for n in range(0, len(keys), JOBS_PER_STATEMENT)
    ] or [Batch()]
    batches[0].tombstones = {k: Change(at, shard(k), None) for k, at in state.tombstones.items()}
    batches[0].cursors = {k: Change(v, shard(k), None) for k, v in state.cursors.items()}
    return batches


async def copy_state(url: str, password: str | None, state: FileState) -> Copied:
    """Write `state` into the database at `url` (schema created or migrated first) in one
    transaction. Raises CopyRefused while replicas hold leases on it, schema.SchemaError for a
    schema too new, psycopg.Error when the database cannot be reached or written."""
    extra: dict[str, Any] = {} if password is None else {"password": password}
    async with await psycopg.AsyncConnection.connect(
        url,
        connect_timeout=CONNECT_TIMEOUT,
        application_name="asyncjob-exporter state copy",
        prepare_threshold=None,  # as the replicas: nothing prepared, for a transaction-pooling proxy
        **extra,
    ) as conn:
        copied = Copied(shards=await schema.migrate(conn))
        async with conn.transaction():
            # Replicas starting meanwhile wait in their migration for the copy to commit, so each
            # loads the copied rows of the shards it gains.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.MIGRATION_LOCK,))
            leases = await (await conn.execute(_LEASES)).fetchall()
            members = await (await conn.execute(_RECENT_MEMBERS, (HEARTBEAT_RECENT,))).fetchall()
            owners = sorted(
                {str(owner) for owner, live in leases if owner is not None and live}
                | {str(m) for (m,) in members}
            )
            if owners:
                raise CopyRefused(
                    f"{len(owners)} replica(s) run against this database (a lease held, or a heartbeat "
                    f"in the last {HEARTBEAT_RECENT} s: {', '.join(owners)}): "
                    "stop them, copy, then start them, so that each loads the copied rows of its shards"
                )
            wanted = {
                "jobs": len(state.jobs),
                "tombstones": len(state.tombstones),
                "cursors": len(state.cursors),
                "quarantined": len(state.quarantine),
            }
            added = dict.fromkeys(wanted, 0)
            for batch in _batches(state, copied.shards):
                rows = await batch.serialised()
                for kind, (sql, params) in batch.inserts(rows, WRITER):
                    added[kind] += (await conn.execute(sql, params)).rowcount
            if state.quarantine:
                rows_q = [
                    (t, i, shard_of(t, i, copied.shards), at, why)
                    for (t, i), (at, why) in state.quarantine.items()
                ]
                columns = [list(c) for c in zip(*rows_q, strict=True)]
                added["quarantined"] += (await conn.execute(_QUARANTINE_IF_ABSENT, columns)).rowcount
        copied.added = added
        copied.present = {kind: wanted[kind] - added[kind] for kind in wanted}
        return copied
