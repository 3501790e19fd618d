"""The Prometheus text format (version 0.0.4): escaping, numbers, label lists and a small
writer for the families rendered at scrape time."""

from __future__ import annotations

import math

from exporter.tracker import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def escape(value: str) -> str:
    """Escape a label value for the text format."""
    return value.translate(_ESCAPES)


def fmt(value: float) -> str:
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def labels(**kv: str) -> str:
    return ",".join(f'{k}="{escape(v)}"' for k, v in kv.items())


class Text:
    """A small writer for the families rendered at scrape time."""

    def __init__(self) -> None:
        self.out: list[str] = []

    def family(self, name: str, help_: str, type_: str) -> None:
        self.out.append(f"# HELP {name} {help_}\n# TYPE {name} {type_}\n")

    def sample(self, name: str, lbl: str, value: float) -> None:
        self.out.append(f"{name}{{{lbl}}} {fmt(value)}\n")

    def histogram(self, name: str, lbl: str, h: Histogram) -> None:
        for bound, count in zip(h.buckets, h.counts, strict=True):
            self.out.append(f'{name}_bucket{{{lbl},le="{fmt(bound)}"}} {count}\n')
        self.out.append(f'{name}_bucket{{{lbl},le="+Inf"}} {h.count}\n')
        self.out.append(f"{name}_sum{{{lbl}}} {fmt(h.total)}\n")
        self.out.append(f"{name}_count{{{lbl}}} {h.count}\n")

    def bytes(self) -> bytes:
        return "".join(self.out).encode("utf-8", "replace")  # a lone surrogate: "?", not a failure
