"""promtool unit tests generated from the same config as the rules: each alert fires just past the
thresholds and `for` durations of that config, with its severity, and a series just short of a
threshold does not fire. `asyncjob-exporter mixin` writes them beside the rules it generates.

The tests read `ALERTS` through `promql_expr_test`: they check when and with which severity an
alert fires, not its annotation texts (those are the hand-written tests' concern).

The scenarios live in `job_scenarios` and `target_scenarios`, the replicas' handovers in
`handover_tests`, the cluster's shards in `cluster_tests`; `promtest_inputs` holds what they are
made of.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from . import job_scenarios as jobs
from . import target_scenarios as targets
from .cluster_tests import cluster_tests
from .config import Config, seconds
from .handover_tests import handover_tests, shared_rate_tests
from .promtest_inputs import MINUTE, Scenario, alerts_by_name, selector_labels


def _firing(name: str, severity: str, at: float, count: int) -> dict[str, Any]:
    expr = f'count(ALERTS{{alertname="{name}", alertstate="firing", severity="{severity}"}}) or vector(0)'
    return {"expr": expr, "eval_time": f"{int(at)}s", "exp_samples": [{"labels": "{}", "value": count}]}


# Each gives the series under which its alert holds (None: the config leaves the alert out or
# makes its test meaningless).
SCENARIOS: tuple[Callable[[Config, dict[str, str]], Scenario | None], ...] = (
    jobs.failed,
    jobs.failed_during_outage,
    jobs.stuck,
    jobs.overdue,
    jobs.overdue_silences_stuck,
    jobs.many_stuck,
    jobs.records_failing,
    jobs.user_records_failing,
    jobs.awaiting_user,
    jobs.failure_rate_high,
    jobs.user_failure_rate_high,
    jobs.step_slow,
    targets.target_down,
    targets.polling_stale,
    targets.exporter_down,
    targets.tracking_cap_reached,
    targets.source_missing,
    targets.state_undocumented,
    targets.connection_sync_stale,
    targets.user_connection_sync_stale,
    targets.consent_expiring,
)


def rule_tests(cfg: Config, rule_file: str = "../asyncjob.rules.yml") -> dict[str, Any]:
    """The promtool test file for the rules generated from `cfg`."""
    labels = selector_labels(cfg)
    alerts = alerts_by_name(cfg)
    tests = []
    for make in SCENARIOS:
        scenario = make(cfg, labels)
        if scenario is None or scenario.name not in alerts:
            continue
        hold = seconds(alerts[scenario.name].duration)
        severity = cfg.severity[scenario.name]
        checks = []
        # Not yet: one evaluation before the alert can have held for its `for`.
        quiet = scenario.onset + hold - MINUTE if hold >= MINUTE else scenario.onset - MINUTE
        if quiet >= 0:
            checks.append(_firing(scenario.name, severity, quiet, 0))
        # Firing: a minute past the onset and the `for`, rounded up to an evaluation.
        fire = (math.ceil((scenario.onset + hold) / MINUTE) + 1) * MINUTE
        checks.append(_firing(scenario.name, severity, fire, scenario.count))
        for other, count in scenario.others.items():
            if other in alerts:
                checks.append(_firing(other, cfg.severity[other], fire, count))
        tests.append({"interval": "1m", "input_series": scenario.series, "promql_expr_test": checks})
    tests.extend(handover_tests(cfg, labels))
    tests.extend(shared_rate_tests(cfg, labels))
    tests.extend(cluster_tests(cfg, labels))
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}
