"""The cluster's tables in PostgreSQL, created and migrated at start under an advisory lock.

Migrations expand, then contract: a release adds what it needs beside what the previous release
reads (a rolling update runs both at once), and drops the old only in a later release. Each
migration says which oldest binary schema can still work with the result (`compatible_from`),
so a binary refuses a schema it cannot work with in one line, while an older binary keeps
running beside a newer one as long as the newer schema says it may.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

# The objects live in a schema of their own, beside whatever else the database holds.
SCHEMA = "asyncjob"
# Held while migrating: every replica starting at once migrates one after another.
MIGRATION_LOCK = 0x6173796E636A6F62  # "asyncjob"
DEFAULT_SHARDS = 256


@dataclass(frozen=True)
class Migration:
    sql: str
    # The oldest binary (by the schema version it was built for) that still works after it.
    compatible_from: int


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        """
        CREATE TABLE asyncjob.meta (key text PRIMARY KEY, value text NOT NULL);
        CREATE TABLE asyncjob.members (
            replica text PRIMARY KEY,
            address text NOT NULL DEFAULT '',
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL
        );
        CREATE TABLE asyncjob.leases (
            shard integer PRIMARY KEY,
            owner text,
            generation bigint NOT NULL DEFAULT 0,
            expires_at timestamptz NOT NULL DEFAULT '-infinity'
        );
        CREATE INDEX leases_owner ON asyncjob.leases (owner);
        -- Numbers every write of a job, so a replica can read what changed since it last looked.
        CREATE SEQUENCE asyncjob.changes;
        -- A job's last committed snapshot (exporter.state.tracked_to_json), by its virtual shard,
        -- with the replica that wrote it.
        CREATE TABLE asyncjob.jobs (
            target text NOT NULL,
            job_id text NOT NULL,
            shard integer NOT NULL,
            data text NOT NULL,
            written_by text NOT NULL,
            seq bigint NOT NULL DEFAULT nextval('asyncjob.changes'),
            PRIMARY KEY (target, job_id)
        );
        CREATE INDEX jobs_shard ON asyncjob.jobs (shard);
        CREATE INDEX jobs_seq ON asyncjob.jobs (seq);
        CREATE TABLE asyncjob.tombstones (
            target text NOT NULL,
            job_id text NOT NULL,
            shard integer NOT NULL,
            at double precision NOT NULL,
            PRIMARY KEY (target, job_id)
        );
        CREATE INDEX tombstones_shard ON asyncjob.tombstones (shard, at);
        CREATE INDEX tombstones_by_age ON asyncjob.tombstones (at);
        -- A discovery source's position (an Oxlin queue), by the shard of (target, name).
        CREATE TABLE asyncjob.cursors (
            target text NOT NULL,
            name text NOT NULL,
            shard integer NOT NULL,
            value text NOT NULL,
            PRIMARY KEY (target, name)
        );
        CREATE INDEX cursors_shard ON asyncjob.cursors (shard);
        -- Jobs an event loop froze on: skipped by every replica for a while.
        CREATE TABLE asyncjob.quarantine (
            target text NOT NULL,
            job_id text NOT NULL,
            shard integer NOT NULL,
            at double precision NOT NULL,
            why text NOT NULL,
            PRIMARY KEY (target, job_id)
        );
        """,
        compatible_from=1,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    """The database holds a schema this binary cannot work with."""


async def _meta(conn: psycopg.AsyncConnection, key: str) -> str | None:
    cur = await conn.execute("SELECT value FROM asyncjob.meta WHERE key = %s", (key,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def _set_meta(conn: psycopg.AsyncConnection, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO asyncjob.meta (key, value) VALUES (%s, %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


async def installed_version(conn: psycopg.AsyncConnection) -> tuple[int, int]:
    """(schema version, oldest binary version it works with); (0, 0) on an empty database."""
    cur = await conn.execute("SELECT to_regclass('asyncjob.meta') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0, 0
    version = int(await _meta(conn, "schema_version") or 0)
    return version, int(await _meta(conn, "compatible_from") or 0)


async def migrate(conn: psycopg.AsyncConnection, shards: int = DEFAULT_SHARDS) -> int:
    """Bring the schema to this binary's version, one transaction a migration, under the
    migration lock; returns the number of virtual shards the cluster uses (set by whoever made
    the schema: a replica's own setting does not change a running cluster). Raises SchemaError,
    in one line, for a schema newer than this binary can work with."""
    await conn.set_autocommit(True)
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        version, compatible_from = await installed_version(conn)
        if version > SCHEMA_VERSION and compatible_from > SCHEMA_VERSION:
            raise SchemaError(
                f"the state database's schema is version {version}, which needs a binary of schema "
                f"{compatible_from} or newer; this one is {SCHEMA_VERSION}: upgrade the exporter"
            )
        if version == 0:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        for i in range(version, SCHEMA_VERSION):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[i].sql)
                if i == 0:
                    await _set_meta(conn, "shards", str(shards))
                    await conn.execute(
                        "INSERT INTO asyncjob.leases (shard) SELECT generate_series(0, %s - 1)",
                        (shards,),
                    )
                await _set_meta(conn, "schema_version", str(i + 1))
                await _set_meta(conn, "compatible_from", str(MIGRATIONS[i].compatible_from))
        return int(await _meta(conn, "shards") or shards)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
