"""When each step of a job started and finished, and how long it took, as the tracker observed it
(Basiq's steps carry no timestamps).

One flat tuple a job, four values a step: (name, started, finished, duration), None where not
known; the empty tuple (one for every job) while no step was timed. Three dicts a job cost 64
bytes each even empty, ~200 with an entry. The state file reads and writes it as
{name: [started, finished, duration]}.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, cast

from pydantic import PlainSerializer, PlainValidator

from exporter.parsing import parse_number

Times = tuple[float | None, float | None, float | None]  # started, finished, duration
UNKNOWN: Times = (None, None, None)
_WIDTH = 4


# Steps of an answer looked up by scanning the tuple, at most: past them, an index by name (a
# scan a step would cost the square of an answer's steps, which have no bound of their own).
SCANS_MAX = 8


def _positions(times: tuple[Any, ...]) -> dict[str, int]:
    """Where each step's (started, finished, duration) starts in `times`, by name."""
    return dict(zip(times[::_WIDTH], range(1, len(times), _WIDTH), strict=True))


def index(times: tuple[Any, ...], lookups: int) -> dict[str, int] | None:
    """`_positions` for `lookups` look-ups to come; None when scanning the tuple for each
    costs less."""
    return None if lookups <= SCANS_MAX else _positions(times)


def get(times: tuple[Any, ...], where: dict[str, int] | None, name: str) -> Times:
    """(started, finished, duration) of the step `name`, each None while not known."""
    if where is None:
        for i in range(0, len(times), _WIDTH):
            if times[i] == name:
                return cast(Times, times[i + 1 : i + _WIDTH])
        return UNKNOWN
    at = where.get(name)
    return UNKNOWN if at is None else cast(Times, times[at : at + _WIDTH - 1])


def updated(times: tuple[Any, ...], changes: dict[str, Times]) -> tuple[Any, ...]:
    """The step times with `changes` made, in one copy; a new name goes last, as one string per
    step name for every job."""
    where = _positions(times)
    out = list(times)
    for name, value in changes.items():
        i = where.get(name)
        if i is None:
            out += (sys.intern(name), *value)
        else:
            out[i : i + _WIDTH - 1] = value
    return tuple(out)


def durations(times: tuple[Any, ...]) -> dict[str, float]:
    """Each timed step's duration: seen running, then seen finished."""
    return {times[i]: times[i + 3] for i in range(0, len(times), _WIDTH) if times[i + 3] is not None}


def to_row(times: tuple[Any, ...]) -> dict[str, list[float | None]]:
    return {times[i]: list(times[i + 1 : i + _WIDTH]) for i in range(0, len(times), _WIDTH)}


def from_row(row: Any) -> tuple[Any, ...]:
    """Step times read back from the state file; ValueError names what is wrong."""
    if not isinstance(row, dict):
        raise ValueError("an object of step name: [started, finished, duration]")
    named: dict[str, Times] = {}
    for name, value in row.items():
        if not isinstance(value, list) or len(value) != _WIDTH - 1:
            raise ValueError(f"{name}: {value!r} is not [started, finished, duration]")
        # Finite doubles: an integer too large for one, or NaN, would not be written back as read.
        read = [parse_number(v) if isinstance(v, int | float) else None for v in value]
        if any(r is None and v is not None for r, v in zip(read, value, strict=True)):
            raise ValueError(f"{name}: [started, finished, duration] must be finite numbers or null")
        named[name] = cast(Times, tuple(read))
    return updated((), named)


def from_dicts(started: dict[str, Any], finished: dict[str, Any], duration: dict[str, Any]) -> dict[str, Any]:
    """The row of step times a state file written before them held as three dicts."""
    names = {**dict.fromkeys(started), **dict.fromkeys(finished), **dict.fromkeys(duration)}
    return {name: [started.get(name), finished.get(name), duration.get(name)] for name in names}


# What a TrackedJob holds; the state file reads and writes it as the object of lists.
StepTimes = Annotated[
    tuple[Any, ...],
    PlainValidator(from_row),
    PlainSerializer(to_row, return_type=dict[str, list[float | None]]),
]
NONE: StepTimes = ()
