"""The shipped alert rules and dashboards proven on a real stack: the simulator, the exporter, a real
Prometheus evaluating alerts/asyncjob.rules.yml and a real Alertmanager notifying a webhook.

Failed and stuck jobs page; a job that keeps moving, one that waits for its end user, and one that
failed for its end user (a wrong password) do not;
every query of every dashboard panel parses and returns data from that Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.harness import ROOT, create_job, wait_for
from tests.realstack import (
    Prometheus,
    Webhook,
    rules_with_short_for,
    stack_output,
    watched_exporter,
)

pytestmark = [pytest.mark.realstack, pytest.mark.e2e]

TARGET = "basiq-e2e"
SCRAPE_JOB = "asyncjob"
POLL = 0.5
STUCK_AFTER = 6.0
MAX_DURATION = 25.0
# The failed and the stuck job move once, after STEP; the stuck one then stops for good.
STEP = 1.0
# The healthy job moves every HEALTHY_STEP: the time since its progress (at most HEALTHY_STEP plus a
# poll, a scrape and an evaluation) stays under STUCK_AFTER. It runs well past the moment the stuck
# job pages, and ends (succeeded) before MAX_DURATION.
HEALTHY_STEP = 2.0
HEALTHY_STEPS = tuple(f"retrieve-transactions-{page}" for page in range(1, 11))
# The shipped `for:` durations are minutes; the test's are as many seconds. Expressions are unchanged.
FOR_SCALE = 1 / 60
BUDGET = 90.0  # every wait of the test together
RATE_INTERVAL = "1m"  # for $__rate_interval: wider than the test, so every rate sees two samples

EXPECTED_ALERTS = {"AsyncJobFailed", "AsyncJobStuck", "AsyncJobOverdue", "AsyncJobAwaitingUser"}

# Panels that cannot show data on a stack that only polls Basiq jobs, and why. Their queries must
# still parse; every other panel query must return data.
EMPTY_WITH_BASIQ_ONLY = {
    ("asyncjob-overview", "Failed records"): "Basiq jobs carry no record counts (WillSuite, generic do)",
    ("asyncjob-overview", "Jobs with failed records"): "Basiq jobs carry no record counts",
    ("asyncjob-overview", "Connections by status"): "Oxlin connections only",
    ("asyncjob-overview", "Queue events"): "Oxlin queues only",
    ("asyncjob-overview", "Time since last successful sync"): "Oxlin connections only",
    ("asyncjob-overview", "Consent expiry"): "Oxlin PSD2 channels only",
    ("asyncjob-overview", "Replicas"): "one process with its state file: no cluster",
    ("asyncjob-overview", "Shards held per instance"): "no cluster",
    ("asyncjob-overview", "Unowned shards"): "no cluster",
    ("asyncjob-overview", "PostgreSQL reachable"): "no cluster",
    ("asyncjob-overview", "Lease renewal errors, takeovers and handovers"): "no cluster",
    (
        "asyncjob-overview",
        "State commit duration p50 / p99",
    ): "no cluster (nor commits timed by the state file yet)",
    ("asyncjob-job", "Attempts"): "Basiq reports no attempt count (AIMS360, generic do)",
    ("asyncjob-job", "Records"): "Basiq jobs carry no record counts",
}

RULES = ROOT / "alerts" / "asyncjob.rules.yml"
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.DOTALL)


@dataclass(frozen=True)
class Jobs:
    failed: str
    user_failed: str
    stuck: str
    mfa: str
    healthy: str

    def all(self) -> list[str]:
        return [self.failed, self.user_failed, self.stuck, self.mfa, self.healthy]


def load_generator() -> ModuleType:
    if "asyncjob_generate" in sys.modules:
        return sys.modules["asyncjob_generate"]
    spec = importlib.util.spec_from_file_location("asyncjob_generate", ROOT / "dashboards" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["asyncjob_generate"] = module
    spec.loader.exec_module(module)
    return module


def basiq_config(sim_url: str, secrets: Path) -> dict[str, Any]:
    return {
        "global": {
            "poll_interval": f"{POLL}s",
            "stuck_after": f"{STUCK_AFTER:g}s",
            "max_duration": f"{MAX_DURATION:g}s",
            "retention": "10m",
        },
        "targets": [
            {
                "name": TARGET,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                # Stated here, so the test does not lean on Basiq's own map of its codes.
                "cause_map": {"invalid-credentials": "user", "institution-not-available": "provider"},
            }
        ],
    }


def grafana_regex(value: str) -> str:
    """A variable's value as Grafana's Prometheus data source puts it into a `=~` matcher."""
    return re.sub(r"[\\$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, variables: dict[str, str]) -> str:
    # Longest names first, so $job does not eat $job_id or $job_type.
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def test_failed_and_stuck_jobs_page_and_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    with watched_exporter(tmp_path, basiq_config, SCRAPE_JOB, STEP, BUDGET) as w:
        sim, exp, hook, prom, instance, left = w.sim, w.exp, w.hook, w.prom, w.instance, w.left
        try:
            # The rules start once the exporter is scraped, as on a Prometheus that has been running:
            # Prometheus first scrapes a static target up to 5s after it starts, and the shortened
            # AsyncJobExporterDown (absent(up) for 5s) would page for that gap.
            prom.load_rules(rules_with_short_for(RULES.read_text(), FOR_SCALE), timeout=left())

            # The jobs start once Prometheus watches, so every alert's timing counts from here.
            jobs = Jobs(
                failed=create_job(sim, "basiq", scenario="fail", error_code="institution-not-available"),
                user_failed=create_job(sim, "basiq", scenario="fail", error_code="invalid-credentials"),
                stuck=create_job(sim, "basiq", scenario="stuck"),
                mfa=create_job(sim, "basiq", scenario="mfa"),
                healthy=create_job(
                    sim, "basiq", scenario="success", step_seconds=HEALTHY_STEP, steps=HEALTHY_STEPS
                ),
            )
            for job_id in jobs.all():
                r = exp.api("POST", f"/api/v1/targets/{TARGET}/jobs", json={"id": job_id})
                assert r.status_code == 202, r.text

            check_alerts(prom, hook, jobs, instance, left)
            check_dashboards(prom, jobs, instance)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{stack_output(tmp_path, hook)}") from None


def check_alerts(
    prom: Prometheus, hook: Webhook, jobs: Jobs, instance: str, left: Callable[[], float]
) -> None:
    # The per-job alerts name no replica (a job may move to another one), and link to the
    # instance exporting the job.
    common = {"job": SCRAPE_JOB, "target": TARGET}

    def one(alertname: str, job_id: str) -> dict[str, Any]:
        alerts = wait_for(
            lambda: hook.firing(alertname, job_id=job_id),
            timeout=left(),
            what=f"{alertname} for job {job_id} at the webhook",
        )
        return dict(alerts[0])

    failed = one("AsyncJobFailed", jobs.failed)
    expected = {**common, "severity": "warning", "reason": "institution-not-available", "cause": "provider"}
    assert expected.items() <= failed["labels"].items(), failed
    assert "institution-not-available" in failed["annotations"]["description"], failed

    stuck = one("AsyncJobStuck", jobs.stuck)
    assert {**common, "severity": "warning"}.items() <= stuck["labels"].items(), stuck
    # The healthy job was running, and watched by the stuck rule, while the stuck job paged.
    assert prom.vector(f'asyncjob_job_status{{job_id="{jobs.healthy}", status="running"}} == 1'), (
        "the healthy job finished before AsyncJobStuck fired: it proves nothing; lengthen it"
    )

    overdue = one("AsyncJobOverdue", jobs.stuck)
    assert {**common, "severity": "warning"}.items() <= overdue["labels"].items(), overdue
    waiting = one("AsyncJobAwaitingUser", jobs.mfa)
    assert {**common, "severity": "info"}.items() <= waiting["labels"].items(), waiting

    for alert in (failed, stuck, overdue, waiting):
        for key in ("summary", "description", "runbook_url", "dashboard_url"):
            assert alert["annotations"].get(key), (key, alert)
        assert f"var-job_id={alert['labels']['job_id']}" in alert["annotations"]["dashboard_url"], alert
        assert "instance" not in alert["labels"] and "pod" not in alert["labels"], alert
        job_url = f"http://{instance}/jobs/{TARGET}/{alert['labels']['job_id']}"
        assert alert["annotations"]["job_url"] == job_url, alert

    wait_for(
        lambda: prom.vector(f'asyncjob_job_status{{job_id="{jobs.healthy}", status="succeeded"}} == 1'),
        timeout=left(),
        what="the healthy job succeeding",
    )
    # Every evaluation while it ran saw it moving: never near the stuck threshold.
    since = f'target_job_id:asyncjob_job_seconds_since_progress:active{{job_id="{jobs.healthy}"}}[5m]'
    evaluations = prom.vector(f"count_over_time({since})")
    assert evaluations and float(evaluations[0]["value"][1]) >= 5, evaluations
    worst = prom.vector(f"max_over_time({since})")
    assert worst and float(worst[0]["value"][1]) < STUCK_AFTER, worst

    # The user-caused failure was there to page, had the rule let it: failed, with its cause.
    assert prom.vector(f'asyncjob_job_error_info{{job_id="{jobs.user_failed}", cause="user"}} == 1'), (
        "the user-caused failure never reached Prometheus: its silence proves nothing"
    )
    names = {a["labels"]["alertname"] for a in hook.alerts()}
    assert names <= EXPECTED_ALERTS, f"unexpected alerts: {names - EXPECTED_ALERTS}"
    for alert in hook.alerts():
        text = json.dumps([alert["labels"], alert["annotations"]])
        assert alert["labels"].get("job_id") != jobs.healthy and not re.search(
            rf"\b{jobs.healthy}\b", text
        ), f"the healthy job raised an alert: {alert}"
        # The end user's wrong password: nothing for an operator to fix, no alert at all.
        assert alert["labels"].get("job_id") != jobs.user_failed, f"a user-caused failure alerted: {alert}"
        if alert["labels"].get("job_id") == jobs.mfa:
            # Waiting for the end user's one-time code is nobody's fault: no operator is paged.
            assert alert["labels"]["alertname"] == "AsyncJobAwaitingUser", alert


def panel_queries(jobs: Jobs, instance: str) -> Iterator[tuple[str, str, str, list[str]]]:
    """(dashboard uid, panel title, expr, the expr with Grafana's variables substituted: one per choice
    of the dashboard's single-valued $job_id, or just one)."""
    base = {
        "job": SCRAPE_JOB,
        "instance": grafana_regex(instance),
        "target": grafana_regex(TARGET),
        "job_type": ".*",  # the All value of both dashboards' job_type variable
        "__rate_interval": RATE_INTERVAL,
    }
    for uid, title, expr in load_generator().iter_queries():
        choices = jobs.all() if "$job_id" in expr else [""]
        yield uid, title, expr, [substitute(expr, {**base, "job_id": job_id}) for job_id in choices]


def check_dashboards(prom: Prometheus, jobs: Jobs, instance: str) -> None:
    queried = list(panel_queries(jobs, instance))
    titles = {(uid, title) for uid, title, _, _ in queried}
    assert set(EMPTY_WITH_BASIQ_ONLY) <= titles, f"stale allow-list: {set(EMPTY_WITH_BASIQ_ONLY) - titles}"

    broken, empty = [], []
    for uid, title, expr, variants in queried:
        answers = [prom.query(variant) for variant in variants]
        broken += [
            f"{uid} / {title}: {a.get('error')}\n{v}"
            for a, v in zip(answers, variants, strict=True)
            if a["status"] != "success"
        ]
        has_data = any(a["status"] == "success" and a["data"]["result"] for a in answers)
        if not has_data and (uid, title) not in EMPTY_WITH_BASIQ_ONLY:
            empty.append(f"{uid} / {title}:\n{expr}")
    assert not broken, "panel queries Prometheus rejects:\n" + "\n\n".join(broken)
    assert not empty, "panel queries without data:\n" + "\n\n".join(empty)

    # The template variables feeding those queries list what is there.
    boards = load_generator().dashboards()
    values = {
        "job": SCRAPE_JOB,
        "instance": grafana_regex(instance),
        "target": grafana_regex(TARGET),
        "job_type": ".*",
    }
    for board in boards.values():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable["query"]
            found = prom.label_values(match["label"], substitute(match["selector"], values))
            assert found, f"{board['uid']} variable {variable['name']} lists nothing"
            if variable["name"] == "job_id":
                assert set(jobs.all()) <= set(found), found
