"""Oxlin: queue events read once each into connection syncs, connections and their channels."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from exporter.model import Cause, Channel, Connection, Status
from exporter.providers.base import BadPayload, PollResult
from exporter.providers.oxlin import Oxlin
from exporter.providers.oxlin_wire import events_of, parse_connection
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
    # First seen at its end: when it began is unknown, so it has no duration.
    assert (job.created, job.started) == (None, None)
    assert (job.finished, job.updated) == (1528112097.0,) * 2
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


def test_ids_of_digit_like_characters_are_ordered_by_date_not_refused() -> None:
    # "²" passes str.isdigit() but int() refuses it: such ids order by date, like any other text.
    p = oxlin()
    a = {**event(1, "SYNC_STARTED", "RUNNING"), "id": "\u00b2"}
    b = {**event(2, "SYNC_ALL_SUCCESS", "SUCCESS"), "id": "1\u00b2"}
    assert len(read(p, [b, a]).queue_events) == 2
    assert read(p, [a, b]).queue_events == []
    restarted = oxlin()
    restarted.restore_cursors({"20": "\u00b2@" + repr(float(T0 + 2))})
    assert read(restarted, [a, b]).queue_events == []


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


def test_closing_an_idle_connection_starts_no_sync() -> None:
    result = read(oxlin(), [event(1, "CONNECTION_UPDATED", "CLOSED")])
    assert result.jobs == [] and [c.status for c in result.connections] == ["CLOSED"]


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


@pytest.mark.anyio
async def test_a_tracked_id_whose_start_is_not_a_plain_number_is_left_alone() -> None:
    api = FakeOxlin([], {"4242": resource("RUNNING")})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    result = await provider.poll(http, ["4242:\u00b2"])
    await http.aclose()
    assert result.jobs == []


# --- one sync across its channels ------------------------------------------------------------

SYNC = f"4242:{T0 + 1}"


def two_channels() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = fixture("oxlin_queue_two_channels.json")
    return events


def test_a_sync_over_two_channels_is_one_job_that_ends_with_its_last_channel() -> None:
    p = oxlin()
    events = two_channels()
    early = read(p, events[:3])  # REDIRECT done, EMBEDDED still running
    assert [(j.id, j.status) for j in early.jobs] == [(SYNC, Status.RUNNING)]
    done = read(p, events[3:])
    assert [(j.id, j.status, j.reason) for j in done.jobs] == [(SYNC, Status.SUCCEEDED, None)]
    [job] = done.jobs
    assert (job.started, job.finished) == (T0 + 1, T0 + 9)


def test_a_sync_read_in_one_go_is_still_one_job() -> None:
    assert [(j.id, j.status) for j in read(oxlin(), two_channels()).jobs] == [(SYNC, Status.SUCCEEDED)]


def test_a_failed_channel_fails_the_sync_once_every_channel_ended() -> None:
    events = two_channels()
    failed = {**events[4], "event_type": "AUTH_FAILED"}
    failed["resource"] = {**failed["resource"], "status": "FAILED"}
    p = oxlin()
    read(p, events[:4])
    [job] = read(p, [failed]).jobs
    assert (job.status, job.reason, job.awaiting_user) == (Status.FAILED, "auth_failed", True)
    assert Oxlin.causes["auth_failed"].value == "user"


def test_the_first_failure_is_the_reason_even_when_another_channel_ends_later() -> None:
    events = two_channels()
    redirect_failed = {**events[2], "event_type": "SYNC_FAILED"}
    p = oxlin()
    [running] = read(p, [*events[:2], redirect_failed]).jobs
    assert running.status is Status.RUNNING
    [job] = read(p, events[3:]).jobs
    assert (job.status, job.reason) == (Status.FAILED, "sync_failed")


def test_events_that_name_no_channel_are_read_through_the_resource() -> None:
    events = [{k: v for k, v in e.items() if k != "channel_definition_id"} for e in two_channels()]
    p = oxlin()
    # The REDIRECT channel's success while EMBEDDED still runs does not end the sync.
    assert [(j.id, j.status) for j in read(p, events[:3]).jobs] == [(SYNC, Status.RUNNING)]
    assert [(j.id, j.status) for j in read(p, events[3:]).jobs] == [(SYNC, Status.SUCCEEDED)]


def failed_on_embedded(lapsed_on: int) -> dict[str, Any]:
    """The EMBEDDED channel's SYNC_FAILED, with the consent of channel `lapsed_on` lapsed and
    the other's valid."""
    last: dict[str, Any] = json.loads(json.dumps(two_channels()[4]))
    last["event_type"] = "SYNC_FAILED"
    last["resource"]["status"] = "FAILED"
    last["resource"]["channels"][0]["status"] = "FAILED"
    for i, channel in enumerate(last["resource"]["channels"]):
        channel["expires"] = T0 - 86400 if i == lapsed_on else 4_000_000_000
    return last


def test_a_lapsed_consent_on_the_failed_channel_makes_the_failure_the_end_users() -> None:
    [job] = read(oxlin(), [*two_channels()[:4], failed_on_embedded(lapsed_on=0)]).jobs
    assert job.status is Status.FAILED and job.reason == "sync_failed"
    assert job.cause is Cause.USER


def test_a_lapsed_consent_on_another_channel_hides_no_failure() -> None:
    # The PSD2 channel's consent lapsed; the scraping channel failed on its own: an operator's.
    [job] = read(oxlin(), [*two_channels()[:4], failed_on_embedded(lapsed_on=1)]).jobs
    assert (job.status, job.reason, job.cause, job.awaiting_user) == (
        Status.FAILED,
        "sync_failed",
        None,
        False,
    )


def test_a_running_sync_waits_for_the_user_only_on_a_channel_it_runs_on() -> None:
    events = json.loads(json.dumps(two_channels()[:4]))  # REDIRECT ended, EMBEDDED runs
    for e in events:
        e["resource"]["channels"][1]["expires"] = T0 - 86400  # the ended REDIRECT's consent
    [job] = read(oxlin(), events).jobs
    assert job.status is Status.RUNNING and not job.awaiting_user
    for e in events:
        e["resource"]["channels"][0]["expires"] = T0 - 86400  # now the running channel's too
    [job] = read(oxlin(), events).jobs
    assert job.status is Status.RUNNING and job.awaiting_user


def connection(status: str, embedded_end: int, redirect_end: int = T0 + 4) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(two_channels()[4]["resource"]))
    body["status"] = status
    body["channels"][0].update(status=status if status != "PARTIAL_SUCCESS" else "SUCCESS")
    body["channels"][0]["last_end_date"] = embedded_end
    body["channels"][1]["last_end_date"] = redirect_end
    return body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "outcome", "reason"),
    [
        ("SUCCESS", Status.SUCCEEDED, None),
        ("PARTIAL_SUCCESS", Status.SUCCEEDED, "partial"),
        ("FAILED", Status.FAILED, "failed"),
    ],
)
async def test_the_connections_status_closes_a_sync_whose_final_event_was_missed(
    status: str, outcome: Status, reason: str | None
) -> None:
    events = two_channels()
    api = FakeOxlin(events[:4], {"4242": connection(status, T0 + 9)})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    # The queue gets one more read to bring the final event (with its reason) before the
    # connection's status closes the sync.
    first = await provider.poll(http, [])
    assert [(j.id, j.status) for j in first.jobs] == [(SYNC, Status.RUNNING)]
    result = await provider.poll(http, [])
    assert [(j.id, j.status, j.reason, j.finished) for j in result.jobs] == [(SYNC, outcome, reason, T0 + 9)]
    # The final event, read late, belongs to the closed sync: no new job.
    api.queue = events
    later = await provider.poll(http, [])
    await http.aclose()
    assert later.jobs == [] and later.queue_events == [("20", "SYNC_ALL_SUCCESS")]


@pytest.mark.anyio
async def test_a_final_event_read_one_cycle_after_the_connection_ended_gives_the_sync_its_reason() -> None:
    """The connection's status is read after the queue: a sync that ends in between is FAILED
    there before its AUTH_FAILED event (the end user's credentials) reaches the queue."""
    events = two_channels()
    failed = json.loads(json.dumps(events[4]))
    failed["event_type"] = "AUTH_FAILED"
    failed["resource"]["status"] = "FAILED"
    api = FakeOxlin(events[:4], {"4242": connection("FAILED", T0 + 9)})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    await provider.poll(http, [])
    api.queue = [*events[:4], failed]
    result = await provider.poll(http, [])
    await http.aclose()
    assert [(j.id, j.status, j.reason, j.cause) for j in result.jobs] == [
        (SYNC, Status.FAILED, "auth_failed", Cause.USER)
    ]


@pytest.mark.anyio
async def test_a_final_status_from_the_previous_sync_does_not_close_the_running_one() -> None:
    events = two_channels()
    # SUCCESS, but the EMBEDDED channel last ended before this sync began.
    api = FakeOxlin(events[:4], {"4242": connection("SUCCESS", T0 - 3600)})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    result = await provider.poll(http, [])
    await http.aclose()
    assert [(j.id, j.status) for j in result.jobs] == [(SYNC, Status.RUNNING)]


@pytest.mark.anyio
async def test_a_sync_closed_by_its_connection_stays_closed_across_a_restart() -> None:
    events = two_channels()
    api = FakeOxlin(events[:4], {"4242": connection("SUCCESS", T0 + 9)})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    await provider.poll(http, [])
    closed = await provider.poll(http, [])
    assert [j.status for j in closed.jobs] == [Status.SUCCEEDED]
    await http.aclose()
    saved = json.loads(json.dumps(provider.cursors()))
    api.queue = events
    restarted, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    restarted.restore_cursors(saved)
    result = await restarted.poll(http, [])
    await http.aclose()
    assert result.jobs == []


def test_a_cursor_by_date_survives_a_restart_to_the_second() -> None:
    p = oxlin()
    a = {**event(1, "SYNC_STARTED", "RUNNING"), "id": "evt-a"}
    b = {**event(2, "SYNC_RUNNING", "RUNNING"), "id": "evt-b"}
    read(p, [a])
    restarted = oxlin()
    restarted.restore_cursors(json.loads(json.dumps(p.cursors())))
    assert read(restarted, [a, b]).queue_events == [("20", "SYNC_RUNNING")]


def test_a_sync_names_the_connection_and_institution_it_concerns() -> None:
    [job] = read(oxlin(), fixture("oxlin_queue_event.json")).jobs
    assert job.extra == {"connection": "4242", "institution": "WBX Test Bank"}


# --- every documented state ends a sync ------------------------------------------------------


def idle(status: str, channel_status: str) -> dict[str, Any]:
    """The connection's resource once nothing runs on it: CLOSED or NONE, its channels' end
    dates left by the previous sync (no fresh end closes the sync)."""
    body = connection(status, T0 - 3600, T0 - 3600)
    for channel in body["channels"]:
        channel["status"] = channel_status
    return body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "channel_status", "outcome", "reason"),
    [
        ("CLOSED", "CLOSED", Status.FAILED, "closed"),
        ("NONE", "EMPTY", Status.SUCCEEDED, None),
        ("NONE", "NONE", Status.SUCCEEDED, None),
    ],
)
async def test_a_closed_or_idle_connection_ends_its_open_sync(
    status: str, channel_status: str, outcome: Status, reason: str | None
) -> None:
    api = FakeOxlin(two_channels()[:1], {"4242": idle(status, channel_status)})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    first = await provider.poll(http, [])
    assert [j.status for j in first.jobs] == [Status.RUNNING]  # one more read of the queue first
    result = await provider.poll(http, [])
    await http.aclose()
    assert [(j.id, j.status, j.reason) for j in result.jobs] == [(SYNC, outcome, reason)]
    if reason == "closed":
        # Closing a connection is its user's (or the application's) doing, not an operator's.
        assert Oxlin.causes["closed"] is Cause.USER


def test_an_event_showing_the_connection_closed_ends_the_sync() -> None:
    closed = json.loads(json.dumps(two_channels()[3]))
    closed["event_type"] = "CONNECTION_UPDATED"
    closed["resource"]["status"] = "CLOSED"
    for channel in closed["resource"]["channels"]:
        channel["status"] = "CLOSED"
    [job] = read(oxlin(), [*two_channels()[:3], closed]).jobs
    assert (job.status, job.reason) == (Status.FAILED, "closed")


@pytest.mark.anyio
async def test_a_connection_whose_last_sync_failed_for_its_user_awaits_that_user() -> None:
    events = two_channels()
    failed = json.loads(json.dumps(events[4]))
    failed["event_type"] = "AUTH_FAILED"
    failed["resource"]["status"] = "FAILED"
    api = FakeOxlin([*events[:4], failed], {"4242": connection("FAILED", T0 + 9, T0 + 4)})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    result = await provider.poll(http, [])
    assert result.connections and all(c.awaiting_user for c in result.connections)
    # It survives a restart, through the cursors the state file keeps.
    restarted, http2 = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    restarted.restore_cursors(json.loads(json.dumps(provider.cursors())))
    again = await restarted.poll(http2, [])
    assert again.connections and all(c.awaiting_user for c in again.connections)
    # The next sync succeeds: the connection is an operator's concern again.
    later = [
        {**e, "id": str(10 + i), "creation_date": e["creation_date"] + 100} for i, e in enumerate(events)
    ]
    api.queue = later
    api.connections["4242"] = connection("SUCCESS", T0 + 109, T0 + 104)
    done = await restarted.poll(http2, [])
    await http.aclose()
    await http2.aclose()
    assert [j.status for j in done.jobs] == [Status.SUCCEEDED]
    assert done.connections and not any(c.awaiting_user for c in done.connections)
    # The cleared mark is written as cleared (the state file only adds and updates cursors).
    assert restarted.cursors()["user:4242"] == "0"


@pytest.mark.anyio
async def test_a_provider_failure_leaves_the_connection_to_operators() -> None:
    events = two_channels()
    failed = json.loads(json.dumps(events[4]))
    failed["event_type"] = "SYNC_FAILED"
    failed["resource"]["status"] = "FAILED"
    body = connection("FAILED", T0 + 9, T0 + 4)
    body["channels"][1]["expires"] = 4_000_000_000
    failed["resource"]["channels"][1]["expires"] = 4_000_000_000
    api = FakeOxlin([*events[:4], failed], {"4242": body})
    provider, http = provider_and_http(
        api, provider="oxlin", base_url="https://api.example.com/v2.1", queues=["20"]
    )
    result = await provider.poll(http, [])
    await http.aclose()
    assert result.connections and not any(c.awaiting_user for c in result.connections)


@pytest.mark.anyio
async def test_a_configured_queue_or_connection_that_answers_404_is_a_missing_source() -> None:
    api = FakeOxlin([], {"4243": resource("SUCCESS", conn="4243")})
    provider, http = provider_and_http(
        api,
        provider="oxlin",
        base_url="https://api.example.com/v2.1",
        queues=["20", "21"],
        connections=["4243", "9999"],
    )
    result = await provider.poll(http, [])
    await http.aclose()
    assert sorted(result.missing) == ["connection 9999", "queue 21"]
    assert [c.id for c in result.connections] == ["4243"]
