"""The rules of the job objectives (`slos:` in the mixin config): error ratios over the burn-rate
windows, each objective's error budget left over its window, and the multi-window multi-burn-rate
alerts of the Google SRE workbook (chapter 5, "Alerting on SLOs").

The workbook's burn factors are for a 30-day window: 14.4x over 1h (2 % of the budget burnt in an
hour), 6x over 6h (5 %), 3x over 1d (10 %) and 1x over 3d (10 %). Here the factor is the share
of the budget itself, so a 28-day objective pages at 13.44x: the same 2 % of its own budget.
`slo_windows_divisor` divides every window (the alert windows and the objectives' own) to run
the same rules in minutes, for tests and demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter import catalogue
from exporter.config.slos import SLO
from exporter.config.slos import duration as duration  # the rules' durations, for their tests and boards

from . import queries as q
from .config import Config

COUNTER = catalogue.SLO_JOBS.name
GOOD_OR_BAD = 'result=~"good|bad"'
BAD = 'result="bad"'

# The windows the error ratio is recorded over, as the workbook names them (in seconds).
WINDOWS: tuple[tuple[str, int], ...] = (
    ("5m", 300),
    ("30m", 1800),
    ("1h", 3600),
    ("2h", 7200),
    ("6h", 21600),
    ("1d", 86400),
    ("3d", 259200),
)
_SECONDS = dict(WINDOWS)
FAST_ALERT = "AsyncJobSLOBurnFast"
SLOW_ALERT = "AsyncJobSLOBurnSlow"
ALERTS = (FAST_ALERT, SLOW_ALERT)


@dataclass(frozen=True)
class BurnPair:
    """Alert when the error ratio is past `budget_share` of the budget's pace over both windows."""

    long: str
    short: str
    budget_share: float

    def factor(self, slo: SLO) -> float:
        """The burn rate at which `budget_share` of the budget goes in one long window."""
        return round(self.budget_share * slo.window / _SECONDS[self.long], 6)

    def threshold(self, slo: SLO) -> float:
        return round(self.factor(slo) * slo.error_budget, 9)


# (alert, pairs): the page, then the ticket.
BURNS: tuple[tuple[str, tuple[BurnPair, ...]], ...] = (
    (FAST_ALERT, (BurnPair("1h", "5m", 0.02), BurnPair("6h", "30m", 0.05))),
    (SLOW_ALERT, (BurnPair("1d", "2h", 0.10), BurnPair("3d", "6h", 0.10))),
)


def window(cfg: Config, name: str) -> str:
    """The window the workbook calls `name`, as this config runs it."""
    return duration(_SECONDS[name] / cfg.slo_windows_divisor)


def slo_window(cfg: Config, slo: SLO) -> str:
    return duration(slo.window / cfg.slo_windows_divisor)


def error_ratio(cfg: Config, name: str) -> str:
    """Recorded: bad jobs over judged ones (good + bad) per objective, over window `name`."""
    return f"slo:asyncjob_slo_jobs_errors:ratio_rate{window(cfg, name)}"


OBJECTIVE = "slo:asyncjob_slo_objective:ratio"
WINDOW_ERROR_RATIO = "slo:asyncjob_slo_jobs_errors:ratio_window"
BUDGET_REMAINING = "slo:asyncjob_slo_error_budget:remaining_ratio"


def problems(cfg: Config) -> list[str]:
    """What makes the SLO rules of `cfg` unusable, each with its key."""
    out = []
    if cfg.slo_windows_divisor < 1 or 60 % cfg.slo_windows_divisor:
        out.append("slo_windows_divisor: expected a whole number that divides 60 (1, 2, 3, 4, 5, 6, 10, ...)")
        return out
    for i, slo in enumerate(cfg.slos):
        if slo.window % cfg.slo_windows_divisor:
            out.append(f"slos[{i}].window: not a whole number of seconds once divided by slo_windows_divisor")
        for alert, pairs in BURNS:
            for pair in pairs:
                if pair.threshold(slo) >= 1:
                    out.append(
                        f"slos[{i}]: {alert} over {pair.long} would need more than every job to "
                        f"be bad ({pair.factor(slo):g}x the budget of objective {slo.objective:g}): "
                        "raise the objective or shorten the window"
                    )
    return out


def _ratio_source(cfg: Config, span: str, function: str, *matchers: str) -> str:
    bad = q.series(COUNTER, cfg.exporter_selector, *matchers, BAD)
    judged = q.series(COUNTER, cfg.exporter_selector, *matchers, GOOD_OR_BAD)
    return f"sum by (slo) ({function}({bad}[{span}]))\n/\nsum by (slo) ({function}({judged}[{span}]))"


def _slo(slo: SLO) -> str:
    return f'slo="{slo.name}"'


def alert_expr(cfg: Config, slo: SLO, pairs: tuple[BurnPair, ...]) -> str:
    branches = []
    for pair in pairs:
        level = f"({pair.factor(slo):g} * {slo.error_budget:.9g})"
        long = q.series(error_ratio(cfg, pair.long), _slo(slo))
        short = q.series(error_ratio(cfg, pair.short), _slo(slo))
        branches.append(f"(\n  {long} > {level}\nand\n  {short} > {level}\n)")
    return "\nor\n".join(branches)


def dashboard_uid(slo: SLO) -> str:
    return f"asyncjob-slo-{slo.name}"


def dashboard_url(cfg: Config, slo: SLO) -> str:
    return f"{cfg.grafana_url}/d/{dashboard_uid(slo)}/{dashboard_uid(slo)}"


def _describe(cfg: Config, slo: SLO, alert: str, pairs: tuple[BurnPair, ...]) -> tuple[str, str]:
    covered = f"{slo.job_type or 'all'} jobs on {slo.target or slo.target_regex}"
    spans = " or ".join(f"{window(cfg, p.long)} (and {window(cfg, p.short)})" for p in pairs)
    shares = " or ".join(f"{p.budget_share:.0%} in {window(cfg, p.long)}" for p in pairs)
    if alert == FAST_ALERT:
        summary = "A job objective's error budget is burning fast: it will be gone within days."
    else:
        summary = (
            "A job objective's error budget is burning steadily: it will be gone before its window ends."
        )
    description = (
        f"Objective {slo.name} ({slo.objective:.4g} of {covered} succeed within "
        f"{duration(slo.latency)} over {slo_window(cfg, slo)}): "
        "{{ $value | humanizePercentage }} of the judged jobs were bad over "
        f"{spans}, a pace that spends {shares} of the error budget. The objective's dashboard "
        "lists the bad jobs; the end users' failures are not counted."
    )
    return summary, description


def _alert(cfg: Config, slo: SLO, alert: str, pairs: tuple[BurnPair, ...]) -> dict[str, Any]:
    summary, description = _describe(cfg, slo, alert, pairs)
    return {
        "alert": alert,
        "expr": alert_expr(cfg, slo, pairs),
        "labels": {"severity": cfg.severity[alert], "slo": slo.name},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{cfg.runbook_base_url}#{alert.lower()}",
            "dashboard_url": dashboard_url(cfg, slo),
        },
    }


def rule_groups(cfg: Config) -> dict[str, Any]:
    """The SLO rule file: one group, the shared error ratios first, then each objective's budget
    and alerts (rules of a group run in order, so an alert reads this evaluation's ratios)."""
    rules: list[dict[str, Any]] = [
        {"record": error_ratio(cfg, name), "expr": _ratio_source(cfg, window(cfg, name), "rate")}
        for name, _ in WINDOWS
    ]
    for slo in cfg.slos:
        rules.append({"record": OBJECTIVE, "expr": f"vector({slo.objective:g})", "labels": {"slo": slo.name}})
        rules.append(
            {
                "record": WINDOW_ERROR_RATIO,
                "expr": _ratio_source(cfg, slo_window(cfg, slo), "increase", _slo(slo)),
                "labels": {"slo": slo.name},
            }
        )
        rules.append(
            {
                "record": BUDGET_REMAINING,
                "expr": f"1 - {q.series(WINDOW_ERROR_RATIO, _slo(slo))} / {slo.error_budget:.9g}",
                "labels": {"slo": slo.name},
            }
        )
        rules += [_alert(cfg, slo, alert, pairs) for alert, pairs in BURNS]
    return {"groups": [{"name": "asyncjob.slos", "rules": rules}]}
