"""The Prometheus text format (version 0.0.4): escaping, numbers, label lists and a small
writer for the families rendered at scrape time, which also writes them as OpenMetrics."""

from __future__ import annotations

import math

from exporter.catalogue import Family
from exporter.histogram import Exemplar, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
# OpenMetrics: an exemplar's label names and values together stay within 128 characters.
EXEMPLAR_LABELS_MAX = 128


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
    """A small writer for the families rendered at scrape time; `openmetrics` writes them as
    OpenMetrics 1.0.0: a counter's family named without `_total`, exemplars on histograms."""

    def __init__(self, openmetrics: bool = False) -> None:
        self.out: list[str] = []
        self.openmetrics = openmetrics

    def family(self, family: Family) -> None:
        if self.openmetrics and family.type == "counter":
            name = family.name.removesuffix("_total")
            self.out.append(f"# HELP {name} {family.help}\n# TYPE {name} {family.type}\n")
        else:
            self.out.append(family.header_text)

    def sample(self, name: str, lbl: str, value: float) -> None:
        self.out.append(f"{name}{{{lbl}}} {fmt(value)}\n")

    def histogram(self, name: str, lbl: str, h: Histogram, target: str | None = None) -> None:
        """Buckets, sum and count; in OpenMetrics with `target`, each bucket's exemplar: the
        last job that landed in it, as `job_id` and `target`."""
        marks = h.exemplars if self.openmetrics and target is not None and h.exemplars else None
        for i, (bound, count) in enumerate(zip(h.buckets, h.counts, strict=True)):
            tail = _exemplar(marks[i], target) if marks is not None else ""
            self.out.append(f'{name}_bucket{{{lbl},le="{fmt(bound)}"}} {count}{tail}\n')
        tail = _exemplar(marks[-1], target) if marks is not None else ""
        self.out.append(f'{name}_bucket{{{lbl},le="+Inf"}} {h.count}{tail}\n')
        self.out.append(f"{name}_sum{{{lbl}}} {fmt(h.total)}\n")
        self.out.append(f"{name}_count{{{lbl}}} {h.count}\n")

    def bytes(self) -> bytes:
        return "".join(self.out).encode("utf-8", "replace")  # a lone surrogate: "?", not a failure


def _exemplar(mark: Exemplar | None, target: str | None) -> str:
    if mark is None or target is None:
        return ""
    job_id, value, at = mark
    if len("job_id") + len(job_id) + len("target") + len(target) > EXEMPLAR_LABELS_MAX:
        return ""  # past OpenMetrics' limit: a strict parser would refuse the whole body
    return f' # {{job_id="{escape(job_id)}",target="{escape(target)}"}} {fmt(value)} {at:.3f}'
