"""Keeps the cyclic GC's full passes off the scrape path (QuietGC), and the C heap small: glibc's
mallopt settings and a periodic malloc_trim."""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from collections import deque
from collections.abc import Callable

import anyio

# glibc's mallopt parameters: a fixed mmap threshold (glibc raises it after each large free, up
# to 32 MiB, so that bodies and answers of a few hundred KiB end up in the heap and pin it), and
# two arenas (one per thread that ever allocated, up to eight a CPU, each keeping its own holes).
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2


def _heap_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where the C library has none (musl). Sets the mmap
    threshold and the arena count first (see above)."""
    try:
        libc = ctypes.CDLL(None)
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_ARENA_MAX, ARENA_MAX)
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class QuietGC:
    """Keeps the cyclic GC's full passes off the scrape path.

    A full (generation 2) pass walks every tracked object and stops the whole process: with
    10,000 jobs changing every cycle CPython ran 13 of them in 20 s, 89-113 ms each (~300 ms at
    50,000 jobs), because every change replaces a job's objects and its own rule (a full pass
    once a quarter of the long-lived objects are new) counts those replacements although
    reference counting frees the replaced ones at once. So every `every` seconds one collection
    runs over the objects made since the last tick only (the permanent generation is never
    walked), which frees the cyclic garbage made meanwhile, and the survivors are moved to the
    permanent generation (`gc.freeze`, O(1)). Each pass thus walks a tenth of a second of
    survivors, not the fleet: with 10,000 jobs changing every 2 s, half a second of them took
    15-25 ms of CPU, a tenth 3-5 ms.

    Garbage cannot pile up for ever: a frozen object freed by reference counting (a replaced
    job, a dropped one: tracked jobs hold no reference cycles, and a request's objects are
    unlinked when it ends, exporter.fetch) is freed at once, so only cyclic garbage frozen
    before it was found stays, and it is counted. Once the heap (`sys.getallocatedblocks`: it
    holds that garbage) stayed `growth` above its size after the last full pass for a whole
    `window`, everything is unfrozen and one full pass runs. Its smallest size over the window
    is what counts: a poll cycle holds its answers until it ends (tens of thousands of objects
    at 10,000 jobs, freed at once), and that swing is no garbage. A steady fleet thus runs no
    full pass; a growing one runs one per quarter of growth, at most one a window. (A cycle
    whose fetch outlasts the window, a slow provider's, can still set one off per cycle.)
    (`gc.get_freeze_count` walks the whole permanent generation: ~10 ms at 10,000 jobs, each
    tick. The heap's block count walks the arenas: about 0.2 ms at 100 MiB, so it is read every
    `measure_every` seconds, not every tick: at ten a second it was a fifth of the CPU of an
    exporter with nothing changing.)

    A tick that finds less than a young generation's worth of new objects (no automatic pass
    since the last one) doubles the wait before the next, up to `idle_every`; one that finds
    more goes back to `every`. An exporter with little to do thus wakes about once a second, and
    a burst that starts meanwhile leaves at most `idle_every` seconds of survivors to the first
    tick (CPython's own passes walk them too, never the permanent generation).
    """

    def __init__(
        self,
        every: float = 0.1,
        growth: float = 0.25,
        window: float = 60.0,
        trim_every: float = 30.0,
        measure_every: float = 1.0,
        idle_every: float = 1.0,
    ) -> None:
        self.every, self.growth, self.idle_every = every, growth, max(every, idle_every)
        self.measure_every = measure_every
        self._next_measure = 0.0
        # The C heap gives back the pages it holds free this often (malloc_trim, in a worker
        # thread). Freed answers, bodies and rows larger than pymalloc's 512 B leave holes that
        # glibc keeps: at 50 jobs a second its free space grew 0.9 to 2.0 MiB in two minutes,
        # RSS with it, while Python's blocks and SQLite's memory stayed flat (bench/jobrate.py).
        self.trim_every = trim_every
        self._trim = _heap_trim()
        self.baseline = 0
        self.full_passes = 0
        # The heap's size (in blocks) at the last measures, `window` seconds of them.
        self.sizes: deque[int] = deque(maxlen=max(1, round(window / max(every, measure_every))))

    def full(self) -> None:
        """One full pass over everything, then freeze what survived (start-up, restore, growth)."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.baseline = sys.getallocatedblocks()
        self.sizes.clear()
        self.full_passes += 1

    def tick(self, now: float | None = None) -> bool:
        """Collect and freeze what is new; measure the heap if `measure_every` passed since the
        last measure. True when the tick was quiet (fewer new objects than a young generation
        holds)."""
        young, older, oldest = gc.get_count()
        quiet = older == oldest == 0 and young < gc.get_threshold()[0]
        gc.collect()  # the unfrozen objects only: made since the last tick
        gc.freeze()
        now = time.monotonic() if now is None else now
        if now < self._next_measure:
            return quiet
        self._next_measure = now + self.measure_every
        sizes = self.sizes
        sizes.append(sys.getallocatedblocks())
        if len(sizes) == sizes.maxlen and min(sizes) > self.baseline * (1 + self.growth):
            self.full()
        return quiet

    async def run(self) -> None:
        self.full()
        trimmed = time.monotonic()
        wait = self.every
        try:
            while True:
                await anyio.sleep(wait)
                wait = min(wait * 2, self.idle_every) if self.tick() else self.every
                if self._trim is not None and time.monotonic() - trimmed >= self.trim_every:
                    trimmed = time.monotonic()
                    await anyio.to_thread.run_sync(self._trim)
        finally:
            gc.unfreeze()  # the process goes on without this keeper: its objects are collectable again
