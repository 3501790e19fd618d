"""What the generated promtool tests are made of: the labels of one exporter's series that the
config's selector selects, input series in promtool's notation (`0x30`, `0+1x30`), and a
`Scenario`: the series under which one alert holds, and from when.

`job_scenarios`, `target_scenarios`, `handover_tests` and `cluster_tests` build their series
with these; `promtests` turns them into the test file.
"""

from __future__ import annotations

import math
import re

from . import rules
from .config import Config, seconds

INSTANCE = "exporter:10110"
MINUTE = 60

_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _regex_sample(pattern: str) -> str | None:
    """A value the (anchored) regex matches: its literal text with wildcards filled in."""
    for candidate in (
        pattern.replace(".*", "").replace(".+", "x"),
        pattern.replace(".*", "x").replace(".+", "x"),
        re.sub(r"[\\^$()]", "", pattern.split("|")[0]).replace(".*", "").replace(".+", "x"),
    ):
        try:
            if re.fullmatch(pattern, candidate):
                return candidate
        except re.error:
            return None
    return None


def selector_labels(cfg: Config) -> dict[str, str]:
    """Labels of one exporter's series that the config's selector selects."""
    out: dict[str, str] = {}
    text = cfg.exporter_selector
    pos = 0
    while pos < len(text.strip()):
        m = _MATCHER.match(text, pos)
        if m is None:
            raise ValueError(f"exporter_selector: cannot read {text[pos:]!r}")
        name, op, value = m.group(1), m.group(2), m.group(3).replace('\\"', '"')
        if op == "=":
            out[name] = value
        elif op == "=~":
            sample = _regex_sample(value)
            if sample is None:
                raise ValueError(f"exporter_selector: no test value found for {name}=~{value!r}")
            out[name] = sample
        pos = m.end()
    for name in cfg.target_labels:
        out.setdefault(name, {"instance": INSTANCE, "target": "t1"}.get(name, "x"))
    return out


def input_series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    """One input series of a promtool test: `metric{labels}` taking `values` (promtool's notation)."""
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def constant(value: float, minutes: int) -> str:
    """`value` at every one of `minutes` + 1 samples."""
    return f"{value:g}x{minutes}"


class Scenario:
    """Input series under which alert `name` first holds at `onset` seconds (its expression is
    true from that evaluation on); `count` alerts fire once its `for` has passed."""

    def __init__(
        self,
        name: str,
        onset: float,
        count: int,
        series: list[dict[str, str]],
        others: dict[str, int] | None = None,
    ) -> None:
        self.name, self.onset, self.count, self.series = name, onset, count, series
        # Other alerts firing (or held back: 0) at the same time, with their counts.
        self.others = others or {}


def run_minutes(cfg: Config, extra: float = 0) -> int:
    """How many samples a test's series run for: past the longest `for` (and `extra` seconds of
    the scenario's own), with half an hour to spare."""
    longest = max(seconds(a.duration) for a in alerts_by_name(cfg).values())
    return math.ceil((longest + extra) / MINUTE) + 30


def alerts_by_name(cfg: Config) -> dict[str, rules.Alert]:
    """Every alert the rules generated from `cfg` define (those of SLOs aside), by name."""
    sel = cfg.exporter_selector
    groups = (
        rules.job_alerts,
        rules.job_count_alerts,
        rules.aggregate_alerts,
        rules.target_alerts,
        rules.oxlin_alerts,
        rules.cluster_alerts,
    )
    return {a.name: a for group in groups for a in group(cfg, sel)}


def job_labels(labels: dict[str, str], job_id: str, **more: str) -> dict[str, str]:
    """The labels of job `job_id`'s series on the target of `labels`."""
    return {**labels, "job_id": job_id, **more}
