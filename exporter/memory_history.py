"""The history of finished jobs of a process without a state file (exporter.job_history)."""

from __future__ import annotations

import sqlite3
import time

from exporter import job_history
from exporter.state_file import history_row, retired_from
from exporter.store import Retired
from exporter.tracked import TargetState, TrackedJob


class MemoryHistory:
    """The history of a process without a state file: the same table in an SQLite database in
    memory, bounded alike (lost at exit, as the jobs are)."""

    def __init__(self) -> None:
        self.bounds = job_history.Bounds()
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.executescript(job_history.SCHEMA)

    def keep(self, state: TargetState, tracked: TrackedJob) -> None:
        if self.bounds.period <= 0:
            return
        now = time.time()
        self._db.execute("BEGIN")  # one transaction: kept and pruned, or neither
        try:
            self._db.execute(job_history.KEEP, history_row(state.config.name, tracked, now))
            job_history.prune(self._db, self.bounds, now)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def retired(self, target: str, job_id: str) -> Retired | None:
        found = job_history.find(self._db, target, job_id)
        return retired_from(found) if found is not None else None

    def search(self, query: job_history.Query) -> tuple[list[Retired], int]:
        found, total = job_history.search(self._db, query)
        return [r for r in map(retired_from, found) if r is not None], total

    def history_metrics_text(self) -> bytes:
        return job_history.metrics_text(*job_history.size(self._db))
