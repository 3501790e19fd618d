"""The two formats /metrics speaks: which one a scraper asks for (its Accept header), and the
few lines where OpenMetrics 1.0.0 differs from text 0.0.4 for families written elsewhere.

The per-job part is the same bytes in both (gauges only, help texts without quotes), so it is
rendered and compressed once for both; counters name their family without `_total` in
OpenMetrics, histograms carry exemplars there, and the body ends with `# EOF`.
"""

from __future__ import annotations

import re

from exporter.render.text import CONTENT_TYPE as TEXT

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EOF = b"# EOF\n"

# OpenMetrics versions whose bodies ours is (0.0.1 is the draft Prometheus still lists).
_OPENMETRICS_VERSIONS = {None, "1.0.0", "0.0.1"}
_TEXT_RANGES = {"text/plain", "text/*", "*/*"}


def _ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media:
            kv = dict(p.partition("=")[::2] for p in params if "=" in p)
            out.append((media.lower(), {k.strip().lower(): v.strip().strip('"') for k, v in kv.items()}))
    return out


def _q(params: dict[str, str]) -> float:
    try:
        return max(0.0, min(1.0, float(params.get("q", "1"))))
    except ValueError:
        return 0.0


def wants_openmetrics(accept: str) -> bool:
    """True when `accept` names OpenMetrics (1.0.0, 0.0.1 or no version) above the text format,
    or as high and first. Prometheus sends `application/openmetrics-text;version=1.0.0,…,
    text/plain;version=0.0.4;q=0.5,*/*;q=0.1`; curl's `*/*` and no header get text."""
    best: dict[str, tuple[float, int]] = {}
    for i, (media, params) in enumerate(_ranges(accept)):
        if media == "application/openmetrics-text" and params.get("version") in _OPENMETRICS_VERSIONS:
            kind = "openmetrics"
        elif media in _TEXT_RANGES and params.get("version") in (None, "0.0.4"):
            kind = "text"
        else:
            continue
        q = _q(params)
        if kind not in best or q > best[kind][0]:
            best[kind] = (q, -i)
    om = best.get("openmetrics")
    return om is not None and om[0] > 0 and om > best.get("text", (0.0, 0))


def content_type(openmetrics: bool) -> str:
    return OPENMETRICS if openmetrics else TEXT


_COUNTER = re.compile(rb"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*)_total counter$", re.MULTILINE)


def openmetrics_counters(text: bytes) -> bytes:
    """Text-format families written elsewhere (the state store's, the reload gauges), as
    OpenMetrics: a counter's HELP and TYPE name the family, its samples keep `_total`."""
    for name in set(_COUNTER.findall(text)):
        for kind in (b"HELP", b"TYPE"):
            text = text.replace(b"# %s %s_total " % (kind, name), b"# %s %s " % (kind, name))
    return text
