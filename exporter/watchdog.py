"""The event loop's watchdog: a thread that ends the process when the loop stops turning, after
naming the target and job the loop was busy with and recording that job for quarantine.

A bug that loops without awaiting (a parser that never ends on a hostile answer) holds the
event loop: no deadline fires, /healthz and /metrics time out and SIGTERM is not handled. No
code on the loop can notice; a thread can. It reads the loop thread's stack
(`sys._current_frames`), logs it with the job found in it, hands the job to `record` (the state
store quarantines it, so the next start skips it instead of freezing again) and exits with
EXIT_CODE (`os._exit`: the loop cannot run any cleanup), for the supervisor to restart it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

import anyio

log = logging.getLogger("asyncjob.watchdog")

# Seconds without a turn of the event loop before the process is ended (config `watchdog_timeout`).
DEFAULT_TIMEOUT = 30.0
EXIT_CODE = 70  # EX_SOFTWARE: an internal error, restart me
# A test hook, off unless this variable names a job id: the answer for that job then blocks the
# event loop (exporter.tracker), as a bug would. Never set outside tests.
FREEZE_ENV = "ASYNCJOB_TEST_FREEZE_ON_JOB"


def frozen_on() -> str | None:
    """The job id whose answer blocks the loop (tests only), or None."""
    return os.environ.get(FREEZE_ENV) or None


def freeze() -> None:
    """Block the calling thread's event loop for good, as a parser that never ends would."""
    while True:
        time.sleep(1)  # holds the loop; other threads (the watchdog) still run


def _name_of(value: object) -> str | None:
    return value if isinstance(value, str) else None


def polling(frame: FrameType | None) -> tuple[str | None, str | None]:
    """(target, job id) the stack is about, innermost first: a job is a local `job_id`, or a
    local `job` with an `id`; a target is `self.target.name` (an HTTP side, a provider),
    `state.config.name` (the tracker) or `runner.config.name` (the scheduler)."""
    target: str | None = None
    job: str | None = None
    while frame is not None and (target is None or job is None):
        local = frame.f_locals
        if job is None:
            job = _name_of(local.get("job_id")) or _name_of(getattr(local.get("job"), "id", None))
        if target is None:
            for holder, attr in (("self", "target"), ("state", "config"), ("runner", "config")):
                target = _name_of(getattr(getattr(local.get(holder), attr, None), "name", None))
                if target is not None:
                    break
        frame = frame.f_back
    return target, job


class Watchdog:
    """`run` (a task on the event loop) marks every turn and starts the watching thread."""

    def __init__(
        self,
        timeout: float,
        record: Callable[[str, str, str], None] | None = None,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.timeout = timeout
        self.record = record  # (target, job id, why): kept durably before the process ends
        self._exit = exit
        self._beat = time.monotonic()
        self._loop_thread = 0
        self._stop = threading.Event()

    async def run(self) -> None:
        if self.timeout <= 0:
            return
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        thread = threading.Thread(target=self._watch, name="asyncjob-watchdog", daemon=True)
        thread.start()
        every = min(1.0, self.timeout / 4)
        try:
            while True:
                self._beat = time.monotonic()
                await anyio.sleep(every)
        finally:
            self._stop.set()

    def _watch(self) -> None:
        every = min(1.0, self.timeout / 4)
        checked = time.monotonic()
        while not self._stop.wait(every):
            now = time.monotonic()
            if now - checked > every + self.timeout / 2:
                # This thread did not run either: the whole process was stopped (SIGSTOP, a
                # paused container), not the loop. The loop gets a whole period again.
                self._beat = now
            checked = now
            still = now - self._beat
            if still > self.timeout:
                self.frozen(still)
                return

    def frozen(self, still: float) -> None:
        """Name what the loop is stuck in, record the job, end the process."""
        frame = sys._current_frames().get(self._loop_thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        target, job_id = polling(frame)
        del frame
        why = f"the event loop did not turn for {still:.0f} s while this job was polled"
        if target is not None and job_id is not None and self.record is not None:
            try:
                self.record(target, job_id, why)
            except Exception as e:  # the exit matters more: logged, and the stack with it
                log.error(
                    "quarantine not recorded", extra={"target": target, "job_id": job_id, "error": str(e)}
                )
        log.critical(
            "event loop frozen: exiting for a restart; the job is quarantined",
            extra={
                "seconds": round(still, 1),
                "target": target or "",
                "job_id": job_id or "",
                "quarantined": bool(target and job_id and self.record),
                "stack": stack,
            },
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(EXIT_CODE)
