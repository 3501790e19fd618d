"""Group commit, the part every state store shares: changes are numbered as they are made, a writer
task commits all that is pending in one transaction a round (every change made while the event
loop served others), and `committed()` returns once every change made before it is durable.

A store subclasses `GroupCommit` and supplies the round (`_write_round`: take what is pending,
commit it, then `_round_ended`), what waits (`_has_pending`), and what to do on the way out
(`_last_round`). It calls `_changed()` for every change, and `_committed(upto)` or
`_failed(error)` as a round ends, and times each transaction in `commit_duration`. The SQLite
store (exporter.state) and the PostgreSQL one (exporter.cluster.store) are built on it.
"""

from __future__ import annotations

import logging

import anyio

from exporter.catalogue import STATE_COMMIT_DURATION
from exporter.histogram import Histogram
from exporter.render.text import fmt

log = logging.getLogger("asyncjob.state")

# Waits between attempts while the state cannot be written.
RETRY_FIRST, RETRY_MAX = 0.25, 2.0
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StateUnwritable(Exception):
    """A change could not be committed: the state cannot be written now (the runtime answers 503)."""


class GroupCommit:
    # What the log calls the place the state is written to.
    where = "state"

    def __init__(self) -> None:
        self._changes = 0  # numbered changes so far
        self._durable = 0  # every change up to this number is committed
        self.write_errors = 0
        self.error: str | None = None  # the current write error; None while writes succeed
        self.commit_duration = Histogram(COMMIT_BUCKETS)
        self._wake: anyio.Event | None = None
        self._round: anyio.Event | None = None
        self.log_fields: dict[str, object] = {}  # said with every line logged about writing (a path)

    # --- what a store supplies -------------------------------------------------------------
    def _has_pending(self) -> bool:
        raise NotImplementedError

    async def _write_round(self) -> bool:
        """Commit what is pending; True when it was. Ends with `_round_ended()`."""
        raise NotImplementedError

    async def _after_round(self) -> None:
        """Work for the writer between rounds that succeeded (none by default)."""

    async def _last_round(self) -> None:
        """The writer is ending: commit what is left, within bounds, and say what is lost."""
        raise NotImplementedError

    # --- the bookkeeping -----------------------------------------------------------------
    def _changed(self) -> None:
        self._changes += 1
        if self._wake is not None:
            self._wake.set()

    def _committed(self, upto: int, changes: int) -> None:
        """Every change up to number `upto` is durable."""
        self._durable = max(self._durable, upto)
        if self.error is not None:
            log.info(f"{self.where} written again", extra={**self.log_fields, "changes": changes})
            self.error = None

    def _failed(self, error: str, pending: int) -> None:
        self.write_errors += 1
        if error != self.error:
            log.error(
                f"{self.where} cannot be written; changes are kept and retried",
                extra={**self.log_fields, "error": error, "pending": pending},
            )
        self.error = error

    def _round_ended(self) -> None:
        """Wake whoever waits on this round: their changes are committed, or they learn why not."""
        if self._round is not None:
            self._round.set()
        self._round = anyio.Event()

    # --- the writer and its waiters ------------------------------------------------------
    async def run(self) -> None:
        """The writer: commit whatever is pending, many changes a transaction; while writes fail,
        retry with a growing pause. One last round on the way out."""
        self._wake = anyio.Event()
        self._round = self._round or anyio.Event()
        retry = RETRY_FIRST
        try:
            while True:
                if not self._has_pending() and self.error is None:
                    await self._wake.wait()
                self._wake = anyio.Event()
                if await self._write_round():
                    retry = RETRY_FIRST
                    await self._after_round()
                    await anyio.sleep(0)  # let the waiters and new changes in
                else:
                    await anyio.sleep(retry)
                    retry = min(RETRY_MAX, retry * 2)
        finally:
            with anyio.CancelScope(shield=True):
                await self._last_round()
            if self._round is not None:
                self._round.set()

    async def committed(self) -> None:
        """Return once every change made so far is committed; StateUnwritable when a write
        attempt fails first."""
        want = self._changes
        while self._durable < want:
            if self._round is None:
                self._round = anyio.Event()
            await self._round.wait()
            if self._durable < want and self.error is not None:
                raise StateUnwritable(self.error)

    def commit_duration_text(self) -> str:
        """asyncjob_state_commit_duration_seconds in the text format."""
        name, h = STATE_COMMIT_DURATION.name, self.commit_duration
        lines = [STATE_COMMIT_DURATION.header_text]
        lines += [f'{name}_bucket{{le="{fmt(b)}"}} {n}\n' for b, n in zip(h.buckets, h.counts, strict=True)]
        lines.append(
            f'{name}_bucket{{le="+Inf"}} {h.count}\n{name}_sum {fmt(h.total)}\n{name}_count {h.count}\n'
        )
        return "".join(lines)
