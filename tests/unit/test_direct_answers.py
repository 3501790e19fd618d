"""/metrics and /healthz answered by the HTTP protocol in the turn that read the request (no
ASGI task), as the app answers them: headers, HEAD, gzip, the telemetry path, web config
headers, basic auth (credentials the app verified first), keep-alive, pipelining; and
registrations answered by the protocol through the app's handler, as the app answers them."""

from __future__ import annotations

import base64
import gzip
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import bcrypt
import pytest
from starlette.types import Receive, Scope, Send

from exporter.api import Api
from exporter.config import build_settings
from exporter.httpserver.protocol import ConnectionLimits
from exporter.httpserver.server import Server
from exporter.providers import PROVIDERS
from exporter.routes import ExporterApp, build_app
from exporter.runtime import Runtime
from exporter.webconfig import WebConfig

PROMETHEUS = b"Accept-Encoding: gzip\r\nUser-Agent: Prometheus/2.53.0\r\n"


def runtime() -> Runtime:
    settings = build_settings(
        {"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    rt = Runtime(settings)
    rt.tracker.set_target(settings.resolved(settings.targets[0]))
    return rt


@dataclass
class Served:
    port: int
    app: ExporterApp
    runtime: Runtime
    server: Any = None
    asgi_paths: list[str] = field(default_factory=list)  # requests the ASGI app answered

    async def connect(self) -> Conn:
        return Conn(await anyio.connect_tcp("127.0.0.1", self.port))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, *requests: bytes) -> None:
        await self.stream.send(b"".join(requests))

    async def answer(self, head_only: bool = False) -> Answer:
        with anyio.fail_after(10):
            while b"\r\n\r\n" not in self.buffer:
                self.buffer += await self.stream.receive()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
            length = 0 if head_only else int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                self.buffer += await self.stream.receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(lines[0].split(" ")[1]), headers, body)

    async def closed(self) -> bool:
        with anyio.fail_after(10):
            try:
                return await self.stream.receive() == b""
            except anyio.EndOfStream:
                return True

    async def aclose(self) -> None:
        await self.stream.aclose()


def get(path: str, extra: bytes = b"", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    async with anyio.create_task_group() as tg:

        async def start(limits: ConnectionLimits | None = None, **kwargs: Any) -> Served:
            rt = runtime()
            app = build_app(rt, **kwargs)
            assert isinstance(app, ExporterApp)
            served = Served(0, app, rt)
            inner = app.app

            async def counting(scope: Scope, receive: Receive, send: Send) -> None:
                served.asgi_paths.append(scope.get("path", ""))
                await inner(scope, receive, send)

            app.app = counting
            server = Server(app, "127.0.0.1:0", limits=limits)
            tg.start_soon(server.serve)
            with anyio.fail_after(10):
                while server.port == 0:
                    await anyio.sleep(0.01)
            served.port, served.server = server.port, server
            return served

        yield start
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_metrics_and_healthz_are_answered_without_the_app(serve: Any) -> None:
    s = await serve()
    c = await s.connect()
    await c.send(get("/metrics", PROMETHEUS))
    gz = await c.answer()
    await c.send(get("/metrics?name[]=x"))
    plain = await c.answer()
    await c.send(get("/healthz"))
    health = await c.answer()
    await c.aclose()
    assert s.asgi_paths == []
    assert gz.status == plain.status == health.status == 200
    assert gz.headers["content-encoding"] == "gzip"
    assert gz.headers["vary"] == "Accept-Encoding"
    assert (
        gz.headers["content-type"]
        == plain.headers["content-type"]
        == "text/plain; version=0.0.4; charset=utf-8"
    )
    assert int(gz.headers["content-length"]) == len(gz.body)
    assert "date" in gz.headers
    assert b"asyncjob_exporter_build_info" in gzip.decompress(gz.body)
    assert "content-encoding" not in plain.headers and "vary" not in plain.headers
    assert b"asyncjob_exporter_build_info" in plain.body and b"process_" in plain.body
    assert health.body == b"ok\n"
    assert health.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.anyio
async def test_direct_answers_carry_the_headers_the_app_sends(serve: Any) -> None:
    # The same request answered directly, then by the app (a GET with a body goes to it).
    s = await serve()
    c = await s.connect()
    answers = {}
    for path in ("/metrics", "/%68ealthz"):
        await c.send(get(path, PROMETHEUS))
        answers[path, "direct"] = await c.answer()
        await c.send(get(path, PROMETHEUS + b"Content-Length: 2\r\n")[:-2] + b"\r\nhi")
        answers[path, "app"] = await c.answer()
    await c.aclose()
    assert s.asgi_paths == ["/metrics", "/healthz"]
    for path in ("/metrics", "/%68ealthz"):
        direct, app = answers[path, "direct"].headers, answers[path, "app"].headers
        for h in (direct, app):
            h.pop("date"), h.pop("content-length")
        assert direct == app


@pytest.mark.anyio
async def test_head_is_answered_without_a_body(serve: Any) -> None:
    s = await serve()
    c = await s.connect()
    await c.send(get("/metrics", PROMETHEUS, method="HEAD"), get("/healthz"))
    head = await c.answer(head_only=True)
    health = await c.answer()  # read right after the head: no body came between them
    await c.aclose()
    assert head.status == 200 and int(head.headers["content-length"]) > 0
    assert health.body == b"ok\n"
    assert s.asgi_paths == []


@pytest.mark.anyio
async def test_other_requests_still_go_to_the_app(serve: Any) -> None:
    s = await serve(telemetry_path="/probe/metrics")
    c = await s.connect()
    await c.send(get("/probe/metrics"))
    assert (await c.answer()).status == 200
    await c.send(get("/metrics"))
    assert (await c.answer()).status == 404
    await c.send(get("/probe/metrics", method="POST"))
    assert (await c.answer()).status == 405
    await c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert (await c.answer()).body == b"ok\n"
    await c.aclose()
    assert s.asgi_paths == ["/metrics", "/probe/metrics", "/healthz"]


@pytest.mark.anyio
async def test_disabled_exporter_metrics_stay_out_of_direct_answers(serve: Any) -> None:
    s = await serve()
    s.runtime.exposition.exporter_metrics = False  # --web.disable-exporter-metrics
    c = await s.connect()
    await c.send(get("/metrics"))
    body = (await c.answer()).body
    await c.aclose()
    assert b"asyncjob_exporter_build_info" in body
    assert b"process_" not in body and b"python_" not in body
    assert s.asgi_paths == []


@pytest.mark.anyio
async def test_pipelined_requests_are_answered_in_order_and_close_is_honoured(serve: Any) -> None:
    s = await serve()
    c = await s.connect()
    await c.send(get("/healthz"), get("/metrics"), get("/healthz", b"Connection: close\r\n"))
    first, second, third = await c.answer(), await c.answer(), await c.answer()
    assert first.body == third.body == b"ok\n"
    assert b"asyncjob_exporter_build_info" in second.body
    assert third.headers["connection"] == "close"
    assert await c.closed()
    assert s.asgi_paths == []


def basic(user: str, password: str) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()) + b"\r\n"


# Basic auth for user "prom", password "pw", and one header added to every answer.
PROM_PW_DENY = WebConfig(
    users={"prom": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))}, headers={"X-Frame-Options": "deny"}
)


@pytest.mark.anyio
async def test_basic_auth_and_extra_headers_hold_on_direct_answers(serve: Any) -> None:
    s = await serve(middleware=PROM_PW_DENY.middleware())
    c = await s.connect()
    await c.send(get("/metrics"))
    missing = await c.answer()
    await c.send(get("/metrics", basic("prom", "wrong")))
    wrong = await c.answer()
    await c.send(get("/metrics", basic("prom", "pw")))
    first = await c.answer()  # verified by the app (bcrypt), then cached
    await c.send(get("/metrics", basic("prom", "pw")), get("/healthz"))
    cached, health = await c.answer(), await c.answer()
    await c.aclose()
    assert (missing.status, wrong.status, first.status, cached.status, health.status) == (
        401,
        401,
        200,
        200,
        200,
    )
    assert s.asgi_paths == ["/metrics"] * 3  # the cached credentials and /healthz: answered directly
    assert cached.headers["x-frame-options"] == health.headers["x-frame-options"] == "deny"
    assert b"asyncjob_exporter_build_info" in cached.body


def post(path: str, body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Content-Type: "
        + content_type
        + f"\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


@pytest.mark.anyio
async def test_registrations_are_answered_without_the_app_as_the_app_answers_them(serve: Any) -> None:
    # Each request twice: straight (the protocol answers it) and with an escape in the path
    # (/api/v1/targets/%74/jobs is target "t" too, which the protocol leaves to the app).
    s = await serve()
    c = await s.connect()
    cases = [
        (b'{"id": "job-1"}', b"application/json"),  # 202, then 202 again: already tracked
        (b'{"id": "job-1"}', b"application/json"),
        (b'{"id": "a\\ud800b"}', b"application/json"),  # 422 naming the field
        (b"not json", b"application/json"),  # 400
        (b"id=job-2", b"application/x-www-form-urlencoded"),  # 415
    ]
    answers = []
    for body, content_type in cases:
        pair = []
        for path in ("/api/v1/targets/t/jobs", "/api/v1/targets/%74/jobs"):
            await c.send(post(path, body, content_type))
            pair.append(await c.answer())
        answers.append(pair)
    await c.send(post("/api/v1/targets/nope/jobs", b'{"id": "x"}'))
    unknown = await c.answer()
    await c.aclose()
    assert s.asgi_paths == ["/api/v1/targets/t/jobs"] * len(cases)  # the escaped ones alone
    assert [direct.status for direct, _ in answers] == [202, 202, 422, 400, 415]
    assert unknown.status == 404
    for direct, app in answers:
        assert direct.status == app.status
        for h in (direct.headers, app.headers):
            h.pop("date"), h.pop("content-length")
        assert direct.headers == app.headers
        if direct.status != 202:  # a 202 holds the job's times
            assert direct.body == app.body
    assert b'"field":"id"' in answers[2][0].body
    assert "job-1" in s.runtime.tracker.targets["t"].jobs


@pytest.mark.anyio
async def test_the_protocol_and_the_app_run_the_same_handlers(serve: Any, monkeypatch: Any) -> None:
    """The fast path is no second implementation: answered by the protocol or by the app,
    /metrics, /healthz and a registration run exporter.api's handlers."""
    ran: list[str] = []

    def spy(name: str) -> Any:
        original = getattr(Api, name)

        def sync(self: Api, *args: Any) -> Any:
            ran.append(name)
            return original(self, *args)

        async def awaited(self: Api, *args: Any) -> Any:
            ran.append(name)
            return await original(self, *args)

        return awaited if name == "registered" else sync

    for name in ("metrics", "healthz", "registration_refused", "registered"):
        monkeypatch.setattr(Api, name, spy(name))
    s = await serve()
    c = await s.connect()
    for path in ("/metrics", "/healthz"):
        await c.send(get(path))  # the protocol answers it
        assert (await c.answer()).status == 200
        await c.send(get(path, b"Content-Length: 1\r\n") + b"x")  # a body: the app answers it
        assert (await c.answer()).status == 200
    for path in ("/api/v1/targets/t/jobs", "/api/v1/targets/%74/jobs"):  # escaped: the app's
        await c.send(post(path, b'{"id": "job-1"}'))
        assert (await c.answer()).status == 202
    await c.aclose()
    assert s.asgi_paths == ["/metrics", "/healthz", "/api/v1/targets/t/jobs"]
    assert ran == ["metrics"] * 2 + ["healthz"] * 2 + ["registration_refused", "registered"] * 2


@pytest.mark.anyio
async def test_a_handler_that_fails_on_the_fast_path_answers_500_and_the_connection_serves_on(
    serve: Any, monkeypatch: Any
) -> None:
    async def broken(self: Api, target: str, raw: bytes) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Api, "registered", broken)
    s = await serve()
    c = await s.connect()
    await c.send(post("/api/v1/targets/t/jobs", b'{"id": "job-1"}'))
    failed = await c.answer()
    await c.send(get("/healthz"))
    health = await c.answer()
    await c.aclose()
    assert s.asgi_paths == []
    assert (failed.status, failed.body) == (500, b"Internal Server Error")
    assert failed.headers["content-type"] == "text/plain; charset=utf-8"
    assert (health.status, health.body) == (200, b"ok\n")


@pytest.mark.anyio
async def test_a_registration_whose_body_comes_later_goes_to_the_app(serve: Any) -> None:
    s = await serve()
    c = await s.connect()
    request = post("/api/v1/targets/t/jobs", b'{"id": "late"}')
    await c.send(request[:-4])
    await anyio.sleep(0.05)
    await c.send(request[-4:], get("/healthz"))
    registered, health = await c.answer(), await c.answer()
    await c.aclose()
    assert (registered.status, health.body) == (202, b"ok\n")
    assert s.asgi_paths == ["/api/v1/targets/t/jobs"]


@pytest.mark.anyio
async def test_pipelined_registrations_are_answered_in_order(serve: Any) -> None:
    s = await serve()
    c = await s.connect()
    await c.send(
        *(post("/api/v1/targets/t/jobs", f'{{"id": "p{i}"}}'.encode()) for i in range(5)), get("/healthz")
    )
    answers = [await c.answer() for _ in range(6)]
    await c.aclose()
    assert [a.status for a in answers] == [202] * 5 + [200]
    assert [json.loads(a.body)["id"] for a in answers[:5]] == [f"p{i}" for i in range(5)]
    assert s.asgi_paths == []


@pytest.mark.anyio
async def test_registrations_hold_basic_auth_and_extra_headers_without_the_app(serve: Any) -> None:
    s = await serve(middleware=PROM_PW_DENY.middleware())
    c = await s.connect()
    await c.send(post("/api/v1/targets/t/jobs", b'{"id": "a"}'))
    missing = await c.answer()
    await c.send(post("/api/v1/targets/t/jobs", b'{"id": "a"}', extra=basic("prom", "pw")))
    first = await c.answer()  # verified by the app (bcrypt), then cached
    await c.send(post("/api/v1/targets/t/jobs", b'{"id": "b"}', extra=basic("prom", "pw")))
    cached = await c.answer()
    await c.send(post("/api/v1/targets/t/jobs", b'{"id": "c"}', extra=basic("prom", "wrong")))
    wrong = await c.answer()
    await c.aclose()
    assert (missing.status, first.status, cached.status, wrong.status) == (401, 202, 202, 401)
    assert s.asgi_paths == ["/api/v1/targets/t/jobs"] * 3  # all but the cached credentials
    assert cached.headers["x-frame-options"] == "deny"
    assert set(s.runtime.tracker.targets["t"].jobs) == {"a", "b"}


@pytest.mark.anyio
async def test_a_thousand_pipelined_requests_are_all_answered(serve: Any) -> None:
    # Each direct answer goes on to the next pipelined request: not by recursing for ever.
    s = await serve()
    c = await s.connect()
    await c.send(get("/healthz") * 1000)
    answers = [await c.answer() for _ in range(1000)]
    await c.aclose()
    assert all(a.body == b"ok\n" for a in answers)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "first", [get("/healthz"), post("/api/v1/targets/t/jobs", b'{"id": "a"}'), get("/readyz")]
)
async def test_a_body_that_never_comes_after_an_answer_is_timed_out(serve: Any, first: bytes) -> None:
    s = await serve(limits=ConnectionLimits(header_timeout=0.3))
    c = await s.connect()
    head_only = b"POST /api/v1/targets/t/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
    await c.send(first + head_only)
    await c.answer()
    started = anyio.current_time()
    assert await c.closed()
    assert anyio.current_time() - started < 3


@pytest.mark.anyio
async def test_scrapes_sent_without_reading_the_answers_do_not_pile_up_in_memory(serve: Any) -> None:
    # The client sends scrapes and reads nothing: once the server's writes are paused, requests
    # wait for the client as the app's answers do, instead of each adding a body to the buffer.
    s = await serve()
    stream = await anyio.connect_tcp("127.0.0.1", s.port)
    stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = 0
    with anyio.move_on_after(2):
        for _ in range(400):
            await stream.send(get("/metrics") * 100)
            sent += 100
            await anyio.sleep(0.005)
    connections = list(s.server._server.server_state.connections)
    buffered = max(c.transport.get_write_buffer_size() for c in connections)
    await stream.aclose()
    assert sent >= 100 and buffered < 4 * 1024 * 1024  # some scrapes' bodies, not one per request
