"""Ids are data, never paths: every provider sends each id as exactly one path segment, ids
that cannot be one (`.`, `..`, empty, too long) are refused at the edges, and an answer about
another id than the one asked for is counted, never applied."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from exporter.config import ConfigError, build_settings
from exporter.fetch import TargetHttp
from exporter.model import Job, Status
from exporter.parsing import MAX_ID_BYTES, id_problem, text_id
from exporter.providers import PROVIDERS, Provider
from exporter.providers.base import BadPayload, segment
from exporter.scheduler import Scheduler, TargetRunner
from tests.unit.loopback import Peer, serve
from tests.unit.provider_http import target
from tests.unit.test_tracker import tracker

# Each hostile id, and the one segment it must travel as.
HOSTILE = {
    "../../users/ea3a81/accounts": "..%2F..%2Fusers%2Fea3a81%2Faccounts",
    "victim?x=1": "victim%3Fx%3D1",
    "a/b/c": "a%2Fb%2Fc",
    "x#frag": "x%23frag",
    "a%2Fb": "a%252Fb",
    "..;x": "..%3Bx",
    "a b": "a%20b",
    "é": "%C3%A9",
    # Refused at every edge, yet sent as one segment should an old state file still hold them.
    ".": "%2E",
    "..": "%2E%2E",
}

Run = Callable[[Provider, TargetHttp], Awaitable[Any]]


def requested(
    keys: dict[str, Any], run: Run, answer: Callable[[bytes, Peer], None] | None = None
) -> list[str]:
    """The request lines' targets a loopback server received while `run` polled with the
    real HTTP client (our transport, as in production); every request is answered 404 unless
    `answer(request, peer)` is given."""

    def script(n: int, peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            if answer is not None:
                answer(request, peer)
            else:
                peer.answer(b'{"error": "not found"}', status="404 Not Found")

    with serve(script) as (url, seen):
        settings = build_settings({"targets": [target(base_url=url, **keys)]}, PROVIDERS)
        resolved = settings.resolved(settings.targets[0])
        provider = PROVIDERS[resolved.provider](resolved.config)

        async def main() -> None:
            http = TargetHttp(resolved)
            try:
                with anyio.fail_after(10):
                    await run(provider, http)
            finally:
                await http.aclose()

        anyio.run(main)
    return [request.split(b" ", 2)[1].decode("ascii") for request in seen]


def poll_all(provider: Provider, http: TargetHttp) -> Awaitable[Any]:
    return provider.poll(http, list(HOSTILE))


def test_segment_escapes_every_hostile_id_into_one_segment() -> None:
    for job_id, expected in HOSTILE.items():
        assert segment(job_id) == expected


def test_basiq_asks_for_each_job_and_each_user_at_one_segment_of_its_own() -> None:
    paths = requested({"provider": "basiq", "users": ["../../jobs/x", "u?1"]}, poll_all)
    assert sorted(paths) == sorted(
        ["/users/..%2F..%2Fjobs%2Fx/jobs", "/users/u%3F1/jobs", *(f"/jobs/{s}" for s in HOSTILE.values())]
    )


def test_willsuite_asks_for_each_job_at_one_segment_of_its_own() -> None:
    paths = requested({"provider": "willsuite"}, poll_all)
    assert sorted(paths) == sorted(f"/api-jobs/{s}" for s in HOSTILE.values())


def test_generic_asks_for_each_job_at_one_segment_of_its_job_path() -> None:
    paths = requested({"provider": "generic", "job_path": "/v1/exports/{id}/status"}, poll_all)
    assert sorted(paths) == sorted(f"/v1/exports/{s}/status" for s in HOSTILE.values())


def test_oxlin_reads_each_queue_and_connection_at_one_segment_of_its_own() -> None:
    async def run(provider: Provider, http: TargetHttp) -> Any:
        return await provider.poll(http, [])

    paths = requested(
        {"provider": "oxlin", "queues": ["../admin", "q#1"], "connections": ["c/1", "c?2"]}, run
    )
    assert sorted(paths) == sorted(
        ["/queues/..%2Fadmin", "/queues/q%231", "/connections/c%2F1", "/connections/c%3F2"]
    )


def test_aims360_reruns_each_failed_job_at_one_segment_of_its_own() -> None:
    import json

    def answer(request: bytes, peer: Peer) -> None:
        if request.startswith(b"GET "):
            rows = [
                {"jobID": job_id, "jobStatus": "Failed", "canReRun": "Yes"}
                for job_id in ("../../users/x", "a/b", "victim?x=1")
            ]
            peer.answer(json.dumps({"value": rows}).encode())
        else:
            peer.answer(b"{}", status="404 Not Found")

    async def run(provider: Provider, http: TargetHttp) -> Any:
        return await provider.poll(http, ["../../users/x", "a/b", "victim?x=1"])

    paths = requested({"provider": "aims360", "auto_rerun": True}, run, answer)
    reruns = sorted(p for p in paths if p.endswith("/rerun"))
    assert reruns == sorted(
        f"/jobsmanagement/v1.0/backgroundjob/{s}/rerun"
        for s in ("..%2F..%2Fusers%2Fx", "a%2Fb", "victim%3Fx%3D1")
    )
    # The tracked ids travel in the filter's query, never in the path.
    assert all(
        p.startswith("/jobsmanagement/odata/v1.0/backgroundjob?") for p in paths if not p.endswith("/rerun")
    )


def test_dot_segments_empty_and_overlong_ids_are_not_ids() -> None:
    assert id_problem(".") and id_problem("..") and id_problem("")
    assert id_problem("x" * (MAX_ID_BYTES + 1))
    assert id_problem("é" * (MAX_ID_BYTES // 2 + 1))  # the limit is in bytes of UTF-8, not characters
    assert id_problem("é" * (MAX_ID_BYTES // 2)) is None and id_problem("x" * MAX_ID_BYTES) is None
    for fine in ("...", ".a", "a..", "..a", "0"):
        assert text_id(fine) == fine and segment(fine) == fine
    for refused in (".", "..", " .. ", "", "   ", "x" * (MAX_ID_BYTES + 1)):
        assert text_id(refused) is None


@pytest.mark.parametrize("bad", [".", "..", "", "x" * (MAX_ID_BYTES + 1)])
def test_a_config_naming_an_id_that_is_not_one_is_refused_naming_the_key(bad: str) -> None:
    for key in ("jobs", "users"):
        with pytest.raises(ConfigError) as e:
            build_settings(
                {"targets": [target(provider="basiq", **{key: ["fine", bad]})]},
                PROVIDERS,
            )
        assert any(f".{key}: item 1: an id must" in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("bad", [".", "..", "", " ", "x" * (MAX_ID_BYTES + 1)])
def test_a_registration_of_an_id_that_is_not_one_is_refused_naming_the_id_field(bad: str) -> None:
    from starlette.testclient import TestClient

    from exporter.routes import build_app
    from exporter.runtime import Runtime

    settings = build_settings({"targets": [target(provider="basiq")]}, PROVIDERS)
    rt = Runtime(settings)
    for t in settings.targets:
        rt.tracker.set_target(settings.resolved(t))
    r = TestClient(build_app(rt)).post("/api/v1/targets/t/jobs", json={"id": bad})
    assert r.status_code == 422
    assert r.json()["field"] == "id" and r.json()["error"].startswith("id: must")
    assert rt.tracker.targets["t"].jobs == {}
    with pytest.raises(BadPayload, match=r"^jobID: must"):
        PROVIDERS["aims360"](settings.targets[0]).id_from_body({"jobID": bad or "  "})


def escaping_echo(request: httpx.Request) -> httpx.Response:
    """A provider that answers about the id as it arrived, still escaped (`a%20b` for `a b`)."""
    segment_sent = request.url.raw_path.decode("ascii").rsplit("/", 1)[1]
    return httpx.Response(200, json={"id": segment_sent, "status": "processing", "type": "bulk"})


@pytest.mark.anyio
async def test_a_provider_echoing_an_escaped_id_spawns_no_job_and_is_counted_as_id_mismatch() -> None:
    s = build_settings({"targets": [target(provider="willsuite")]}, PROVIDERS)
    resolved = s.resolved(s.targets[0])
    tr = tracker()
    tr.set_target(resolved)
    runner = TargetRunner(
        resolved,
        PROVIDERS["willsuite"](resolved.config),
        TargetHttp(resolved, transport=httpx.MockTransport(escaping_echo)),
    )
    scheduler = Scheduler(tr)
    scheduler.runners["t"] = runner
    scheduler.register("t", Job("a b", Status.PENDING))
    scheduler.register("t", Job("plain", Status.PENDING))
    for _ in range(5):
        await scheduler._cycle(runner)
    jobs = tr.targets["t"].jobs
    assert set(jobs) == {"a b", "plain"}  # no `a%20b`, no `a%2520b` …
    # Never applied to the id asked for either: it stays as registered.
    assert jobs["a b"].job.status is Status.PENDING and jobs["a b"].job.job_type == ""
    assert jobs["plain"].job.status is Status.RUNNING
    assert runner.http.stats.errors["id_mismatch"] == 5
    state = tr.targets["t"]
    assert not state.up and state.last_error_reason == "id_mismatch" and "a%20b" in state.last_error
    await runner.http.aclose()


def test_id_mismatch_is_rendered_as_a_poll_error_reason() -> None:
    from exporter.render.aggregates import render_http_stats
    from exporter.render.text import Text

    w = Text()
    render_http_stats(w, {"t": (3, {"id_mismatch": 2})})
    assert 'asyncjob_poll_errors_total{target="t",reason="id_mismatch"} 2' in w.bytes().decode()


@pytest.mark.anyio
async def test_an_oxlin_connection_answer_about_another_connection_is_counted_not_applied() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "someone-else", "status": "FAILED", "channels": []})

    s = build_settings({"targets": [target(provider="oxlin", connections=["c1"])]}, PROVIDERS)
    resolved = s.resolved(s.targets[0])
    http = TargetHttp(resolved, transport=httpx.MockTransport(answer))
    result = await PROVIDERS["oxlin"](resolved.config).poll(http, [])
    assert result.connections == [] and result.jobs == []
    assert result.id_mismatches == ["connection c1: the answer is about connection someone-else"]
    await http.aclose()
