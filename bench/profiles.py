"""cProfile summaries: where the time of a benchmarked path goes, as a short table for the report."""

from __future__ import annotations

import cProfile
import io
import pstats
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LIB = re.compile(r"\S*/(?:site-packages|lib/python3\.\d+)/")
ROOT = str(Path(__file__).resolve().parent.parent) + "/"


@contextmanager
def profiled(
    into: list[str], top: int = 15, sort: str = "tottime", restrict: str | None = None
) -> Iterator[None]:
    """Profile the block; append the `top` functions by `sort` (paths shortened) to `into`,
    only those whose path matches `restrict` when given."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats(sort)
        if restrict:
            stats.print_stats(restrict, top)
        else:
            stats.print_stats(top)
        into.append(_shorten(out.getvalue()))


def _shorten(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    kept = [_LIB.sub("", ln.replace(ROOT, "")).rstrip() for ln in lines[start:] if ln.strip()]
    total = next((ln.strip() for ln in lines if "function calls" in ln), "")
    return "\n".join([total, *kept])
