"""Reading the loose values providers send: timestamps, numbers, dotted paths, status maps."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from exporter.model import Status

_MISSING = object()

# Epoch values above this are milliseconds (year 2286 in seconds).
_MS_THRESHOLD = 1e10


def parse_timestamp(value: Any, tz: tzinfo = UTC) -> float | None:
    """Unix seconds from ISO 8601 (with or without zone), `YYYY-MM-DD HH:MM:SS`, or epoch s/ms.

    A naive timestamp is read in `tz`. Anything unreadable, zero or negative is None:
    providers use 0 and null alike for "never".

    >>> parse_timestamp("2024-02-21 10:21:31")
    1708510891.0
    """
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        v = float(value)
        if v <= 0:
            return None
        return v / 1000.0 if v > _MS_THRESHOLD else v
    if not isinstance(value, str):
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_timestamp(float(text), tz)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python's fromisoformat accepts at most 6 fractional digits; .NET sends 7.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    ts = parsed.timestamp()
    return ts if ts > 0 else None


def parse_number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().rstrip("%"))
        except ValueError:
            return None
    return None


def parse_int(value: Any) -> int | None:
    n = parse_number(value)
    return None if n is None else int(n)


def dig(obj: Any, path: str, default: Any = None) -> Any:
    """Follow a dotted path (`progress.pct`, `data.0.id`) through dicts and lists."""
    if not path:
        return obj
    cur = obj
    for part in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part, _MISSING)
        elif isinstance(cur, list) and part.lstrip("-").isdigit():
            i = int(part)
            cur = cur[i] if -len(cur) <= i < len(cur) else _MISSING
        else:
            return default
        if cur is _MISSING:
            return default
    return cur


def map_status(raw: Any, mapping: Mapping[str, Status]) -> tuple[Status, str]:
    """Map a provider status through `mapping` (case-insensitive); unmapped → unknown, raw kept."""
    text = "" if raw is None else str(raw)
    status = mapping.get(text.strip().lower())
    return (status if status is not None else Status.UNKNOWN), text


def bounded_reason(value: Any, limit: int = 64) -> str | None:
    """An error code fit for a label: short, one line, lower-case; None when absent."""
    if value is None:
        return None
    text = re.sub(r"\s+", "-", str(value).strip().lower())
    return text[:limit] or None


def text_id(value: Any) -> str | None:
    """An identifier as providers send it (string or integer) → its text; None when absent or blank."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text or None


def lookup(obj: Any, path: str) -> tuple[bool, Any]:
    """(found, value) of a dotted path. A null on the way counts as found (the API knows the
    field and has nothing in it); a missing key, index or a scalar in the way does not."""
    if not path:
        return True, obj
    cur = obj
    for part in path.split("."):
        if cur is None:
            return True, None
        if isinstance(cur, Mapping):
            if part not in cur:
                return False, None
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit():
            i = int(part)
            if not -len(cur) <= i < len(cur):
                return False, None
            cur = cur[i]
        else:
            return False, None
    return True, cur


def bounded_label(value: Any, limit: int = 64) -> str:
    """Free-ish text fit for a label value (a job type): one line, trimmed, at most `limit` chars."""
    if value is None:
        return ""
    return re.sub(r"\s+", " ", str(value)).strip()[:limit]


@lru_cache(maxsize=64)
def time_zone(name: str) -> tzinfo:
    """The zone a provider's naive timestamps are written in (config validated the name)."""
    return ZoneInfo(name)
