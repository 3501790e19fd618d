"""Generic JSON jobs: the config's paths and status map read any API's job, and say so when they
match nothing."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from exporter.config import ConfigError, build_settings
from exporter.model import Status
from exporter.parsing import parse_timestamp
from exporter.providers import PROVIDERS
from exporter.providers.base import BadPayload
from exporter.providers.generic import Generic
from exporter.simulator import generic as sim_generic
from exporter.simulator.app import Simulator
from exporter.simulator.demo import EXPORT_FIELDS, EXPORT_STATUS_MAP
from tests.unit.provider_http import provider_and_http, provider_for, target

FIELDS = {**EXPORT_FIELDS, "attempts": "attempts"}
STATUS_MAP = EXPORT_STATUS_MAP
EXPORTS = {
    "provider": "generic",
    "job_path": "/v1/exports/{id}",
    "list_path": "/v1/exports?state=active",
    "items": "data",
    "fields": FIELDS,
    "status_map": STATUS_MAP,
}


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "exp_1",
        "kind": "csv_export",
        "state": "error",
        "progress": {"pct": 40.5, "rows": {"total": 100, "written": 40, "rejected": 3}},
        "created_at": "2024-02-21T10:21:31Z",
        "started_at": "2024-02-21T10:21:35Z",
        "finished_at": "2024-02-21T10:22:00Z",
        "updated_at": "2024-02-21T10:22:00Z",
        "error": {"code": "Quota Exceeded", "message": "Export quota of the account exceeded."},
        "attempts": 2,
    }
    base.update(changes)
    return base


def generic(**keys: Any) -> Generic:
    p = provider_for(**{**EXPORTS, **keys})
    assert isinstance(p, Generic)
    return p


def test_every_configured_field_is_read() -> None:
    job = generic().parse_job(body())
    assert job.id == "exp_1"
    assert (job.status, job.raw_status) == (Status.FAILED, "error")
    assert job.job_type == "csv_export"
    assert job.percent == 40.5
    assert job.created == parse_timestamp("2024-02-21T10:21:31Z")
    assert job.started == parse_timestamp("2024-02-21T10:21:35Z")
    assert job.finished == parse_timestamp("2024-02-21T10:22:00Z")
    assert job.updated == job.finished
    assert (job.records_total, job.records_affected, job.records_failed) == (100, 40, 3)
    assert job.attempts == 2
    assert job.reason == "quota-exceeded"
    assert job.message == "Export quota of the account exceeded."


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("queued", Status.PENDING),
        ("WORKING", Status.RUNNING),
        ("done", Status.SUCCEEDED),
        ("error", Status.FAILED),
        ("waiting_for_input", Status.UNKNOWN),
    ],
)
def test_status_map_and_unmapped_keeps_the_raw_value(raw: str, status: Status) -> None:
    job = generic().parse_job(body(state=raw, error=None))
    assert job.status is status
    assert job.raw_status == raw


def test_without_status_map_the_normalised_names_are_understood() -> None:
    p = generic(status_map=None, fields={"status": "state"})
    assert p.parse_job({"id": 7, "state": "succeeded"}).status is Status.SUCCEEDED
    assert p.parse_job({"id": 7, "state": "done"}).status is Status.UNKNOWN


def test_a_failed_job_without_a_code_fails_for_its_raw_status() -> None:
    job = generic(fields={"status": "state"}).parse_job({"id": "x", "state": "error"})
    assert job.reason == "error"


def test_naive_times_are_read_in_the_targets_timezone() -> None:
    job = generic(timezone="Asia/Tokyo").parse_job(body(created_at="2024-02-21 19:21:31"))
    assert job.created == parse_timestamp("2024-02-21T10:21:31Z")


def test_steps_are_read_through_their_paths() -> None:
    p = generic(steps={"path": "stages", "name": "label", "status": "state"})
    job = p.parse_job(
        body(
            state="working",
            stages=[{"label": "collect", "state": "done"}, {"label": "render", "state": "working"}],
        )
    )
    assert [(s.name, s.status) for s in job.steps] == [
        ("collect", Status.SUCCEEDED),
        ("render", Status.RUNNING),
    ]


@pytest.mark.parametrize(("field", "path"), [("id", "uuid"), ("status", "status.value")])
def test_an_id_or_status_path_that_matches_nothing_is_a_bad_body_naming_it(field: str, path: str) -> None:
    p = generic(fields={**FIELDS, field: path})
    with pytest.raises(BadPayload, match=rf"fields\.{field}: path '{path}' matches nothing"):
        p.parse_job(body())


def test_an_optional_path_that_matches_nothing_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    p = generic(fields={**FIELDS, "percent": "progress.percent"})
    with caplog.at_level(logging.WARNING, logger="asyncjob.providers.generic"):
        assert p.parse_job(body()).percent is None
        p.parse_job(body())
    warnings = [r for r in caplog.records if "matches nothing" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].__dict__["path"] == "progress.percent"
    assert warnings[0].__dict__["field"] == "fields.percent"


def test_a_null_on_the_way_is_a_match_not_a_typo(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncjob.providers.generic"):
        job = generic().parse_job(body(state="done", error=None))
    assert job.message is None and job.reason is None
    assert not caplog.records


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"job_path": None, "list_path": None}, "needs job_path"),
        ({"job_path": "/v1/exports"}, "has no {id} placeholder"),
        ({"list_path": None}, "items: only used with list_path"),
        ({"job_path": None, "jobs": ["a"]}, "jobs: static job ids need job_path"),
        ({"users": ["u"]}, "users: not used by provider generic"),
    ],
)
def test_config_problems_are_named(keys: dict[str, Any], problem: str) -> None:
    spec = {k: v for k, v in {**EXPORTS, **keys}.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        build_settings({"targets": [target(**spec)]}, PROVIDERS)
    assert problem in "\n".join(e.value.problems)


def api(jobs: dict[str, dict[str, Any]], active: list[str]) -> Any:
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(f"{request.url.path}?{request.url.query.decode()}".rstrip("?"))
        if request.url.path == "/v1/exports":
            return httpx.Response(200, json={"data": [jobs[i] for i in active]})
        job_id = request.url.path.rsplit("/", 1)[1]
        if job_id not in jobs:
            return httpx.Response(404, json={})
        return httpx.Response(200, json=jobs[job_id])

    handler.requests = requests  # type: ignore[attr-defined]
    return handler


@pytest.mark.anyio
async def test_poll_lists_active_jobs_and_gets_the_others_one_by_one() -> None:
    jobs = {"a": body(id="a", state="working"), "b": body(id="b", state="done")}
    handler = api(jobs, active=["a"])
    provider, http = provider_and_http(handler, **target(**EXPORTS))
    result = await provider.poll(http, ["a", "b", "c"])
    await http.aclose()
    assert sorted(j.id for j in result.jobs) == ["a", "b"]
    assert result.gone == ["c"]
    assert sorted(handler.requests) == ["/v1/exports/b", "/v1/exports/c", "/v1/exports?state=active"]


@pytest.mark.anyio
async def test_an_items_path_that_matches_nothing_is_a_bad_body_naming_it() -> None:
    provider, http = provider_and_http(api({}, []), **target(**{**EXPORTS, "items": "results"}))
    result = await provider.poll(http, [])
    await http.aclose()
    assert result.bad_payloads == ["items: path 'results' is not a list of jobs"]


@pytest.mark.anyio
async def test_with_only_a_list_a_job_that_left_it_is_gone() -> None:
    keys = {**EXPORTS, "job_path": None}
    provider, http = provider_and_http(
        api({"a": body(id="a", state="working")}, ["a"]), **target(**{k: v for k, v in keys.items() if v})
    )
    result = await provider.poll(http, ["a", "old"])
    await http.aclose()
    assert [j.id for j in result.jobs] == ["a"]
    assert result.gone == ["old"]


@pytest.mark.anyio
async def test_a_list_url_that_answers_404_is_a_missing_source_not_a_gone_job() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/exports":
            return httpx.Response(404, json={"error": "no such route"})
        return httpx.Response(200, json=body(id="a", state="working"))

    provider, http = provider_and_http(handler, **target(**EXPORTS))
    result = await provider.poll(http, ["a"])
    await http.aclose()
    assert result.missing == ["list /v1/exports?state=active"]
    assert [j.id for j in result.jobs] == ["a"] and result.gone == []


def test_the_simulators_export_with_rejected_rows_is_a_success_failing_records_of_no_one_elses() -> None:
    """The fleet's operator page for failing records stands on this: the simulator's generic API
    answers a `partial` export as done with its rejected rows, read through the field map, with no
    reason and so no cause that would hand the records to the end user (WillSuite's do)."""
    sim = Simulator(step_seconds=1, seed=7)
    sim.app()
    job = sim.create("generic", scenario="partial", total_records=5000, failed_records=600)
    running = generic().parse_job(sim_generic.job_body(job, job.created + 1.5))
    assert running.status is Status.RUNNING and running.records_failed == 0
    done = generic().parse_job(sim_generic.job_body(job, job.created + 4))
    assert done.status is Status.SUCCEEDED
    assert (done.records_total, done.records_affected, done.records_failed) == (5000, 4400, 600)
    assert done.reason is None and done.cause is None
    assert not Generic.causes
