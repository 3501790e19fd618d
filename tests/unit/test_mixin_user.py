"""Alerts tuned without Python: a user's mixin YAML gives rules, promtool tests and dashboards
that carry the user's values, and the generated tests pass against the generated rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.tools import load_script, require_tool

if TYPE_CHECKING:
    from exporter.mixin.config import Config

USER_CONFIG = {
    "exporter_selector": 'job="billing-asyncjob", namespace=~"prod-.*"',
    "grafana_url": "https://grafana.example.com/",
    "job_page_scheme": "https",
    "runbook_base_url": "https://wiki.example.com/asyncjob",
    "stuck_for": "20m",
    "failure_ratio": 0.5,
    "failure_window": "30m",
    "records_failed_ratio": 0.2,
    "step_slow_seconds": 60,
    "step_slow_seconds_by_step": {"create-report": 300},
    "polling_stale_intervals": 5,
    "connection_sync_stale_seconds": 7200,
    "consent_expiry_warning_days": 3,
    "awaiting_user_for": "1h",
    "failed_for": "0m",
    "many_stuck_jobs": 4,
    "severity": {"AsyncJobStuck": "critical", "AsyncJobTargetDown": "warning"},
}


def generator() -> ModuleType:
    return load_script("asyncjob_generate", "dashboards/generate.py")


def user_module() -> ModuleType:
    from exporter.mixin import user

    return user


def write_user_mixin(tmp_path: Path) -> Path:
    cfg = user_module().config_from(USER_CONFIG)
    out = tmp_path / "out"
    generator().write(out, cfg)
    return out


def test_the_users_values_reach_the_rules_and_dashboards(tmp_path: Path) -> None:
    out = write_user_mixin(tmp_path)
    rules = yaml.safe_load((out / "alerts/asyncjob.rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert (
        alerts["AsyncJobStuck"]["for"] == "20m"
        and alerts["AsyncJobStuck"]["labels"]["severity"] == "critical"
    )
    assert alerts["AsyncJobTargetDown"]["labels"]["severity"] == "warning"
    assert 'job="billing-asyncjob", namespace=~"prod-.*"' in alerts["AsyncJobTargetDown"]["expr"]
    assert alerts["AsyncJobFailed"]["annotations"]["runbook_url"].startswith(
        "https://wiki.example.com/asyncjob#"
    )
    assert "https://grafana.example.com/d/" in alerts["AsyncJobFailed"]["annotations"]["dashboard_url"]
    assert "> 0.5" in alerts["AsyncJobFailureRateHigh"]["expr"]
    job_url = alerts["AsyncJobStuck"]["annotations"]["job_url"]
    assert job_url.startswith("https://{{ with printf `{__name__=~") and "$labels.namespace" in job_url
    board = json.loads((out / "dashboards/asyncjob-job.json").read_text())
    links = [link["url"] for link in board["links"] if link["type"] == "link"]
    assert links == ["https://${instance}/jobs/${target}/${job_id:percentencode}"]


def test_the_generated_promtool_tests_pass_for_the_users_values(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    out = write_user_mixin(tmp_path)
    tests = out / "alerts/tests/generated.yml"
    assert "billing-asyncjob" in tests.read_text()
    check = subprocess.run(
        [promtool, "check", "rules", str(out / "alerts/asyncjob.rules.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, cwd=tests.parent
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_mixin_command_writes_files_whose_tests_pass_for_the_users_values(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    config = tmp_path / "mixin.yml"
    config.write_text(yaml.safe_dump(USER_CONFIG))
    out = tmp_path / "monitoring"
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "mixin", "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    tests = out / "alerts/tests/generated.yml"
    assert "billing-asyncjob" in (out / "alerts/asyncjob.rules.yml").read_text()
    run = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, cwd=tests.parent
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_mixin_command_names_a_bad_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "mixin.yml"
    config.write_text("grafana_ulr: https://grafana.example.com\n")
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "mixin", "--config", str(config), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "grafana_ulr: unknown key; did you mean grafana_url?" in r.stderr
    assert not (tmp_path / "o").exists()


def test_tests_generated_for_other_values_fail_against_these_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    out = write_user_mixin(tmp_path)
    shipped_tests = generator().render()["alerts/tests/generated.yml"]  # the defaults' tests
    (out / "alerts/tests/generated.yml").write_text(shipped_tests)
    run = subprocess.run(
        [promtool, "test", "rules", "generated.yml"], capture_output=True, text=True, cwd=out / "alerts/tests"
    )
    assert run.returncode != 0


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"stuck_fro": "5m"}, "stuck_fro: unknown key; did you mean stuck_for?"),
        (
            {"severity": {"AsyncJobStuk": "critical"}},
            "severity.AsyncJobStuk: no such alert; did you mean AsyncJobStuck?",
        ),
        (
            {"severity": {"AsyncJobStuck": "page"}},
            "severity.AsyncJobStuck: 'page' is not one of critical, warning, info",
        ),
        ({"failure_ratio": "high"}, "failure_ratio: expected a number"),
        ({"stuck_for": "soon"}, "stuck_for: 'soon' is not a duration"),
        ({"cluster_lease_ttl": "soon"}, "cluster_lease_ttl: 'soon' is not a duration"),
        ({"cluster_lease_ttl": "0s"}, "cluster_lease_ttl: expected a duration longer than 0s"),
    ],
)
def test_a_bad_mixin_config_names_the_key(data: dict[str, object], problem: str) -> None:
    with pytest.raises(user_module().MixinConfigError) as e:
        user_module().config_from(data)
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_the_documented_mixin_example_is_valid() -> None:
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    cfg = user_module().config_from(yaml.safe_load(block))
    assert cfg.severity["AsyncJobStuck"] == "critical" and "namespace" in cfg.target_labels


def test_the_external_url_is_the_base_of_job_url_and_of_the_dashboards_job_page_link() -> None:
    from exporter.mixin import files, rules

    cfg = user_module().config_from({"external_url": "https://asyncjob.example.com/"})
    groups = rules.rule_groups(cfg)["groups"]
    job_urls = {
        r["annotations"]["job_url"]
        for g in groups
        for r in g["rules"]
        if "job_url" in r.get("annotations", {})
    }
    assert job_urls == {
        "https://asyncjob.example.com/jobs/{{ $labels.target }}/{{ $labels.job_id | urlquery }}"
    }
    # The links in the descriptions too: a failed job's page, a target's stuck and overdue jobs.
    texts = [text for g in groups for r in g["rules"] for text in r.get("annotations", {}).values()]
    assert not [text for text in texts if "$labels.instance }}/jobs" in text]
    (many,) = [r for g in groups for r in g["rules"] if r.get("alert") == "AsyncJobManyStuck"]
    assert (
        "https://asyncjob.example.com/jobs?target={{ $labels.target | urlquery }}&overdue=1"
        in (many["annotations"]["description"])
    )
    board = files.dashboards(cfg)["job"]
    assert [link["url"] for link in board["links"] if link["type"] == "link"] == [
        "https://asyncjob.example.com/jobs/${target}/${job_id:percentencode}"
    ]


@pytest.mark.parametrize("bad", ["asyncjob.example.com", "ftp://x", "https://", 3])
def test_an_external_url_that_is_no_http_url_is_named(bad: object) -> None:
    with pytest.raises(user_module().MixinConfigError) as e:
        user_module().config_from({"external_url": bad})
    assert e.value.problems == ["external_url: expected an http(s) URL, e.g. https://asyncjob.example.com"]


def _job_rules(cfg: Config) -> dict[str, dict[str, Any]]:
    from exporter.mixin import rules

    groups = rules.rule_groups(cfg)["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_per_job_alerts_name_no_replica_and_ride_out_a_handover() -> None:
    cfg = user_module().config_from(
        {"replica_labels": ["instance", "pod", "replica"], "handover_grace": "90s"}
    )
    alerts = _job_rules(cfg)
    for name in ("AsyncJobStuck", "AsyncJobFailed", "AsyncJobManyStuck"):
        assert alerts[name]["keep_firing_for"] == "90s", name
        assert "max without(instance, pod, replica) (" in alerts[name]["expr"], name
        # Every join matches without them (a failure rate, within one replica, is merged whole).
        assert "instance" not in alerts[name]["expr"].split("unless on(job, target, job_id)\n  (")[0].replace(
            "without(instance", ""
        ), name
    # A page about the exporter process itself names it, and does not outlive it.
    assert "keep_firing_for" not in alerts["AsyncJobExporterDown"]
    with pytest.raises(user_module().MixinConfigError, match="handover_grace"):
        user_module().config_from({"handover_grace": "a while"})


def test_without_replica_labels_the_alerts_are_per_instance_as_before() -> None:
    cfg = user_module().config_from({"replica_labels": []})
    alerts = _job_rules(cfg)
    stuck = alerts["AsyncJobStuck"]
    assert "keep_firing_for" not in stuck and "max without" not in stuck["expr"]
    assert "on(job, instance, target, job_id)" in stuck["expr"]
    assert stuck["annotations"]["job_url"].startswith("http://{{ $labels.instance }}/jobs/")
    assert "&var-instance={{ $labels.instance }}" in stuck["annotations"]["dashboard_url"]


def test_without_replica_labels_every_rule_is_valid_promql(tmp_path: Path) -> None:
    """Unmerged, an expression keeps its parentheses: `status == 1` stays whole before a `*`."""
    promtool = require_tool("promtool")
    from exporter.mixin import files

    out = tmp_path / "out"
    generator().write(out, user_module().config_from({"replica_labels": []}))
    run = subprocess.run(
        [promtool, "check", "rules", str(out / files.RULES_PATH)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_generated_handover_tests_pass_for_other_replica_labels(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    from exporter.mixin import files

    cfg = user_module().config_from({**USER_CONFIG, "replica_labels": ["instance", "namespace"]})
    out = tmp_path / "out"
    generator().write(out, cfg)
    tests = out / files.RULE_TESTS_PATH
    assert "exporter-b:10110" in tests.read_text()
    run = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, cwd=tests.parent
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_cluster_alert_waits_two_of_the_users_lease_ttls_and_its_generated_tests_pass(
    tmp_path: Path,
) -> None:
    """Without replica labels the other alerts are per instance, but the cluster's shards are
    still added up over the instances; the generated tests follow the `for` of a longer TTL."""
    promtool = require_tool("promtool")
    from exporter.mixin import files

    cfg = user_module().config_from({**USER_CONFIG, "cluster_lease_ttl": "1m", "replica_labels": []})
    alert = _job_rules(cfg)["AsyncJobClusterShardsUnowned"]
    assert alert["for"] == "2m" and "two lease TTLs of 1m" in alert["annotations"]["description"]
    assert alert["expr"].startswith("max without(instance) (asyncjob_cluster_shards{job=")
    out = tmp_path / "out"
    generator().write(out, cfg)
    tests = out / files.RULE_TESTS_PATH
    cluster = [
        test
        for test in yaml.safe_load(tests.read_text())["tests"]
        if any("asyncjob_cluster_shards_held" in s["series"] for s in test["input_series"])
    ]
    assert len(cluster) == 3  # a kill left unowned, a kill covered in time, shards moving
    run = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, cwd=tests.parent
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_cluster_needs_the_external_url_that_serves_every_jobs_page() -> None:
    with pytest.raises(user_module().MixinConfigError) as e:
        user_module().config_from({"cluster": True})
    assert [p.split(":")[0] for p in e.value.problems] == ["external_url"]
    from exporter.mixin import rules

    cfg = user_module().config_from({"cluster": True, "external_url": "https://asyncjob.example.com"})
    job_urls = {
        r["annotations"]["job_url"]
        for g in rules.rule_groups(cfg)["groups"]
        for r in g["rules"]
        if "job_url" in r.get("annotations", {})
    }
    assert job_urls == {
        "https://asyncjob.example.com/jobs/{{ $labels.target }}/{{ $labels.job_id | urlquery }}"
    }
