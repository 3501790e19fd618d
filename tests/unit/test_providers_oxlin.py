"""Oxlin: queue events read once each into connection syncs, connections and their channels."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from exporter.model import Channel, Connection, Status
from exporter.providers.base import BadPayload, PollResult
from exporter.providers.oxlin import Oxlin, events_of, parse_connection
from tests.unit.provider_http import fixture, provider_and_http, provider_for

T0 = 1_700_000_000


def oxlin(**keys: Any) -> Oxlin:
    keys.setdefault("queues", ["20"])
    p = provider_for(provider="oxlin", **keys)
    assert isinstance(p, Oxlin)
    return p


def resource(status: str = "RUNNING", expires: int | None = None, conn: str = "4242") -> dict[str, Any]:
    redirect: dict[str, Any] = {
        "channel_definition_id": "8701",
        "status": status,
        "last_success_date": T0 - 3600,
        "last_end_date": T0 - 3600,
    }
    if expires is not None:
        redirect["expires"] = expires
    return {
        "id": conn,
        "provider_id": "200",
        "name": "WBX Test Bank",
        "status": status,
        "channels": [
            {
                "channel_definition_id": "8700",
                "status": status,
                "last_success_date": T0 - 60,
                "last_end_date": T0,
            },
            redirect,
        ],
    }


def event(n: int, event_type: str, status: str, at: int | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "id": str(n),
        "event_type": event_type,
        "resource_type": "CONNECTION",
        "creation_date": T0 + n if at is None else at,
        "resource": resource(status, **kw),
    }


def read(p: Oxlin, queue_answer: Any) -> PollResult:
    result = PollResult()
    jobs: dict[str, Any] = {}
    p.read_events("20", events_of(queue_answer), result, jobs)
    result.jobs = list(jobs.values())
    return result


def test_fixture_event_is_a_finished_sync_and_its_connection() -> None:
    result = read(oxlin(), fixture("oxlin_queue_event.json"))
    assert result.queue_events == [("20", "SYNC_ALL_SUCCESS")]
    [job] = result.jobs
    assert job.id == "4242:1528112097"
    assert (job.status, job.raw_status, job.job_type) == (
        Status.SUCCEEDED,
        "SYNC_ALL_SUCCESS",
        "synchronisation",
    )
    assert (job.created, job.started, job.finished, job.updated) == (1528112097.0,) * 4
    assert job.reason is None and job.message is None
    assert job.awaiting_user is False  # a finished sync waits for nobody
    assert result.connections == [
        Connection(
            id="4242",
            status="SUCCESS",
            name="WBX Test Bank",
            last_success=1528112084.0,
            channels=(
                Channel("8701", "SUCCESS", 1528112084.0, 1528112084.0, 1528106353.0),
                Channel("8700", "SUCCESS", 1528112084.0, 1528112084.0, None),
            ),
        )
    ]


def test_synchronize_all_fixture_is_not_a_queue_answer() -> None:
    # {"connection_links": [...]} holds a list, but of links: no event has an id.
    result = read(oxlin(), fixture("oxlin_synchronize_all_response.json"))
    assert result.jobs == [] and len(result.bad_payloads) == 2


@pytest.mark.parametrize(
    "answer",
    [
        [event(1, "SYNC_STARTED", "RUNNING"), event(2, "SYNC_ALL_SUCCESS", "SUCCESS")],
        {"events": [event(2, "SYNC_ALL_SUCCESS", "SUCCESS"), event(1, "SYNC_STARTED", "RUNNING")]},
        {"data": [event(1, "SYNC_STARTED", "RUNNING"), event(2, "SYNC_ALL_SUCCESS", "SUCCESS")], "total": 2},
    ],
)
def test_every_queue_shape_is_read_in_event_order(answer: Any) -> None:
    result = read(oxlin(), answer)
    assert result.queue_events == [("20", "SYNC_STARTED"), ("20", "SYNC_ALL_SUCCESS")]
    [job] = result.jobs
    assert job.id == f"4242:{T0 + 1}"
    assert (job.status, job.started, job.finished) == (Status.SUCCEEDED, T0 + 1, T0 + 2)


def test_one_event_is_read_as_a_queue_of_one() -> None:
    assert [j.status for j in read(oxlin(), event(1, "SYNC_STARTED", "RUNNING")).jobs] == [Status.RUNNING]


@pytest.mark.parametrize("answer", ["text", {"unexpected": 1, "a": [], "b": []}])
def test_a_queue_answer_without_events_is_bad(answer: Any) -> None:
    with pytest.raises(BadPayload):
        events_of(answer)


def test_each_event_is_read_once_and_the_cursor_survives_a_restart() -> None:
    p = oxlin()
    first = [event(1, "SYNC_STARTED", "RUNNING"), event(2, "SYNC_RUNNING", "RUNNING")]
    assert len(read(p, first).queue_events) == 2
    again = read(p, [*first, event(3, "SYNC_ALL_SUCCESS", "SUCCESS")])
    assert again.queue_events == [("20", "SYNC_ALL_SUCCESS")]
    assert read(p, first).queue_events == []
    restarted = oxlin()
    restarted.restore_cursors(json.loads(json.dumps(p.cursors())))
    assert read(restarted, [*first, event(3, "SYNC_ALL_SUCCESS", "SUCCESS")]).queue_events == []
    assert read(restarted, [event(4, "SYNC_STARTED", "RUNNING")]).queue_events == [("20", "SYNC_STARTED")]


def test_events_without_numeric_ids_are_ordered_by_date() -> None:
    p = oxlin()
    a = {**event(1, "SYNC_STARTED", "RUNNING"), "id": "evt-a"}
    b = {**event(2, "SYNC_ALL_SUCCESS", "SUCCESS"), "id": "evt-b"}
    assert len(read(p, [b, a]).queue_events) == 2
    assert read(p, [a, b]).queue_events == []


@pytest.mark.parametrize(
    ("last", "status", "reason", "awaiting"),
    [
        (event(2, "SYNC_ALL_SUCCESS", "SUCCESS"), Status.SUCCEEDED, None, False),
        (event(2, "SYNC_ALL_SUCCESS", "PARTIAL_SUCCESS"), Status.SUCCEEDED, "partial", False),
        (event(2, "AUTH_FAILED", "FAILED"), Status.FAILED, "auth_failed", True),
        (event(2, "SYNC_FAILED", "FAILED"), Status.FAILED, "sync_failed", False),
        (event(2, "CONNECTION_UPDATED", "FAILED"), Status.FAILED, "failed", False),
        (event(2, "SYNC_RUNNING", "RUNNING"), Status.RUNNING, None, False),
        (event(2, "SYNC_RUNNING", "RUNNING", expires=T0 - 86400), Status.RUNNING, None, True),
    ],
)
def test_how_a_sync_ends(last: dict[str, Any], status: Status, reason: str | None, awaiting: bool) -> None:
    [job] = read(oxlin(), [event(1, "SYNC_STARTED", "RUNNING"), last]).jobs
    assert (job.status, job.reason, job.awaiting_user) == (status, reason, awaiting)
    assert job.raw_status == last["event_type"]
    if status is Status.FAILED:
        assert job.message == f"WBX Test Bank: {last['event_type']} (FAILED)"


def test_a_new_sync_of_the_same_connection_is_a_new_job() -> None:
    p = oxlin()
    first = read(p, [event(1, "SYNC_STARTED", "RUNNING"), event(2, "SYNC_ALL_SUCCESS", "SUCCESS")]).jobs
    second = read(p, [event(9, "SYNC_STARTED", "RUNNING")]).jobs
    assert [j.id for j in first] == [f"4242:{T0 + 1}"]
    assert [j.id for j in second] == [f"4242:{T0 + 9}"]


def test_news_about_an_idle_connection_starts_no_sync() -> None:
    result = read(oxlin(), [event(1, "CONNECTION_UPDATED", "SUCCESS")])
    assert result.jobs == [] and [c.id for c in result.connections] == ["4242"]


def test_a_connection_without_id_is_bad() -> None:
    with pytest.raises(BadPayload, match="connection id"):
        parse_connection({"status": "SUCCESS"})


def test_registration_is_refused_with_a_reason() -> None:
    with pytest.raises(BadPayload, match="queues"):
        oxlin().id_from_body({"id": "4242"})


def test_a_target_needs_queues_or_connections() -> None:
    from exporter.config import ConfigError, build_settings
    from exporter.providers import PROVIDERS

    with pytest.raises(ConfigError, match="queues: an oxlin target needs"):
        build_settings(
            {"targets": [{"name": "o", "provider": "oxlin", "base_url": "https://x.example"}]}, PROVIDERS
        )


class FakeOxlin:
    def __init__(self, queue: Any, connections: dict[str, dict[str, Any]]) -> None:
        self.queue = queue
        self.connections = connections
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        if path == "/v2.1/queues/20":
            return httpx.Response(200, json=self.queue)
        conn = path.rsplit("/", 1)[1]
        if conn in self.connections:
            return httpx.Response(200, json=self.connections[conn])
        return httpx.Response(404, json={"error": "not_found"})


@pytest.mark.anyio
async def test_poll_reads_queues_then_every_configured_and_seen_connection() -> None:
    api = FakeOxlin(
        [event(1, "SYNC_STARTED", "RUNNING")],
        {"4242": resource("RUNNING"), "4243": resource("SUCCESS", conn="4243")},
    )
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"], connections=["4243"]
    )
    result = await provider.poll(http, [])
    assert api.paths[0] == "/v2.1/queues/20"
    assert sorted(api.paths[1:]) == ["/v2.1/connections/4242", "/v2.1/connections/4243"]
    assert result.queue_events == [("20", "SYNC_STARTED")]
    assert [j.id for j in result.jobs] == [f"4242:{T0 + 1}"]
    # The event's resource first, then the fresher GET answers.
    assert result.connections[0].id == "4242"
    assert sorted(c.id for c in result.connections[1:]) == ["4242", "4243"]
    # The consent lapses while the sync runs: the sync now waits for the end user.
    api.connections["4242"] = resource("RUNNING", expires=T0)
    result = await provider.poll(http, [f"4242:{T0 + 1}"])
    assert [(j.id, j.status, j.awaiting_user) for j in result.jobs] == [
        (f"4242:{T0 + 1}", Status.RUNNING, True)
    ]
    # The connection is deleted: its running sync is gone.
    del api.connections["4242"]
    result = await provider.poll(http, [f"4242:{T0 + 1}"])
    await http.aclose()
    assert result.gone == [f"4242:{T0 + 1}"]


@pytest.mark.anyio
async def test_a_sync_tracked_before_a_restart_is_ended_by_its_next_event() -> None:
    api = FakeOxlin([event(5, "SYNC_ALL_SUCCESS", "SUCCESS")], {"4242": resource("SUCCESS")})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    provider.restore_cursors({"20": f"4@{T0 + 4}"})
    result = await provider.poll(http, [f"4242:{T0 + 1}"])
    await http.aclose()
    assert [(j.id, j.status, j.started, j.finished) for j in result.jobs] == [
        (f"4242:{T0 + 1}", Status.SUCCEEDED, T0 + 1, T0 + 5)
    ]
