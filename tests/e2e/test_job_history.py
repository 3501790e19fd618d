"""A failed job outlives retention, through the real CLI: its per-job series go, its page and API
answer stay, from the history in the state file, across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Exporter, create_job, exporter, simulator, wait_for, write_secrets

pytestmark = pytest.mark.e2e


def config(sim_url: str, secrets: Path, state: Path) -> dict[str, object]:
    return {
        "global": {"poll_interval": "0.2s", "retention": "2s", "history": "1h"},
        "state_file": str(state),
        "targets": [
            {
                "name": "basiq",
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
            }
        ],
    }


def shows_the_failure_from_history(exp: Exporter, job_id: str, live: dict[str, object]) -> None:
    doc = exp.api("GET", f"/api/v1/targets/basiq/jobs/{job_id}")
    assert doc.status_code == 200, doc.text
    body = doc.json()
    assert body["from_history"] is True
    for key in ("status", "reason", "cause", "message"):
        assert body[key] == live[key], key
    assert [e["status"] for e in body["history"]][-1] == "failed"
    page = exp.api("GET", f"/jobs/basiq/{job_id}")
    assert page.status_code == 200
    assert "Shown from history" in page.text and "left the live series at retention" in page.text
    assert "invalid-credentials" in page.text and "the end user must act" in page.text
    listed = exp.api("GET", "/jobs", params={"id": job_id[:6], "cause": "user"}).text
    assert f">{job_id}</a>" in listed.split('id="history-jobs"')[1]
    assert exp.value("asyncjob_history_jobs") == 1


def test_a_failed_job_past_retention_keeps_its_page_and_api_answer_across_a_restart(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=0.3) as sim:
        secrets = write_secrets(tmp_path)
        cfg = config(sim.url, secrets, tmp_path / "state.db")
        with exporter(tmp_path, cfg) as exp:
            job_id = create_job(
                sim, "basiq", scenario="fail", fail_step=0, error_code="invalid-credentials", owner="u1"
            )
            assert exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": job_id}).status_code == 202
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=job_id, status="failed") == 1, what="failure"
            )
            live = exp.api("GET", f"/api/v1/targets/basiq/jobs/{job_id}").json()
            assert live["message"] and live["cause"] == "user"
            assert "from_history" not in live
            wait_for(
                lambda: f'job_id="{job_id}"' not in exp.metrics(),
                what="its per-job series dropped at retention",
            )
            shows_the_failure_from_history(exp, job_id, live)
        with exporter(tmp_path, cfg) as exp:
            assert f'job_id="{job_id}"' not in exp.metrics()
            shows_the_failure_from_history(exp, job_id, live)
