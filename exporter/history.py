"""A job's transitions as the exporter observed them: status and step changes with their times.

Kept on each TrackedJob as packed bytes, 12 a transition: when it was seen (a double) and the
code of its (step, status) pair in one table for the whole process (bounded: a pair past it is
written into the job's history itself). A job then holds one object of its own for its history
instead of a list, its slots and a float a transition (42 bytes a transition). Bounded per job: the first observation is kept, then the latest. Pages and the API
read it as a timeline, the state file as a flat list (`to_row`, `from_row`).
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator

from exporter.model import Job, Status
from exporter.parsing import parse_number

# Entries kept per job: the first observation plus the latest HISTORY_MAX - 1.
HISTORY_MAX = 24
AWAITING_USER = "awaiting_user"

# One transition: (observed at, step name or "" for the job itself, status).
Transition = tuple[float, str, str]

_RECORD = struct.Struct("<dI")  # observed at, pair code
_SIZE = _RECORD.size
_BOUND = HISTORY_MAX * _SIZE

# Every (step name, status) pair a transition of any job had, and its code: a few dozen in
# practice (the providers' step names times five statuses), each stored once.
_PAIRS: list[tuple[str, str]] = []
_CODES: dict[tuple[str, str], int] = {}
_STATUSES = {str(s): s for s in Status}

# Step names come from the providers' answers: one answering new names for ever must not grow
# the process for ever. The table holds at most PAIRS_MAX pairs, of at most NAME_MAX characters;
# a pair past either bound is written into the job's own history, after its record (the code's
# high bit set, its other bits the pair's length in bytes, as JSON): it costs what the job's list
# did before histories were packed, and goes with the job.
PAIRS_MAX = 4096
NAME_MAX = 96
_OWN = 1 << 31
# Until some history holds a pair of its own, every record is _SIZE bytes: read them as such.
_fixed_size = True


def _record(at: float, step: str, status: str) -> bytes:
    global _fixed_size
    code = _CODES.get((step, status))
    if code is None:
        if len(_PAIRS) >= PAIRS_MAX or len(step) + len(status) > NAME_MAX:
            _fixed_size = False  # before the first history holding such a record exists
            own = json.dumps([step, str(status)]).encode()
            return _RECORD.pack(at, _OWN | len(own)) + own
        pair = (sys.intern(str(step)), _STATUSES.get(status) or sys.intern(str(status)))
        code = _CODES[pair] = len(_PAIRS)
        _PAIRS.append(pair)
    return _RECORD.pack(at, code)


def _starts(history: bytes) -> list[int]:
    """Where each record of a history starts."""
    starts, i = [], 0
    while i < len(history):
        starts.append(i)
        code = _RECORD.unpack_from(history, i)[1]
        i += _SIZE + (code ^ _OWN if code & _OWN else 0)
    return starts


def _entry(history: bytes, i: int) -> Transition:
    at, code = _RECORD.unpack_from(history, i)
    if not code & _OWN:
        return (at, *_PAIRS[code])
    step, status = json.loads(history[i + _SIZE : i + _SIZE + (code ^ _OWN)])
    return (at, step, _STATUSES.get(status) or status)


def entries(history: bytes) -> list[Transition]:
    """The transitions of a history, oldest first."""
    if _fixed_size:
        return [(at, *_PAIRS[code]) for at, code in _RECORD.iter_unpack(history)]
    return [_entry(history, i) for i in _starts(history)]


def _state(job: Job) -> str:
    """The job's own entry in its timeline: a finished job is finished, even if its provider still
    says its end user must act (an Oxlin sync that failed for want of the user's consent)."""
    return AWAITING_USER if job.awaiting_user and not job.status.terminal else job.status


def observe(history: bytes, old: Job | None, new: Job, now: float) -> bytes:
    """The history with what changed from `old` (None: first seen) to `new`, as observed at `now`."""
    records: list[bytes] = []
    state = _state(new)
    if old is None or _state(old) != state:
        records.append(_record(now, "", state))
    before = {s.name: s.status for s in old.steps} if old is not None else {}
    for step in new.steps:
        was = before.get(step.name)
        if was != step.status and not (was is None and step.status is Status.PENDING):
            records.append(_record(now, step.name, step.status))
    if not records:
        return history
    return _bounded(history + b"".join(records))


def _bounded(history: bytes) -> bytes:
    if len(history) <= _BOUND:  # no record is shorter than _SIZE
        return history
    # Keep the first observation (when and how the job was first seen), then the latest.
    if _fixed_size:
        return history[:_SIZE] + history[len(history) - _BOUND + _SIZE :]
    starts = _starts(history)
    if len(starts) <= HISTORY_MAX:
        return history
    return history[: starts[1]] + history[starts[len(starts) - HISTORY_MAX + 1] :]


def to_row(history: bytes) -> list[float | str]:
    """The state file's form: a flat list, three plain values a transition (as ever written)."""
    return [value for entry in entries(history) for value in (entry[0], entry[1], str(entry[2]))]


def from_row(row: Any) -> bytes:
    """A history read back from the state file's flat list; ValueError names what is wrong."""
    if not isinstance(row, list) or len(row) % 3:
        raise ValueError("a flat list of (time, step, status) triples")
    out = bytearray()
    for i in range(0, len(row), 3):
        at, step, status = row[i : i + 3]
        # A finite double: an integer too large for one or NaN would not be written back as read.
        at = parse_number(at) if isinstance(at, int | float) else None
        if at is None:
            raise ValueError(f"[{i}]: not a time (a finite number)")
        if not isinstance(step, str) or not isinstance(status, str):
            raise ValueError(f"[{i + 1}]: step and status must be text")
        out += _record(at, step, status)
    return _bounded(bytes(out))


# What a TrackedJob holds; the state file reads and writes it as the flat list.
History = Annotated[bytes, PlainValidator(from_row), PlainSerializer(to_row, return_type=list[float | str])]
EMPTY: History = b""


def timeline(history: bytes, now: float) -> list[dict[str, Any]]:
    """Each transition with how long its state lasted: until the next transition of the same job
    or step, or until now while it is still the current one (None once it is final)."""
    out: list[dict[str, Any]] = []
    last: dict[str, int] = {}
    for at, step, status in entries(history):
        previous = last.get(step)
        if previous is not None:
            out[previous]["duration_seconds"] = max(0.0, at - out[previous]["at"])
        last[step] = len(out)
        out.append({"at": at, "step": step or None, "status": str(status), "duration_seconds": None})
    for index in last.values():
        entry = out[index]
        if entry["status"] not in (Status.SUCCEEDED, Status.FAILED):
            entry["duration_seconds"] = max(0.0, now - entry["at"])
    return out
