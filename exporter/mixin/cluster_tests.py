"""Tests of AsyncJobClusterShardsUnowned: replicas sharing PostgreSQL each export the cluster's
virtual shards and how many of them they hold; the alert fires when some are held by no replica
for two lease TTLs (its `for`).

Scraped every 5 s, with the rules evaluated every minute:

- a replica's series vanish (killed) and the others take only part of its shards: the alert is
  pending at the first evaluation, fires once its `for` has passed, counts the shards still
  unowned, and names no replica;
- a replica's series vanish and another takes all its shards within less than two TTLs: pending
  at most, never firing;
- replicas move shards among themselves and one joins, holding every shard together: nothing;
- one process with its state file, which exports none of the cluster's series: nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from exporter import catalogue

from . import queries as q
from .config import Config, seconds
from .promtest_inputs import MINUTE, constant, input_series, selector_labels

STEP = 5
SHARDS = 256
NAME = "AsyncJobClusterShardsUnowned"
# The first evaluation at which a replica killed just before it is gone from every query.
ONSET = 5 * MINUTE


def _steps(at: float) -> int:
    return math.ceil(at / STEP)


def _check(expr: str, at: float, value: float, labels: str = "{}") -> dict[str, Any]:
    return {"expr": expr, "eval_time": f"{int(at)}s", "exp_samples": [{"labels": labels, "value": value}]}


def _alerts(state: str = "") -> str:
    """ALERTS of this alert, in one state or in any."""
    in_state = f', alertstate="{state}"' if state else ""
    return f'ALERTS{{alertname="{NAME}"{in_state}}}'


def _labels(metric: str, labels: dict[str, str]) -> str:
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _never(end: float, state: str = "") -> dict[str, Any]:
    """No evaluation up to `end` saw the alert (in `state`, or in any)."""
    return _check(f"count(count_over_time({_alerts(state)}[{int(end)}s])) or vector(0)", end, 0)


class _Replicas:
    """The series of a cluster's replicas, told apart by the first replica label the exporter
    selector does not name (`label`, None when it names them all)."""

    def __init__(self, cfg: Config, labels: dict[str, str]) -> None:
        selected = selector_labels(dataclasses.replace(cfg, target_labels=()))
        free = [name for name in cfg.cluster_replica_labels if name not in selected]
        self.label = free[0] if free else None
        # Every replica's labels but `label`: not the target (the cluster's series have none), nor
        # the replica labels, but those the selector names (the same on every replica).
        self.shared = {
            k: v
            for k, v in labels.items()
            if k != "target" and (k not in cfg.cluster_replica_labels or k in selected)
        }
        # What the alert keeps of them: it aggregates the replica labels away.
        self.common = {k: v for k, v in self.shared.items() if k not in cfg.cluster_replica_labels}

    def name(self, replica: str) -> str:
        return f"exporter-{replica}:10110" if self.label == "instance" else f"asyncjob-{replica}"

    def series(self, replica: str, shards: str, held: str) -> list[dict[str, str]]:
        at = {**self.shared, str(self.label): self.name(replica)}
        return [
            input_series(catalogue.CLUSTER_SHARDS.name, at, shards),
            input_series(catalogue.CLUSTER_SHARDS_HELD.name, at, held),
        ]

    def firing(self, cfg: Config) -> str:
        """The one alert firing: the labels the replicas share, its severity, no replica's."""
        labels = {"alertname": NAME, "alertstate": "firing", "severity": cfg.severity[NAME], **self.common}
        return _labels("ALERTS", labels)


def _killed(
    replicas: _Replicas, held: int, end: int, taken: tuple[int, int] | None = None
) -> list[dict[str, str]]:
    """Three replicas holding every shard; b is killed (its last scrape just before ONSET), and
    a takes `taken` = (shards, at step) of b's."""
    total, last = _steps(end), _steps(ONSET) - 2
    gone = f"stale _x{total - last - 1}"
    series = [
        *replicas.series("b", f"{SHARDS}x{last} {gone}", f"{held}x{last} {gone}"),
        *replicas.series("c", constant(SHARDS, total), constant(SHARDS - 2 * held - 1, total)),
    ]
    a_held = constant(held + 1, total)
    if taken is not None:
        shards, at = taken
        a_held = f"{held + 1}x{at - 1} {held + 1 + shards}x{total - at}"
    return [*replicas.series("a", constant(SHARDS, total), a_held), *series]


def cluster_tests(cfg: Config, labels: dict[str, str]) -> list[dict[str, Any]]:
    """The four tests above, as promtool test groups; none when the exporter selector names every
    replica label (the tests could not give each replica a value of its own)."""
    replicas = _Replicas(cfg, labels)
    if replicas.label is None:
        return []
    hold = seconds(cfg.cluster_unowned_for)
    fire = ONSET + math.ceil(hold / MINUTE) * MINUTE  # the first evaluation past the `for`
    held = SHARDS // 3  # each replica's share
    unowned = q.cluster_shards_unowned(cfg, cfg.exporter_selector)
    tests = []

    # Killed, and a takes 40 of b's shards a step after b's series went: the rest stay unowned.
    end = fire + 2 * MINUTE
    kept = held - 40
    checks = [
        _check(f"count({_alerts('pending')}) or vector(0)", ONSET, 1),
        _check(f"count({_alerts('firing')}) or vector(0)", fire - MINUTE, 0),
        _check(_alerts("firing"), fire, 1, replicas.firing(cfg)),
        _check(unowned, fire, kept, _labels("", replicas.common)),
    ]
    series = _killed(replicas, held, end, taken=(40, _steps(ONSET)))
    tests.append({"interval": f"{STEP}s", "input_series": series, "promql_expr_test": checks})

    # Killed, and a takes all of b's shards less than two TTLs after b's series went (and after
    # an evaluation saw them unowned).
    taken_at = _steps(ONSET) - 1 + max(2, _steps(hold) - 1)
    if taken_at * STEP < ONSET - STEP + hold and taken_at * STEP > ONSET:
        end = fire + 2 * MINUTE
        series = _killed(replicas, held, end, taken=(held, taken_at))
        checks = [_check(f"count({_alerts('pending')}) or vector(0)", ONSET, 1), _never(end, "firing")]
        tests.append({"interval": f"{STEP}s", "input_series": series, "promql_expr_test": checks})

    # Shards moving between live replicas, in the same scrape, and a fourth replica joining.
    end, total = 15 * MINUTE, _steps(15 * MINUTE)
    moved, joined, handed = _steps(3 * MINUTE), _steps(6 * MINUTE), _steps(9 * MINUTE)
    c_share = SHARDS - 2 * held - 1
    series = [
        *replicas.series("a", constant(SHARDS, total), f"{held + 1}x{moved - 1} {held - 20}x{total - moved}"),
        *replicas.series("b", constant(SHARDS, total), f"{held}x{moved - 1} {held + 21}x{total - moved}"),
        *replicas.series("c", constant(SHARDS, total), f"{c_share}x{handed - 1} 0x{total - handed}"),
        *replicas.series(
            "d",
            f"_x{joined} {SHARDS}x{total - joined}",
            f"_x{joined} 0x{handed - joined - 1} {c_share}x{total - handed}",
        ),
    ]
    tests.append({"interval": f"{STEP}s", "input_series": series, "promql_expr_test": [_never(end)]})

    # One process with its state file: its own series, none of the cluster's.
    process = {k: v for k, v in labels.items() if k != "target"}
    series = [
        input_series(catalogue.TARGET_UP.name, labels, constant(1, total)),
        input_series(catalogue.STATE_PENDING_WRITES.name, process, constant(0, total)),
    ]
    tests.append({"interval": f"{STEP}s", "input_series": series, "promql_expr_test": [_never(end)]})
    return tests
