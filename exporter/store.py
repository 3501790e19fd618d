"""What the runtime, tracker and scheduler ask of a state store: `exporter.state.Store` (SQLite)
and `exporter.cluster.store.PostgresStore`, both built on `exporter.group_commit.GroupCommit`. A
store is a tracker listener: every change reaches it, and it commits them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from exporter.job_history import Bounds, Query
from exporter.tracked import TargetState, TrackedJob
from exporter.tracker import Listener


class StateStore(Listener, Protocol):
    # Why changes cannot be committed now (served as /readyz 503); None while they can.
    error: str | None

    # --- what the last run left -----------------------------------------------------------
    def restore(self, state: TargetState) -> list[TrackedJob]:
        """The target's saved jobs (each handed out once); fills its tombstones and quarantine."""
        ...

    def cursors(self, target: str) -> dict[str, str]: ...

    def buried(self, target: str, job_id: str) -> float | None:
        """When a dropped job's tombstone was set, looked up when its id appears again."""
        ...

    # --- changes and their commit -----------------------------------------------------------
    def save_cursors(self, target: str, cursors: dict[str, str]) -> None: ...

    def after_commit(self, apply: Callable[[], None], key: tuple[str, str] | None = None) -> None:
        """Run `apply` once every change made so far is committed (`key`: the job it counts, whose
        shard must still be this replica's then; one process's store ignores it)."""
        ...

    async def committed(self) -> None:
        """Return once every change made so far is committed; StateUnwritable otherwise."""
        ...

    def quarantine(self, target: str, job_id: str, why: str) -> None:
        """Record, from any thread, that the event loop froze on this job."""
        ...

    # --- health and life --------------------------------------------------------------------
    def metrics_text(self) -> bytes: ...

    async def run(self) -> None: ...

    def close(self) -> Awaitable[None] | None:
        """Commit what is pending, within bounds, and let go of the files or connections."""
        ...


@dataclass(frozen=True)
class Retired:
    """A finished job that left the live series at `retention`, as the history keeps it."""

    target: str
    tracked: TrackedJob
    dropped_at: float


class JobHistory(Protocol):
    """Where finished jobs go when retention drops them (exporter.job_history): the state file's
    `history` table, or a bounded store in memory."""

    bounds: Bounds

    def keep(self, state: TargetState, tracked: TrackedJob) -> None:
        """Keep a job retention just dropped (with the change that drops it, where there is one)."""
        ...

    def retired(self, target: str, job_id: str) -> Retired | None: ...

    def search(self, query: Query) -> tuple[list[Retired], int]:
        """One page of the jobs `query` matches, newest dropped first, and how many match."""
        ...

    def history_metrics_text(self) -> bytes: ...
