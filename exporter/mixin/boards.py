"""The two Grafana dashboards: the fleet overview and one job's drill-down.

Every query goes through `queries.series` with a selector of the dashboard's variables, so each
one matches `job` and `instance`, and every rate uses `$__rate_interval`.
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
TARGETS = 'job=~"$job", instance=~"$instance", target=~"$target"'
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


def _exemplar_links(cfg: Config) -> dict[str, Any]:
    """Field links of a panel with exemplars: an exemplar's `target` and `job_id` lead to that
    job's page on the exporter (the dashboard's instance)."""
    return {
        "links": [
            {
                "targetBlank": True,
                "title": "Page of the exemplar's job",
                "url": f"{cfg.job_page_scheme}://${{instance}}/jobs/${{__data.fields.target}}/"
                "${__data.fields.job_id:percentencode}",
            }
        ]
    }


def _dashboard(
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


def _sum_rate(by: str, metric: str, selector: str, function: str = "rate", *matchers: str) -> str:
    return f"sum by ({by}) ({function}({q.series(metric, selector, *matchers)}[{RATE}]))"


def _stacked() -> dict[str, Any]:
    return {"custom": {"stacking": {"group": "A", "mode": "normal"}, "fillOpacity": 30}}


def _up_down() -> dict[str, Any]:
    return {
        "mappings": [
            {
                "options": {"0": {"color": "red", "text": "Down"}, "1": {"color": "green", "text": "Up"}},
                "type": "value",
            }
        ]
    }


def overview(cfg: Config) -> dict[str, Any]:
    s, a = TARGETS, AGGREGATES

    def quantile(phi: float, metric: str, by: str) -> str:
        buckets = q.series(metric, a)
        return f"histogram_quantile({phi}, sum by ({by}, le) (rate({buckets}[{RATE}])))"

    items: list[Panel | Row] = [
        Row("Targets"),
        Panel(
            "stat",
            "Targets up",
            "1 while the exporter's last poll of the target's API succeeded.",
            [Query(q.series(catalogue.TARGET_UP.name, s), "{{target}}", instant=True)],
            unit="none",
            width=6,
            field_config=_up_down(),
        ),
        Panel(
            "timeseries",
            "Time since last successful poll",
            "Seconds since the exporter last polled each target successfully, and its poll interval.",
            [
                Query(q.seconds_since_successful_poll(cfg, s), "{{target}}"),
                Query(q.series(catalogue.TARGET_POLL_INTERVAL.name, s), "{{target}} poll interval"),
            ],
            unit="s",
            width=6,
        ),
        Panel(
            "timeseries",
            "Poll errors by reason",
            "Failed polls of the providers' APIs per second, by reason "
            "(timeout, connect, http_4xx, http_429, http_5xx, bad_body, auth, id_mismatch).",
            [
                Query(
                    _sum_rate("target, reason", catalogue.POLL_ERRORS.name, s),
                    "{{target}} {{reason}}",
                )
            ],
            unit="reqps",
            width=6,
        ),
        Panel(
            "timeseries",
            "Poll requests and p95 duration",
            "Requests the exporter sends to each provider, and how long the slowest 5% take.",
            [
                Query(
                    _sum_rate("target", catalogue.POLL_REQUESTS.name, s),
                    "{{target}} requests/s",
                ),
                Query(
                    f"histogram_quantile(0.95, sum by (target, le) "
                    f"(rate({q.series(catalogue.POLL_DURATION.bucket, s)}[{RATE}])))",
                    "{{target}} p95 seconds",
                ),
            ],
            unit="short",
            width=6,
        ),
        Row("Jobs"),
        Panel(
            "timeseries",
            "Jobs by status",
            "Jobs the exporter tracks now, by normalised status.",
            [Query(f"sum by (status) ({q.series(catalogue.JOBS.name, a)})", "{{status}}")],
            unit="short",
            width=8,
            field_config=_stacked(),
        ),
        Panel(
            "timeseries",
            "Jobs finished",
            "Jobs reaching a terminal status per second, by job type and status.",
            [
                Query(
                    _sum_rate("job_type, status", catalogue.JOBS_FINISHED.name, a),
                    "{{job_type}} {{status}}",
                )
            ],
            unit="ops",
            width=8,
        ),
        Panel(
            "timeseries",
            f"Failure ratio by cause ({cfg.failure_window})",
            f"Share of the jobs finished in the last {cfg.failure_window} that failed, by who must act; "
            f"AsyncJobFailureRateHigh fires above {cfg.failure_ratio:.0%} for provider and unknown causes "
            f"together, AsyncJobUserFailureRateHigh (info) above {cfg.user_failure_ratio:.0%} for the user.",
            [Query(q.series(q.failure_ratio(cfg), a), "{{target}} {{job_type}} {{cause}}")],
            unit="percentunit",
            width=8,
            field_config={"max": 1, "min": 0},
        ),
        Panel(
            "timeseries",
            "Job duration p50 / p95",
            "How long jobs take from creation to their terminal status, by job type.",
            [
                Query(quantile(0.5, catalogue.JOB_DURATION.bucket, "job_type"), "p50 {{job_type}}"),
                Query(quantile(0.95, catalogue.JOB_DURATION.bucket, "job_type"), "p95 {{job_type}}"),
            ],
            unit="s",
            width=8,
        ),
        Panel(
            "timeseries",
            "Failed jobs by reason",
            "Jobs that failed, by the provider's error code or state, and who must act.",
            [
                Query(
                    _sum_rate("job_type, reason, cause", catalogue.JOBS_FAILED.name, a, "increase"),
                    "{{job_type}} {{reason}} ({{cause}})",
                )
            ],
            unit="short",
            width=8,
        ),
        Panel(
            "timeseries",
            "Failed records",
            "Share of the records processed by jobs that failed (WillSuite cases, generic records).",
            [
                Query(
                    _sum_rate("target, job_type", catalogue.RECORDS_FAILED.name, a)
                    + "\n/ "
                    + _sum_rate("target, job_type", catalogue.RECORDS_PROCESSED.name, a),
                    "{{target}} {{job_type}}",
                )
            ],
            unit="percentunit",
            width=8,
        ),
        Row("Who must act"),
        Panel(
            "timeseries",
            "Failures by cause",
            "Failed jobs by who must act: the end user (wrong credentials, an expired MFA, a lapsed "
            "consent: no operator is paged), the provider, or unknown.",
            [
                Query(
                    _sum_rate("cause", catalogue.JOBS_FAILED.name, a, "increase"),
                    "{{cause}}",
                )
            ],
            unit="short",
            field_config=_stacked(),
        ),
        Panel(
            "timeseries",
            "End-user failures by reason",
            "Failures only the end user can fix, by reason: for the application team (a login or "
            "consent flow that fails often shows here first).",
            [
                Query(
                    _sum_rate("target, job_type, reason", catalogue.JOBS_FAILED.name, a, "increase", q.USER),
                    "{{target}} {{job_type}} {{reason}}",
                )
            ],
            unit="short",
        ),
        Row("Steps"),
        Panel(
            "heatmap",
            "Step duration",
            "Distribution of step durations across all tracked jobs.",
            [
                Query(
                    _sum_rate("le", catalogue.STEP_DURATION.bucket, a),
                    "{{le}}",
                    heatmap=True,
                )
            ],
            unit="s",
            options={
                "calculate": False,
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "yAxis": {"axisPlacement": "left", "unit": "s"},
                "tooltip": {"show": True, "yHistogram": True},
            },
        ),
        Panel(
            "timeseries",
            f"Step duration p95 ({cfg.step_window})",
            f"p95 of each step's duration over the last {cfg.step_window}; AsyncJobStepSlow fires above "
            f"{cfg.step_slow_seconds:g}s (or the step's own threshold).",
            [Query(q.series(q.step_p95(cfg), a), "{{job_type}} {{step}}")],
            unit="s",
        ),
        Row("Jobs needing attention"),
        Panel(
            "table",
            "Stuck jobs",
            "Pending or running jobs without progress for longer than their target's stuck threshold "
            "(seconds since progress).",
            [Query(q.stuck(cfg, s), table=True)],
            unit="s",
        ),
        Panel(
            "table",
            "Overdue jobs",
            "Unfinished jobs running for longer than their target's max duration (seconds).",
            [Query(q.overdue(cfg, s), table=True)],
            unit="s",
        ),
        Panel(
            "table",
            "Failed jobs",
            "Failed jobs still tracked, with the provider's reason and who must act (cause=user pages "
            "no operator); they leave the table at retention.",
            [Query(q.failed_jobs(cfg, s, operator_only=False), table=True)],
            unit="none",
        ),
        Panel(
            "table",
            "Jobs with failed records",
            "Share of each job's records that failed.",
            [Query(f"{q.series(q.RECORDS_FAILED_RATIO, s)} > 0", table=True)],
            unit="percentunit",
        ),
        Panel(
            "table",
            "Jobs waiting for the end user",
            "Jobs waiting for an MFA code, a re-authentication or a consent: seconds since they last moved.",
            [Query(q.awaiting_user(cfg, s), table=True)],
            unit="s",
            width=24,
        ),
        Row("Oxlin connections"),
        Panel(
            "timeseries",
            "Connections by status",
            "Oxlin connections by their current status.",
            [
                Query(
                    f"count by (target, status) ({q.series(catalogue.CONNECTION_STATUS.name, s)} == 1)",
                    "{{target}} {{status}}",
                )
            ],
            unit="short",
            width=6,
            field_config=_stacked(),
        ),
        Panel(
            "timeseries",
            "Queue events",
            "Events read from the Oxlin queues per second, by event type.",
            [
                Query(
                    _sum_rate("target, event_type", catalogue.QUEUE_EVENTS.name, s),
                    "{{target}} {{event_type}}",
                )
            ],
            unit="ops",
            width=6,
        ),
        Panel(
            "table",
            "Time since last successful sync",
            "Seconds since each connection last synchronised successfully.",
            [Query(q.seconds_since_connection_sync(cfg, s), table=True)],
            unit="s",
            width=6,
        ),
        Panel(
            "table",
            "Consent expiry",
            "Seconds until each PSD2 channel's consent expires; negative when it already lapsed.",
            [Query(q.seconds_until_consent_expiry(cfg, s), table=True)],
            unit="s",
            width=6,
        ),
    ]
    return _dashboard(
        cfg,
        cfg.overview_uid,
        "Asyncjob / Overview",
        "Asynchronous jobs of third-party APIs tracked by asyncjob-exporter: "
        "status, failures, durations, polling.",
        items,
        one_job=False,
    )


def job(cfg: Config) -> dict[str, Any]:
    s, j = TARGETS, ONE_JOB

    def duration_p95(metric: str, by: str) -> str:
        return f"histogram_quantile(0.95, sum by ({by}, le) (rate({q.series(metric, s)}[{RATE}])))"

    def stat_name(expr: str, legend: str) -> Query:
        return Query(expr, legend, instant=True)

    name_only = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "name",
    }
    timestamp = "dateTimeAsIso"
    items: list[Panel | Row] = [
        Panel(
            "stat",
            "Status",
            "The job's current normalised status.",
            [stat_name(f"{q.series(catalogue.JOB_STATUS.name, j)} == 1", "{{status}}")],
            unit="none",
            width=4,
            height=4,
            options=name_only,
        ),
        Panel(
            "stat",
            "Provider and type",
            "The provider and job type the job was read as.",
            [stat_name(q.series(catalogue.JOB_INFO.name, j), "{{provider}} {{job_type}}")],
            unit="none",
            width=4,
            height=4,
            options=name_only,
        ),
        Panel(
            "gauge",
            "Percent completed",
            "The provider's percentage, else the share of finished steps.",
            [Query(q.series(catalogue.JOB_PERCENT_COMPLETED.name, j), "{{job_id}}", instant=True)],
            unit="percent",
            width=4,
            height=4,
            field_config={"min": 0, "max": 100},
        ),
        Panel(
            "stat",
            "Error reason",
            "The provider's error code or state for a failed job; its free-text message is served by "
            "GET /api/v1/targets/{target}/jobs/{id}.",
            [stat_name(q.series(catalogue.JOB_ERROR_INFO.name, j), "{{reason}}")],
            unit="none",
            width=4,
            height=4,
            options=name_only,
        ),
        Panel(
            "stat",
            "Waiting for the end user",
            "1 while the job waits for an MFA code, a re-authentication or a consent.",
            [Query(q.series(catalogue.JOB_AWAITING_USER.name, j), "{{job_id}}", instant=True)],
            unit="none",
            width=4,
            height=4,
            field_config={
                "mappings": [{"options": {"0": {"text": "No"}, "1": {"text": "Yes"}}, "type": "value"}]
            },
        ),
        Panel(
            "stat",
            "Attempts",
            "How many times the provider ran the job (reruns included).",
            [Query(q.series(catalogue.JOB_ATTEMPTS.name, j), "{{job_id}}", instant=True)],
            unit="none",
            width=4,
            height=4,
        ),
        Panel(
            "stat",
            "Timestamps",
            "When the job was created, started, finished and last moved.",
            [
                Query(f"{q.series(catalogue.JOB_CREATED.name, j)} * 1000", "created", instant=True),
                Query(f"{q.series(catalogue.JOB_STARTED.name, j)} * 1000", "started", instant=True),
                Query(
                    f"{q.series(catalogue.JOB_FINISHED.name, j)} * 1000",
                    "finished",
                    instant=True,
                ),
                Query(
                    f"{q.series(catalogue.JOB_LAST_PROGRESS.name, j)} * 1000",
                    "last progress",
                    instant=True,
                ),
            ],
            unit=timestamp,
            width=24,
            height=4,
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "value_and_name",
            },
        ),
        Panel(
            "state-timeline",
            "Status over time",
            "The job's normalised status through time.",
            [Query(f"{q.series(catalogue.JOB_STATUS.name, j)} == 1", "{{status}}")],
            unit="none",
        ),
        Panel(
            "timeseries",
            "Percent completed over time",
            "The job's completion through time.",
            [Query(q.series(catalogue.JOB_PERCENT_COMPLETED.name, j), "percent")],
            unit="percent",
            field_config={"min": 0, "max": 100},
        ),
        Panel(
            "state-timeline",
            "Steps over time",
            "Each step's status through time.",
            [Query(f"{q.series(catalogue.JOB_STEP_STATUS.name, j)} == 1", "{{step}}: {{status}}")],
            unit="none",
        ),
        Panel(
            "bargauge",
            "Step durations",
            "How long each step took, or has taken so far.",
            [Query(q.series(catalogue.JOB_STEP_DURATION.name, j), "{{step}}", instant=True)],
            unit="s",
        ),
        Panel(
            "timeseries",
            "Time since progress",
            "Seconds since the job last moved, against the target's stuck threshold.",
            [
                Query(
                    f"time() - {q.series(catalogue.JOB_LAST_PROGRESS.name, j)}",
                    "since progress",
                ),
                Query(q.series(catalogue.TARGET_STUCK_THRESHOLD.name, s), "stuck threshold"),
            ],
            unit="s",
        ),
        Panel(
            "timeseries",
            "Runtime",
            "Seconds since the job started (else was created), against the target's max duration.",
            [
                Query(q.series(q.RUNTIME, j), "runtime"),
                Query(q.series(catalogue.TARGET_MAX_DURATION.name, s), "max duration"),
            ],
            unit="s",
        ),
        Panel(
            "timeseries",
            "Records",
            "The job's records: total, affected and failed.",
            [Query(q.series(catalogue.JOB_RECORDS.name, j), "{{kind}}")],
            unit="short",
            width=24,
        ),
        Panel(
            "timeseries",
            "Job duration on the target (p95)",
            "p95 of finished jobs' duration on the job's target, by type; the dots are exemplars, "
            "jobs that landed in a bucket, each linked to its page.",
            [
                Query(
                    duration_p95(catalogue.JOB_DURATION.bucket, "job_type"),
                    "{{job_type}}",
                    exemplar=True,
                )
            ],
            unit="s",
            field_config=_exemplar_links(cfg),
        ),
        Panel(
            "timeseries",
            "Step duration on the target (p95)",
            "p95 of finished steps' duration on the job's target, by step; the dots are exemplars, "
            "jobs whose step landed in a bucket, each linked to its page.",
            [Query(duration_p95(catalogue.STEP_DURATION.bucket, "step"), "{{step}}", exemplar=True)],
            unit="s",
            field_config=_exemplar_links(cfg),
        ),
    ]
    return _dashboard(
        cfg,
        cfg.job_uid,
        "Asyncjob / Job",
        "One asynchronous job tracked by asyncjob-exporter: status, progress, steps, timestamps and error.",
        items,
        one_job=True,
    )
