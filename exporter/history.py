"""A job's transitions as the exporter observed them: status and step changes with their times.

Kept on each TrackedJob (and so in the state file) as one flat list of plain values, three per
transition (a list of tuples costs twice the memory), bounded per job: the first observation is
kept, then the latest. Pages and the API read it as a timeline.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from exporter.model import Job, Status

# Entries kept per job: the first observation plus the latest HISTORY_MAX - 1.
HISTORY_MAX = 24
AWAITING_USER = "awaiting_user"

# One transition: (observed at, step name or "" for the job itself, status), stored flat.
Transition = tuple[float, str, str]
History = list[float | str]


def entries(history: Sequence[Any]) -> list[Transition]:
    """The transitions of a flat history, oldest first."""
    return [(history[i], history[i + 1], history[i + 2]) for i in range(0, len(history) - 2, 3)]


def observe(history: History, old: Job | None, new: Job, now: float) -> None:
    """Append what changed from `old` (None: first seen) to `new`, as observed at `now`."""
    now = float(now)  # one float shared by this observation's entries
    if old is None or old.status != new.status or old.awaiting_user != new.awaiting_user:
        _append(history, (now, "", AWAITING_USER if new.awaiting_user else new.status))
    before = {s.name: s.status for s in old.steps} if old is not None else {}
    for step in new.steps:
        was = before.get(step.name)
        if was != step.status and not (was is None and step.status is Status.PENDING):
            # One string per step name for every job (each poll parses its own copy).
            _append(history, (now, sys.intern(step.name), step.status))


def _append(history: History, entry: Transition) -> None:
    if len(history) >= 3 * HISTORY_MAX:
        del history[3:6]  # keep the first observation: when and how the job was first seen
    history.extend(entry)


def timeline(history: Sequence[Any], now: float) -> list[dict[str, Any]]:
    """Each transition with how long its state lasted: until the next transition of the same job
    or step, or until now while it is still the current one (None once it is final)."""
    out: list[dict[str, Any]] = []
    last: dict[str, int] = {}
    for at, step, status in entries(history):
        previous = last.get(step)
        if previous is not None:
            out[previous]["duration_seconds"] = max(0.0, float(at) - out[previous]["at"])
        last[step] = len(out)
        out.append({"at": float(at), "step": step or None, "status": str(status), "duration_seconds": None})
    for index in last.values():
        entry = out[index]
        if entry["status"] not in (Status.SUCCEEDED, Status.FAILED):
            entry["duration_seconds"] = max(0.0, now - entry["at"])
    return out
