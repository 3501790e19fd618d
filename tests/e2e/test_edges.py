"""Edges through the real CLI: a deleted discovered job stays deleted while the provider lists it,
across a restart; a base_url with credentials is refused without repeating them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import create_job, exporter, simulator, wait_for, write_secrets

pytestmark = pytest.mark.e2e


def test_a_deleted_discovered_job_stays_deleted_while_listed_and_after_a_restart(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=30) as sim:
        secrets = write_secrets(tmp_path)
        job = create_job(sim, "basiq", owner="ea3a81", scenario="stuck")
        cfg = {
            "global": {"poll_interval": "0.3s"},
            "state_file": str(tmp_path / "state.db"),
            "targets": [
                {
                    "name": "basiq",
                    "provider": "basiq",
                    "base_url": f"{sim.url}/basiq",
                    "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                    "users": ["ea3a81"],
                }
            ],
        }
        path = f"/api/v1/targets/basiq/jobs/{job}"
        with exporter(tmp_path, cfg) as exp:
            wait_for(lambda: exp.api("GET", path).status_code == 200, what="discovered")
            assert exp.api("DELETE", path).status_code == 204
            polls = exp.value("asyncjob_poll_requests_total", target="basiq") or 0
            # Several more polls of the user's job list, which still lists the job.
            wait_for(
                lambda: (exp.value("asyncjob_poll_requests_total", target="basiq") or 0) >= polls + 6,
                what="more polls",
            )
            assert exp.api("GET", path).status_code == 404
            assert exp.value("asyncjob_jobs_dropped_total", target="basiq", reason="deleted") == 1
        with exporter(tmp_path, cfg) as exp:
            wait_for(
                lambda: (exp.value("asyncjob_poll_requests_total", target="basiq") or 0) >= 4, what="polls"
            )
            assert exp.api("GET", path).status_code == 404


def test_a_base_url_with_credentials_is_refused_without_repeating_them(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "targets": [
                    {"name": "t", "provider": "generic", "base_url": "http://ops:hunter2pw@api.example"}
                ]
            }
        )
    )
    for args in (["check-config", str(cfg)], [f"--config.file={cfg}"]):
        r = subprocess.run(
            [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 2
        assert "targets[0](name=t).base_url: must not hold credentials" in r.stderr
        assert "hunter2pw" not in r.stdout + r.stderr and "ops:" not in r.stdout + r.stderr


def test_the_issues_hostile_bodies_leave_the_process_alive_and_metrics_valid(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    cfg = {"targets": [{"name": "t", "provider": "willsuite", "base_url": "http://127.0.0.1:9", "jobs": []}]}
    with exporter(tmp_path, cfg, wait_ready=False) as exp:
        wait_for(lambda: exp.api("GET", "/healthz").status_code == 200, what="up")
        as_json = {"Content-Type": "application/json"}
        attacks = [
            (b'{"id":"a\\ud800b"}', 422),
            (b'{"id":"a\\nb"}', 422),
            (b'{"id":"x","y":' + b"[" * 1000 + b"]" * 1000 + b"}", 422),
            (b'{"id":"ok-1","status":"processing","message":"\\ud800","type":"\\udfff"}', 202),
            (b'{"id":"ok-2","total_records":1e999,"effected_records":NaN}', 202),
        ]
        for body, status in attacks:
            r = exp.api("POST", "/api/v1/targets/t/jobs", content=body, headers=as_json)
            assert r.status_code == status, (body[:40], r.status_code, r.text)
        assert exp.popen.poll() is None
        # A just-registered job's series are rendered in the background, within a moment.
        wait_for(
            lambda: (
                {"ok-1", "ok-2"}
                <= {
                    s.labels.get("job_id")
                    for f in text_string_to_metric_families(exp.metrics())
                    for s in f.samples
                }
            ),
            what="both jobs in /metrics",
        )
