"""WillSuite, AIMS360, Oxlin and a generic JSON API end to end: the CLI against the simulator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.simulator.demo import exports_target, oxlin_auth, willsuite_auth
from tests.harness import create_job, exporter, simulator, wait_for, write_secrets

pytestmark = pytest.mark.e2e

STEP = 0.5
POLL = 0.5


def config(*targets: dict[str, Any]) -> dict[str, Any]:
    return {
        "global": {"poll_interval": f"{POLL}s", "stuck_after": "1m", "retention": "10m"},
        "targets": list(targets),
    }


def test_willsuite_jobs_with_their_records_and_failures(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=STEP) as sim:
        partial = create_job(sim, "willsuite", scenario="partial", total_records=200)
        bad = create_job(sim, "willsuite", scenario="fail")
        secrets = write_secrets(tmp_path)
        target = {
            "name": "willsuite-e2e",
            "provider": "willsuite",
            "base_url": f"{sim.url}/willsuite/engine/api",
            "auth": willsuite_auth(sim.url, secrets),
            # Far below WillSuite's advice, on purpose: honoured, with a warning.
            "poll_interval": f"{POLL}s",
            "timezone": "Europe/London",
            "jobs": [partial, bad],
        }
        with exporter(tmp_path, config(target)) as exp:
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=partial, status="succeeded") == 1,
                what="partial job succeeded",
            )
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=bad, status="failed") == 1, what="failure"
            )
            assert exp.value("asyncjob_job_records", job_id=partial, kind="total") == 200
            assert exp.value("asyncjob_job_records", job_id=partial, kind="affected") == 180
            assert exp.value("asyncjob_job_records", job_id=partial, kind="failed") == 20
            assert exp.value("asyncjob_job_error_info", job_id=bad, reason="failed") == 1
            # Local times read in Europe/London land on the real instant.
            created = exp.value("asyncjob_job_created_timestamp_seconds", job_id=partial)
            started = exp.value("asyncjob_job_started_timestamp_seconds", job_id=partial)
            assert created is not None and started is not None and abs(started - created) <= 1.5
            assert "below the provider" in exp.output()
        assert httpx.get(f"{sim.url}/_sim/stats").json()["requests"]["willsuite.token"] == 1


def test_aims360_batches_pages_discovers_and_reruns_failed_jobs(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=STEP) as sim:
        # Another category than the failing job's, so the counts by job_type below are its alone.
        ok = create_job(sim, "aims360", scenario="success", job_type="Exports/Inventory Export")
        bad = create_job(sim, "aims360", scenario="fail", job_type="Reports/Open Orders Report")
        # Purged before the exporter ever saw it (AIMS360 purges jobs about 30 days after creation).
        purged = "6f1d0a8e-0000-4000-8000-000000000000-20190101000000000"
        # More unfinished jobs than one page (50 rows) holds: discovery must follow nextLink.
        stuck = [create_job(sim, "aims360", scenario="stuck") for _ in range(55)]
        secrets = write_secrets(tmp_path)
        target = {
            "name": "aims360-e2e",
            "provider": "aims360",
            "base_url": f"{sim.url}/aims360",
            "auth": {"type": "bearer", "token_file": str(secrets / "bearer_token")},
            "jobs": [ok, bad, purged],
            "discover_filter": "jobStatus eq 'Queued' or jobStatus eq 'Inprogress'",
            "auto_rerun": True,
            "max_reruns": 1,
        }
        with exporter(tmp_path, config(target)) as exp:
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=ok, status="succeeded") == 1, what="success"
            )
            wait_for(
                lambda: exp.value("asyncjob_job_reruns_total", target="aims360-e2e") == 1,
                what="rerun of the failed job",
            )
            kind = {"target": "aims360-e2e", "job_type": "Reports/Open Orders Report"}
            assert exp.value("asyncjob_jobs_failed_total", reason="failed", cause="provider", **kind) == 1
            # The rerun kept its id: the same job runs again, and its success counts too.
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=bad, status="succeeded") == 1,
                what="the rerun succeeds",
            )
            assert exp.value("asyncjob_job_attempts", job_id=bad) == 1
            jobs = exp.api("GET", "/api/v1/jobs?target=aims360-e2e").json()["jobs"]
            assert {j["id"] for j in jobs} <= {ok, bad, purged, *stuck}  # no new id
            assert exp.value("asyncjob_jobs_finished_total", status="failed", **kind) == 1
            assert exp.value("asyncjob_jobs_finished_total", status="succeeded", **kind) == 1
            # The purged job is gone; every stuck job is found, though the service's next
            # links name a backend host that never resolves: pages come from the configured one.
            wait_for(lambda: exp.value("asyncjob_job_info", job_id=purged) is None, what="purged job dropped")
            wait_for(
                lambda: all(exp.value("asyncjob_job_status", job_id=s, status="running") == 1 for s in stuck),
                what="55 discovered jobs",
            )
        counts = httpx.get(f"{sim.url}/_sim/stats").json()["requests"]
        assert counts["aims360.rerun"] == 1


def test_a_generic_json_api_is_mapped_by_config(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=STEP) as sim:
        # Queued a while, so they are still in the active list when the exporter first looks.
        ok = create_job(sim, "generic", scenario="partial", total_records=1000, queue_seconds=3)
        bad = create_job(sim, "generic", scenario="fail", queue_seconds=3)
        waiting = create_job(sim, "generic", scenario="mfa")
        secrets = write_secrets(tmp_path)
        target = exports_target(sim.url, secrets, "exports")
        # No static ids: the list URL finds every job while it is active.
        with exporter(tmp_path, config(target)) as exp:
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=ok, status="succeeded") == 1, what="success"
            )
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=bad, status="failed") == 1, what="failure"
            )
            assert exp.value("asyncjob_job_error_info", job_id=bad, reason="quota_exceeded") == 1
            assert exp.value("asyncjob_job_records", job_id=ok, kind="failed") == 100
            assert exp.value("asyncjob_job_percent_completed", job_id=ok) == 100
            assert exp.value("asyncjob_job_status", job_id=waiting, status="unknown") == 1
            api = exp.api("GET", f"/api/v1/targets/exports/jobs/{bad}").json()
            assert api["message"] == "Export quota of the account exceeded."
            assert api["raw_status"] == "error"
            started = exp.value("asyncjob_job_started_timestamp_seconds", job_id=ok)
            finished = exp.value("asyncjob_job_finished_timestamp_seconds", job_id=ok)
            assert started is not None and finished is not None
            assert finished - started == pytest.approx(3 * STEP, abs=0.01)
            assert "matches nothing" not in exp.output()


def oxlin_target(sim_url: str, secrets: Path, **keys: Any) -> dict[str, Any]:
    return {
        "name": "oxlin-e2e",
        "provider": "oxlin",
        "base_url": f"{sim_url}/oxlin",
        "auth": oxlin_auth(sim_url, secrets),
        **keys,
    }


def syncs_of(exp: Any, connection: str, status: str) -> list[str]:
    """Ids of the syncs of `connection` whose status is `status` now."""
    return sorted(
        labels["job_id"]
        for name, labels, value in exp.samples()
        if name == "asyncjob_job_status"
        and labels["job_id"].startswith(f"{connection}:")
        and labels["status"] == status
        and value == 1
    )


def sync_of(exp: Any, connection: str, status: str) -> str | None:
    found = syncs_of(exp, connection, status)
    return found[0] if found else None


def test_oxlin_queue_syncs_connections_channels_and_consent(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=STEP) as sim:
        create_job(sim, "oxlin", scenario="success", connection="9001")
        create_job(sim, "oxlin", scenario="fail", connection="9002")
        create_job(sim, "oxlin", scenario="partial", connection="9003")
        create_job(sim, "oxlin", scenario="mfa", connection="9004")
        # Its last event never reaches the queue: the connection's status ends it.
        create_job(sim, "oxlin", scenario="success", connection="9005", missed_final=True)
        # Events that name no channel: the resource tells which channels still run.
        create_job(sim, "oxlin", scenario="fail", connection="9006", channel_field=False)
        secrets = write_secrets(tmp_path)
        target = oxlin_target(sim.url, secrets, queues=["20"], connections=["9001"])
        with exporter(tmp_path, config(target)) as exp:
            ok = wait_for(lambda: sync_of(exp, "9001", "succeeded"), what="sync of 9001 succeeded")
            bad = wait_for(lambda: sync_of(exp, "9002", "failed"), what="sync of 9002 failed")
            partial = wait_for(lambda: sync_of(exp, "9003", "succeeded"), what="partial sync of 9003")
            missed = wait_for(lambda: sync_of(exp, "9005", "succeeded"), what="sync of 9005 closed")
            unnamed = wait_for(lambda: sync_of(exp, "9006", "failed"), what="sync of 9006 failed")
            # One sync over two channels is one job: none ended early with the first channel.
            for conn in ("9001", "9002", "9003", "9005", "9006"):
                assert [s for st in ("running", "succeeded", "failed") for s in syncs_of(exp, conn, st)] == [
                    sync_of(exp, conn, "succeeded") or sync_of(exp, conn, "failed")
                ], conn
            assert exp.value("asyncjob_job_error_info", job_id=partial, reason="partial") is None
            assert exp.value("asyncjob_job_error_info", job_id=unnamed, reason="auth_failed") == 1
            assert exp.value("asyncjob_job_error_info", job_id=bad, reason="auth_failed", cause="user") == 1
            assert exp.value("asyncjob_job_awaiting_user", job_id=bad) == 1
            assert exp.value("asyncjob_job_awaiting_user", job_id=ok) == 0
            assert (
                exp.value("asyncjob_job_info", job_id=ok, provider="oxlin", job_type="synchronisation") == 1
            )
            started = exp.value("asyncjob_job_started_timestamp_seconds", job_id=ok)
            finished = exp.value("asyncjob_job_finished_timestamp_seconds", job_id=ok)
            assert started is not None and finished is not None and 0 <= finished - started <= 3 * STEP + 1
            # The lapsed PSD2 consent: the sync waits for its user and pages nobody.
            waiting = sync_of(exp, "9004", "running")
            assert waiting is not None
            assert exp.value("asyncjob_job_awaiting_user", job_id=waiting) == 1

            assert exp.value("asyncjob_connection_status", connection_id="9001", status="SUCCESS") == 1
            assert exp.value("asyncjob_connection_status", connection_id="9002", status="FAILED") == 1
            assert (
                exp.value("asyncjob_connection_status", connection_id="9003", status="PARTIAL_SUCCESS") == 1
            )
            assert exp.value(
                "asyncjob_connection_last_success_timestamp_seconds", connection_id="9001"
            ) == int(finished)
            assert exp.value(
                "asyncjob_channel_last_success_timestamp_seconds", connection_id="9001", channel="8700"
            )
            expiry = exp.value(
                "asyncjob_channel_consent_expiry_timestamp_seconds", connection_id="9001", channel="8701"
            )
            assert expiry is not None and expiry > started + 89 * 86400
            expired = exp.value(
                "asyncjob_channel_consent_expiry_timestamp_seconds", connection_id="9004", channel="8701"
            )
            assert expired is not None and expired < started

            # Every event is counted once, however many polls read the queue.
            time.sleep(4 * POLL)
            events = {
                labels["event_type"]: value
                for name, labels, value in exp.samples()
                if name == "asyncjob_queue_events_total" and labels.get("queue") == "20"
            }
            # Each channel sends its own: 6 syncs over 2 channels. In each, the channel the
            # scenario does not play on succeeds after one step (for 9004, whose consent
            # lapsed, that is EMBEDDED); 9005's last event never comes.
            assert events["SYNC_STARTED"] == 12
            assert events["SYNC_ALL_SUCCESS"] == 2 + 1 + 2 + 1 + 1 + 1
            assert events["AUTH_FAILED"] == 2
            assert missed is not None

            # A new synchronisation of a connection is a new job.
            token = httpx.post(
                f"{sim.url}/oxlin/token",
                json={
                    "provider": "linxoConnect",
                    "grant_type": "client_credentials",
                    "client_id": "demo-client",
                    "client_secret": "demo-client-secret-9f2c",
                },
            ).json()["access_token"]
            r = httpx.post(
                f"{sim.url}/oxlin/connections/9001/synchronize", headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 204
            wait_for(
                lambda: len(syncs_of(exp, "9001", "succeeded")) == 2,
                what="second sync of 9001",
            )
        counts = httpx.get(f"{sim.url}/_sim/stats").json()["requests"]
        assert counts["oxlin.token"] == 2  # the exporter's one, and the test's
