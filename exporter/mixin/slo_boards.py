"""One Grafana dashboard per job objective: the SLI over its window, the error budget left, the
burn rate over every alert window, the judgements by result, and the bad jobs still tracked, each
linked to its page on the exporter that reported it.

The objective's figures are read from the SLO rules' recorded series (those the alerts read); the
judgements and the bad jobs from the exporter's own series, matched by the `job` and `instance`
variables as on the other dashboards.
"""

from __future__ import annotations

from typing import Any

from exporter import catalogue
from exporter.config.slos import SLO

from . import grafana
from . import queries as q
from . import slos as s
from .config import Config
from .grafana import RATE, SCRAPE, Panel, Query, Row


def _job_links(cfg: Config) -> dict[str, Any]:
    # As the alerts link a job: the exporter's external URL, else the address Prometheus scraped.
    base = cfg.external_url or f"{cfg.job_page_scheme}://${{__data.fields.instance}}"
    url = f"{base}/jobs/${{__data.fields.target}}/${{__data.fields.job_id:percentencode}}"
    return {"links": [{"title": "Job page on the exporter", "url": url, "targetBlank": True}]}


def _of_slo(cfg: Config, slo: SLO, query: str) -> str:
    """`query` (per job) kept to the jobs the objective covers: its targets and job type."""
    info = q.series(catalogue.JOB_INFO.name, f"{SCRAPE}, {slo.target_matcher}", *_job_type(slo))
    return f"({query})\n  and {cfg.on_job} {info}"


def _job_type(slo: SLO) -> tuple[str, ...]:
    return () if slo.job_type is None else (f'job_type="{slo.job_type}"',)


def bad_jobs(cfg: Config, slo: SLO) -> tuple[str, str, str]:
    """Failed not for the end user; succeeded too late (seconds taken); unfinished past the
    latency (seconds so far)."""
    sel = f"{SCRAPE}, {slo.target_matcher}"
    latency = f"{slo.latency:g}"
    created = q.series(catalogue.JOB_CREATED.name, sel)
    finished = q.series(catalogue.JOB_FINISHED.name, sel)
    succeeded = q.series(catalogue.JOB_STATUS.name, sel, 'status="succeeded"')
    unfinished = q.series(catalogue.JOB_STATUS.name, sel, q.UNFINISHED)
    waiting = q.series(catalogue.JOB_AWAITING_USER.name, sel)
    failed = q.failed_jobs(cfg, sel)
    late = (
        f"({finished} - {cfg.on_job_in_replica} {created}) > {latency}\n  and {cfg.on_job} ({succeeded} == 1)"
    )
    overdue = (
        f"(time() - {created}) > {latency}\n  and {cfg.on_job} ({unfinished} == 1)\n"
        f"  unless {cfg.on_job} ({waiting} == 1)"
    )
    return _of_slo(cfg, slo, failed), _of_slo(cfg, slo, late), _of_slo(cfg, slo, overdue)


def dashboard(cfg: Config, slo: SLO) -> dict[str, Any]:
    name = f'slo="{slo.name}"'
    budget = f"{slo.error_budget:.9g}"
    window = s.slo_window(cfg, slo)
    latency = s.duration(slo.latency)
    percent = {"min": 0, "max": 1}
    failed, late, overdue = bad_jobs(cfg, slo)
    links = _job_links(cfg)
    items: list[Panel | Row] = [
        Panel(
            "stat",
            f"SLI over {window}",
            f"Share of judged jobs that succeeded within {latency}, over the objective's window "
            f"({window}); the objective is {slo.objective:g}. Failures of the end users are left out.",
            [Query(f"1 - {q.series(s.WINDOW_ERROR_RATIO, name)}", "SLI", instant=True)],
            unit="percentunit",
            width=6,
            height=6,
            field_config={"decimals": 3, **percent},
        ),
        Panel(
            "stat",
            "Error budget remaining",
            f"Share of the error budget ({budget} of the jobs over {window}) not spent yet; "
            "below zero, the objective is missed.",
            [Query(q.series(s.BUDGET_REMAINING, name), "remaining", instant=True)],
            unit="percentunit",
            width=6,
            height=6,
            field_config={"decimals": 1},
        ),
        Panel(
            "timeseries",
            "Error budget remaining over time",
            "The error budget left, as the window moves.",
            [Query(q.series(s.BUDGET_REMAINING, name), "remaining")],
            unit="percentunit",
            width=12,
            height=6,
        ),
        Panel(
            "timeseries",
            "Burn rate by window",
            "Error ratio over each alert window, in multiples of the budget's pace (1 spends the "
            "budget exactly over the window). AsyncJobSLOBurnFast pages when 1h and 5m (or 6h and "
            "30m) burn fast; AsyncJobSLOBurnSlow opens a ticket when 1d and 2h (or 3d and 6h) do.",
            [
                Query(f"{q.series(s.error_ratio(cfg, label), name)} / {budget}", s.window(cfg, label))
                for label, _ in s.WINDOWS
            ],
            unit="none",
            width=12,
        ),
        Panel(
            "timeseries",
            "Jobs judged, by result",
            "Jobs judged a second: good, bad, and the end users' (outside the SLI).",
            [
                Query(
                    f"sum by (result) (rate({q.series(s.COUNTER, SCRAPE, name)}[{RATE}]))",
                    "{{result}}",
                )
            ],
            unit="reqps",
            width=12,
            options={"legend": {"displayMode": "list", "placement": "bottom"}},
        ),
        Row("Bad jobs still tracked (until retention); each links to its page on the exporter"),
        Panel(
            "table",
            "Failed, not for the end user",
            "Failed jobs of the objective whose cause is not the end user, with their reason.",
            [Query(failed, table=True)],
            unit="none",
            width=8,
            field_config=links,
        ),
        Panel(
            "table",
            f"Succeeded later than {latency}",
            "Succeeded jobs that took longer than the latency: seconds from creation to the end.",
            [Query(late, table=True)],
            unit="s",
            width=8,
            field_config=links,
        ),
        Panel(
            "table",
            f"Unfinished past {latency}",
            "Jobs still pending or running past the latency (not waiting for the end user): "
            "seconds since creation.",
            [Query(overdue, table=True)],
            unit="s",
            width=8,
            field_config=links,
        ),
    ]
    covered = f"{slo.job_type or 'all'} jobs on {slo.target or slo.target_regex}"
    return grafana.dashboard(
        cfg,
        s.dashboard_uid(slo),
        f"Asyncjob SLO / {slo.name}",
        f"Objective {slo.name}: {slo.objective:g} of {covered} succeed within {latency}, over {window}.",
        items,
        one_job=False,
    )
