"""AIMS360: OData rows read into the job model, ids batched into few requests, paging, purges, reruns."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from exporter.config import build_settings
from exporter.model import Cause, Status, placeholder
from exporter.parsing import parse_timestamp
from exporter.providers import PROVIDERS
from exporter.providers.aims360 import MAX_FILTER_CHARS, Aims360, id_batches
from exporter.providers.base import BadPayload
from exporter.providers.willsuite import WillSuite
from exporter.tracker import Tracker
from tests.unit.provider_http import fixture, provider_and_http, provider_for

FIXTURE_ID = "d29fac30-650a-4ff2-b2b1-acab3c7472ea-20190607060819639"
# The documented spelling, exactly: AIMS360's Jobs guide filters on `jobId` (rows say `jobID`).
CLAUSE = re.compile(r"\bjobId eq '((?:[^']|'')*)'")


def aims(**keys: object) -> Aims360:
    p = provider_for(provider="aims360", **keys)
    assert isinstance(p, Aims360)
    return p


def fixture_row(**changes: Any) -> dict[str, Any]:
    return {**fixture("aims360_backgroundjob.json")["value"][0], **changes}


def test_fixture_is_read_into_the_normalised_job() -> None:
    job = aims().parse_job(fixture_row())
    assert job.id == FIXTURE_ID
    assert job.status is Status.SUCCEEDED
    assert job.raw_status == "Completed"
    assert job.job_type == "Reports/Production Forecasting Report"
    assert job.percent == 100.0
    assert job.attempts == 0
    assert job.created == parse_timestamp("2019-06-07T06:08:19.64Z") == 1559887699.64
    assert job.started == 1559887699.64
    assert job.finished == parse_timestamp("2019-06-07T06:09:22.737Z")
    assert job.updated == job.finished
    assert job.reason is None
    assert job.message == "Production forecast report completed."


def test_the_rerun_answer_is_a_queued_job() -> None:
    body = fixture("aims360_rerun_response.json")
    job = aims().parse_job(body)
    assert (job.id, job.status, job.raw_status) == (
        "5f0e7a52-1111-4c3e-9d2a-0123456789ab-20190607070000000",
        Status.PENDING,
        "Queued",
    )


@pytest.mark.parametrize(
    "body",
    [
        fixture("aims360_backgroundjob.json"),
        fixture("aims360_backgroundjob.json")["value"][0],
        {"jobId": FIXTURE_ID, "jobStatus": "Queued"},
        {"id": FIXTURE_ID},
    ],
)
def test_registration_accepts_the_providers_own_bodies(body: Any) -> None:
    assert aims().id_from_body(body) == FIXTURE_ID


def test_registration_names_the_missing_id() -> None:
    with pytest.raises(BadPayload, match="jobID"):
        aims().id_from_body({"jobStatus": "Queued"})


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        (
            {"jobStatus": "Queued", "percentCompleted": 0, "startDate": None, "completedDate": None},
            Status.PENDING,
        ),
        (
            {"jobStatus": "Queued", "percentCompleted": 5, "startDate": None, "completedDate": None},
            Status.RUNNING,
        ),
        ({"jobStatus": "Queued", "percentCompleted": 0, "completedDate": None}, Status.RUNNING),
        ({"jobStatus": "Inprogress", "completedDate": None}, Status.RUNNING),
        ({"jobStatus": "Completed"}, Status.SUCCEEDED),
        ({"jobStatus": "Failed"}, Status.FAILED),
        ({"jobStatus": "Cancelled"}, Status.UNKNOWN),
    ],
)
def test_status_mapping(changes: dict[str, Any], status: Status) -> None:
    assert aims().parse_job(fixture_row(**changes)).status is status


def test_a_failed_job_has_a_bounded_reason_and_its_text_as_message() -> None:
    job = aims().parse_job(fixture_row(jobStatus="Failed", jobStatusText="Timeout reading the warehouse."))
    assert job.reason == "failed"
    assert job.message == "Timeout reading the warehouse."


def test_seven_fractional_digits_are_read() -> None:
    job = aims().parse_job(fixture_row(modifiedDate="2019-06-07T06:09:22.7370000Z"))
    assert job.updated == parse_timestamp("2019-06-07T06:09:22.737Z")


def test_a_long_type_is_bounded() -> None:
    job = aims().parse_job(fixture_row(subCategoryName="x" * 300))
    assert len(job.job_type) == 64


def test_batches_stay_under_the_filter_limit_and_cover_every_id() -> None:
    ids = [f"{i:08d}-650a-4ff2-b2b1-acab3c7472ea-20190607060819639" for i in range(100)]
    batches = id_batches(ids)
    assert len(batches) > 1
    assert [i for b in batches for i in b] == ids
    for b in batches:
        assert len(" or ".join(f"jobId eq '{i}'" for i in b)) <= MAX_FILTER_CHARS


class FakeOData:
    """An OData backgroundjob endpoint over the given rows, paging `page` rows at a time."""

    def __init__(self, rows: list[dict[str, Any]], page: int = 50) -> None:
        self.rows = rows
        self.page = page
        self.requests: list[httpx.URL] = []
        self.reruns: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url)
        if request.method == "POST":
            old = request.url.path.split("/")[-2]
            self.reruns.append(old)
            return httpx.Response(200, json={"jobId": f"{old}-r", "jobStatus": "Queued"})
        odata_filter = request.url.params.get("$filter", "")
        wanted = {m.replace("''", "'") for m in CLAUSE.findall(odata_filter)}
        if "jobStatus eq 'Queued'" in odata_filter:
            rows = [r for r in self.rows if r["jobStatus"] == "Queued"]
        else:
            rows = [r for r in self.rows if r["jobID"] in wanted]
        skip = int(request.url.params.get("$skip", "0"))
        body: dict[str, Any] = {"value": rows[skip : skip + self.page]}
        if skip + self.page < len(rows):
            body["@odata.nextLink"] = str(request.url.copy_merge_params({"$skip": str(skip + self.page)}))
        return httpx.Response(200, json=body)


def rows(n: int, **changes: Any) -> list[dict[str, Any]]:
    return [fixture_row(jobID=f"job-{i:04d}-{'x' * 40}", **changes) for i in range(n)]


@pytest.mark.anyio
async def test_many_ids_go_in_few_requests_within_the_url_limit_and_pages_are_followed() -> None:
    api = FakeOData(rows(120), page=10)
    provider, http = provider_and_http(api, provider="aims360")
    tracked = [r["jobID"] for r in api.rows]
    result = await provider.poll(http, tracked)
    await http.aclose()
    assert sorted(j.id for j in result.jobs) == sorted(tracked)
    assert result.gone == []
    first_pages = [u for u in api.requests if "$skip" not in u.params]
    assert 1 < len(first_pages) <= 5
    assert all(len(u.params["$filter"]) <= MAX_FILTER_CHARS for u in first_pages)
    assert any("$skip" in u.params for u in api.requests)


@pytest.mark.anyio
async def test_a_tracked_id_missing_from_the_answer_is_gone_and_discovery_adds_jobs() -> None:
    api = FakeOData(
        [fixture_row(jobID="a"), fixture_row(jobID="new", jobStatus="Queued", completedDate=None)]
    )
    provider, http = provider_and_http(
        api, provider="aims360", discover_filter="jobStatus eq 'Queued' or jobStatus eq 'Inprogress'"
    )
    result = await provider.poll(http, ["a", "purged"])
    await http.aclose()
    assert sorted(j.id for j in result.jobs) == ["a", "new"]
    assert result.gone == ["purged"]


@pytest.mark.anyio
async def test_a_next_link_on_another_host_is_read_from_the_configured_one() -> None:
    first = fixture("aims360_backgroundjob_failed_paged.json")
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if "$skip" in request.url.params:
            assert request.url.params["$filter"] == "jobStatus eq 'Failed'"
            return httpx.Response(200, json={"value": [fixture_row(jobID="page-2")]})
        return httpx.Response(200, json=first)

    provider, http = provider_and_http(
        handler,
        provider="aims360",
        base_url="https://apieast.aims360.rest",
        discover_filter="jobStatus eq 'Failed'",
    )
    result = await provider.poll(http, [])
    await http.aclose()
    assert sorted(j.id for j in result.jobs) == sorted([first["value"][0]["jobID"], "page-2"])
    assert result.bad_payloads == []
    # Both pages from the configured host: the token never went to apieast1.
    assert hosts == ["apieast.aims360.rest", "apieast.aims360.rest"]


@pytest.mark.anyio
async def test_no_rerun_unless_auto_rerun_is_on() -> None:
    api = FakeOData([fixture_row(jobID="a", jobStatus="Failed", canReRun="Yes")])
    provider, http = provider_and_http(api, provider="aims360")
    result = await provider.poll(http, ["a"])
    await http.aclose()
    assert api.reruns == [] and result.replaced == {}


@pytest.mark.anyio
async def test_auto_rerun_replaces_a_failed_job_at_most_max_reruns_times() -> None:
    api = FakeOData(
        [
            fixture_row(jobID="a", jobStatus="Failed", canReRun="Yes", numberOfAttempts=0),
            fixture_row(jobID="a-r", jobStatus="Failed", canReRun="Yes"),
            fixture_row(jobID="b", jobStatus="Failed", canReRun="No"),
        ]
    )
    provider, http = provider_and_http(api, provider="aims360", auto_rerun=True, max_reruns=1)
    first = await provider.poll(http, ["a", "b"])
    assert first.replaced == {"a": "a-r"}
    new = next(j for j in first.jobs if j.id == "a-r")
    assert (new.status, new.raw_status, new.attempts) == (Status.PENDING, "Queued", 1)
    assert [j.status for j in first.jobs if j.id == "a"] == [Status.FAILED]
    # The rerun failed too: the chain has used its one rerun.
    second = await provider.poll(http, ["a-r"])
    await http.aclose()
    assert second.replaced == {}
    assert api.reruns == ["a"]


class SameIdReruns(FakeOData):
    """Reruns answer the job's own id, queued again, as the service may."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            old = request.url.path.split("/")[-2]
            self.reruns.append(old)
            return httpx.Response(200, json={"jobId": old, "jobStatus": "Queued"})
        return super().__call__(request)


def failed_row(job_id: str = "a", **changes: Any) -> dict[str, Any]:
    row = fixture("aims360_backgroundjob_failed_paged.json")["value"][0]
    # Still within its rerun window (maximumDateTimeToExecuteJob) unless a test says otherwise.
    return {**row, "jobID": job_id, "maximumDateTimeToExecuteJob": None, **changes}


@pytest.mark.anyio
async def test_a_rerun_that_answers_the_same_id_keeps_tracking_that_job() -> None:
    api = SameIdReruns([failed_row("a")])
    provider, http = provider_and_http(api, provider="aims360", auto_rerun=True, max_reruns=1)
    first = await provider.poll(http, ["a"])
    assert first.replaced == {"a": "a"} and first.reruns == 1
    assert [(j.id, j.status) for j in first.jobs] == [("a", Status.FAILED), ("a", Status.PENDING)]
    assert first.jobs[1].created == first.jobs[0].created and first.jobs[1].attempts == 1
    # The rerun fails again: the job is still reported, and the budget of one is spent.
    second = await provider.poll(http, ["a"])
    await http.aclose()
    assert [(j.id, j.status) for j in second.jobs] == [("a", Status.FAILED)]
    assert second.replaced == {} and api.reruns == ["a"]


@pytest.mark.anyio
async def test_the_rerun_budget_survives_a_restart() -> None:
    api = SameIdReruns([failed_row("a")])
    provider, http = provider_and_http(api, provider="aims360", auto_rerun=True, max_reruns=1)
    provider.restore_reruns({"a": 1})  # what the state file kept of the tracked job
    result = await provider.poll(http, ["a"])
    await http.aclose()
    assert result.replaced == {} and api.reruns == []


@pytest.mark.anyio
async def test_no_rerun_past_its_maximum_date_time_to_execute() -> None:
    past = failed_row("late", maximumDateTimeToExecuteJob="2019-06-08T07:03:12.5Z")
    future = failed_row("soon", maximumDateTimeToExecuteJob="2999-01-01T00:00:00Z")
    refused = failed_row("no", canReRun="No")
    api = SameIdReruns([past, future, refused])
    provider, http = provider_and_http(api, provider="aims360", auto_rerun=True, max_reruns=3)
    result = await provider.poll(http, ["late", "soon", "no"])
    await http.aclose()
    assert api.reruns == ["soon"] and result.replaced == {"soon": "soon"}


@pytest.mark.anyio
async def test_a_failure_then_a_rerun_success_count_one_of_each() -> None:
    api = SameIdReruns([failed_row("a")])
    provider, http = provider_and_http(api, provider="aims360", auto_rerun=True, max_reruns=1)
    settings = build_settings(
        {"targets": [{"name": "t", "provider": "aims360", "base_url": "https://api.example.com"}]}, PROVIDERS
    )
    tracker = Tracker()
    tracker.set_target(settings.resolved(settings.targets[0]))
    tracker.track("t", placeholder("a"), "static", now=1)
    tracker.apply("t", await provider.poll(http, tracker.pollable("t")), now=10)
    assert tracker.pollable("t") == ["a"]
    # The rerun completed.
    api.rows = [fixture_row(jobID="a", subCategoryName="Open Orders Report", numberOfAttempts=1)]
    tracker.apply("t", await provider.poll(http, tracker.pollable("t")), now=20)
    tracker.apply("t", await provider.poll(http, tracker.pollable("t")), now=30)
    await http.aclose()
    agg = tracker.targets["t"].agg
    job_type = "Reports/Open Orders Report"
    assert agg.finished[(job_type, Status.FAILED)] == 1
    assert agg.finished[(job_type, Status.SUCCEEDED)] == 1
    assert tracker.targets["t"].jobs["a"].reruns == 1


def test_aims360_and_willsuite_failures_are_the_providers() -> None:
    job = aims().parse_job(failed_row("a"))
    assert job.reason == "failed" and Aims360.causes[job.reason] is Cause.PROVIDER
    assert set(Aims360.causes) == set(Aims360.known_reasons)
    assert WillSuite.causes["failed"] is Cause.PROVIDER
    # Records WillSuite refused are the data the application sent: its team's, not an operator's.
    assert WillSuite.causes["record_errors"] is Cause.USER


def test_a_job_names_the_account_and_the_user_who_started_it() -> None:
    job = aims().parse_job(fixture_row())
    assert (job.extra["account"], job.extra["user"]) == ("AZ022", "support@aims360.com")
    assert job.extra["canReRun"] == "Yes"  # beside what the rerun reads


@pytest.mark.anyio
async def test_a_backgroundjob_endpoint_that_answers_404_is_a_missing_source_not_gone_jobs() -> None:
    provider, http = provider_and_http(
        lambda request: httpx.Response(404, json={"error": {"message": "Not found"}}),
        provider="aims360",
        discover_filter="jobStatus eq 'Queued'",
    )
    result = await provider.poll(http, ["a", "b"])
    await http.aclose()
    assert result.missing == ["backgroundjob", "backgroundjob"]  # the scheduler counts it once
    assert result.gone == [] and result.jobs == []
