"""A batch of state changes for one SQLite transaction (exporter.state.Store takes them all at
once), what waits on it, and the statements that write it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from exporter import job_history
from exporter.state_file import PRUNE, PRUNE_QUARANTINE, WRITES, history_row, tracked_to_json
from exporter.tracked import QUARANTINE_SECONDS, TrackedJob

JobKey = tuple[str, str]  # (target, job id); (target, name) for a cursor
# A statement's parameters: many rows (executemany) or one.
Rows: TypeAlias = list[tuple[Any, ...]] | tuple[Any, ...]

# Jobs serialised and written per statement; the event loop serves others between statements.
ROWS_PER_STATEMENT = 500
# Expired tombstones deleted with one batch, at most: a day's backlog at 50 jobs a second is
# millions of rows, not one statement.
PRUNE_ROWS = 5000


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

    @property
    def left_a_backlog(self) -> bool:
        """The prune deleted all it may: more expired rows may wait for the next batch."""
        return self.pruned >= PRUNE_ROWS

    def statements(self, db: sqlite3.Connection, bounds: job_history.Bounds) -> Iterator[tuple[str, Rows]]:
        """The statements that write the batch, each with its rows (executemany: a row costs less
        bound as parameters than folded into one JSON array that SQLite parses again); jobs are
        serialised ROWS_PER_STATEMENT at a time, as they are now (on the event loop, the only
        thread that changes them: a job changed since is in the next batch too)."""
        upserts = [(key, tr) for key, tr in self.jobs.items() if tr is not None]
        for i in range(0, len(upserts), ROWS_PER_STATEMENT):
            part = upserts[i : i + ROWS_PER_STATEMENT]
            yield WRITES[0], [(t, j, tracked_to_json(tr)) for (t, j), tr in part]
        rest: tuple[list[tuple[Any, ...]], ...] = (
            [key for key, tr in self.jobs.items() if tr is None],
            [(t, j, at) for (t, j), at in self.tombstones.items()],
            [(t, n, v) for (t, n), v in self.cursors.items()],
        )
        for sql, rows in zip(WRITES[1:], rest, strict=True):
            if rows:
                yield sql, rows
        kept = list(self.history.items())
        for i in range(0, len(kept), ROWS_PER_STATEMENT):
            yield (
                job_history.KEEP,
                [history_row(t, tr, at) for (t, _), (tr, at) in kept[i : i + ROWS_PER_STATEMENT]],
            )
        if self.history or self.prune_before is not None:
            yield from job_history.prune_statements(db, bounds, time.time())
        if self.prune_before is not None:
            yield PRUNE, (self.prune_before, PRUNE_ROWS)
            yield PRUNE_QUARANTINE, (time.time() - QUARANTINE_SECONDS,)

    def put_back(self, pending: Batch) -> None:
        """Wait again in `pending` (this batch failed), under any newer change of the same keys."""
        pending.jobs = {**self.jobs, **pending.jobs}
        pending.tombstones = {**self.tombstones, **pending.tombstones}
        pending.cursors = {**self.cursors, **pending.cursors}
        pending.history = {**self.history, **pending.history}
        pending.held = self.held + pending.held
