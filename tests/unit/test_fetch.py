"""Every provider failure is sorted into a bounded reason; nothing crashes."""

from __future__ import annotations

import itertools
import json
import socket
import ssl
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import h11
import httpx
import pytest

from exporter import __version__
from exporter.config import build_settings
from exporter.fetch import KEEPALIVE_EXPIRY, UNCHANGED, NotFound, PollError, TargetHttp, parse_retry_after
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.providers.base import AnswerLedger, fetch_each
from exporter.providers.basiq import Basiq
from tests.hostile import ANSWERS, Answer, Hostile, json_answer, watchdog
from tests.unit.loopback import Peer, serve


def make_http(handler: Any, **glob: Any) -> TargetHttp:
    s = build_settings(
        {"global": glob, "targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    return TargetHttp(s.resolved(s.targets[0]), transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(500), "http_5xx"),
        (httpx.Response(503, headers={"Retry-After": "7"}), "http_5xx"),
        (httpx.Response(429, headers={"Retry-After": "12"}), "http_429"),
        (httpx.Response(400), "http_4xx"),
        (httpx.Response(401), "auth"),
        (httpx.Response(200, text="<html>"), "bad_body"),
        (httpx.Response(200, text='{"id": "tr'), "bad_body"),
    ],
)
@pytest.mark.anyio
async def test_failures_have_bounded_reasons(response: httpx.Response, reason: str) -> None:
    http = make_http(lambda request: response)
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == reason
    assert http.stats.errors[reason] == 1 and http.stats.requests == 1
    if "Retry-After" in response.headers:
        assert http.stats.retry_after == float(response.headers["Retry-After"])
    await http.aclose()


@pytest.mark.anyio
async def test_transport_errors_are_timeout_or_connect() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler, reason in ((timeout, "timeout"), (refused, "connect")):
        http = make_http(handler)
        with pytest.raises(PollError) as e:
            await http.get_json("/jobs/1")
        assert e.value.reason == reason
        await http.aclose()


@pytest.mark.anyio
async def test_404_means_gone_and_is_not_an_error() -> None:
    http = make_http(lambda request: httpx.Response(404))
    with pytest.raises(NotFound):
        await http.get_json("/jobs/1")
    assert sum(http.stats.errors.values()) == 0
    await http.aclose()


@pytest.mark.anyio
async def test_oversized_answers_are_refused_without_reading_them_whole() -> None:
    http = make_http(
        lambda request: httpx.Response(200, content=b"[" + b"1," * 600_000 + b"1]"),
        max_response_bytes=1_000_000,
    )
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == "bad_body" and "exceeds" in str(e.value)
    await http.aclose()


def test_retry_after_reads_seconds_and_dates_and_is_bounded() -> None:
    assert parse_retry_after("30") == 30
    assert parse_retry_after("999999") == 3600
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert parse_retry_after("soon") is None


def real_http(base_url: str, **glob: Any) -> TargetHttp:
    s = build_settings(
        {"global": glob, "targets": [{"name": "t", "provider": "basiq", "base_url": base_url}]}, PROVIDERS
    )
    return TargetHttp(s.resolved(s.targets[0]))


def closes_after_first_answer(n: int, peer: Peer) -> None:
    """The first connection answers once, then reads the next request and hangs up without a
    word, as a server does whose idle timeout fires just as the request arrives."""
    answered = 0
    while peer.read_request() is not None:
        if n == 0 and answered:
            return
        peer.answer(b'{"n": %d}' % n)
        answered += 1


@pytest.mark.anyio
async def test_a_get_on_a_connection_the_server_closed_is_sent_again_on_a_fresh_one() -> None:
    with serve(closes_after_first_answer) as (url, seen):
        http = real_http(url)
        assert await http.get_json("/jobs/1") == {"n": 0}
        assert await http.get_json("/jobs/2") == {"n": 1}
        await http.aclose()
    assert [r.split(b" ")[1] for r in seen] == [b"/jobs/1", b"/jobs/2", b"/jobs/2"]
    assert sum(http.stats.errors.values()) == 0


@pytest.mark.anyio
async def test_a_post_is_never_sent_twice() -> None:
    with serve(closes_after_first_answer) as (url, seen):
        http = real_http(url)
        assert await http.get_json("/jobs/1") == {"n": 0}
        with pytest.raises(PollError) as e:
            await http.post_json("/jobs/1/rerun")
        await http.aclose()
    assert [r.split(b" ")[1] for r in seen] == [b"/jobs/1", b"/jobs/1/rerun"]
    assert e.value.reason == "connect"
    assert "POST 127.0.0.1:" in str(e.value) and "/jobs/1/rerun" in str(e.value)


def answer_each(n: int, peer: Peer) -> None:
    while peer.read_request() is not None:
        peer.answer(b'{"n": %d}' % n)


@pytest.mark.anyio
async def test_requests_carry_the_targets_headers_in_order() -> None:
    """The headers an httpx.AsyncClient made with them would send, in its order: the client
    sends them itself, without one."""
    with serve(answer_each) as (url, seen):
        http = real_http(url)
        await http.get_json("/jobs/1")
        await http.aclose()
    port = url.rsplit(":", 1)[1]
    assert seen == [
        b"GET /jobs/1 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\n".encode()
        + b"Connection: keep-alive\r\n"
        + f"User-Agent: asyncjob-exporter/{__version__}\r\n".encode()
        + b"Accept: application/json\r\n"
        + b"Accept-Encoding: gzip, deflate\r\n\r\n"
    ]


@pytest.mark.anyio
async def test_what_a_poll_knows_of_its_answers_is_its_ledgers_not_the_clients() -> None:
    """One client, two ledgers: an answer is left undecoded for the ledger that knows its bytes
    (and whose tracker holds the job parsed from them), and read whole for the other."""
    answers = {"a": b'{"id": "a", "status": "processing"}'}
    parsed: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answers[request.url.path.rsplit("/", 1)[1]])

    def parse(obj: Any) -> Job:
        parsed.append(obj["status"])
        return Job(obj["id"], Status.RUNNING)

    http = make_http(handler)
    holding = AnswerLedger(holds=lambda job_id, job: True)
    other = AnswerLedger(holds=lambda job_id, job: True)
    path = lambda job_id: f"/jobs/{job_id}"  # noqa: E731
    first = await fetch_each(http, ["a"], path, parse, holding)
    assert [j.id for j in first.jobs] == ["a"] and set(holding.last) == {"a"}
    again = await fetch_each(http, ["a"], path, parse, holding)
    assert again.jobs == [] and parsed == ["processing"]  # the same bytes: not decoded
    elsewhere = await fetch_each(http, ["a"], path, parse, other)
    assert [j.id for j in elsewhere.jobs] == ["a"] and parsed == ["processing", "processing"]
    answers["a"] = b'{"id": "a", "status": "completed"}'
    changed = await fetch_each(http, ["a"], path, parse, holding)
    assert [j.id for j in changed.jobs] == ["a"] and parsed[-1] == "completed"
    # Without a ledger nothing is known: every answer is read.
    assert [j.id for j in (await fetch_each(http, ["a"], path, parse)).jobs] == ["a"]
    assert len(parsed) == 4
    await http.aclose()


@pytest.mark.anyio
async def test_an_unchanged_answer_is_the_unchanged_sentinel_and_nothing_else() -> None:
    """get_json_if_new tells a known answer apart from an answer of `null` or an empty body."""
    http = make_http(lambda request: httpx.Response(200, content=b""))
    fingerprints: list[int] = []

    def known(fingerprint: int) -> bool:
        fingerprints.append(fingerprint)
        return len(fingerprints) > 1

    assert await http.get_json_if_new("/jobs/1", known) == (None, hash(b""))
    assert await http.get_json_if_new("/jobs/1", known) is UNCHANGED
    await http.aclose()


@pytest.mark.anyio
async def test_connect_errors_name_the_host_and_the_cause() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # bound, then closed: nobody listens there
    http = real_http(f"http://127.0.0.1:{port}")
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    await http.aclose()
    assert e.value.reason == "connect"
    assert f"GET 127.0.0.1:{port}/jobs/1: ConnectError: " in str(e.value)
    assert "refused" in str(e.value).lower() or "failed" in str(e.value).lower()
    assert http.stats.last_reason == "connect"


def test_idle_connections_are_closed_before_common_servers_close_them() -> None:
    http = real_http("http://127.0.0.1:1")
    assert KEEPALIVE_EXPIRY < 5  # uvicorn's and Node's keep-alive timeout
    assert http._transport.keepalive_expiry == KEEPALIVE_EXPIRY  # type: ignore[attr-defined]


def test_answers_streaming_junk_at_once_share_one_byte_budget_and_rss_stays_bounded() -> None:
    """16 jobs answering 100 MB chunked at once, default settings, in a process of its own."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.unit.streaming_junk"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["reasons"] == ["bad_body"] * 16
    assert result["errors"]["bad_body"] == 16
    assert result["bytes_in_flight"] == 0  # every answer gave its share back
    assert result["peak_rss_bytes"] < 250 * 2**20


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.anyio
async def test_compressed_answers_are_read_and_a_bomb_is_refused_before_it_inflates(encoding: str) -> None:
    def compress(data: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        return c.compress(data) + c.flush()

    small = compress(b'{"id": "1", "ok": true}')
    bomb = compress(b" " * 200_000_000)  # 200 MB of spaces in a few hundred KB

    class Pieces(httpx.AsyncByteStream):
        """Sent as it arrives off a socket, 64 KiB at a time."""

        def __init__(self, data: bytes) -> None:
            self.data = data

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for i in range(0, len(self.data), 65536):
                yield self.data[i : i + 65536]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Accept-Encoding"] == "gzip, deflate"
        body = small if request.url.path == "/small" else bomb
        return httpx.Response(200, stream=Pieces(body), headers={"Content-Encoding": encoding})

    http = make_http(handler, max_response_bytes=1_000_000)
    assert await http.get_json("/small") == {"id": "1", "ok": True}
    tracemalloc.start()
    try:
        with pytest.raises(PollError) as e:
            await http.get_json("/bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.reason == "bad_body" and "exceeds 1000000 bytes" in str(e.value)
    assert peak < 10_000_000  # inflated no further than the cap
    await http.aclose()


@pytest.mark.parametrize("base", ["https://x", "https://x:8443/v2", "https://x/v2/", "http://x/a/../b"])
@pytest.mark.parametrize(
    "path",
    ["/jobs/1", "/users/ab-c_d~e/jobs", "/a.b/c", "//a", "/x/./y", "/x/../y", "/%41", "/é d", "/q?x=1"],
)
@pytest.mark.anyio
async def test_a_request_goes_to_the_url_httpx_parses(base: str, path: str) -> None:
    """Plain paths are joined to the parsed base URL; the request reaches the same URL,
    host header and request target as httpx parsing the whole URL would give."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": base}]}, PROVIDERS)
    http = TargetHttp(s.resolved(s.targets[0]), transport=httpx.MockTransport(answer))
    await http.get_json(path)
    expected = httpx.Request("GET", http.url(path))
    assert str(seen[0].url) == str(expected.url)
    assert seen[0].url.raw_path == expected.url.raw_path
    assert seen[0].headers["Host"] == expected.headers["Host"]


class Raising(httpx.AsyncByteStream):
    """A body that breaks off with `error` after its first bytes."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"type": "job", "id": '
        raise self.error


# Every kind of exception reading or parsing one answer has raised or could raise: libraries'
# own (httpx, h11, anyio, zlib, ssl, json), the interpreter's (int() past 4,300 digits,
# recursion, memory), and a bug's.
ERRORS: list[BaseException] = [
    ValueError("Exceeds the limit (4300 digits) for integer string conversion"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    UnicodeError("label too long"),
    LookupError("unknown encoding: x-hostile"),
    h11.RemoteProtocolError("illegal status line"),
    h11.LocalProtocolError("illegal header"),
    httpx.RemoteProtocolError("malformed"),
    httpx.ReadError("reset"),
    httpx.DecodingError("bad gzip"),
    OSError(104, "Connection reset by peer"),
    anyio.BrokenResourceError(),
    anyio.EndOfStream(),
    anyio.ClosedResourceError(),
    ssl.SSLError("bad record mac"),
    zlib.error("invalid stored block lengths"),
    json.JSONDecodeError("Expecting value", "", 0),
    RuntimeError("a bug"),
    RecursionError(),
    MemoryError(),
    KeyError("x"),
    TypeError("x"),
    AttributeError("x"),
    IndexError("x"),
    OverflowError("x"),
    AssertionError("x"),
    NotImplementedError(),
]


@pytest.mark.anyio
async def test_any_error_reading_one_answer_is_that_jobs_error_and_the_others_are_read() -> None:
    """Each exception, raised before the answer and in the middle of its body, costs its one job
    a `connect` or `bad_body`; every other job of the target is read in the same cycle."""
    cases = [(error, when) for error in ERRORS for when in ("before the answer", "in the body")]

    class Throwing(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            job_id = request.url.path.rsplit("/", 1)[1]
            if job_id.startswith("bad-"):
                error, when = cases[int(job_id[4:])]
                if when == "before the answer":
                    raise error
                return httpx.Response(200, stream=Raising(error))
            return httpx.Response(200, json={"type": "job", "id": job_id, "steps": []})

    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    target = s.resolved(s.targets[0])
    http = TargetHttp(target, transport=Throwing())
    good = [f"good-{i}" for i in range(20)]
    bad = [f"bad-{i}" for i in range(len(cases))]
    ids = [job_id for pair in itertools.zip_longest(bad, good) for job_id in pair if job_id is not None]
    result = await Basiq(target.config).poll(http, ids)
    await http.aclose()
    assert sorted(job.id for job in result.jobs) == sorted(good)
    errors = {reason: n for reason, n in http.stats.errors.items() if n}
    assert set(errors) <= {"connect", "bad_body"} and sum(errors.values()) == len(cases)


@pytest.mark.anyio
async def test_every_hostile_answer_costs_its_job_alone_within_the_deadline() -> None:
    """The hostile provider's whole catalogue, one answer per job, beside healthy jobs on the
    same target and connections: every healthy job is read in the same cycle, every hostile one
    is counted, and the cycle ends (a watchdog fails the test otherwise)."""
    names = sorted(ANSWERS)
    answers: dict[str, Answer] = {f"/jobs/bad-{i}": ANSWERS[name] for i, name in enumerate(names)}
    good = [f"good-{i}" for i in range(30)]
    for job_id in good:
        answers[f"/jobs/{job_id}"] = json_answer(
            json.dumps({"type": "job", "id": job_id, "steps": []}).encode()
        )
    bad = [f"bad-{i}" for i in range(len(names))]
    with Hostile(answers) as server:
        s = build_settings(
            {
                "global": {"max_response_bytes": 1 << 20, "timeout": "2s", "concurrency": 4},
                "targets": [{"name": "t", "provider": "basiq", "base_url": server.url}],
            },
            PROVIDERS,
        )
        target = s.resolved(s.targets[0])
        http = TargetHttp(target)
        with watchdog(60):
            result = await Basiq(target.config).poll(http, bad + good)
        await http.aclose()
    assert sorted(job.id for job in result.jobs) == sorted(good)
    # Extra bytes after a body leave that body ({}) to be read: not a Basiq job.
    assert sum(http.stats.errors.values()) + len(result.bad_payloads) == len(names)


@pytest.mark.anyio
async def test_a_target_shared_by_replicas_sends_its_share_in_flight_from_a_pool_no_wider() -> None:
    """Three replicas share a concurrency of 16: each sends at most 6 at once, and the pool that
    fetches a cycle's jobs has 6 workers, not 16 of which 10 would queue on the limiter."""
    import anyio

    from exporter.providers import base

    in_flight = peak = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        job_id = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json={"id": job_id})

    http = make_http(answer, concurrency=16)
    http.share(3)
    assert http.concurrency == 6
    widths: list[int] = []
    gather = base.gather

    async def recorded(items: Any, fn: Any, width: int = base.POOL_WIDTH) -> Any:
        widths.append(width)
        return await gather(items, fn, width)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "gather", recorded)
        result = await fetch_each(
            http,
            [str(i) for i in range(60)],
            lambda i: f"/jobs/{i}",
            lambda obj: Job(obj["id"], Status.RUNNING),
        )
    assert widths == [6]
    assert peak == 6
    assert len(result.jobs) == 60
    http.share(1)
    assert http.concurrency == 16  # a replica alone again takes the whole budget
