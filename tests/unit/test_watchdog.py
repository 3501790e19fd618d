"""The event loop's watchdog: it names the target and job the stuck loop was busy with, records
that job for quarantine and ends the process."""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import anyio
import pytest

from exporter.watchdog import EXIT_CODE, Watchdog, polling


def test_the_job_and_target_are_read_from_the_innermost_frames_that_name_them() -> None:
    def parse(body: bytes) -> object:  # a frame about neither
        return sys._getframe()

    def read_answer(self: object, job_id: str) -> object:  # an HTTP side's request for one job
        return parse(b"{}")

    http = SimpleNamespace(target=SimpleNamespace(name="basiq-prod"))
    assert polling(read_answer(http, "61723")) == ("basiq-prod", "61723")  # type: ignore[arg-type]

    def update(state: object, job: object) -> object:  # the tracker applying one answer
        return sys._getframe()

    state = SimpleNamespace(config=SimpleNamespace(name="exports"))
    assert polling(update(state, SimpleNamespace(id="e-1"))) == ("exports", "e-1")  # type: ignore[arg-type]


def test_a_loop_that_stops_turning_is_recorded_and_ends_the_process(caplog: pytest.LogCaptureFixture) -> None:
    recorded: list[tuple[str, str, str]] = []
    exits: list[int] = []
    done = threading.Event()

    def exit(code: int) -> None:
        exits.append(code)
        done.set()

    dog = Watchdog(0.3, lambda *args: recorded.append(args), exit)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dog.run)
            await anyio.sleep(0.1)
            state = SimpleNamespace(config=SimpleNamespace(name="basiq"))  # noqa: F841 (read by the watchdog)
            job = SimpleNamespace(id="poisoned")  # noqa: F841
            done.wait(30)  # blocks the event loop, as a parser that never ends would
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert exits == [EXIT_CODE]
    assert [(t, j) for t, j, _ in recorded] == [("basiq", "poisoned")]
    frozen = [r for r in caplog.records if r.getMessage().startswith("event loop frozen")]
    assert (
        frozen and frozen[0].__dict__["job_id"] == "poisoned" and "done.wait" in frozen[0].__dict__["stack"]
    )
