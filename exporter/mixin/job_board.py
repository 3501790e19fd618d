"""The drill-down dashboard of one tracked job: its status, provider and type, progress, error
reason, timestamps and steps through time, against its target's thresholds, with the target's
duration quantiles whose exemplars link to each job's page on the exporter.

Every query goes through `queries.series` with a selector of the dashboard's variables, so each
one matches `job` and `instance`, and every rate uses `$__rate_interval`.
"""

from __future__ import annotations

from typing import Any

from exporter import catalogue

from . import queries as q
from .config import Config
from .grafana import ONE_JOB, RATE, TARGETS, Panel, Query, Row, dashboard


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
    return dashboard(
        cfg,
        cfg.job_uid,
        "Asyncjob / Job",
        "One asynchronous job tracked by asyncjob-exporter: status, progress, steps, timestamps and error.",
        items,
        one_job=True,
    )
