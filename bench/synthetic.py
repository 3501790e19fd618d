"""Synthetic Basiq-shaped jobs and a populated Tracker + Exposition, with no network and no scheduler."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from exporter.config import Settings, build_settings
from exporter.model import Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.render import Exposition
from exporter.runtime import Runtime
from exporter.tracked import TargetState
from exporter.tracker import Tracker

TARGET = "basiq-prod"
STEPS = ("verify-credentials", "retrieve-accounts", "retrieve-transactions")
T0 = 1_700_000_000.0


def unused_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(max_jobs: int, per_job_metrics: bool = True, base_url: str | None = None) -> Settings:
    """One basiq target; its base_url points at a port nothing listens on (it is never polled)."""
    return build_settings(
        {
            "global": {"max_jobs_per_target": max_jobs},
            "targets": [
                {
                    "name": TARGET,
                    "provider": "basiq",
                    "base_url": base_url or f"http://127.0.0.1:{unused_port()}",
                    "per_job_series": "all" if per_job_metrics else "none",
                }
            ],
        },
        PROVIDERS,
    )


def job_id(i: int) -> str:
    """Basiq-like ids: 36 characters, as label values in production are."""
    return f"{i:08x}-5b2c-4c8e-9d3e-{i:012x}"


def running_job(jid: str, version: int = 0) -> Job:
    """A connection job halfway: first step done, second running, third pending.

    `version` moves `updated` and the percent, so each version is a change the tracker
    records and the renderer re-renders (the same amount of text either way).
    """
    created = T0
    return Job(
        id=jid,
        status=Status.RUNNING,
        raw_status="verify-credentials:success,retrieve-accounts:in-progress,retrieve-transactions:pending",
        job_type="connection",
        percent=float(30 + version % 40),
        created=created,
        started=created,
        updated=created + 1 + version,
        steps=(
            Step(STEPS[0], Status.SUCCEEDED, "success"),
            Step(STEPS[1], Status.RUNNING, "in-progress"),
            Step(STEPS[2], Status.PENDING, "pending"),
        ),
    )


@dataclass
class Fleet:
    """A tracker with one target, its exposition, and the ids it tracks."""

    settings: Settings
    tracker: Tracker
    exposition: Exposition
    ids: list[str]
    version: int = 0

    @property
    def state(self) -> TargetState:
        return self.tracker.targets[TARGET]

    def change_all(self) -> None:
        """Every job moves (as a poll cycle that saw each of them progress would record)."""
        self.version += 1
        state, now = self.state, T0 + 10 + self.version
        for jid in self.ids:
            self.tracker.update(state, running_job(jid, self.version), now)


def track(tracker: Tracker, ids: Iterable[str]) -> None:
    for jid in ids:
        tracker.track(TARGET, running_job(jid), "static", now=T0 + 5)


def fleet(ids: list[str], per_job_metrics: bool = True, runtime: Runtime | None = None) -> Fleet:
    """`ids` tracked by a fresh Tracker + Exposition, or by a Runtime's own (to serve them over HTTP)."""
    if runtime is None:
        s = settings(max(len(ids), 1), per_job_metrics)
        tracker = Tracker()
        exposition = Exposition(tracker, lambda: {})
    else:
        s, tracker, exposition = runtime.settings, runtime.tracker, runtime.exposition
    tracker.set_target(s.resolved(s.targets[0]))
    track(tracker, ids)
    return Fleet(s, tracker, exposition, ids)


# --- reading the text format quickly (for the baseline registry and sample counts) ---------

_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line; label values stay escaped (never needed raw here)."""
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            lbl, value = rest.rsplit("} ", 1)
            yield name, dict(_LABEL.findall(lbl)), float(value)
        else:
            name, value = line.split(" ", 1)
            yield name, {}, float(value)


def type_lines(text: str) -> list[str]:
    return [line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE ")]


def timed(fn: Any, *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t
