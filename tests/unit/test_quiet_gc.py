"""QuietGC: survivors are frozen out of the automatic passes, and cyclic garbage frozen with
them is still collected once the permanent generation has stayed grown for a window."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from exporter.quiet_gc import QuietGC


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic GC frees it


@pytest.fixture
def keeper() -> Iterator[QuietGC]:
    k = QuietGC(growth=0.25, every=0.5, window=2.0, measure_every=0.5)  # a window of 4 ticks
    k.full()
    yield k
    gc.unfreeze()


def test_tick_freezes_survivors(keeper: QuietGC) -> None:
    frozen = gc.get_freeze_count()
    kept = [Node() for _ in range(100)]
    keeper.tick()
    assert gc.get_freeze_count() >= frozen + 100  # moved out of the generations automatic passes walk
    assert len(kept) == 100


def test_frozen_cyclic_garbage_is_collected_once_it_grows(keeper: QuietGC) -> None:
    node = Node()
    ref = weakref.ref(node)
    gc.freeze()  # frozen while alive, as a tick would
    del node
    keeper.tick()
    assert ref() is not None  # frozen garbage waits for a full pass
    passes = keeper.full_passes
    # Cyclic garbage that keeps the heap a quarter larger for a window forces the full pass.
    junk = [Node() for _ in range(keeper.baseline // 2 + 1000)]
    gc.freeze()
    del junk
    for _ in range(3):
        keeper.tick()
    assert keeper.full_passes == passes  # grown for less than the window: not yet
    keeper.tick()
    assert keeper.full_passes == passes + 1
    assert ref() is None


def test_a_swing_within_the_window_runs_no_full_pass(keeper: QuietGC) -> None:
    # A poll cycle's answers, held until it ends: live, then freed at once.
    for _ in range(3):
        answers = [[i] for i in range(keeper.baseline)]
        keeper.tick()
        keeper.tick()
        assert sys.getallocatedblocks() > keeper.baseline * 1.5
        del answers
        keeper.tick()
    assert keeper.full_passes == 1


def test_replaced_objects_leave_the_permanent_generation(keeper: QuietGC) -> None:
    data = [[i] for i in range(10_000)]
    keeper.tick()
    frozen = gc.get_freeze_count()
    del data  # no cycles: reference counting frees them although frozen
    assert gc.get_freeze_count() <= frozen - 10_000
    keeper.tick()
    assert keeper.full_passes == 1


def test_the_c_heap_gives_back_its_free_pages_now_and_then() -> None:
    import anyio

    keeper = QuietGC(every=0.01, trim_every=0.05)
    trims: list[int] = []
    ticks = [0]
    tick = keeper.tick

    def counted() -> None:
        ticks[0] += 1
        tick()

    keeper.tick = counted  # type: ignore[method-assign]
    keeper._trim = lambda: trims.append(ticks[0])

    async def main() -> None:
        with anyio.move_on_after(0.5):
            await keeper.run()

    anyio.run(main)
    assert trims and len(trims) < ticks[0]  # every trim_every, not every tick


def test_the_heap_is_measured_every_measure_every_not_every_tick() -> None:
    keeper = QuietGC(every=0.1, window=2.0, measure_every=1.0)
    keeper.full()
    try:
        for _ in range(9):
            keeper.tick()
        assert len(keeper.sizes) == 0
        keeper.tick()
        assert len(keeper.sizes) == 1
        assert keeper.sizes.maxlen == 2  # the window holds two measures, a second apart
    finally:
        gc.unfreeze()
