"""QuietGC: survivors are frozen out of the automatic passes, and cyclic garbage frozen with
them is still collected once the permanent generation has stayed grown for a window."""

from __future__ import annotations

import gc
import itertools
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
    k = QuietGC(growth=0.25, every=0.5, window=2.0, measure_every=0.5)  # a window of 4 measures
    k.full()
    clock, tick = itertools.count(1000.0, 0.5), k.tick
    k.tick = lambda now=None: tick(next(clock))  # type: ignore[method-assign]  # each tick half a second on
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

    def counted(now: float | None = None) -> bool:
        ticks[0] += 1
        return tick(now)

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
        keeper.tick(100.0)
        assert len(keeper.sizes) == 1
        for i in range(1, 10):
            keeper.tick(100.0 + i / 10)
        assert len(keeper.sizes) == 1
        keeper.tick(101.0)
        assert len(keeper.sizes) == 2
        keeper.tick(104.5)  # a long quiet wait: one measure, not the ones it slept through
        assert len(keeper.sizes) == 2
        assert keeper.sizes.maxlen == 2  # the window holds two measures, a second apart
    finally:
        gc.unfreeze()


def test_a_tick_is_quiet_when_few_objects_were_made_since_the_last() -> None:
    keeper = QuietGC()
    keeper.full()
    try:
        keeper.tick()
        assert keeper.tick() is True
        kept = [[i] for i in range(5 * gc.get_threshold()[0])]
        assert keeper.tick() is False
        assert keeper.tick() is True
        assert len(kept) == 5 * gc.get_threshold()[0]
    finally:
        gc.unfreeze()


def test_an_idle_exporter_ticks_less_often_until_objects_come_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    keeper = QuietGC(every=0.1, idle_every=1.0)
    keeper._trim = None
    busy = {4, 9}  # the ticks after these waits find a burst of new objects
    waits: list[float] = []
    kept: list[object] = []

    class Enough(Exception):
        pass

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 12:
            raise Enough
        if len(waits) in busy:
            kept.append([[i] for i in range(5 * gc.get_threshold()[0])])

    monkeypatch.setattr(anyio, "sleep", sleep)  # as exporter.quiet_gc looks it up

    async def main() -> None:
        with pytest.raises(Enough):
            await keeper.run()

    anyio.run(main)
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.1, 0.2, 0.4, 0.8, 1.0, 0.1, 0.2, 0.4])
