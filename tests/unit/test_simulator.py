"""The simulator plays the providers as they are: the shapes the exporter's parsers must read,
and the options a labelled fleet is built from."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from exporter.simulator import aims360, basiq, oxlin
from exporter.simulator.app import Simulator
from exporter.simulator.serving import CREDENTIALS


def sim() -> Simulator:
    s = Simulator(step_seconds=10, seed=7)
    s.app()
    return s


def test_basiq_mfa_challenge_waits_then_expires_on_its_step() -> None:
    s = sim()
    job = s.create("basiq", scenario="mfa", mfa_expiry=30, result_form="array")
    t0 = job.created
    waiting = basiq.job_body(job, t0 + 15)["steps"]
    assert [st["title"] for st in waiting] == list(basiq.MFA_STEPS)
    assert waiting[1]["status"] == "in-progress"
    assert waiting[1]["result"][0]["type"] == "mfa"
    expired = basiq.job_body(job, t0 + 45)["steps"][1]
    assert expired["status"] == "failed"
    assert expired["result"] == [
        {
            "type": "error",
            "code": "job-timed-out",
            "title": "MFA challenge expired",
            "detail": job.error_detail,
        }
    ]


def test_basiq_statement_jobs_and_objects_and_age() -> None:
    s = sim()
    job = s.create("basiq", job_type="statement", result_form="object", top_status=True, age=6 * 86400)
    body = basiq.job_body(job)
    assert "createdDate" in body and "updatedDate" in body and "created" not in body
    assert body["status"] == "success"
    assert isinstance(body["steps"][0]["result"], dict)
    assert time.time() - job.created >= 6 * 86400 - 1


def events_of(s: Simulator, connection: str, at: float) -> list[tuple[str, Any, str]]:
    return [
        (e["event_type"], e.get("channel_definition_id"), e["resource"]["status"])
        for e in oxlin.queue_events(s, "20", at)
        if e["resource"]["id"] == connection
    ]


def test_oxlin_channels_send_their_own_events_and_end_apart() -> None:
    s = sim()
    job = s.create("oxlin", scenario="fail", connection="9002")
    assert events_of(s, "9002", job.created + 100) == [
        ("SYNC_STARTED", "8700", "RUNNING"),
        ("SYNC_STARTED", "8701", "RUNNING"),
        ("SYNC_RUNNING", "8700", "RUNNING"),
        ("SYNC_ALL_SUCCESS", "8701", "RUNNING"),  # REDIRECT done, EMBEDDED still running
        ("AUTH_FAILED", "8700", "FAILED"),
    ]


def test_oxlin_missed_final_event_leaves_only_the_connections_status() -> None:
    s = sim()
    job = s.create("oxlin", scenario="success", connection="9005", missed_final=True, channel_field=False)
    events = events_of(s, "9005", job.created + 100)
    assert ("SYNC_ALL_SUCCESS", None, "SUCCESS") not in events
    assert all(channel is None for _, channel, _ in events)
    conn = oxlin.connection_at(job, job.created + 100)
    assert conn["status"] == "SUCCESS"
    assert all(ch["last_end_date"] >= int(job.started_at()) for ch in conn["channels"])


def client(s: Simulator) -> TestClient:
    return TestClient(s.app(), headers={"Authorization": f"Bearer {CREDENTIALS['bearer_token']}"})


def test_aims360_queued_with_rising_percent_and_reruns_that_keep_their_id() -> None:
    s = sim()
    job = s.create("aims360", scenario="fail", rerun_scenario="success")
    row = aims360.row(job, job.created + 5)
    assert (row["jobStatus"], row["percentCompleted"] > 0) == ("Queued", True)
    http = client(s)
    path = "/aims360/jobsmanagement/v1.0/backgroundjob/{}/rerun"
    assert http.post(path.format(job.id)).status_code == 400  # not failed yet
    job.created -= 100  # its failure is in the past now
    failed = aims360.row(job)
    assert failed["canReRun"] == "Yes" and failed["maximumDateTimeToExecuteJob"] is not None
    answer = http.post(path.format(job.id)).json()
    assert answer["jobId"] == job.id and answer["jobStatus"] == "Queued"
    again = aims360.row(job)
    assert again["jobStatus"] == "Queued" and again["numberOfAttempts"] == 1


def test_aims360_refuses_reruns_past_their_deadline_or_when_not_allowed() -> None:
    s = sim()
    late = s.create("aims360", scenario="fail", rerun_window=10, age=1000)
    never = s.create("aims360", scenario="fail", can_rerun=False, age=1000)
    http = client(s)
    path = "/aims360/jobsmanagement/v1.0/backgroundjob/{}/rerun"
    assert http.post(path.format(late.id)).status_code == 400
    assert http.post(path.format(never.id)).status_code == 400
    assert aims360.row(never)["canReRun"] == "No"


def test_aims360_next_links_name_a_backend_host() -> None:
    s = sim()
    for _ in range(aims360.PAGE_SIZE + 1):
        s.create("aims360", scenario="stuck")
    body = client(s).get("/aims360/jobsmanagement/odata/v1.0/backgroundjob").json()
    assert aims360.BACKEND_HOST in body["@odata.nextLink"]


def test_aims360_filters_on_the_documented_jobid_as_on_the_rows_jobid() -> None:
    row = {"jobID": "a'b", "jobStatus": "Queued"}
    for odata_filter in (
        "jobId eq 'a''b'",
        "jobID eq 'a''b'",
        "(JOBID EQ 'a''b')",
        "jobId eq 'x' OR jobId eq 'a''b'",
    ):
        match = aims360.matcher(odata_filter)
        assert match is not None and match(row), odata_filter
    assert not aims360.matcher("jobId eq 'A''B'")(row)  # values compare exactly
    assert aims360.matcher("jobId gt 'a'") is None


def test_aims360_answers_the_exporters_filter_with_the_row() -> None:
    s = sim()
    job = s.create("aims360", scenario="success")
    with TestClient(s.app()) as client:
        r = client.get(
            "/aims360/jobsmanagement/odata/v1.0/backgroundjob",
            params={"$filter": f"jobId eq '{job.id}'"},
            headers={"Authorization": f"Bearer {CREDENTIALS['bearer_token']}"},
        )
    assert r.status_code == 200 and [row["jobID"] for row in r.json()["value"]] == [job.id]


# --- the providers' documented edges ---------------------------------------------------------


def basiq_token(s: Simulator, key: str) -> Any:
    return TestClient(s.app()).post(
        "/basiq/token",
        headers={"Authorization": f"Basic {key}", "basiq-version": "3.0"},
        data={"scope": "SERVER_ACCESS"},
    )


def test_basiq_token_endpoint_plays_its_two_403s() -> None:
    s = sim()
    throttled = basiq_token(s, basiq.THROTTLED_KEY)
    disabled = basiq_token(s, basiq.DISABLED_KEY)
    assert throttled.status_code == disabled.status_code == 403
    assert throttled.json()["data"][0]["detail"] == "Invalid request"
    assert disabled.json()["data"][0]["detail"].startswith("Your account has been disabled.")
    assert basiq_token(s, CREDENTIALS["basiq_api_key"]).status_code == 200


def test_basiq_user_list_has_no_job_type_and_an_unknown_user_is_404() -> None:
    s = sim()
    s.create("basiq", scenario="success", owner="ea3a81", job_type="statement")
    s.create("basiq", scenario="success", owner="ea3a81")
    token = basiq_token(s, CREDENTIALS["basiq_api_key"]).json()["access_token"]
    http = TestClient(s.app(), headers={"Authorization": f"Bearer {token}"})
    listed = http.get("/basiq/users/ea3a81/jobs").json()["data"]
    assert len(listed) == 2 and all("jobType" not in job for job in listed)
    # The exporter tells them apart all the same.
    from exporter.providers.basiq import Basiq
    from tests.unit.provider_http import provider_for

    provider = provider_for(provider="basiq")
    assert isinstance(provider, Basiq)
    assert sorted(provider.parse_job(job).job_type for job in listed) == ["connection", "statement"]
    gone = http.get("/basiq/users/0d9e7c/jobs")
    assert gone.status_code == 404 and gone.json()["data"][0]["detail"] == "Requested user does not exist."
    assert http.get("/basiq/users/b71f02/jobs").json()["data"] == []  # a known user without jobs


@pytest.mark.parametrize(("end_status", "channel_status"), [("CLOSED", "CLOSED"), ("NONE", "EMPTY")])
def test_oxlin_a_sync_can_end_on_a_closed_or_idle_connection_without_a_final_event(
    end_status: str, channel_status: str
) -> None:
    s = sim()
    job = s.create("oxlin", scenario="success", connection="9010", end_status=end_status)
    events = events_of(s, "9010", job.created + 100)
    assert ("SYNC_ALL_SUCCESS", "8700", "SUCCESS") not in events
    running = oxlin.connection_at(job, job.created + 15)
    assert running["status"] == "RUNNING"
    conn = oxlin.connection_at(job, job.created + 100)
    assert conn["status"] == end_status
    assert {ch["status"] for ch in conn["channels"]} == {channel_status}


def test_oxlin_a_channel_with_a_lapsed_consent_can_sit_out_a_sync() -> None:
    s = sim()
    job = s.create(
        "oxlin", scenario="fail", error_code="SYNC_FAILED", connection="9011", channels=["8700"],
        lapsed_channel="8701",
    )  # fmt: skip
    assert events_of(s, "9011", job.created + 100)[-1] == ("SYNC_FAILED", "8700", "FAILED")
    channels = {
        ch["channel_definition_id"]: ch for ch in oxlin.connection_at(job, job.created + 100)["channels"]
    }
    assert channels["8701"]["expires"] < job.created and "expires" not in channels["8700"]


def test_aims360_a_job_can_be_held_in_a_state_no_one_documented() -> None:
    s = sim()
    job = s.create("aims360", scenario="stuck", undocumented_status="OnHold")
    assert aims360.row(job, job.created + 100)["jobStatus"] == "OnHold"
    assert aims360.row(job, job.created - 1)["jobStatus"] == "Queued"


def test_no_provider_simulator_imports_the_server_at_run_time() -> None:
    """What a provider's routes share with the server is in exporter.simulator.serving: the
    server's module is named by a provider's only for types, so neither imports the other."""
    import ast
    import inspect

    from exporter.simulator.providers import MODULES

    for name, module in MODULES.items():
        tree = ast.parse(inspect.getsource(module))
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
            for node in ast.walk(block)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "exporter.simulator.app":
                assert id(node) in typing_only, f"{name} imports exporter.simulator.app at run time"


def test_the_request_log_tells_the_clients_polling_a_job_apart_by_their_token() -> None:
    s = Simulator(step_seconds=10, seed=7)
    client = TestClient(s.app())
    key = {"Authorization": f"Basic {CREDENTIALS['basiq_api_key']}", "basiq-version": "3.0"}
    tokens = [
        client.post("/basiq/token", headers=key, data={"scope": "SERVER_ACCESS"}).json()["access_token"]
        for _ in range(2)
    ]
    job = s.create("basiq")
    other = s.create("basiq")
    for token in (tokens[0], tokens[1], tokens[0]):
        assert (
            client.get(f"/basiq/jobs/{job.id}", headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        )
    client.get(f"/basiq/jobs/{other.id}", headers={"Authorization": f"Bearer {tokens[1]}"})

    log = client.get("/_sim/requests", params={"job_id": job.id}).json()["requests"]
    assert [r["key"] for r in log] == ["basiq.job"] * 3
    clients = [r["client"] for r in log]
    assert clients[0] == clients[2] != clients[1]
    assert all(tokens[0] not in c and tokens[1] not in c for c in clients)  # a fingerprint, not the token
    assert len(client.get("/_sim/requests").json()["requests"]) == 4  # tokens are no job's requests
