"""The HTTP/1.1 transport against a real server on 127.0.0.1 that answers as servers do, and
as they should not: lengths, chunks, connections closed, garbage, answers that trickle."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from exporter.config import build_settings
from exporter.fetch import PollError, TargetHttp
from exporter.providers import PROVIDERS
from exporter.transport import Http11Transport
from tests.hostile import ANSWERS, Hostile, json_answer, late, watchdog
from tests.tools import cyclic_garbage, self_signed
from tests.unit.loopback import Peer, serve


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=Http11Transport(), timeout=5) as c:
        yield c


def target_http(base_url: str, **glob: Any) -> TargetHttp:
    s = build_settings(
        {"global": glob, "targets": [{"name": "t", "provider": "basiq", "base_url": base_url}]}, PROVIDERS
    )
    return TargetHttp(s.resolved(s.targets[0]))


def paths(seen: list[bytes]) -> list[bytes]:
    return [request.split(b" ")[1] for request in seen]


def answer_every_request(n: int, peer: Peer) -> None:
    while (request := peer.read_request()) is not None:
        peer.answer(b'{"conn": %d, "path": "%s"}' % (n, request.split(b" ")[1]))


@pytest.mark.anyio
async def test_content_length_answers_reuse_one_connection(client: httpx.AsyncClient) -> None:
    with serve(answer_every_request) as (url, seen):
        for i in range(3):
            r = await client.get(f"{url}/jobs/{i}?x=1")
            assert r.json() == {"conn": 0, "path": f"/jobs/{i}?x=1"}
    assert paths(seen) == [b"/jobs/0?x=1", b"/jobs/1?x=1", b"/jobs/2?x=1"]


def chunked(n: int, peer: Peer) -> None:
    while peer.read_request() is not None:
        peer.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5;ext=1\r\n{"a":\r\n'
            b"3\r\n 12\r\n"
            b"1\r\n}\r\n"
            b"0\r\nX-Trailer: yes\r\n\r\n"
        )


@pytest.mark.anyio
async def test_chunked_answers_with_extensions_and_trailers_are_read_and_keep_the_connection(
    client: httpx.AsyncClient,
) -> None:
    with serve(chunked) as (url, seen):
        assert (await client.get(f"{url}/a")).json() == {"a": 12}
        assert (await client.get(f"{url}/b")).json() == {"a": 12}
    assert len(seen) == 2


def until_close(n: int, peer: Peer) -> None:
    if peer.read_request() is not None:
        peer.send(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"n": %d}' % n)


def close_after_answer(n: int, peer: Peer) -> None:
    if peer.read_request() is not None:
        peer.answer(b'{"n": %d}' % n, close=True)


@pytest.mark.parametrize("script", [until_close, close_after_answer])
@pytest.mark.anyio
async def test_an_answer_ended_by_the_connection_or_connection_close_is_not_reused(
    client: httpx.AsyncClient, script: Any
) -> None:
    with serve(script) as (url, _):
        assert (await client.get(f"{url}/a")).json() == {"n": 0}
        assert (await client.get(f"{url}/b")).json() == {"n": 1}


def answer_then_hang_up(n: int, peer: Peer) -> None:
    if peer.read_request() is not None:
        peer.answer(b'{"n": %d}' % n)  # keep-alive promised, then the server closes it anyway


@pytest.mark.anyio
async def test_a_connection_the_server_closed_while_idle_is_not_used_again(client: httpx.AsyncClient) -> None:
    with serve(answer_then_hang_up) as (url, seen):
        assert (await client.get(f"{url}/a")).json() == {"n": 0}
        time.sleep(0.2)  # the server's close arrives
        assert (await client.get(f"{url}/b")).json() == {"n": 1}
    assert paths(seen) == [b"/a", b"/b"]  # no request was lost to the closed connection


@pytest.mark.anyio
async def test_idle_connections_expire() -> None:
    with serve(answer_every_request) as (url, _):
        async with httpx.AsyncClient(transport=Http11Transport(keepalive_expiry=0.1)) as c:
            assert (await c.get(f"{url}/a")).json()["conn"] == 0
            time.sleep(0.2)
            assert (await c.get(f"{url}/b")).json()["conn"] == 1


def no_body(n: int, peer: Peer) -> None:
    while (request := peer.read_request()) is not None:
        if request.startswith(b"HEAD"):
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        else:
            peer.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")


@pytest.mark.anyio
async def test_head_204_and_interim_answers_carry_no_body(client: httpx.AsyncClient) -> None:
    with serve(no_body) as (url, seen):
        assert (await client.head(f"{url}/a")).content == b""
        r = await client.delete(f"{url}/b")
        assert r.status_code == 204 and r.content == b""
        assert (await client.head(f"{url}/c")).status_code == 200
    assert len(seen) == 3


GARBAGE = [
    b"HELLO\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # then the connection ends
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000,
]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.anyio
async def test_garbage_is_a_connect_error_and_the_connection_is_dropped(garbage: bytes) -> None:
    def script(n: int, peer: Peer) -> None:
        if peer.read_request() is not None:
            peer.send(garbage if n == 0 else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    with serve(script) as (url, _):
        http = target_http(url)
        with pytest.raises(PollError) as e:
            await http.get_json("/jobs/1")
        assert e.value.reason == "connect" and "127.0.0.1" in str(e.value)
        assert await http.get_json("/jobs/2") == {}  # a fresh connection
        await http.aclose()


def slowloris(n: int, peer: Peer) -> None:
    if peer.read_request() is not None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b" " * 100:
            peer.send(bytes([byte]))
            time.sleep(0.05)


@pytest.mark.anyio
async def test_an_answer_that_trickles_ends_at_the_timeout() -> None:
    with serve(slowloris) as (url, _):
        http = target_http(url, timeout="1s")
        started = time.monotonic()
        with pytest.raises(PollError) as e:
            await http.get_json("/jobs/1")
        assert e.value.reason == "timeout"
        assert time.monotonic() - started < 3  # bounded: the test's own guard, not a benchmark
        await http.aclose()


@pytest.mark.anyio
async def test_a_post_sends_its_body_and_a_get_sends_the_targets_headers() -> None:
    with serve(answer_every_request) as (url, seen):
        http = target_http(url)
        await http.post_json("/rerun", {"a": 1})
        await http.get_json("/jobs/1", params={"q": "x y"})
        await http.aclose()
    post, get = seen
    assert post.startswith(b"POST /rerun HTTP/1.1\r\n") and post.endswith(b'{"a":1}')
    assert b"\r\nContent-Length: 7\r\n" in post
    assert get.startswith(b"GET /jobs/1?q=x+y HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in get and b"\r\nUser-Agent: asyncjob-exporter/" in get


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    self_signed(d, "/CN=localhost", extension="subjectAltName=IP:127.0.0.1")
    return d


@pytest.mark.anyio
async def test_tls_is_verified(certificate: Path) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    with serve(answer_every_request, tls=server) as (url, _):
        trusted = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
        async with httpx.AsyncClient(transport=Http11Transport(ssl_context=trusted)) as c:
            assert (await c.get(f"{url}/a")).json()["conn"] == 0
            assert (await c.get(f"{url}/b")).json()["conn"] == 0  # kept alive under TLS too
        http = target_http(url)  # the system's CAs do not know this certificate
        with pytest.raises(PollError) as e:
            await http.get_json("/jobs/1")
        await http.aclose()
    assert e.value.reason == "connect" and "CERTIFICATE_VERIFY_FAILED" in str(e.value)


@pytest.mark.anyio
async def test_a_request_leaves_no_cyclic_garbage() -> None:
    """Reference counting frees a request's objects when it ends: frozen while in flight
    (exporter.quiet_gc.QuietGC), cyclic garbage would stay until a full GC pass."""
    with serve(answer_every_request) as (url, _):
        http = target_http(url)
        try:
            await http.get_json("/jobs/warm")  # the connection and the client's lazy state
            with cyclic_garbage() as left:
                for i in range(5):
                    assert (await http.get_json(f"/jobs/{i}"))["path"] == f"/jobs/{i}"
        finally:
            await http.aclose()
    assert left == []


@pytest.mark.anyio
async def test_a_404_keeps_its_connection_for_the_next_request() -> None:
    """A registered id the provider does not know is answered 404: its answer is read whole,
    so the next poll reuses the connection instead of opening one."""
    from exporter.fetch import NotFound

    connections: list[int] = []

    def not_found(n: int, peer: Peer) -> None:
        while peer.read_request() is not None:
            connections.append(n)
            peer.answer(b'{"error": "no such job"}', status="404 Not Found")

    with serve(not_found) as (url, seen):
        http = target_http(url)
        try:
            for i in range(3):
                with pytest.raises(NotFound):
                    await http.get_json(f"/jobs/{i}")
        finally:
            await http.aclose()
    assert paths(seen) == [b"/jobs/0", b"/jobs/1", b"/jobs/2"]
    assert connections == [0, 0, 0]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "extra",
    [b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{"late": true}', b"x", b"\r\n"],
    ids=["a whole answer", "a byte", "a blank line"],
)
async def test_bytes_that_arrive_on_an_idle_connection_close_it(extra: bytes) -> None:
    """Bytes no request asked for, sent after an answer while its connection waits in the pool,
    are never read as the next request's answer: that connection is closed, the next request
    goes on a fresh one."""
    first = json_answer(b'{"n": 1}')
    with Hostile({"/jobs/1": late(first, 0.05, extra), "/jobs/2": json_answer(b'{"n": 2}')}) as server:
        http = target_http(server.url)
        assert await http.get_json("/jobs/1") == {"n": 1}
        await anyio.sleep(0.3)  # the late bytes arrive while the connection is idle
        assert await http.get_json("/jobs/2") == {"n": 2}
        await http.aclose()
    assert server.connections == 2


@pytest.mark.anyio
async def test_bytes_after_an_answer_in_the_same_read_close_its_connection() -> None:
    doubled = json_answer(b'{"n": 1}') + json_answer(b'{"n": "smuggled"}')
    with Hostile({"/jobs/1": doubled, "/jobs/2": json_answer(b'{"n": 2}')}) as server:
        http = target_http(server.url)
        assert await http.get_json("/jobs/1") == {"n": 1}
        assert await http.get_json("/jobs/2") == {"n": 2}
        await http.aclose()
    assert server.connections == 2


@pytest.mark.anyio
async def test_a_chunk_size_of_minus_5_ends_in_an_error_not_a_frozen_loop() -> None:
    """It was read as -5 and looped for ever without awaiting: no deadline fired, /metrics and
    /healthz stopped answering, SIGTERM was ignored. The watchdog fails the test if it hangs."""
    with Hostile({"/jobs/1": ANSWERS["chunk size -5"]}) as server:
        http = target_http(server.url, timeout="5s")
        with watchdog(20), pytest.raises(PollError) as e:
            await http.get_json("/jobs/1")
        await http.aclose()
    assert e.value.reason == "connect" and "chunk header" in str(e.value)
