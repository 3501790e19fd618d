"""Reading the loose values providers send: JSON made safe (depth, lone surrogates), timestamps,
numbers, dotted paths, status maps."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from exporter.model import Status

# Epoch values above this are milliseconds (year 2286 in seconds).
_MS_THRESHOLD = 1e10

# Deeper JSON is refused: no job answer nests this far, and Python's parser (and every walk
# over the result) recurses, so a deep enough document would otherwise end in RecursionError.
MAX_JSON_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
# C0 and C1 control characters and lone surrogates: an id holding one cannot be told apart
# in a URL, a log line or a label once it is escaped or replaced.
_NOT_ID_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The longest id accepted, in bytes of UTF-8: an id is a label value, a URL path segment and a
# row key. Unbounded, one registration of a 200,000-character id took /metrics to 1.66 MB.
MAX_ID_BYTES = 512


class JsonTooDeep(ValueError):
    """A JSON document nested deeper than MAX_JSON_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def load_json(raw: bytes | str, replace_surrogates: bool = True) -> Any:
    """Parse JSON from outside: invalid UTF-8 and (unless told not to) lone surrogates, which
    JSON's `\\ud800` escapes can produce but no encoder can write, become U+FFFD.

    Raises JsonTooDeep past MAX_JSON_DEPTH, ValueError for anything that is not JSON.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonTooDeep() from None
    # Decoded bytes hold no surrogate of their own ("replace"): only an escape can make one.
    if replace_surrogates and may_hold_surrogates(raw):
        return _walk(value, 0, True)  # raises JsonTooDeep on the way
    # Counting brackets is cheap; the depth is measured only when there are enough of them.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise JsonTooDeep()
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and dicts deeper than `limit`: level by level, looking only
    at containers (no copy, no recursion)."""
    level = [value] if type(value) in (dict, list) else []
    for _ in range(limit):
        deeper = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                kind = type(item)
                if kind is dict or kind is list:
                    deeper.append(item)
        if not deeper:
            return False
        level = deeper
    return True


def may_hold_surrogates(text: str | bytes) -> bool:
    """True when JSON or YAML `text` has an escape that reads as a lone surrogate (or one raw)."""
    if isinstance(text, bytes):
        return _SURROGATE_ESCAPE_BYTES.search(text) is not None
    return _SURROGATE_ESCAPE.search(text) is not None or _SURROGATE.search(text) is not None


def clean_text(value: Any, source: str | None = None) -> Any:
    """`value` (strings, lists, dicts of them) with every lone surrogate replaced by U+FFFD:
    for config and state rows, which are not JSON from the network but may hold them. Given
    the `source` text `value` was read from, nothing is walked unless an escape in it can
    have made a surrogate (a YAML alias bomb is not expanded by a walk it does not need)."""
    if source is not None and not may_hold_surrogates(source):
        return value
    return _walk(value, 0, True)


def _walk(value: Any, depth: int, fix: bool) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if fix else value
    if isinstance(value, dict):
        if depth >= MAX_JSON_DEPTH:
            raise JsonTooDeep()
        return {_walk(k, depth, fix): _walk(v, depth + 1, fix) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if depth >= MAX_JSON_DEPTH:
            raise JsonTooDeep()
        return [_walk(v, depth + 1, fix) for v in value]
    return value


def is_digits(text: str) -> bool:
    """True for text `int()` reads as a plain count: ASCII digits only. `str.isdigit` also accepts
    characters such as "²", which `int()` refuses."""
    return text.isascii() and text.isdigit()


def _index(part: str) -> bool:
    return is_digits(part[1:] if part.startswith("-") else part)


def is_id_text(text: str) -> bool:
    """True for text usable as an id: no control character, no lone surrogate."""
    return _NOT_ID_TEXT.search(text) is None


def id_problem(text: str) -> str | None:
    """Why `text` (stripped already) cannot be an id; None when it can.

    An id is data that travels as one URL path segment (exporter.providers.base.segment): `.`
    and `..` are refused because a URL's dot segments are removed on the way (RFC 3986 §5.2.4),
    so no quoting could keep them one segment of their own at every server and proxy.
    """
    if not text:
        return "must not be empty"
    if text[0] == "." and text in (".", ".."):
        return "must not be . or .. (a path segment of its own)"
    if not is_id_text(text):
        return "must not hold a control character or a lone surrogate"
    # Four bytes a character at most: shorter text needs no encoding to be measured.
    if len(text) > MAX_ID_BYTES // 4 and len(text.encode("utf-8")) > MAX_ID_BYTES:
        return f"must be at most {MAX_ID_BYTES} bytes of UTF-8"
    return None


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
        try:
            v = float(value)
        except OverflowError:  # an integer past float's range
            return None
        if not 0 < v < math.inf:
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
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=tz)
        ts = parsed.timestamp()
    except (ValueError, OverflowError):  # year 1 in a zone west of UTC, year 9999 east of it
        return None
    return ts if ts > 0 else None


def parse_number(value: Any) -> float | None:
    """A finite number from a number or numeric text (`"42"`, `"42.5%"`); None otherwise:
    NaN and infinities (Python's JSON reader accepts them) are not numbers a job reports."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            n = float(value)
        elif isinstance(value, str):
            n = float(value.strip().rstrip("%"))
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return n if math.isfinite(n) else None


def parse_int(value: Any) -> int | None:
    n = parse_number(value)
    return None if n is None else int(n)


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
    """An identifier as providers send it (string or integer) → its text; None when absent,
    blank or not usable as an id (`id_problem`)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text if id_problem(text) is None else None


def why_not_id(value: Any) -> str:
    """Why `value` is not an id, for a message: `text_id(value)` is None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return "must be a string or an integer"
    return id_problem(str(value).strip()) or "is not an id"


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
        elif isinstance(cur, list) and _index(part):
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
