"""A batch of state changes for one PostgreSQL transaction: each change with its virtual shard and
the lease generation it was made under, and the statements that write the fresh ones (a statement
per kind of change, its rows as arrays: the round trips do not grow with the rows)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio

from exporter.state_file import tracked_to_json
from exporter.tracked import TrackedJob

JobKey = tuple[str, str]  # (target, job id); (target, name) for a cursor
Statement = tuple[str, tuple[Any, ...]]
V = TypeVar("V")

# Jobs serialised between two turns of the event loop.
ROWS_PER_TURN = 500
# Expired rows deleted with one batch, at most (a backlog is worked off batch by batch).
PRUNE_ROWS = 5000

# Parameters in binary (%b): a text array literal of thousands of rows costs the server about
# three times as much to parse (measured: 3,000 rows of 1.2 KiB, 480 ms in text, 150 ms binary).
_UPSERT = (
    "INSERT INTO asyncjob.jobs (target, job_id, shard, data, written_by) "
    "SELECT t, i, s, d, %b FROM unnest(%b::text[], %b::text[], %b::int[], %b::text[]) AS r(t, i, s, d) "
    "ON CONFLICT (target, job_id) DO UPDATE SET shard = excluded.shard, data = excluded.data, "
    "written_by = excluded.written_by, seq = nextval('asyncjob.changes')"
)
# For the owner of a shard this replica does not hold: its snapshot, when it has one, wins.
_INSERT_FOR_OWNER = _UPSERT.split(" ON CONFLICT")[0] + " ON CONFLICT (target, job_id) DO NOTHING"
_DELETE = (
    "DELETE FROM asyncjob.jobs j USING unnest(%b::text[], %b::text[]) AS r(t, i) "
    "WHERE j.target = r.t AND j.job_id = r.i"
)
_TOMBSTONES = (
    "INSERT INTO asyncjob.tombstones (target, job_id, shard, at) "
    "SELECT * FROM unnest(%b::text[], %b::text[], %b::int[], %b::float8[]) "
    "ON CONFLICT (target, job_id) DO UPDATE SET shard = excluded.shard, at = excluded.at"
)
_CURSORS = (
    "INSERT INTO asyncjob.cursors (target, name, shard, value) "
    "SELECT * FROM unnest(%b::text[], %b::text[], %b::int[], %b::text[]) "
    "ON CONFLICT (target, name) DO UPDATE SET shard = excluded.shard, value = excluded.value"
)
# A state carried in from elsewhere (`state copy`): added where the database has no row of the key,
# never over a replica's newer one.
_TOMBSTONES_IF_ABSENT = _TOMBSTONES.split(" ON CONFLICT")[0] + " ON CONFLICT (target, job_id) DO NOTHING"
_CURSORS_IF_ABSENT = _CURSORS.split(" ON CONFLICT")[0] + " ON CONFLICT (target, name) DO NOTHING"
_PRUNE = (
    "DELETE FROM asyncjob.tombstones WHERE (target, job_id) IN "
    "(SELECT target, job_id FROM asyncjob.tombstones WHERE at < %b LIMIT %b)"
)
CHANNEL = "asyncjob_jobs"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', %b)"
_PRUNE_QUARANTINE = "DELETE FROM asyncjob.quarantine WHERE at < %b"


@dataclass(frozen=True)
class Change(Generic[V]):
    """A value to write, with its shard and the generation of that shard's lease when it was made
    (None: this replica did not hold the shard)."""

    value: V
    shard: int
    generation: int | None


Fresh = Callable[[Change[Any]], bool]


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one array a column, for unnest."""
    return [list(column) for column in zip(*rows, strict=True)]


@dataclass
class Batch:
    """Changes taken for one transaction, and what waits on it."""

    jobs: dict[JobKey, Change[TrackedJob | None]] = field(default_factory=dict)
    tombstones: dict[JobKey, Change[float]] = field(default_factory=dict)
    cursors: dict[JobKey, Change[str]] = field(default_factory=dict)
    # Increments, each with the shard and generation of the change it is tied to (None: none).
    held: list[tuple[Callable[[], None], Change[None] | None]] = field(default_factory=list)
    upto: int = 0  # the last change number it holds
    # Delete rows older than these (tombstone, quarantine) with the batch; None: not this time.
    prune_before: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.jobs) + len(self.tombstones) + len(self.cursors)

    def put_back(self, newer: Batch) -> Batch:
        """This (failed) batch under the changes made since: the newer change of a key wins."""
        return Batch(
            {**self.jobs, **newer.jobs},
            {**self.tombstones, **newer.tombstones},
            {**self.cursors, **newer.cursors},
            self.held + newer.held,
            newer.upto,
            newer.prune_before or self.prune_before,
        )

    def generations(self) -> dict[int, int]:
        """Each shard's newest generation among the changes: one made under an older one is stale."""
        changes: Iterable[Change[Any]] = (
            *self.jobs.values(),
            *self.tombstones.values(),
            *self.cursors.values(),
            *(c for _, c in self.held if c is not None),
        )
        newest: dict[int, int] = {}
        for c in changes:
            if c.generation is not None and c.generation > newest.get(c.shard, -1):
                newest[c.shard] = c.generation
        return newest

    async def serialised(self) -> dict[JobKey, str]:
        """The jobs to write as JSON, made on the event loop (the only thread that changes them)
        a few hundred at a time: a poll cycle that changed thousands holds no scrape up."""
        rows: dict[JobKey, str] = {}
        for n, (key, change) in enumerate(self.jobs.items()):
            if change.value is not None:
                if n % ROWS_PER_TURN == ROWS_PER_TURN - 1:
                    await anyio.lowlevel.checkpoint()
                rows[key] = tracked_to_json(change.value)
        return rows

    def statements(self, rows: dict[JobKey, str], fresh: Fresh, replica: str) -> tuple[list[Statement], int]:
        """The statements that write the fresh changes (`rows`: the jobs serialised), and how many
        stale ones were left out. A job of a shard not held, or held no longer, goes to its owner."""
        upserts: list[tuple[Any, ...]] = []
        for_owner: list[tuple[Any, ...]] = []
        deletes: list[tuple[Any, ...]] = []
        stale = 0
        for (t, i), c in self.jobs.items():
            if c.value is None:
                if fresh(c):
                    deletes.append((t, i))
                else:
                    stale += 1
            elif fresh(c):
                upserts.append((t, i, c.shard, rows[(t, i)]))
            else:
                # Not over the owner's snapshot; but a registration acknowledged by this commit is
                # kept when the owner has no row of it.
                stale += c.generation is not None
                for_owner.append((t, i, c.shard, rows[(t, i)]))
        tombstones = [(t, i, c.shard, c.value) for (t, i), c in self.tombstones.items() if fresh(c)]
        cursors = [(t, n, c.shard, c.value) for (t, n), c in self.cursors.items() if fresh(c)]
        stale += len(self.tombstones) - len(tombstones) + len(self.cursors) - len(cursors)
        out: list[Statement] = [
            (sql, (replica, *_columns(table)))
            for sql, table in ((_UPSERT, upserts), (_INSERT_FOR_OWNER, for_owner))
            if table
        ]
        out += [
            (sql, tuple(_columns(table)))
            for sql, table in ((_TOMBSTONES, tombstones), (_CURSORS, cursors), (_DELETE, deletes))
            if table
        ]
        if for_owner:
            # A hint to the owners: they read what was written for them at once (a notification
            # is lost while a listener reconnects; their catch-up read finds it then).
            out.append((NOTIFY, (",".join(sorted({str(row[2]) for row in for_owner})),)))
        if self.prune_before is not None:
            tombstones_before, quarantine_before = self.prune_before
            out += [(_PRUNE, (tombstones_before, PRUNE_ROWS)), (_PRUNE_QUARANTINE, (quarantine_before,))]
        return out, stale

    def inserts(self, rows: dict[JobKey, str], writer: str) -> list[tuple[str, Statement]]:
        """Statements that add the jobs (`rows`: serialised), tombstones and cursors where the
        database holds no row of their key, each named for what it adds: a state carried in from
        a state file. A row already there is left alone, so the same batch written twice adds
        nothing the second time, and an older snapshot never replaces a newer one (a job counted
        since would be counted again)."""
        jobs = [(t, i, c.shard, rows[(t, i)]) for (t, i), c in self.jobs.items() if c.value is not None]
        tombstones = [(t, i, c.shard, c.value) for (t, i), c in self.tombstones.items()]
        cursors = [(t, n, c.shard, c.value) for (t, n), c in self.cursors.items()]
        out: list[tuple[str, Statement]] = []
        if jobs:
            out.append(("jobs", (_INSERT_FOR_OWNER, (writer, *_columns(jobs)))))
        if tombstones:
            out.append(("tombstones", (_TOMBSTONES_IF_ABSENT, tuple(_columns(tombstones)))))
        if cursors:
            out.append(("cursors", (_CURSORS_IF_ABSENT, tuple(_columns(cursors)))))
        return out
