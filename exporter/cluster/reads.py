"""What a replica reads of the cluster's shared state besides its own shards: every replica's jobs
for the pages and the API (`cluster_jobs`, `cluster_job`), and the jobs other replicas wrote for
this one (`written_by_others`, the catch-up read). Reads only, on autocommit connections of their
own; exporter.cluster.store's PostgresStore, the writer, has them as methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg

from exporter.cluster.batch import ROWS_PER_TURN, JobKey
from exporter.state_file import tracked_from_json
from exporter.tracked import TrackedJob

# A read that takes longer is abandoned with its connection (as a commit is: exporter.cluster.store).
READ_TIMEOUT = 10.0
CATCH_UP_ROWS = 5000  # rows of other replicas' writes read at a time


class Reader:
    """A connection for reads (autocommit), opened again after a failure; one read at a time."""

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection]]) -> None:
        self.connect = connect
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = anyio.Lock()

    async def rows(self, sql: str, params: tuple[Any, ...], timeout: float) -> list[tuple[Any, ...]]:
        async with self._lock:
            try:
                with anyio.fail_after(timeout):
                    if self._conn is not None and not self._conn.closed:
                        try:
                            return await self._rows(self._conn, sql, params)
                        except psycopg.OperationalError:
                            # Cut while it sat idle (the server restarted, a proxy timed it out):
                            # a read changes nothing, so it is made once more on a new connection.
                            await self.close()
                    self._conn = await self.connect()
                    await self._conn.set_autocommit(True)
                    return await self._rows(self._conn, sql, params)
            except BaseException:
                await self.close()
                raise

    @staticmethod
    async def _rows(
        conn: psycopg.AsyncConnection, sql: str, params: tuple[Any, ...]
    ) -> list[tuple[Any, ...]]:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error, OSError):
                await conn.close()


@dataclass(frozen=True)
class ClusterJob:
    """A job as its owner last committed it, for the pages of any replica."""

    target: str
    tracked: TrackedJob
    shard: int
    owner: str | None  # the replica holding the shard's lease now; None while nobody does
    written_by: str


class ClusterReads:
    """The reads of other replicas' writes, for PostgresStore: `_shown` serves the pages and the
    API, `_reads` the replica's own catch-up (and its loads)."""

    replica: str
    _reads: Reader
    _shown: Reader

    async def cluster_jobs(
        self,
        target: str | None = None,
        after: JobKey | None = None,
        limit: int = 1000,
        *,
        status: str | None = None,
        id_prefix: str = "",
        skip_shards: Iterable[int] = (),
    ) -> list[ClusterJob]:
        """Jobs of every replica, ordered by (target, id) as Python orders strings (code points:
        PostgreSQL's "C" collation, whatever the database's), `limit` after `after`: each as its
        owner last committed it, with the replica that holds its shard now. `status` and
        `id_prefix` filter. Of `skip_shards` (those this replica holds in memory, fresher than
        their rows) only the jobs other replicas wrote are read: registrations they took for this
        replica, which its catch-up read may not have taken in yet."""
        rows = await self._shown.rows(
            "SELECT j.target, j.job_id, j.data, j.shard, "
            "CASE WHEN l.expires_at > now() THEN l.owner END, j.written_by "
            "FROM asyncjob.jobs j LEFT JOIN asyncjob.leases l ON l.shard = j.shard "
            "WHERE (%s::text IS NULL OR j.target = %s) "
            'AND (j.target COLLATE "C", j.job_id COLLATE "C") > (%s, %s) '
            "AND starts_with(j.job_id, %s) AND NOT (j.shard = ANY(%s) AND j.written_by = %s) "
            "AND (%s::text IS NULL OR j.data::jsonb #>> '{job,status}' = %s) "
            'ORDER BY j.target COLLATE "C", j.job_id COLLATE "C" LIMIT %s',
            (
                target,
                target,
                *(after or ("", "")),
                id_prefix,
                sorted(skip_shards),
                self.replica,
                status,
                status,
                limit,
            ),
            READ_TIMEOUT,
        )
        return await self._cluster_jobs(rows)

    async def cluster_job(self, target: str, job_id: str) -> ClusterJob | None:
        """One job as its owner last committed it, with the replica that holds its shard now;
        None when no replica has it."""
        rows = await self._shown.rows(
            "SELECT j.target, j.job_id, j.data, j.shard, "
            "CASE WHEN l.expires_at > now() THEN l.owner END, j.written_by "
            "FROM asyncjob.jobs j LEFT JOIN asyncjob.leases l ON l.shard = j.shard "
            "WHERE j.target = %s AND j.job_id = %s",
            (target, job_id),
            READ_TIMEOUT,
        )
        jobs = await self._cluster_jobs(rows)
        return jobs[0] if jobs else None

    @staticmethod
    async def _cluster_jobs(rows: list[tuple[Any, ...]]) -> list[ClusterJob]:
        jobs = []
        for n, (t, job_id, data, shard, owner, written_by) in enumerate(rows):
            if n % ROWS_PER_TURN == ROWS_PER_TURN - 1:  # a scrape waits for no page's read
                await anyio.lowlevel.checkpoint()
            with contextlib.suppress(ValueError):  # unreadable: skipped, as load() does
                tracked = tracked_from_json(data)
                if tracked.job.id == job_id:
                    jobs.append(ClusterJob(t, tracked, shard, owner, written_by))
        return jobs

    async def max_seq(self) -> int:
        """The newest change number: a replica catching up reads what comes after it."""
        return int(
            (await self._reads.rows("SELECT coalesce(max(seq), 0) FROM asyncjob.jobs", (), READ_TIMEOUT))[0][
                0
            ]
        )

    async def written_by_others(
        self, after: int, shards: Iterable[int], wanted: Callable[[str, str], bool]
    ) -> tuple[list[int], list[tuple[str, TrackedJob]]]:
        """Jobs of `shards` other replicas wrote after change number `after` (registrations and
        listed jobs written for this replica), oldest first: the change numbers read, and the jobs
        `wanted(target, id)` (only those are parsed: a read overlaps the last ones)."""
        rows = await self._reads.rows(
            "SELECT seq, target, job_id, data FROM asyncjob.jobs "
            "WHERE seq > %s AND shard = ANY(%s) AND written_by <> %s ORDER BY seq LIMIT %s",
            (after, sorted(shards), self.replica, CATCH_UP_ROWS),
            READ_TIMEOUT,
        )
        jobs = []
        for _seq, target, job_id, data in rows:
            if not wanted(target, job_id):
                continue
            with contextlib.suppress(ValueError):  # unreadable: skipped, as load() does
                tracked = tracked_from_json(data)
                if tracked.job.id == job_id:
                    jobs.append((str(target), tracked))
        return [int(row[0]) for row in rows], jobs
