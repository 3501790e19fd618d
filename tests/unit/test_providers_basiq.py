"""Basiq as it is: step results as objects or arrays, the MFA challenge step, statement jobs'
stamps, a top-level status, who must act on each failure code, and its 403s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter import model
from exporter.fetch import PollError
from exporter.model import NO_EXTRA, Cause, Status, Step, shared_steps
from exporter.parsing import parse_timestamp
from exporter.providers.basiq import Basiq
from tests.harness import ROOT
from tests.unit.provider_http import basiq_http, fixture, provider_and_http, provider_for


def basiq() -> Basiq:
    p = provider_for(provider="basiq")
    assert isinstance(p, Basiq)
    return p


def test_an_mfa_challenge_sent_as_an_array_waits_for_the_end_user() -> None:
    job = basiq().parse_job(fixture("basiq_job_mfa_challenge.json"))
    assert job.status is Status.RUNNING
    assert job.awaiting_user
    assert [(s.name, s.awaiting_user) for s in job.steps][:2] == [
        ("verify-credentials", False),
        ("mfa-challenge", True),
    ]
    assert job.reason is None and job.cause is None


def test_a_pending_mfa_challenge_does_not_wait_for_the_user_yet() -> None:
    body = fixture("basiq_job_mfa_challenge.json")
    body["steps"][1] = {"title": "mfa-challenge", "status": "pending", "result": None}
    job = basiq().parse_job(body)
    assert job.status is Status.RUNNING and not job.awaiting_user


def test_an_expired_challenge_is_the_end_users_whatever_its_code() -> None:
    job = basiq().parse_job(fixture("basiq_job_mfa_expired.json"))
    assert job.status is Status.FAILED
    assert job.reason == "job-timed-out"
    # job-timed-out alone is the provider's; on the challenge step only the user could act.
    assert Basiq.causes["job-timed-out"] is Cause.PROVIDER
    assert job.cause is Cause.USER
    assert not job.awaiting_user
    assert job.message == "The one time password was not entered in time."


def test_an_error_sent_as_an_array_gives_its_code_and_detail() -> None:
    job = basiq().parse_job(fixture("basiq_job_failed_array.json"))
    assert job.status is Status.FAILED
    assert job.reason == "invalid-credentials"
    assert job.message == "Cannot login to target institution, check credentials and try again."
    assert job.cause is None  # the map decides: Basiq.causes
    assert Basiq.causes[job.reason] is Cause.USER
    assert job.finished == parse_timestamp("2024-09-25T04:22:38Z")


@pytest.mark.parametrize(
    "result",
    [
        {"code": "connector-error", "title": "t", "detail": "d"},
        [{"type": "error", "code": "connector-error", "title": "t", "detail": "d"}],
        {"type": "list", "data": [{"type": "error", "code": "connector-error", "title": "t", "detail": "d"}]},
    ],
)
def test_a_failure_reads_the_same_in_every_form(result: Any) -> None:
    body = {"id": "1", "steps": [{"title": "retrieve-accounts", "status": "failed", "result": result}]}
    job = basiq().parse_job(body)
    assert (job.reason, job.message) == ("connector-error", "d")


def test_a_failed_step_without_a_code_is_an_unknown_error() -> None:
    body = {"id": "1", "steps": [{"title": "retrieve-accounts", "status": "failed", "result": []}]}
    assert basiq().parse_job(body).reason == "unknown-error"


def test_success_links_in_an_array_finish_the_job() -> None:
    link = [{"type": "link", "url": "/users/u/connections/c"}]
    body = {
        "id": "1",
        "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-01T00:01:00Z",
        "steps": [{"title": t, "status": "success", "result": link} for t in ("a", "b")],
    }
    job = basiq().parse_job(body)
    assert job.status is Status.SUCCEEDED and job.finished == parse_timestamp("2024-01-01T00:01:00Z")


def test_a_statement_job_reads_its_created_date_and_updated_date() -> None:
    job = basiq().parse_job(fixture("basiq_statement_job.json"))
    assert job.job_type == "statement"
    assert job.status is Status.SUCCEEDED
    assert job.created == parse_timestamp("2024-03-11T02:41:07Z")
    assert job.updated == job.finished == parse_timestamp("2024-03-11T02:43:52Z")


def test_a_top_level_status_is_the_jobs_own_word() -> None:
    body = {
        "id": "1",
        "status": "in-progress",
        "steps": [{"title": "retrieve-statements", "status": "success", "result": None}],
    }
    assert basiq().parse_job(body).status is Status.RUNNING
    body["status"] = "failed"
    job = basiq().parse_job(body)
    assert job.status is Status.FAILED and job.reason == "unknown-error"
    body["status"] = "something-new"  # unknown words leave the steps to decide
    assert basiq().parse_job(body).status is Status.SUCCEEDED


@pytest.mark.parametrize(
    "code",
    ["invalid-credentials", "user-action-required", "account-not-accessible-requires-user-action"],
)
def test_the_end_users_failures_are_theirs(code: str) -> None:
    assert Basiq.causes[code] is Cause.USER


@pytest.mark.parametrize(
    "code",
    [
        "institution-disabled",
        "institution-not-available",
        "system-unavailable",
        "service-unavailable",
        "maintenance",
        "connector-error",
        "job-timed-out",
    ],
)
def test_institution_connector_maintenance_and_timeouts_are_the_providers(code: str) -> None:
    assert Basiq.causes[code] is Cause.PROVIDER


def documented_result_codes() -> list[str]:
    """The `result.code` list of getUserJobs, read from Basiq's published schema (a fixture)."""
    schema = fixture("basiq_user_jobs_schema.json")["schema"]
    step = schema["properties"]["data"]["items"]["properties"]["steps"]["items"]
    codes: list[str] = step["properties"]["result"]["properties"]["code"]["enum"]
    return [code for code in codes if code != "success"]


def test_every_failure_code_basiq_documents_has_a_cause() -> None:
    codes = documented_result_codes()
    assert len(codes) >= 20 and "row-count-exceeded" in codes
    # unknown-error says nobody knows: the one documented code left unknown, on purpose.
    missing = [code for code in codes if code not in Basiq.causes and code != "unknown-error"]
    assert not missing, f"Basiq failure codes without a cause: {missing}"
    assert set(codes) <= set(Basiq.known_reasons)


def test_docs_providers_table_names_every_documented_code_and_its_cause() -> None:
    text = (ROOT / "docs" / "providers.md").read_text()
    basiq = text.split("### Basiq", 1)[1].split("###", 1)[0]
    rows = [line for line in basiq.splitlines() if line.startswith("| `")]
    for code in [*documented_result_codes(), *Basiq.causes]:
        row = next((r for r in rows if f"`{code}`" in r.split("|")[1]), None)
        assert row is not None, f"docs/providers.md has no row for Basiq's {code}"
        cause = row.split("|")[2].strip()
        want = Basiq.causes[code].value if code in Basiq.causes else "unknown"
        assert cause == want, f"docs/providers.md gives {code} the cause {cause}, the code {want}"


@pytest.mark.parametrize(
    "code",
    ["invalid-csv-row", "empty-file", "missing-required-field", "account-data-differs", "row-count-exceeded"],
)
def test_a_bad_uploaded_file_is_the_end_users(code: str) -> None:
    body = {
        "id": "1",
        "steps": [{"title": "retrieve-statements", "status": "failed", "result": {"code": code}}],
    }
    job = basiq().parse_job(body)
    assert job.reason == code and Basiq.causes[code] is Cause.USER


def test_a_listed_job_without_job_type_is_typed_by_its_steps_and_links() -> None:
    listed = fixture("basiq_user_jobs.json")["data"]
    # Basiq's documented list has no jobType: connection, statement and report jobs must not merge.
    assert all("jobType" not in job for job in listed)
    types = [basiq().parse_job(job).job_type for job in listed]
    assert types == ["connection", "statement", "connection"]
    report = {"id": "r", "steps": [{"title": "create-report", "status": "in-progress"}]}
    assert basiq().parse_job(report).job_type == "report"
    # The job's own word wins when it has one.
    assert basiq().parse_job({**listed[1], "jobType": "statement"}).job_type == "statement"
    assert basiq().parse_job({"id": "x", "steps": []}).job_type == ""


def test_a_listed_statement_failure_reads_its_details_and_cause() -> None:
    job = basiq().parse_job(fixture("basiq_user_jobs.json")["data"][1])
    assert (job.status, job.reason, job.message) == (
        Status.FAILED,
        "invalid-csv-row",
        "Row 12 has 3 columns, 5 expected.",
    )
    assert Basiq.causes["invalid-csv-row"] is Cause.USER


def test_every_documented_code_is_known_and_unknown_error_stays_unknown() -> None:
    assert set(Basiq.causes) | {"unknown-error"} == set(Basiq.known_reasons)
    assert "unknown-error" not in Basiq.causes
    for code in ("invalid-connection", "authorization-failed"):
        assert code in Basiq.known_reasons


# --- 403s: rate limits, expired tokens, refusals --------------------------------------------


def basiq_error(status: int, detail: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"type": "list", "data": [{"type": "error", "code": "forbidden-access", "detail": detail}]}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.anyio
async def test_a_403_from_the_token_endpoint_is_a_rate_limit_to_back_off_from(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/token"
        return basiq_error(403, "Forbidden Access", {"Retry-After": "120"})

    http = basiq_http(handler, tmp_path)
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == "http_429" and e.value.retry_after == 120
    assert http.stats.errors["http_429"] == 1 and http.stats.errors["auth"] == 0
    assert http.stats.retry_after == 120
    await http.aclose()


@pytest.mark.anyio
async def test_a_403_invalid_request_from_the_token_endpoint_is_its_rate_limit(tmp_path: Path) -> None:
    # Basiq's error guide: 403 "Invalid request" when an IP asked for too many tokens in 5 minutes.
    http = basiq_http(lambda request: basiq_error(403, "Invalid request"), tmp_path)
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == "http_429"
    assert "rate limited" in str(e.value)
    await http.aclose()


@pytest.mark.anyio
async def test_a_disabled_account_on_the_token_endpoint_is_auth_not_a_rate_limit(tmp_path: Path) -> None:
    calls = {"token": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["token"] += 1
        return basiq_error(403, "Your account has been disabled. Please contact Basiq support.")

    http = basiq_http(handler, tmp_path)
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == "auth" and e.value.retry_after is None
    assert "account is disabled" in str(e.value)
    assert http.stats.errors["auth"] == 1 and http.stats.errors["http_429"] == 0
    assert http.stats.retry_after is None
    await http.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("detail", ["Quota exceeded for this application", "Server overloaded, retry later"])
async def test_a_403_on_any_endpoint_that_speaks_of_load_is_a_rate_limit(tmp_path: Path, detail: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return basiq_error(403, detail)

    http = basiq_http(handler, tmp_path)
    with pytest.raises(PollError) as e:
        await http.get_json("/users/u/jobs")
    assert e.value.reason == "http_429"
    await http.aclose()


@pytest.mark.anyio
async def test_a_401_from_the_token_endpoint_is_bad_credentials(tmp_path: Path) -> None:
    http = basiq_http(lambda request: basiq_error(401, "Invalid API key"), tmp_path)
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == "auth"
    await http.aclose()


@pytest.mark.anyio
async def test_a_403_that_speaks_of_a_rate_limit_backs_off_without_renewing(tmp_path: Path) -> None:
    calls = {"token": 0, "job": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            calls["token"] += 1
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        calls["job"] += 1
        return basiq_error(403, "Rate limit exceeded, slow down")

    http = basiq_http(handler, tmp_path)
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == "http_429"
    assert calls == {"token": 1, "job": 1}
    assert http.stats.errors["auth"] == 0
    await http.aclose()


@pytest.mark.anyio
async def test_a_403_saying_the_token_expired_renews_it_once(tmp_path: Path) -> None:
    calls = {"token": 0, "job": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            calls["token"] += 1
            return httpx.Response(200, json={"access_token": f"t{calls['token']}", "expires_in": 3600})
        calls["job"] += 1
        return basiq_error(403, "Token has expired")  # even the new one: no loop

    http = basiq_http(handler, tmp_path)
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == "auth"
    assert calls == {"token": 2, "job": 2}
    await http.aclose()


def test_jobs_in_the_same_state_share_their_steps_and_labels() -> None:
    # Each answer is parsed from its own text, as each poll does: nothing is shared by accident.
    a, b = (basiq().parse_job({**fixture("basiq_job.json"), "id": i, "jobType": "connection"}) for i in "ab")
    assert a.steps is b.steps and a.steps[0].name == "verify-credentials"
    assert a.raw_status is b.raw_status and a.job_type is b.job_type
    # Whom they concern (links.source) is one mapping for every job of the same connection.
    assert a.extra is b.extra and a.extra == {"user": "ea3a81", "connection": "8fce3b"}
    assert basiq().parse_job({"id": "c", "steps": []}).extra is NO_EXTRA


def test_a_job_names_its_end_user_and_connection_from_its_links() -> None:
    job = basiq().parse_job(fixture("basiq_job_failed_array.json"))
    assert job.extra == {
        "user": "b2afc9cd-0f3c-41f0-9e19-d18482abc9fc",
        "connection": "60612323-9c42-478a-8ff2-640445dbe64a",
    }
    # A statement job without a source still names them in its first step's link.
    statement = basiq().parse_job(fixture("basiq_statement_job.json"))
    assert statement.extra == {"user": "ea3a81", "connection": "7a1b22"}


def test_a_failed_steps_free_text_stays_the_jobs_own() -> None:
    a, b = (basiq().parse_job(fixture("basiq_job_failed_array.json")) for _ in range(2))
    assert any(s.message for s in a.steps)
    assert a.steps == b.steps and a.steps is not b.steps


def test_the_shared_steps_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "SHARED_STEPS_MAX", 2)
    monkeypatch.setattr(model, "_SHARED_STEPS", {})
    for i in range(5):
        assert shared_steps((Step(f"s{i}", Status.RUNNING),)) == (Step(f"s{i}", Status.RUNNING),)
    assert len(model._SHARED_STEPS) <= 2


def test_the_shared_steps_hold_only_small_answers_steps() -> None:
    # Bounded in count is not bounded in bytes: an answer's step titles have no length of their
    # own (up to max_response_bytes), and the cache would keep 4,096 of them after their jobs.
    long_title = {**fixture("basiq_job.json"), "steps": [{"title": "t" * 100_000, "status": "pending"}]}
    many_steps = {
        **fixture("basiq_job.json"),
        "steps": [{"title": f"step-{i}", "status": "pending"} for i in range(1_000)],
    }
    for answer in (long_title, many_steps):
        job = basiq().parse_job(answer)
        assert len(job.steps) == len(answer["steps"]) and job.steps[0].name == answer["steps"][0]["title"]
        assert job.steps not in model._SHARED_STEPS


@pytest.mark.anyio
async def test_a_user_that_does_not_exist_is_a_missing_source_and_its_jobs_still_polled() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/users/ea3a81/jobs":
            body = {"type": "list", "data": [{"type": "error", "code": "resource-not-found",
                                              "detail": "Requested user does not exist."}]}  # fmt: skip
            return httpx.Response(404, json=body)
        return httpx.Response(
            200, json={**fixture("basiq_job.json"), "id": request.url.path.rsplit("/", 1)[1]}
        )

    provider, http = provider_and_http(handler, provider="basiq", users=["ea3a81"])
    result = await provider.poll(http, ["61723"])
    await http.aclose()
    assert result.missing == ["user ea3a81"]
    assert [j.id for j in result.jobs] == ["61723"] and result.gone == []
