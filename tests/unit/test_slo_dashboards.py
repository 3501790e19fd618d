"""The dashboard of each job objective: the checks the shipped dashboards pass (templated data
source, job and instance on every selector, $__rate_interval, units, queries that parse), and the
panels an objective needs: SLI over the window, budget left, burn rate by window, bad jobs linked
to their pages."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.mixin import files, slo_files, slos, user
from tests.tools import require_tool
from tests.unit.test_dashboards import DATASOURCE, PANELS_WITH_UNITS, SELECTOR, as_promql, walk

REPO = Path(__file__).resolve().parents[2]
SLOS: list[dict[str, Any]] = [
    {
        "name": "basiq-refresh",
        "target": "basiq-prod",
        "job_type": "connection",
        "objective": 0.99,
        "latency": "5m",
    },
    {"name": "exports", "target_regex": "exports-.*", "objective": 0.995, "latency": "1h", "window": "30d"},
]


def rendered() -> dict[str, str]:
    return files.render(user.config_from({"slos": SLOS}))


def boards() -> dict[str, dict[str, Any]]:
    out = rendered()
    return {slo["name"]: json.loads(out[slo_files.dashboard_path(slo["name"])]) for slo in SLOS}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (panel for panel in board["panels"] if panel["type"] != "row")


def queries() -> Iterator[tuple[str, str, str]]:
    for name, board in boards().items():
        for panel in panels(board):
            for target in panel["targets"]:
                yield name, panel["title"], target["expr"]


def recorded() -> set[str]:
    rules = yaml.safe_load(rendered()[slo_files.RULES_PATH])
    return {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}


def test_one_dashboard_per_objective_with_its_own_uid() -> None:
    found = boards()
    assert {board["uid"] for board in found.values()} == {
        "asyncjob-slo-basiq-refresh",
        "asyncjob-slo-exports",
    }
    for board in found.values():
        assert board["id"] is None and 36 <= board["schemaVersion"] <= 41
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))


def test_the_panels_an_objective_needs_are_there() -> None:
    board = boards()["basiq-refresh"]
    by_title = {panel["title"]: panel for panel in panels(board)}
    assert "1 - slo:asyncjob_slo_jobs_errors:ratio_window" in by_title["SLI over 28d"]["targets"][0]["expr"]
    assert slos.BUDGET_REMAINING in by_title["Error budget remaining"]["targets"][0]["expr"]
    burn = [t["legendFormat"] for t in by_title["Burn rate by window"]["targets"]]
    assert burn == ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    tables = [panel for panel in panels(board) if panel["type"] == "table"]
    assert [t["title"] for t in tables] == [
        "Failed, not for the end user",
        "Succeeded later than 5m",
        "Unfinished past 5m",
    ]


def test_bad_jobs_are_the_objectives_and_link_to_their_pages() -> None:
    board = boards()["basiq-refresh"]
    for panel in panels(board):
        if panel["type"] != "table":
            continue
        expr = panel["targets"][0]["expr"]
        assert 'target="basiq-prod"' in expr and 'job_type="connection"' in expr, panel["title"]
        (link,) = panel["fieldConfig"]["defaults"]["links"]
        assert link["url"] == (
            "http://${__data.fields.instance}/jobs/${__data.fields.target}/${__data.fields.job_id:percentencode}"
        )
    failed = next(p for p in panels(board) if p["title"].startswith("Failed"))["targets"][0]["expr"]
    assert 'cause!="user"' in failed  # the end users' failures are not the objective's
    assert (
        "> 300" in next(p for p in panels(board) if p["title"].startswith("Unfinished"))["targets"][0]["expr"]
    )


def test_data_source_is_templated_everywhere() -> None:
    for name, board in boards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        assert {"job", "instance"} <= set(variables)
        for key, value in walk(board):
            if key == "datasource" and value.get("type") != "grafana":
                assert value == DATASOURCE, name


def test_every_panel_has_a_description_and_a_unit() -> None:
    for name, board in boards().items():
        for panel in panels(board):
            assert panel["title"] and panel["description"], name
            if panel["type"] in PANELS_WITH_UNITS:
                assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {panel['title']}"


def test_exporter_series_match_job_and_instance_and_recorded_ones_are_recorded() -> None:
    names = recorded()
    for name, title, expr in queries():
        for metric, matchers in SELECTOR.findall(expr):
            if ":" in metric:
                assert metric in names, f"{name} / {title}: {metric}"
                assert 'slo="' in matchers
            else:
                assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, f"{title}: {metric}"
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window == "$__rate_interval", f"{name} / {title}"
        for match in re.finditer(r"\w+_total\{[^}]*\}", expr):
            assert re.search(r"rate\($", expr[: match.start()]), f"{name} / {title}"


def test_the_bad_jobs_link_through_the_exporters_external_url_when_it_has_one() -> None:
    cfg = user.config_from({"slos": SLOS, "external_url": "https://asyncjob.example.com"})
    board = json.loads(files.render(cfg)[slo_files.dashboard_path("basiq-refresh")])
    urls = {link["url"] for p in panels(board) for link in p["fieldConfig"]["defaults"].get("links", [])}
    assert urls == {
        "https://asyncjob.example.com/jobs/${__data.fields.target}/${__data.fields.job_id:percentencode}"
    }


@pytest.mark.parametrize("divisor", [1, 60])
def test_every_query_parses(tmp_path: Path, divisor: int) -> None:
    promtool = require_tool("promtool")
    out = files.render(user.config_from({"slos": SLOS, "slo_windows_divisor": divisor}))
    checks: list[dict[str, str]] = []
    for slo in SLOS:
        board = json.loads(out[slo_files.dashboard_path(str(slo["name"]))])
        for panel in panels(board):
            for target in panel["targets"]:
                checks.append({"record": f"dashboard_query_{len(checks)}", "expr": as_promql(target["expr"])})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "slo-dashboards", "rules": checks}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_exporter_metric_the_rules_and_dashboards_read_is_one_the_exporter_serves() -> None:
    documented = set(
        re.findall(r"^\| `(asyncjob_[a-z0-9_]+)` \|", (REPO / "docs/metrics.md").read_text(), re.M)
    )
    rules = yaml.safe_load(rendered()[slo_files.RULES_PATH])
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exprs += [expr for _, _, expr in queries()]
    for expr in exprs:
        for metric, _ in SELECTOR.findall(expr):
            if ":" not in metric and metric != "ALERTS":
                assert metric in documented, metric
