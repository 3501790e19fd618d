"""WillSuite: its api-job answer read into the job model, and one GET per tracked job."""

from __future__ import annotations

import httpx
import pytest

from exporter.model import Cause, Status
from exporter.parsing import parse_timestamp
from exporter.providers.base import BadPayload
from exporter.providers.willsuite import WillSuite, failed_records
from tests.unit.provider_http import fixture, provider_and_http, provider_for


def willsuite(**keys: object) -> WillSuite:
    p = provider_for(provider="willsuite", **keys)
    assert isinstance(p, WillSuite)
    return p


def test_fixture_is_read_into_the_normalised_job() -> None:
    job = willsuite().parse_job(fixture("willsuite_api_job.json"))
    assert job.id == "43dbbc35-d114-4da5-a1c0-6abbea6d7bf5"
    assert job.status is Status.SUCCEEDED
    assert job.raw_status == "completed"
    assert job.job_type == "customer_case_bulk_update"
    assert job.started == 1708510891.0  # 2024-02-21 10:21:31 UTC
    assert job.finished == 1708510895.0
    assert job.created == 1708510891.0
    assert job.updated == 1708510895.0
    assert (job.records_total, job.records_affected, job.records_failed) == (773, 770, 2)
    # Completed, with two records refused for the data sent: their reason, the application's.
    assert job.reason == "record_errors" and WillSuite.causes["record_errors"] is Cause.USER
    assert job.message is not None and job.message.count("Case ID:") == 2
    assert job.effective_percent() == 100.0


def test_zone_less_times_are_read_in_the_targets_timezone() -> None:
    job = willsuite(timezone="Europe/London").parse_job(
        {**fixture("willsuite_api_job.json"), "start_time": "2024-07-01 10:00:00"}
    )
    # British Summer Time: 10:00 in London is 09:00 UTC.
    assert job.started == parse_timestamp("2024-07-01T09:00:00Z")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("pending", Status.PENDING),
        ("processing", Status.RUNNING),
        ("completed", Status.SUCCEEDED),
        ("failed", Status.FAILED),
        ("archived", Status.UNKNOWN),
    ],
)
def test_status_mapping(raw: str, status: Status) -> None:
    job = willsuite().parse_job({"id": "j1", "status": raw})
    assert job.status is status
    assert job.raw_status == raw


def test_a_failed_job_has_a_bounded_reason_and_keeps_the_text_as_message() -> None:
    job = willsuite().parse_job(
        {"id": "j1", "status": "failed", "message": "The import file could not be read."}
    )
    assert job.reason == "failed"
    assert job.message == "The import file could not be read."
    assert job.records_failed == 0
    listed = willsuite().parse_job({**fixture("willsuite_api_job.json"), "status": "failed"})
    assert listed.reason == "record_errors"


def test_a_running_job_has_no_end_and_no_failed_count_yet() -> None:
    job = willsuite().parse_job(
        {
            "id": "j1",
            "status": "processing",
            "start_time": "2024-02-21 10:21:31",
            "end_time": None,
            "message": "",
        }
    )
    assert job.finished is None
    assert job.records_failed is None
    assert job.started == 1708510891.0


def test_failed_records_counts_every_case_block() -> None:
    assert failed_records(None) == 0
    assert (
        failed_records(
            "Case ID: a failed with the following errors:\n\nx\nCase ID: b failed with the following errors:"
        )
        == 2
    )


@pytest.mark.parametrize(
    "body", [[], {"status": "completed"}, {"id": "j1"}, {"id": True, "status": "failed"}]
)
def test_bodies_without_id_or_status_are_bad(body: object) -> None:
    with pytest.raises(BadPayload):
        willsuite().parse_job(body)


def test_willsuite_advises_five_minutes_between_polls() -> None:
    from exporter.config import build_settings
    from exporter.providers import PROVIDERS

    s = build_settings(
        {"targets": [{"name": "w", "provider": "willsuite", "base_url": "https://x.example"}]}, PROVIDERS
    )
    assert s.resolved(s.targets[0]).poll_interval == 300.0
    fast = build_settings(
        {
            "targets": [
                {"name": "w", "provider": "willsuite", "base_url": "https://x.example", "poll_interval": "1m"}
            ]
        },
        PROVIDERS,
    )
    assert fast.resolved(fast.targets[0]).poll_interval_below_advice


@pytest.mark.anyio
async def test_poll_gets_each_job_and_a_404_is_gone() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/gone"):
            return httpx.Response(404, json={"message": "Not found."})
        return httpx.Response(
            200, json={**fixture("willsuite_api_job.json"), "id": request.url.path.rsplit("/", 1)[1]}
        )

    provider, http = provider_and_http(handler, provider="willsuite", base_url="https://w.example/engine/api")
    result = await provider.poll(http, ["a", "gone"])
    await http.aclose()
    assert sorted(seen) == ["/engine/api/api-jobs/a", "/engine/api/api-jobs/gone"]
    assert [j.id for j in result.jobs] == ["a"]
    assert result.gone == ["gone"]


def test_a_job_names_the_company_it_concerns() -> None:
    job = willsuite().parse_job(fixture("willsuite_api_job.json"))
    assert job.extra == {"company": "aff00be6-f734-4094-a8ae-62874485dac0"}


@pytest.mark.parametrize(
    ("status", "affected", "outcome", "reason"),
    [
        ("processing", 770, Status.SUCCEEDED, "record_errors"),
        ("pending", 770, Status.SUCCEEDED, "record_errors"),
        ("something-new", 770, Status.SUCCEEDED, "record_errors"),
        ("processing", 0, Status.FAILED, "record_errors"),
        ("failed", 770, Status.FAILED, "record_errors"),
    ],
)
def test_a_job_with_an_end_time_is_finished_whatever_its_status_says(
    status: str, affected: int, outcome: Status, reason: str
) -> None:
    job = willsuite().parse_job(
        {**fixture("willsuite_api_job.json"), "status": status, "effected_records": affected}
    )
    assert (job.status, job.reason) == (outcome, reason)
    assert job.finished == 1708510895.0
    assert job.raw_status == status


def test_a_job_ended_with_no_record_failure_and_none_through_has_failed() -> None:
    body = {**fixture("willsuite_api_job.json"), "status": "processing", "message": "", "effected_records": 0}
    job = willsuite().parse_job(body)
    assert (job.status, job.reason) == (Status.FAILED, "failed")
    assert WillSuite.causes["failed"] is Cause.PROVIDER


def test_a_failed_jobs_total_records_are_not_counted_as_processed() -> None:
    from exporter.model import Job
    from exporter.providers.base import PollResult
    from tests.unit.test_tracker import tracker

    tr = tracker()
    tr.track("t", Job("a", Status.RUNNING), "static", now=100)
    tr.track("t", Job("b", Status.RUNNING), "static", now=100)
    done = [
        Job("a", Status.FAILED, records_total=773, records_affected=0, records_failed=773, reason="failed"),
        Job("b", Status.SUCCEEDED, records_total=100, records_affected=98, records_failed=2),
    ]
    tr.apply("t", PollResult(jobs=done), now=200)
    assert tr.targets["t"].agg.records_processed[""] == 100
    assert tr.targets["t"].agg.records_failed[""] == 775


def test_refused_records_of_a_completed_job_carry_their_cause_in_error_info() -> None:
    from exporter.config import build_settings
    from exporter.providers import PROVIDERS
    from exporter.providers.base import PollResult
    from exporter.render.jobs import JOB_FAMILIES
    from exporter.tracker import Tracker

    s = build_settings(
        {"targets": [{"name": "t", "provider": "willsuite", "base_url": "https://x"}]}, PROVIDERS
    )
    tr = Tracker()
    tr.set_target(s.resolved(s.targets[0]))
    job = willsuite().parse_job(fixture("willsuite_api_job.json"))
    tr.track("t", job, "static", now=100)
    tr.apply("t", PollResult(jobs=[job]), now=200)
    tracked = tr.targets["t"].jobs[job.id]
    (error_info,) = [f for f in JOB_FAMILIES if f.name == "asyncjob_job_error_info"]
    assert job.status is Status.SUCCEEDED
    assert error_info.lines(tracked, 'target="t",job_id="x"') == (
        'asyncjob_job_error_info{target="t",job_id="x",reason="record_errors",cause="user"} 1\n'
    )
    # Nothing failed: the failure counters stay where they were.
    assert not any(tr.targets["t"].agg.failed.values())
