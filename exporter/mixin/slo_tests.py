"""promtool tests of the SLO rules, generated for each objective of the config: each starts from
six hours (the 6h window) at half the budget's pace, then plays one case:

- a total outage: AsyncJobSLOBurnFast fires within 10 minutes;
- 20x the budget's pace: it fires within 45 minutes;
- 2x the pace: AsyncJobSLOBurnSlow fires, the fast alert never;
- 0.5x the pace for six hours more (every window then holds that pace alone): neither fires;
- a burst of failures of the end users: neither ever fires.

Times scale with `slo_windows_divisor`, as the rules' windows do. A case is left out for an
objective whose window makes its outcome another one by design (a 7-day objective's budget
cannot stand 0.5x over three days, for one): `expected` works the outcome out from the same
burn factors, and a case is written only where it is the one above.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from exporter.config.slos import SLO

from . import slos as s
from .config import Config
from .promtest_inputs import selector_labels

JOBS = 1000  # judged per evaluation interval
BASELINE = 360  # evaluation intervals (minutes, undivided): the 6h window
MINUTE = 60


@dataclass(frozen=True)
class Phase:
    minutes: int
    burn: float  # bad share of the judged jobs, as a multiple of the error budget
    user: float = 0.0  # the end users' failures, per judged job


@dataclass(frozen=True)
class Case:
    name: str
    phases: tuple[Phase, ...]
    # (minute, alert, firing now) checks, and alerts that must never fire in the whole run.
    checks: tuple[tuple[int, str, bool], ...]
    never: tuple[str, ...] = ()


CASES = (
    Case(
        "total outage",
        (Phase(BASELINE, 0.5), Phase(60, float("inf"))),
        ((BASELINE, s.FAST_ALERT, False), (BASELINE + 10, s.FAST_ALERT, True)),
    ),
    Case(
        "20x burn",
        (Phase(BASELINE, 0.5), Phase(60, 20)),
        ((BASELINE, s.FAST_ALERT, False), (BASELINE + 45, s.FAST_ALERT, True)),
    ),
    Case(
        "2x burn",
        (Phase(BASELINE, 0.5), Phase(BASELINE, 2)),
        ((2 * BASELINE, s.SLOW_ALERT, True),),
        never=(s.FAST_ALERT,),
    ),
    Case("0.5x burn", (Phase(2 * BASELINE, 0.5),), (), never=s.ALERTS),
    Case(
        "end users' failures",
        (Phase(BASELINE, 0.5), Phase(60, 0.5, user=10), Phase(60, 0.5)),
        (),
        never=s.ALERTS,
    ),
)


def _bad_share(slo: SLO, burn: float) -> float:
    return min(1.0, burn * slo.error_budget)


def _per_minute(slo: SLO, case: Case) -> Iterator[tuple[float, float, float]]:
    """(good, bad, user) judged in each minute of the case."""
    for phase in case.phases:
        bad = JOBS * _bad_share(slo, phase.burn)
        for _ in range(phase.minutes):
            yield JOBS - bad, bad, JOBS * phase.user


def _ratio(rows: list[tuple[float, float, float]], end: int, minutes: float) -> float | None:
    """Bad over judged in the `minutes` before minute `end` (as a rate over that window sees it)."""
    window = rows[max(0, end - int(minutes)) : end]
    judged = sum(g + b for g, b, _ in window)
    return sum(b for _, b, _ in window) / judged if judged else None


def firing(slo: SLO, rows: list[tuple[float, float, float]], minute: int, alert: str) -> bool:
    for name, pairs in s.BURNS:
        if name != alert:
            continue
        for pair in pairs:
            threshold = pair.threshold(slo)
            long = _ratio(rows, minute, s._SECONDS[pair.long] / MINUTE)
            short = _ratio(rows, minute, s._SECONDS[pair.short] / MINUTE)
            if long is not None and short is not None and long > threshold and short > threshold:
                return True
    return False


def expected(slo: SLO, case: Case) -> bool:
    """True when the burn factors give `case` the outcome it names, for this objective."""
    rows = list(_per_minute(slo, case))
    if any(firing(slo, rows, minute, alert) != want for minute, alert, want in case.checks):
        return False
    return not any(firing(slo, rows, m, alert) for alert in case.never for m in range(1, len(rows) + 1))


def _values(counts: list[float]) -> str:
    """promtool's expanding notation for a counter that grows by `counts[i]` in minute i."""
    parts, total, i = [], 0.0, 0
    parts_start = True
    while i < len(counts):
        j = i
        while j < len(counts) and counts[j] == counts[i]:
            j += 1
        step, n = counts[i], j - i
        if parts_start:
            parts.append(f"0+{step:g}x{n}")
            parts_start = False
        else:
            parts.append(f"{total + step:g}+{step:g}x{n - 1}")
        total += step * n
        i = j
    return " ".join(parts)


def _alerts(cfg: Config, slo: SLO, alert: str, at: float, span: str | None, count: int) -> dict[str, Any]:
    series = (
        f'ALERTS{{alertname="{alert}", alertstate="firing", slo="{slo.name}", '
        f'severity="{cfg.severity[alert]}"}}'
    )
    if span is not None:
        series = f"max_over_time({series}[{span}])"
    return {
        "expr": f"count({series}) or vector(0)",
        "eval_time": s.duration(at),
        "exp_samples": [{"labels": "{}", "value": count}],
    }


def _test(cfg: Config, slo: SLO, case: Case) -> dict[str, Any]:
    step = MINUTE / cfg.slo_windows_divisor
    labels = selector_labels(cfg) | {"job_type": slo.job_type or "connection", "slo": slo.name}
    labels["target"] = slo.target or "t1"
    rows = list(_per_minute(slo, case))
    series = []
    for index, result in enumerate(("good", "bad", "user")):
        inner = ", ".join(f'{k}="{v}"' for k, v in (labels | {"result": result}).items())
        # The first sample is the counter at zero, so the first minute's jobs are an increase.
        values = _values([row[index] for row in rows])
        series.append({"series": f"{s.COUNTER}{{{inner}}}", "values": values})
    checks = [_alerts(cfg, slo, alert, minute * step, None, int(want)) for minute, alert, want in case.checks]
    end = len(rows) * step
    checks += [_alerts(cfg, slo, alert, end, s.duration(end), 0) for alert in case.never]
    return {
        "name": f"{slo.name}: {case.name}",
        "interval": s.duration(step),
        "input_series": series,
        "promql_expr_test": checks,
    }


def rule_tests(cfg: Config, rule_file: str = "../asyncjob-slos.rules.yml") -> dict[str, Any]:
    tests = [_test(cfg, slo, case) for slo in cfg.slos for case in CASES if expected(slo, case)]
    return {
        "rule_files": [rule_file],
        "evaluation_interval": s.duration(MINUTE / cfg.slo_windows_divisor),
        "tests": tests,
    }
