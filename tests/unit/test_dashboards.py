"""The shipped Grafana dashboards: current with their generator, and clean under the dashboard-linter's rules.

The rules checked here are grafana/dashboard-linter's: a templated Prometheus data source used by
every panel and target, `job` and `instance` variables matched by every selector,
`$__rate_interval` in every rate, counters only inside rate/increase, units on every panel.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.tools import load_script, require_tool

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = {
    "asyncjob-overview": REPO / "dashboards" / "asyncjob-overview.json",
    "asyncjob-job": REPO / "dashboards" / "asyncjob-job.json",
}
RULES = REPO / "alerts" / "asyncjob.rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# grafana/dashboard-linter panel-units-rule checks these panel types.
PANELS_WITH_UNITS = {"stat", "timeseries", "table", "gauge", "bargauge"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")


def load_generator() -> ModuleType:
    return load_script("asyncjob_generate", "dashboards/generate.py")


def dashboards() -> dict[str, dict[str, Any]]:
    return {uid: json.loads(path.read_text()) for uid, path in DASHBOARDS.items()}


def panels() -> Iterator[tuple[str, dict[str, Any]]]:
    for uid, board in dashboards().items():
        for panel in board["panels"]:
            if panel["type"] != "row":
                yield uid, panel


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def queries() -> list[tuple[str, str, str]]:
    return list(load_generator().iter_queries())


def as_promql(expr: str) -> str:
    """The query as Prometheus would receive it from Grafana."""
    expr = expr.replace("$__rate_interval", "5m")
    return re.sub(r"\$\{?\w+\}?", ".+", expr)


def walk(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def test_dashboards_are_what_the_generator_writes() -> None:
    generated = load_generator().render()
    for path in DASHBOARDS.values():
        relative = str(path.relative_to(REPO))
        assert path.read_text() == generated[relative], "run: python dashboards/generate.py"


def test_uids_are_stable_and_unique() -> None:
    boards = dashboards()
    assert {board["uid"] for board in boards.values()} == set(DASHBOARDS)
    for uid, board in boards.items():
        assert board["uid"] == uid
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{uid}: panel ids repeat"


def test_schema_is_current_grafana() -> None:
    for board in dashboards().values():
        assert 36 <= board["schemaVersion"] <= 41
        assert board["id"] is None, "a dashboard id is per Grafana instance; uid identifies it"


def test_datasource_is_a_prometheus_variable() -> None:
    for board in dashboards().values():
        datasource = variables(board)["datasource"]
        assert datasource["type"] == "datasource"
        assert datasource["query"] == "prometheus"
        assert datasource["label"] == "Data source"


def test_no_datasource_uid_is_hard_coded() -> None:
    for uid, board in dashboards().items():
        for key, value in walk(board):
            if key != "datasource":
                continue
            assert isinstance(value, dict), f"{uid}: datasource given by name: {value!r}"
            if value.get("type") == "grafana":  # the built-in annotations
                continue
            assert value == DATASOURCE, f"{uid}: {value}"


@pytest.mark.parametrize("name", ["job", "instance"])
def test_job_and_instance_variables_follow_the_linter(name: str) -> None:
    for board in dashboards().values():
        variable = variables(board)[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["label"] == name.capitalize()
        assert variable["multi"] is True
        assert variable["allValue"] == ".+"


def test_filter_variables_are_there() -> None:
    boards = dashboards()
    assert {"datasource", "job", "instance", "target", "job_type"} <= set(
        variables(boards["asyncjob-overview"])
    )
    assert {"datasource", "job", "instance", "target", "job_type", "job_id"} <= set(
        variables(boards["asyncjob-job"])
    )


def test_query_variables_reload_on_time_range_change() -> None:
    for board in dashboards().values():
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["refresh"] == 2, variable["name"]
                assert variable["datasource"] == DATASOURCE


def test_every_panel_has_a_title_description_and_the_datasource_variable() -> None:
    for uid, panel in panels():
        assert panel["title"] and panel["description"], f"{uid}: {panel['id']}"
        assert panel["datasource"] == DATASOURCE, f"{uid}: {panel['title']}"
        assert panel["targets"], f"{uid}: {panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{uid}: {panel['title']}"


def test_every_panel_has_a_unit() -> None:
    for uid, panel in panels():
        if panel["type"] in PANELS_WITH_UNITS:
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{uid}: {panel['title']}"


def test_iter_queries_yields_every_target() -> None:
    expected = [
        (uid, panel["title"], target["expr"]) for uid, panel in panels() for target in panel["targets"]
    ]
    assert queries() == expected


def test_every_selector_matches_job_and_instance() -> None:
    for uid, title, expr in queries():
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{uid} / {title}: no selector in {expr}"
        for metric, matchers in selectors:
            assert 'job=~"$job"' in matchers, f"{uid} / {title}: {metric}"
            assert 'instance=~"$instance"' in matchers, f"{uid} / {title}: {metric}"
        names = re.findall(r"(?<![\w:$])([a-zA-Z_][a-zA-Z0-9_:]*)(?![\w:{(])", expr)
        bare = [name for name in names if name.startswith("asyncjob_") or ":" in name]
        assert not bare, f"{uid} / {title}: no selector on {bare}"


def test_every_range_uses_rate_interval() -> None:
    for uid, title, expr in queries():
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window == "$__rate_interval", f"{uid} / {title}: [{window}]"


def test_counters_and_buckets_are_only_read_through_rate_or_increase() -> None:
    for uid, title, expr in queries():
        for match in re.finditer(r"\w+(_total|_bucket)\{[^}]*\}", expr):
            assert expr[match.end() :].startswith("[$__rate_interval]"), f"{uid} / {title}"
            assert re.search(r"(rate|increase)\($", expr[: match.start()]), f"{uid} / {title}"


def test_heatmap_queries_ask_for_buckets() -> None:
    for uid, panel in panels():
        if panel["type"] == "heatmap":
            for target in panel["targets"]:
                assert target["format"] == "heatmap", f"{uid}: {panel['title']}"
                assert "_bucket" in target["expr"]


def test_recorded_series_on_the_dashboards_are_recorded_by_the_rules() -> None:
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for uid, title, expr in queries():
        for metric, _ in SELECTOR.findall(expr):
            if ":" in metric:
                assert metric in recorded, f"{uid} / {title}: {metric}"


def test_every_query_parses(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    checks = [
        {"record": f"dashboard_query_{i}", "expr": as_promql(expr)}
        for i, (_, _, expr) in enumerate(queries())
    ]
    for board in dashboards().values():
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
                assert match, variable["name"]
                checks.append(
                    {"record": f"dashboard_variable_{variable['name']}", "expr": as_promql(match[1])}
                )
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": checks}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_job_dashboards_duration_panels_show_exemplars_linked_to_the_job_page() -> None:
    board = dashboards()["asyncjob-job"]
    with_exemplars = [p for p in board["panels"] if any(t.get("exemplar") for t in p.get("targets", []))]
    histograms = {
        re.search(r"asyncjob_\w+_duration_seconds_bucket", t["expr"]).group(0)  # type: ignore[union-attr]
        for p in with_exemplars
        for t in p["targets"]
    }
    assert histograms == {"asyncjob_job_duration_seconds_bucket", "asyncjob_step_duration_seconds_bucket"}
    for panel in with_exemplars:
        urls = [link["url"] for link in panel["fieldConfig"]["defaults"]["links"]]
        assert urls == [
            "http://${instance}/jobs/${__data.fields.target}/${__data.fields.job_id:percentencode}"
        ], panel["title"]
