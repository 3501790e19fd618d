"""The shipped Prometheus rules: valid, tested by promtool, documented, and current with their generator."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.tools import load_script, require_tool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "asyncjob.rules.yml"
RULE_TESTS = sorted((REPO / "alerts" / "tests").glob("*.yml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"
INHIBIT_EXAMPLE = REPO / "alerts" / "alertmanager-inhibit.example.yml"

SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = {"summary", "description", "runbook_url", "dashboard_url"}


def load_generator() -> ModuleType:
    return load_script("asyncjob_generate", "dashboards/generate.py")


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alerts()]


def rule_tests() -> list[dict[str, Any]]:
    return [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_rule_file_is_what_the_generator_writes() -> None:
    generated = load_generator().render()["alerts/asyncjob.rules.yml"]
    assert RULES.read_text() == generated, "run: python dashboards/generate.py"


def test_generator_writes_the_same_files_into_another_directory(tmp_path: Path) -> None:
    generator = load_generator()
    generator.main(["--out", str(tmp_path)])
    for relative in generator.render():
        assert (tmp_path / relative).read_text() == (REPO / relative).read_text(), relative


def test_promtool_accepts_the_rule_file() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    assert RULE_TESTS, "no promtool tests under alerts/tests"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_asked_for_are_all_there() -> None:
    expected = {
        "AsyncJobFailed",
        "AsyncJobStuck",
        "AsyncJobOverdue",
        "AsyncJobManyStuck",
        "AsyncJobFailureRateHigh",
        "AsyncJobUserFailureRateHigh",
        "AsyncJobRecordsFailing",
        "AsyncJobStepSlow",
        "AsyncJobTargetDown",
        "AsyncJobPollingStale",
        "AsyncJobExporterDown",
        "AsyncJobTrackingCapReached",
        "AsyncJobConnectionSyncStale",
        "AsyncJobConsentExpiring",
        "AsyncJobAwaitingUser",
        "AsyncJobSourceMissing",
        "AsyncJobStateUndocumented",
        "AsyncJobUserConnectionSyncStale",
        "AsyncJobUserRecordsFailing",
        "AsyncJobClusterShardsUnowned",
    }
    assert set(alert_names()) == expected
    assert len(alert_names()) == len(expected), "an alert name is used twice"


@pytest.mark.parametrize("alert", alerts(), ids=alert_names())
def test_every_alert_has_a_severity_and_the_annotations(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    per_job = "job_id" in annotations["dashboard_url"]
    # An alert about one job links to its page on the exporter that reported it.
    assert set(annotations) == ANNOTATIONS | ({"job_url"} if per_job else set())
    if per_job:
        # The alert names no replica: the link goes to the instance exporting the job when the
        # alert is rendered.
        assert annotations["job_url"].startswith("http://{{ with printf `{__name__=~")
        assert annotations["job_url"].endswith("/jobs/{{ $labels.target }}/{{ $labels.job_id | urlquery }}")
    assert "{{" not in annotations["summary"], "the summary is a static sentence"
    assert "{{" in annotations["description"], "the description names what fired"
    anchor = annotations["runbook_url"].rsplit("#", 1)[1]
    assert anchor == github_anchor(alert["alert"])
    assert "/d/" in annotations["dashboard_url"]


def test_runbook_urls_share_one_base() -> None:
    bases = {alert["annotations"]["runbook_url"].split("#")[0] for alert in alerts()}
    assert len(bases) == 1
    assert bases.pop().endswith("docs/runbooks.md")


def test_per_job_alerts_name_the_target_and_job_id() -> None:
    for alert in alerts():
        if "var-job_id" in alert["annotations"]["dashboard_url"]:
            description = alert["annotations"]["description"]
            assert "$labels.target" in description and "$labels.job_id" in description, alert["alert"]


def test_only_info_alerts_never_page() -> None:
    severities = {alert["alert"]: alert["labels"]["severity"] for alert in alerts()}
    assert severities["AsyncJobAwaitingUser"] == "info"
    end_user = [
        "AsyncJobAwaitingUser",
        "AsyncJobConsentExpiring",
        "AsyncJobUserConnectionSyncStale",
        "AsyncJobUserFailureRateHigh",
        "AsyncJobUserRecordsFailing",
    ]
    # A state no one documented is news for whoever maps states, not a page either.
    infos = sorted([*end_user, "AsyncJobStateUndocumented"])
    assert sorted(name for name, severity in severities.items() if severity == "info") == infos
    # What only the end user can fix is labelled so, for Alertmanager to route it to the app team.
    causes = {alert["alert"]: alert["labels"].get("cause") for alert in alerts()}
    assert sorted(name for name, cause in causes.items() if cause == "user") == end_user


def test_no_operator_alert_counts_failures_the_end_user_must_fix() -> None:
    """Alerts built on failures page only for cause!="user"; the user's share is an info alert."""
    by_name = {alert["alert"]: alert for alert in alerts()}
    failed = by_name["AsyncJobFailed"]["expr"]
    assert 'asyncjob_job_error_info{job=~"asyncjob.*", cause!="user"}' in failed
    # The fallback for a failed job without error_info never brings a user-caused one back.
    assert "unless on(job, target, job_id) max without(instance, pod) (asyncjob_job_error_info" in failed
    rate = by_name["AsyncJobFailureRateHigh"]["expr"]
    assert 'cause!="user"' in rate and "asyncjob_jobs_failed:increase1h" in rate
    (ratio,) = (
        r
        for g in rule_groups()
        for r in g["rules"]
        if r.get("record", "").endswith("failure_ratio:increase1h")
    )
    assert "asyncjob_jobs_failed" in ratio["expr"]
    user = by_name["AsyncJobUserFailureRateHigh"]
    assert user["labels"]["severity"] == "info" and 'cause="user"' in user["expr"]
    for name, alert in by_name.items():
        if alert["labels"]["severity"] != "info" and "failed" in alert["expr"].lower():
            # The end user's share may only be taken out (`unless … cause="user"`), never counted.
            for line in alert["expr"].splitlines():
                assert 'cause="user"' not in line or line.strip().startswith("unless"), name
    records = by_name["AsyncJobRecordsFailing"]["expr"]
    assert (
        'unless on(job, target, job_id) max without(instance, pod) (asyncjob_job_error_info{job=~"asyncjob.*", cause="user"})'
        in records
    )


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "AsyncJobUserFailureRateHigh", "severity": "info", "cause": "user"}, "app-team"),
        ({"alertname": "AsyncJobAwaitingUser", "severity": "info", "cause": "user"}, "app-team"),
        ({"alertname": "AsyncJobConsentExpiring", "severity": "info", "cause": "user"}, "app-team"),
        ({"alertname": "AsyncJobFailed", "severity": "warning", "cause": "provider"}, "ops"),
        ({"alertname": "AsyncJobFailureRateHigh", "severity": "critical"}, "pager"),
    ],
)
def test_alertmanager_example_sends_what_the_end_user_must_fix_to_the_application_team(
    labels: dict[str, str], receiver: str
) -> None:
    amtool = require_tool("amtool")
    result = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={INHIBIT_EXAMPLE}",
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_every_alert_has_a_runbook_section() -> None:
    headings = re.findall(r"^## (\S+)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    missing = set(alert_names()) - set(headings)
    assert not missing, f"docs/runbooks.md lacks: {sorted(missing)}"


@pytest.mark.parametrize("name", alert_names())
def test_every_alert_has_a_promtool_test_that_fires_and_one_that_stays_silent(name: str) -> None:
    cases = [case for case in rule_tests() if case["alertname"] == name]
    assert any(case.get("exp_alerts") for case in cases), f"no promtool test where {name} fires"
    assert any(not case.get("exp_alerts") for case in cases), f"no promtool test where {name} stays silent"


def test_every_rule_reads_only_the_exporters_series() -> None:
    selector = load_generator().CONFIG.exporter_selector
    for group in rule_groups():
        for rule in group["rules"]:
            expr = rule["expr"]
            selectors = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\}", expr)
            assert selectors, rule
            for found in selectors:
                assert selector in found, f"{rule.get('alert') or rule.get('record')}: {found}"
            names = re.findall(r"(?<![\w:])([a-zA-Z_][a-zA-Z0-9_:]*)(?![\w:{])", expr)
            bare = [name for name in names if name.startswith("asyncjob_") or ":" in name]
            assert not bare, f"selector missing on {bare}"


def test_thresholds_are_joined_on_the_target() -> None:
    for rule in alerts():
        for metric in re.findall(r"asyncjob_target_[a-z_]+_seconds", rule["expr"]):
            assert "on(job, target)" in rule["expr"], (rule["alert"], metric)
            # Every replica exports the thresholds: they meet the jobs without the replica labels.
            assert f"max without(instance, pod) ({metric}" in rule["expr"], (rule["alert"], metric)


def test_recording_rules_follow_level_metric_operations() -> None:
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                level, metric, operations = rule["record"].split(":")
                assert level and operations and metric.startswith("asyncjob_"), rule["record"]


def test_failed_is_built_on_the_per_job_state_set_not_on_counters() -> None:
    (failed,) = (rule for rule in alerts() if rule["alert"] == "AsyncJobFailed")
    assert 'status="failed"} == 1' in failed["expr"]
    assert "asyncjob_job_error_info" in failed["expr"]
    assert "_total" not in failed["expr"]


def test_alertmanager_example_is_valid() -> None:
    amtool = require_tool("amtool")
    result = subprocess.run([amtool, "check-config", str(INHIBIT_EXAMPLE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_example_silences_per_job_alerts_while_a_target_is_down() -> None:
    config = yaml.safe_load(INHIBIT_EXAMPLE.read_text())
    generator = load_generator()
    per_job = {alert.name for alert in generator.rules.job_alerts(generator.CONFIG, "")}
    # The target-level alert counted from the same jobs' records looks as stale.
    per_job |= {alert.name for alert in generator.rules.job_count_alerts(generator.CONFIG, "")}
    silenced: set[str] = set()
    for rule in config["inhibit_rules"]:
        assert set(rule["equal"]) >= {"target", "instance"}
        sources = _alertnames(rule["source_matchers"])
        targets = _alertnames(rule["target_matchers"])
        assert sources <= set(alert_names()) and targets <= set(alert_names())
        if sources == {"AsyncJobTargetDown", "AsyncJobPollingStale"}:
            silenced |= targets
    assert silenced == per_job


def _alertnames(matchers: list[str]) -> set[str]:
    names: set[str] = set()
    for matcher in matchers:
        match = re.fullmatch(r'alertname(=~|=)"([^"]+)"', matcher.strip())
        assert match, matcher
        names |= set(match.group(2).split("|"))
    return names


def _alert(name: str) -> dict[str, Any]:
    (found,) = (rule for rule in alerts() if rule["alert"] == name)
    return found


def test_an_overdue_job_is_not_also_paged_as_stuck() -> None:
    stuck = _alert("AsyncJobStuck")["expr"]
    overdue = _alert("AsyncJobOverdue")["expr"]
    assert (
        "unless on(job, target, job_id)\n(max without(instance, pod) (target_job_id:asyncjob_job_runtime_seconds"
        in stuck
    )
    # Overdue is held back only by its target's AsyncJobManyStuck, never by stuck.
    assert "seconds_since_progress" not in overdue.split("\nunless on(job, target)\n")[0]


def test_stuck_and_overdue_cover_jobs_in_status_unknown() -> None:
    for group in rule_groups():
        for rule in group["rules"]:
            if rule.get("record", "").endswith(":active"):
                assert 'status=~"pending|running|unknown"' in rule["expr"], rule["record"]


def test_many_stuck_jobs_of_one_target_page_once_and_hold_back_their_own_alerts() -> None:
    many = _alert("AsyncJobManyStuck")
    assert many["expr"].rstrip().endswith(">= 10")
    assert "count by (job, target)" in many["expr"]
    assert many["labels"]["severity"] == "critical"
    for name in ("AsyncJobStuck", "AsyncJobOverdue"):
        assert "unless on(job, target)\n(count by (job, target)" in _alert(name)["expr"]
    # The rule lives in the group of the records it counts: never a step behind them.
    (jobs,) = (g for g in rule_groups() if any(r.get("alert") == "AsyncJobStuck" for r in g["rules"]))
    assert "AsyncJobManyStuck" in [r.get("alert") for r in jobs["rules"]]


def test_the_many_stuck_threshold_is_a_mixin_setting() -> None:
    from exporter.mixin import rules, user

    cfg = user.config_from({"many_stuck_jobs": 25})
    text = rules.dump_yaml(rules.rule_groups(cfg))
    assert ">= 25" in text and ">= 10" not in text
    with pytest.raises(user.MixinConfigError, match="many_stuck_jobs"):
        user.config_from({"many_stuck_jobs": "lots"})


def test_a_provider_failure_pages_per_job_only_while_the_targets_failure_rate_is_low() -> None:
    failed = _alert("AsyncJobFailed")["expr"]
    held_back = failed.split("\nunless on(job, target, job_id)\n", 1)[1]
    assert 'asyncjob_job_error_info{job=~"asyncjob.*", cause="provider"}' in held_back
    assert "and on(job, target)" in held_back
    assert "asyncjob_jobs_failed:increase1h" in held_back and 'cause!="user"' in held_back
    # A `for` gives a mass failure the time to show in the ratio before any job of it pages.
    assert _alert("AsyncJobFailed")["for"] == "2m"


def test_a_failed_jobs_notification_says_what_happened_from_its_labels() -> None:
    annotations = _alert("AsyncJobFailed")["annotations"]
    description = annotations["description"]
    for label in ("$labels.reason", "$labels.cause", "$labels.job_id", "$labels.target"):
        assert label in description
    # It sends the reader to the job's page (message and timeline), not to an API that needs a token.
    assert annotations["job_url"] in description
    assert "/api/v1" not in description
