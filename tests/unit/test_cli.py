"""Exporter conventions of the command line: telemetry path, exporter metrics, simulator flags,
and logs and API errors that explain themselves."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from exporter.__main__ import SIMULATOR_STEP_SECONDS, parser
from exporter.config import build_settings
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.runtime import Runtime
from exporter.server import build_app


def runtime(provider: str = "basiq") -> Runtime:
    settings = build_settings(
        {"targets": [{"name": "t", "provider": provider, "base_url": "https://x", "queues": ["1"]}]}
        if provider == "oxlin"
        else {"targets": [{"name": "t", "provider": provider, "base_url": "https://x"}]},
        PROVIDERS,
    )
    rt = Runtime(settings)
    rt.tracker.set_target(settings.resolved(settings.targets[0]))
    return rt


def test_metrics_are_served_under_the_telemetry_path() -> None:
    client = TestClient(build_app(runtime(), telemetry_path="/probe/metrics"))
    assert "asyncjob_exporter_build_info" in client.get("/probe/metrics").text
    assert client.get("/metrics").status_code == 404


def test_exporter_metrics_can_be_left_out() -> None:
    rt = runtime()
    client = TestClient(build_app(rt))
    assert "python_info" in client.get("/metrics").text
    rt.exposition.exporter_metrics = False
    body = client.get("/metrics").text
    assert "python_" not in body and "\nprocess_" not in body
    assert "asyncjob_exporter_build_info" in body


def test_the_flags_read_as_prometheus_exporters_do() -> None:
    args = parser().parse_args(["--web.telemetry-path=/m", "--web.disable-exporter-metrics"])
    assert (args.telemetry_path, args.disable_exporter_metrics) == ("/m", True)
    assert parser().parse_args([]).telemetry_path == "/metrics"


@pytest.mark.parametrize("command", ["demo", "simulate"])
def test_the_simulator_flags_have_one_spelling_and_one_default(command: str) -> None:
    assert parser().parse_args([command]).step_seconds == SIMULATOR_STEP_SECONDS
    args = parser().parse_args([command, "--simulator.step-seconds=0.5", "--simulator.trickle=4"])
    assert (args.step_seconds, args.trickle) == (0.5, 4)


def test_a_job_the_provider_does_not_know_is_logged_with_target_and_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = runtime()
    rt.tracker.track("t", Job("j-404", Status.RUNNING), "registered", now=1)
    with caplog.at_level(logging.INFO, logger="asyncjob"):
        rt.tracker.apply("t", PollResult(gone=["j-404"]), now=2)
    (record,) = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert (getattr(record, "target", None), getattr(record, "job_id", None)) == ("t", "j-404")


def test_a_registration_error_names_the_field_and_explains_in_error(tmp_path: Path) -> None:
    client = TestClient(build_app(runtime("oxlin")))
    r = client.post("/api/v1/targets/t/jobs", json={"id": "1"})
    assert r.status_code == 422
    assert r.json()["field"] == "id"
    assert "configured queues" in r.json()["error"]


def test_the_exporter_warns_at_start_when_no_target_is_configured(tmp_path: Path) -> None:
    from tests.harness import Proc, free_port, start_cli, wait_for

    config = tmp_path / "empty.yml"
    config.write_text("global: {poll_interval: 1m}\n")
    log = tmp_path / "exporter.log"
    port = free_port()
    proc = Proc(
        start_cli([f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"], log), log, ""
    )
    try:
        line = wait_for(
            lambda: next((x for x in proc.output().splitlines() if "no targets configured" in x), None),
            what="the warning about zero targets",
        )
        assert "level=warning" in line or '"level": "warning"' in line
    finally:
        proc.stop()
