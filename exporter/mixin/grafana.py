"""Grafana's dashboard model as the shipped dashboards use it: a dashboard is a list of `Row`s
and `Panel`s of `Query`s, laid out left to right on Grafana's 24 columns, with the template
variables (data source, job, instance, target, job type, job id) that every query selects by.

The dashboards themselves are built in `overview_board`, `job_board` and `slo_boards`; this module
knows Grafana's JSON, not what any panel shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter import catalogue

from . import queries as q
from .config import Config

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SCHEMA_VERSION = 39

# Selectors built from the template variables.
SCRAPE = 'job=~"$job", instance=~"$instance"'  # series about an exporter process, not a target
TARGETS = f'{SCRAPE}, target=~"$target"'
AGGREGATES = f'{TARGETS}, job_type=~"$job_type"'
ONE_JOB = f'{TARGETS}, job_id=~"$job_id"'


@dataclass
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    heatmap: bool = False
    exemplar: bool = False  # show the histogram's exemplars (OpenMetrics scrapes carry them)


@dataclass
class Panel:
    kind: str
    title: str
    description: str
    queries: list[Query]
    unit: str = "short"
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    field_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    title: str


def _target(query: Query, ref: str) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "refId": ref,
    }
    if query.instant or query.table:
        target |= {"instant": True, "range": False}
    else:
        target |= {"instant": False, "range": True}
    if query.exemplar:
        target["exemplar"] = True
    if query.table:
        target["format"] = "table"
    elif query.heatmap:
        target["format"] = "heatmap"
    return target


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit} | panel.field_config
    rendered: dict[str, Any] = {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "id": panel_id,
        "options": panel.options,
        "targets": [_target(query, chr(ord("A") + i)) for i, query in enumerate(panel.queries)],
        "title": panel.title,
        "type": panel.kind,
    }
    if panel.kind == "table":
        # Instant table queries carry a Time column and the metric name; neither helps here.
        rendered["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}}}
        ]
    return rendered


def _layout(items: list[Panel | Row]) -> list[dict[str, Any]]:
    """Places panels left to right, wrapping at Grafana's 24 columns; a Row starts a new line."""
    panels: list[dict[str, Any]] = []
    x = y = row_height = 0
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y += row_height
            x = row_height = 0
            panels.append(
                {
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "id": panel_id,
                    "panels": [],
                    "title": item.title,
                    "type": "row",
                }
            )
            y += 1
            continue
        if x + item.width > 24:
            y += row_height
            x = row_height = 0
        panels.append(_panel(item, panel_id, x, y))
        x += item.width
        row_height = max(row_height, item.height)
    return panels


def _query_variable(
    name: str, query: str, *, multi: bool = True, all_value: str | None = ".+"
) -> dict[str, Any]:
    variable: dict[str, Any] = {
        "current": {},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": all_value is not None,
        "label": name.capitalize() if name in ("job", "instance") else name.replace("_", " "),
        "multi": multi,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }
    if all_value is not None:
        variable["allValue"] = all_value
    return variable


def _variables(cfg: Config, *, one_job: bool) -> list[dict[str, Any]]:
    up = q.series(catalogue.TARGET_UP.name, cfg.exporter_selector)
    variables = [
        {
            "current": {},
            "hide": 0,
            "includeAll": False,
            "label": "Data source",
            "multi": False,
            "name": "datasource",
            "options": [],
            "query": "prometheus",
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
            "type": "datasource",
        },
        _query_variable("job", f"label_values({up}, job)"),
        _query_variable("instance", f'label_values({catalogue.TARGET_UP.name}{{job=~"$job"}}, instance)'),
        _query_variable(
            "target",
            f'label_values({catalogue.TARGET_UP.name}{{job=~"$job", instance=~"$instance"}}, target)',
        ),
    ]
    if one_job:
        variables.append(
            _query_variable(
                "job_type", f"label_values({catalogue.JOB_INFO.name}{{{TARGETS}}}, job_type)", all_value=".*"
            )
        )
        variables.append(
            _query_variable(
                "job_id",
                f'label_values({catalogue.JOB_INFO.name}{{{TARGETS}, job_type=~"$job_type"}}, job_id)',
                multi=False,
                all_value=None,
            )
        )
    else:
        variables.append(
            _query_variable(
                "job_type", f"label_values({catalogue.JOBS.name}{{{TARGETS}}}, job_type)", all_value=".*"
            )
        )
    return variables


def _job_page_link(cfg: Config) -> list[dict[str, Any]]:
    """The job's page on the exporter that reported it (error text, timeline), as alerts link it."""
    return [
        {
            "asDropdown": False,
            "icon": "external link",
            "includeVars": False,
            "keepTime": False,
            "tags": [],
            "targetBlank": True,
            "title": "Job page on the exporter",
            "tooltip": "The job's error text and the timeline of its transitions",
            "type": "link",
            "url": f"{cfg.external_url or f'{cfg.job_page_scheme}://${{instance}}'}"
            "/jobs/${target}/${job_id:percentencode}",
        }
    ]


def dashboard(
    cfg: Config, uid: str, title: str, description: str, items: list[Panel | Row], *, one_job: bool
) -> dict[str, Any]:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": False,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "tags": ["asyncjob"],
                "targetBlank": False,
                "title": "Asyncjob dashboards",
                "type": "dashboards",
            },
            *(_job_page_link(cfg) if one_job else []),
        ],
        "panels": _layout(items),
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["asyncjob"],
        "templating": {"list": _variables(cfg, one_job=one_job)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def sum_rate(by: str, metric: str, selector: str, function: str = "rate", *matchers: str) -> str:
    return f"sum by ({by}) ({function}({q.series(metric, selector, *matchers)}[{RATE}]))"


def stacked() -> dict[str, Any]:
    return {"custom": {"stacking": {"group": "A", "mode": "normal"}, "fillOpacity": 30}}


def up_down() -> dict[str, Any]:
    return {
        "mappings": [
            {
                "options": {"0": {"color": "red", "text": "Down"}, "1": {"color": "green", "text": "Up"}},
                "type": "value",
            }
        ]
    }
