"""Job objectives in the mixin: one `slos:` block gives recording rules, burn-rate alerts, promtool
tests that pass against them and a dashboard per objective; without it nothing changes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.__main__ import main
from exporter.config.slos import SLO
from exporter.mixin import files, slo_files, slo_tests, slos, user
from exporter.mixin.config import CONFIG
from tests.tools import require_tool

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "mixin" / "slos.yml"
REFRESH = {
    "name": "basiq-refresh",
    "target": "basiq-prod",
    "job_type": "connection",
    "objective": 0.99,
    "latency": "5m",
    "window": "28d",
}


def config(**more: Any) -> Any:
    return user.config_from({"slos": [REFRESH], **more})


def rule_file(cfg: Any) -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(files.render(cfg)[slo_files.RULES_PATH])
    return rules


def alerts(cfg: Any) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_file(cfg)["groups"] for r in g["rules"] if "alert" in r}


def records(cfg: Any) -> list[str]:
    return [r["record"] for g in rule_file(cfg)["groups"] for r in g["rules"] if "record" in r]


def test_without_slos_the_generated_files_are_those_of_today() -> None:
    assert set(files.render(CONFIG)) == {
        "alerts/asyncjob.rules.yml",
        "alerts/tests/generated.yml",
        "dashboards/asyncjob-overview.json",
        "dashboards/asyncjob-job.json",
    }
    with_slos = files.render(config())
    for path, text in files.render(CONFIG).items():
        assert with_slos[path] == text, path  # the objectives add files, change none


def test_the_error_ratio_is_recorded_over_every_window() -> None:
    names = records(config())
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"slo:asyncjob_slo_jobs_errors:ratio_rate{window}" in names
    assert slos.BUDGET_REMAINING in names and slos.WINDOW_ERROR_RATIO in names


def test_user_failures_are_neither_good_nor_bad_in_the_ratio() -> None:
    (five,) = [
        r for g in rule_file(config())["groups"] for r in g["rules"] if r.get("record", "").endswith("rate5m")
    ]
    assert 'result="bad"' in five["expr"] and 'result=~"good|bad"' in five["expr"]
    assert "user" not in five["expr"]


@pytest.mark.parametrize(
    ("window", "factors"),
    [("30d", (14.4, 6, 3, 1)), ("28d", (13.44, 5.6, 2.8, 0.933333))],
)
def test_burn_factors_are_the_workbooks_scaled_to_the_window(window: str, factors: tuple[float, ...]) -> None:
    cfg = user.config_from({"slos": [{**REFRESH, "window": window}]})
    found = alerts(cfg)
    exprs = found["AsyncJobSLOBurnFast"]["expr"] + found["AsyncJobSLOBurnSlow"]["expr"]
    pairs = re.findall(r"ratio_rate(\w+)\{[^}]*\} > \(([\d.]+) \* 0.01\)", exprs)
    assert pairs == [
        ("1h", f"{factors[0]:g}"),
        ("5m", f"{factors[0]:g}"),
        ("6h", f"{factors[1]:g}"),
        ("30m", f"{factors[1]:g}"),
        ("1d", f"{factors[2]:g}"),
        ("2h", f"{factors[2]:g}"),
        ("3d", f"{factors[3]:g}"),
        ("6h", f"{factors[3]:g}"),
    ]


def test_the_alerts_are_labelled_with_the_slo_and_page_or_ticket() -> None:
    found = alerts(config())
    assert found["AsyncJobSLOBurnFast"]["labels"] == {"severity": "critical", "slo": "basiq-refresh"}
    assert found["AsyncJobSLOBurnSlow"]["labels"] == {"severity": "warning", "slo": "basiq-refresh"}
    for alert in found.values():
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
        assert annotations["dashboard_url"].endswith(
            "/d/asyncjob-slo-basiq-refresh/asyncjob-slo-basiq-refresh"
        )
        assert annotations["runbook_url"].endswith("#" + alert["alert"].lower())


def test_the_divisor_shortens_every_window_and_keeps_the_factors() -> None:
    cfg = config(slo_windows_divisor=60)
    names = records(cfg)
    assert [n.rsplit("rate", 1)[1] for n in names if "ratio_rate" in n] == [
        "5s",
        "30s",
        "1m",
        "2m",
        "6m",
        "24m",
        "72m",
    ]
    assert "> (13.44 * 0.01)" in alerts(cfg)["AsyncJobSLOBurnFast"]["expr"]
    assert "[672m]" in json.dumps(rule_file(cfg))  # the 28-day window, divided


def run_promtool_tests(out: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(out / slo_files.RULES_PATH)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return subprocess.run(
        [promtool, "test", "rules", "slos.yml"], capture_output=True, text=True, cwd=out / "alerts/tests"
    )


def test_one_command_gives_rules_tests_and_a_dashboard_and_the_tests_pass(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["mixin", "--config", str(EXAMPLE), "--out", str(out)]) == 0
    cfg = user.load(EXAMPLE)
    assert cfg.slos, "the example declares objectives"
    for slo in cfg.slos:
        assert (out / slo_files.dashboard_path(slo.name)).is_file()
    tests = yaml.safe_load((out / slo_files.RULE_TESTS_PATH).read_text())["tests"]
    assert {t["name"].split(": ", 1)[1] for t in tests} == {case.name for case in slo_tests.CASES}
    run = run_promtool_tests(out)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_generated_tests_say_what_the_issue_asks_for_a_28_day_objective() -> None:
    slo = SLO.model_validate(REFRESH)
    by_name = {case.name: case for case in slo_tests.CASES}
    assert all(slo_tests.expected(slo, case) for case in slo_tests.CASES)
    outage = by_name["total outage"]
    assert outage.phases[0] == slo_tests.Phase(360, 0.5)
    assert (360 + 10, "AsyncJobSLOBurnFast", True) in outage.checks
    assert (360 + 45, "AsyncJobSLOBurnFast", True) in by_name["20x burn"].checks
    assert by_name["2x burn"].never == ("AsyncJobSLOBurnFast",)
    assert any(alert == "AsyncJobSLOBurnSlow" and fires for _, alert, fires in by_name["2x burn"].checks)
    assert set(by_name["0.5x burn"].never) == set(by_name["end users' failures"].never) == set(slos.ALERTS)
    assert by_name["end users' failures"].phases[1].user > 0


def test_the_tests_fail_against_rules_of_another_objective(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files.write(out, user.config_from({"slos": [{**REFRESH, "objective": 0.9999}]}))
    (out / slo_files.RULE_TESTS_PATH).write_text(files.render(config())[slo_files.RULE_TESTS_PATH])
    assert run_promtool_tests(out).returncode != 0


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"slos": [{**REFRESH, "latency": "soon"}]}, "slos[0].latency: 'soon' is not a duration"),
        ({"slos": [{**REFRESH, "objective": 0.8}]}, "slos[0]: AsyncJobSLOBurnFast over 1h would need"),
        ({"slos": [REFRESH, REFRESH]}, "duplicate SLO name 'basiq-refresh'"),
        ({"slos": [REFRESH], "slo_windows_divisor": 7}, "slo_windows_divisor: expected a whole number"),
        ({"slos": {"name": "x"}}, "slos: expected a list"),
    ],
)
def test_a_bad_objective_in_the_mixin_config_is_named(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(user.MixinConfigError) as e:
        user.config_from(data)
    assert any(problem in p for p in e.value.problems), e.value.problems


def exporter_config(tmp_path: Path, slo: dict[str, Any]) -> Path:
    path = tmp_path / "asyncjob.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "targets": [{"name": "basiq-prod", "provider": "basiq", "base_url": "https://x"}],
                "slos": [slo],
            }
        )
    )
    return path


def mixin_config(tmp_path: Path) -> Path:
    path = tmp_path / "mixin.yml"
    path.write_text(yaml.safe_dump({"slos": [REFRESH]}))
    return path


def test_the_mixin_refuses_objectives_that_differ_from_the_exporters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = exporter_config(tmp_path, {**REFRESH, "latency": "10m"})
    mixin = mixin_config(tmp_path)
    args = ["mixin", "--config", str(mixin), "--out", str(tmp_path / "o"), "--config.file", str(exporter)]
    code = main(args)
    assert code == 2
    assert "slos[basiq-refresh].latency: 5m here, 10m in the exporter's config" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_mixin_accepts_objectives_that_agree_with_the_exporters(tmp_path: Path) -> None:
    exporter = exporter_config(tmp_path, REFRESH)
    out = tmp_path / "o"
    args = [
        "--config.file",
        str(exporter),
        "mixin",
        "--config",
        str(mixin_config(tmp_path)),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert (out / slo_files.RULES_PATH).is_file()


def test_a_case_the_window_changes_by_design_is_left_out() -> None:
    # Over 7 days, half the budget's pace for three days spends 21 % of it: a ticket, rightly.
    weekly = SLO.model_validate({**REFRESH, "window": "7d"})
    by_name = {case.name: case for case in slo_tests.CASES}
    assert not slo_tests.expected(weekly, by_name["0.5x burn"])
    cfg = user.config_from({"slos": [{**REFRESH, "window": "7d"}]})
    names = [t["name"] for t in yaml.safe_load(files.render(cfg)[slo_files.RULE_TESTS_PATH])["tests"]]
    assert "basiq-refresh: 0.5x burn" not in names and "basiq-refresh: total outage" in names


@pytest.mark.parametrize(
    ("alert", "receiver"), [("AsyncJobSLOBurnFast", "pager"), ("AsyncJobSLOBurnSlow", "ops")]
)
def test_the_shipped_alertmanager_example_pages_the_fast_burn_and_tickets_the_slow(
    alert: str, receiver: str
) -> None:
    amtool = require_tool("amtool")
    labels = alerts(config())[alert]["labels"]
    example = REPO / "alerts" / "alertmanager-inhibit.example.yml"
    args = [amtool, "config", "routes", "test", f"--config.file={example}", f"alertname={alert}"]
    result = subprocess.run(args + [f"{k}={v}" for k, v in labels.items()], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]
