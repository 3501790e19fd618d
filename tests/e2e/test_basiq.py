"""Basiq end to end: the CLI with a YAML config against the simulator over loopback."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.harness import create_job, exporter, simulator, wait_for, write_secrets

pytestmark = pytest.mark.e2e

STEP = 1.0
POLL = 0.5


def basiq_config(sim_url: str, secrets: Path, **target: object) -> dict[str, object]:
    return {
        "global": {"poll_interval": f"{POLL}s", "stuck_after": "1m", "retention": "10m"},
        "targets": [
            {
                "name": "basiq-e2e",
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                **target,
            }
        ],
    }


def test_jobs_succeed_fail_and_stick_as_the_provider_says(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=STEP) as sim:
        bad = create_job(
            sim, "basiq", scenario="fail", fail_step=1, error_code="invalid-credentials", owner="u1"
        )
        stuck = create_job(sim, "basiq", scenario="stuck", fail_step=1, owner="u1")
        secrets = write_secrets(tmp_path)
        with exporter(tmp_path, basiq_config(sim.url, secrets, jobs=[bad, stuck])) as exp:
            # Started once the exporter is up (it may take seconds on a busy machine) and handed
            # over at once, so its first step is seen running: a step already done at first
            # sight has no observed duration.
            ok = create_job(sim, "basiq", scenario="success", owner="u1")
            registered = exp.api("POST", "/api/v1/targets/basiq-e2e/jobs", json={"id": ok})
            assert registered.status_code == 202, registered.text
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=ok, status="succeeded") == 1, what="success"
            )
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=bad, status="failed") == 1, what="failure"
            )

            # The failed job names its failed step and its bounded reason.
            assert (
                exp.value("asyncjob_job_step_status", job_id=bad, step="retrieve-accounts", status="failed")
                == 1
            )
            assert exp.value("asyncjob_job_error_info", job_id=bad, reason="invalid-credentials") == 1
            assert (
                exp.value("asyncjob_jobs_failed_total", target="basiq-e2e", reason="invalid-credentials") == 1
            )

            # The stuck job is running and its progress stamp stays where it last moved.
            assert exp.value("asyncjob_job_status", job_id=stuck, status="running") == 1
            first = exp.value("asyncjob_job_last_progress_timestamp_seconds", job_id=stuck)
            assert first is not None
            time.sleep(3 * POLL + STEP)
            assert exp.value("asyncjob_job_last_progress_timestamp_seconds", job_id=stuck) == first
            assert time.time() - first >= 2 * POLL

            # Each finished job is counted once, however many polls saw it finished.
            time.sleep(3 * POLL)
            assert exp.value("asyncjob_jobs_finished_total", target="basiq-e2e", status="succeeded") == 1
            assert exp.value("asyncjob_jobs_finished_total", target="basiq-e2e", status="failed") == 1
            assert (
                exp.value("asyncjob_job_duration_seconds_count", target="basiq-e2e", status="succeeded") == 1
            )

            # Step durations: each step lasts STEP; observation adds at most one poll interval either way.
            for step in ("verify-credentials", "retrieve-accounts", "retrieve-transactions"):
                d = exp.value("asyncjob_job_step_duration_seconds", job_id=ok, step=step)
                assert d is not None, step
                assert STEP - POLL - 0.3 <= d <= STEP + POLL + 0.3, (step, d)

            # One token for the whole target, not one per job or per poll.
            stats = exp.api("GET", "/api/v1/jobs").json()
            assert stats["count"] == 3
        counts = httpx.get(f"{sim.url}/_sim/stats").json()["requests"]
        assert counts["basiq.token"] == 1
        # Finished jobs are not polled again: far fewer job GETs than polls x jobs.
        assert counts["basiq.job"] < 3 * 40


def test_users_discovery_finds_jobs_and_mfa_waits_for_the_user(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=STEP) as sim:
        mfa = create_job(sim, "basiq", scenario="mfa", owner="ea3a81")
        other = create_job(sim, "basiq", scenario="success", owner="someone-else")
        secrets = write_secrets(tmp_path)
        with exporter(tmp_path, basiq_config(sim.url, secrets, users=["ea3a81"])) as exp:
            wait_for(lambda: exp.value("asyncjob_job_awaiting_user", job_id=mfa) == 1, what="mfa job")
            assert exp.value("asyncjob_job_info", job_id=mfa, provider="basiq", job_type="connection") == 1
            assert exp.value("asyncjob_job_status", job_id=other, status="running") is None


def test_basiq_as_it_is_mfa_that_expires_arrays_statements_and_403s(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=STEP) as sim:
        # The challenge waits for its user, then expires: a failure nobody but the user can fix.
        expiring = create_job(sim, "basiq", scenario="mfa", mfa_expiry=6, owner="ea3a81")
        wrong = create_job(
            sim, "basiq", scenario="fail", error_code="invalid-credentials", fail_step=0, owner="ea3a81"
        )
        broken = create_job(sim, "basiq", scenario="fail", error_code="connector-error", owner="ea3a81")
        statement = create_job(sim, "basiq", scenario="success", job_type="statement", owner="ea3a81")
        secrets = write_secrets(tmp_path)
        with exporter(tmp_path, basiq_config(sim.url, secrets, users=["ea3a81"])) as exp:
            wait_for(lambda: exp.value("asyncjob_job_awaiting_user", job_id=expiring) == 1, what="mfa waits")
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=expiring, status="failed") == 1,
                what="mfa expired",
            )
            assert exp.value("asyncjob_job_awaiting_user", job_id=expiring) == 0
            assert exp.value("asyncjob_job_error_info", job_id=expiring, reason="job-timed-out") == 1
            assert exp.value("asyncjob_job_error_info", job_id=expiring, cause="user") == 1
            # Errors sent as arrays keep their code; each code has its cause.
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=broken, status="failed") == 1, what="fail"
            )
            assert exp.value("asyncjob_job_error_info", job_id=wrong, reason="invalid-credentials") == 1
            assert exp.value("asyncjob_job_error_info", job_id=wrong, cause="user") == 1
            assert exp.value("asyncjob_job_error_info", job_id=broken, cause="provider") == 1
            # A statement job's createdDate/updatedDate are its stamps.
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=statement, status="succeeded") == 1,
                what="statement",
            )
            assert exp.value("asyncjob_job_info", job_id=statement, job_type="statement") == 1
            assert exp.value("asyncjob_job_created_timestamp_seconds", job_id=statement) is not None
            assert exp.value("asyncjob_job_finished_timestamp_seconds", job_id=statement) is not None

            # Basiq's 403 that speaks of a rate limit is a rate limit, not an auth failure.
            assert exp.value("asyncjob_poll_errors_total", target="basiq-e2e", reason="http_429") == 0
            httpx.post(
                f"{sim.url}/_sim/faults",
                json={
                    "provider": "basiq",
                    "kind": "status",
                    "status": 403,
                    "detail": "Rate limit exceeded",
                    "remaining": 1,
                },
                timeout=5,
            ).raise_for_status()
            wait_for(
                lambda: exp.value("asyncjob_poll_errors_total", target="basiq-e2e", reason="http_429") == 1,
                what="403 counted as http_429",
            )
            assert exp.value("asyncjob_poll_errors_total", target="basiq-e2e", reason="auth") == 0
