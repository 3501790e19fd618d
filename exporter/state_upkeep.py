"""The state file's upkeep beside its writer (exporter.state.Store): the WAL copied into the file
in a worker thread (a checkpoint fsyncs), started again from its beginning when it grew, free
pages given back to the file system, and the size of it all on disk."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import anyio

from exporter.state_file import describe

log = logging.getLogger("asyncjob.state")

# How often the WAL is copied into the file (in a worker thread).
CHECKPOINT_INTERVAL = 1.0
# A WAL past this is copied in with the writer held off (it waits; the event loop does not):
# under a steady stream of commits a checkpoint beside the writer never sees the WAL's end, so
# the WAL is never started again from its beginning and grows for ever.
WAL_RESTART_BYTES = 4 * 1024 * 1024
# Free pages kept for reuse, as a share of the file; past it, up to VACUUM_PAGES a round are
# given back to the file system (`PRAGMA incremental_vacuum`, on the writer's connection).
FREE_SHARE = 0.25
VACUUM_PAGES = 2048


class Upkeep:
    def __init__(self, path: str) -> None:
        self.path = path
        self.uncheckpointed = 0  # commits since the last checkpoint
        self._checkpointer: sqlite3.Connection | None = None

    async def checkpoints(self, writer_turn: anyio.Lock) -> None:
        """Copy the WAL into the file now and then, off the event loop; a WAL past
        WAL_RESTART_BYTES with `writer_turn` held, so that the next commit starts it again."""
        while True:
            await anyio.sleep(CHECKPOINT_INTERVAL)
            if self.uncheckpointed:
                self.uncheckpointed = 0
                if self._wal_bytes() < WAL_RESTART_BYTES:
                    await anyio.to_thread.run_sync(self._checkpoint)
                    continue
                async with writer_turn:  # all of it copied: the next commit starts it again
                    await anyio.to_thread.run_sync(self._checkpoint)

    def _wal_bytes(self) -> int:
        try:
            return Path(self.path + "-wal").stat().st_size
        except OSError:
            return 0

    def _checkpoint(self) -> None:
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:  # the WAL keeps the data; the next checkpoint tries again
            log.debug("state checkpoint failed", extra={"path": self.path, "error": describe(e)})
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None

    def give_back(self, db: sqlite3.Connection) -> None:
        """Free pages past FREE_SHARE of the file given back, after a commit that pruned (the pragma
        runs in a transaction of its own), on the writer's connection `db`."""
        try:
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            if free > max(VACUUM_PAGES, pages * FREE_SHARE):
                n = min(VACUUM_PAGES, free - int(pages * FREE_SHARE))
                db.executescript(f"PRAGMA incremental_vacuum({n});")
        except sqlite3.Error as e:  # committed already; the pages are given back another time
            log.debug("state vacuum failed", extra={"path": self.path, "error": describe(e)})

    def size_bytes(self) -> int:
        """The state file and its WAL, as they take space on disk now."""
        total = 0
        for path in (self.path, self.path + "-wal"):
            with contextlib.suppress(OSError):
                total += Path(path).stat().st_size
        return total

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
