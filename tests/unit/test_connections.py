"""HeadWithBody: a response's head and the first part of its body go out in one send. The
connection cap: which connection is closed past it (exporter.httpserver.front_door), and a scrape with good
credentials that gets in while more connections than the cap pipeline wrong passwords or read
nothing, against the real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.abc
import bcrypt
import pytest

from exporter.config import build_settings
from exporter.httpserver.front_door import (
    IDLE,
    NOT_AUTHENTICATED,
    NOT_READING,
    WEB_COUNTS,
    FrontDoor,
    WebCounts,
)
from exporter.httpserver.head_with_body import HeadWithBody
from exporter.httpserver.protocol import ConnectionLimits
from exporter.httpserver.server import Server
from exporter.providers import PROVIDERS
from exporter.routes import build_app
from exporter.runtime import Runtime
from exporter.webconfig import WebConfig


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


async def _turn() -> None:
    await asyncio.sleep(0)


def test_the_head_and_the_body_go_out_in_one_write() -> None:
    async def main() -> list[bytes]:
        t = Recording()
        view = HeadWithBody(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        view.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
        view.write(b"{}")
        view.write(b"")  # h11's end of message, with a Content-Length
        await _turn()
        return t.writes

    assert asyncio.run(main()) == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"]


def test_a_head_whose_body_does_not_follow_in_the_same_turn_goes_out_alone_then_the_rest_as_it_comes() -> (
    None
):
    async def main() -> list[list[bytes]]:
        t = Recording()
        view = HeadWithBody(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        view.write(b"HEAD")
        seen = [list(t.writes)]
        await _turn()
        seen.append(list(t.writes))
        view.write(b"part 1")
        view.write(b"part 2")
        seen.append(list(t.writes))
        return seen

    assert asyncio.run(main()) == [[], [b"HEAD"], [b"HEAD", b"part 1", b"part 2"]]


def test_closing_sends_a_held_head_first_and_other_calls_reach_the_transport() -> None:
    async def main() -> Recording:
        t = Recording()
        view = HeadWithBody(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        assert view.get_extra_info("peername") == ("127.0.0.1", 1)
        view.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        view.close()
        await _turn()
        return t

    t = asyncio.run(main())
    assert t.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and t.closed


# --- which connection is closed past the cap ---------------------------------------------------


class FakeSeat:
    def __init__(self, name: str, rank: tuple[int, float] | None) -> None:
        self.name, self.rank, self.closed = name, rank, False

    def cap_rank(self) -> tuple[int, float] | None:
        return self.rank

    def close_for_room(self) -> None:
        self.closed = True


def door_with(*seats: FakeSeat, cap: int) -> FrontDoor:
    door = FrontDoor(cap, counts=WebCounts())
    for seat in seats:
        assert door.enter(seat)
    return door


def test_past_the_cap_the_oldest_connection_that_has_not_authenticated_is_closed_first() -> None:
    idle, stalled = FakeSeat("idle", (2, 1.0)), FakeSeat("stalled", (1, 2.0))
    older, newer = FakeSeat("older", (0, 3.0)), FakeSeat("newer", (0, 4.0))
    door = door_with(idle, stalled, older, newer, cap=4)
    newcomer = FakeSeat("new", (0, 5.0))
    assert door.enter(newcomer)
    assert [s.name for s in (idle, stalled, older, newer) if s.closed] == ["older"]
    assert door.counts.closed[NOT_AUTHENTICATED] == 1 and newcomer in door.open and older not in door.open


def test_then_one_that_does_not_read_its_answers_then_an_idle_one_then_the_newcomer_is_refused() -> None:
    busy = FakeSeat("answered now", None)
    idle, stalled, stalled_later = (
        FakeSeat("idle", (2, 1.0)),
        FakeSeat("stalled", (1, 3.0)),
        FakeSeat("s2", (1, 4.0)),
    )
    door = door_with(busy, idle, stalled_later, stalled, cap=4)
    newcomer = FakeSeat("new", (0, 9.0))
    assert door.enter(newcomer)
    assert stalled.closed and not stalled_later.closed  # paused longest first
    newcomer.rank = None  # it authenticated and is being answered
    assert door.enter(FakeSeat("new", (0, 9.0)))
    assert stalled_later.closed and door.counts.closed[NOT_READING] == 2
    door = door_with(busy, idle, cap=2)
    assert door.enter(FakeSeat("new", (0, 9.0))) and idle.closed and door.counts.closed[IDLE] == 1
    refused = FakeSeat("new", (0, 9.0))
    door = door_with(busy, cap=1)
    assert not door.enter(refused)  # every other one has authenticated and is being answered
    assert not busy.closed and refused not in door.open and door.counts.refused == 1


def test_refusals_at_the_cap_are_logged_at_warn_once_per_burst_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    door = door_with(FakeSeat("busy", None), cap=1)
    with caplog.at_level(logging.DEBUG, logger="asyncjob.server"):
        refused = [door.enter(FakeSeat(str(i), (0, 1.0))) for i in range(50)]
    assert refused == [False] * 50 and door.counts.refused == 50
    lines = [r for r in caplog.records if "connection cap reached" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING


# --- a scrape with good credentials gets in during a flood (the real server) -------------------

GOOD = b"Authorization: Basic " + base64.b64encode(b"prom:pw") + b"\r\n"
WRONG = b"Authorization: Basic " + base64.b64encode(b"prom:wrong") + b"\r\n"
CAP = 16


def get(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


async def status_of_one_request(port: int, request: bytes) -> int:
    """The status of `request` on a new connection; 0 when the server closes it unanswered."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        head = b""
        try:
            while b"\r\n" not in head:
                head += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return 0
        return int(head.split(b" ")[1])


@contextmanager
def slow_bcrypt(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[None]:
    real = bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        time.sleep(seconds)  # a cost of 12 or so: wrong passwords queue for the bcrypt thread
        return bool(real(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", checkpw)
    yield


@asynccontextmanager
async def served(limits: ConnectionLimits) -> AsyncIterator[Server]:
    settings = build_settings(
        {"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    runtime = Runtime(settings)
    runtime.tracker.set_target(settings.resolved(settings.targets[0]))
    users = WebConfig(users={"prom": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))})
    server = Server(build_app(runtime, users.middleware()), "127.0.0.1:0", limits=limits)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while server.port == 0:
                await anyio.sleep(0.01)
        yield server
        tg.cancel_scope.cancel()


async def flood_connection(port: int, request: bytes, held: list[asyncio.StreamWriter]) -> None:
    """A connection that pipelines `request` and reads nothing (a small receive buffer, set
    before it connects, fills at once), until cancelled."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _, writer = await asyncio.open_connection(sock=sock)
    held.append(writer)
    try:
        while True:
            writer.write(request * 10)
            await writer.drain()
            await anyio.sleep(0.01)
    except OSError:
        pass  # closed to make room


@pytest.mark.anyio
@pytest.mark.parametrize(
    "flood",
    [get("/metrics", WRONG), get("/metrics", GOOD)],
    ids=["pipelining wrong passwords", "reading none of its answers"],
)
async def test_a_scrape_with_good_credentials_gets_in_while_more_connections_than_the_cap_flood(
    monkeypatch: pytest.MonkeyPatch, flood: bytes
) -> None:
    # Timeouts far away: the cap, not a deadline, has to let the scrape in.
    limits = ConnectionLimits(header_timeout=60, max_connections=CAP, write_timeout=60)
    closed_before = sum(WEB_COUNTS.closed.values())
    async with served(limits) as server:
        port = server.port
        assert await status_of_one_request(port, get("/metrics", GOOD)) == 200  # verified, cached
        held: list[asyncio.StreamWriter] = []
        try:
            with slow_bcrypt(monkeypatch, 0.2), anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(CAP + 8):
                        tg.start_soon(flood_connection, port, flood, held)
                    await anyio.sleep(1)  # every slot held: requests queued for bcrypt, or answers unread
                    open_before = len(server._server.server_state.connections)
                    statuses = [await status_of_one_request(port, get("/metrics", GOOD)) for _ in range(5)]
                    tg.cancel_scope.cancel()
        finally:
            for writer in held:
                writer.close()
    assert open_before >= CAP  # the flood held every slot
    assert statuses == [200] * 5
    assert sum(WEB_COUNTS.closed.values()) > closed_before  # the flood's connections made room


def test_the_connections_closed_and_refused_are_on_metrics() -> None:
    from exporter.render.scrape import render_web_counts
    from exporter.render.text import Text

    counts = WebCounts(refused=3)
    counts.closed[NOT_AUTHENTICATED] = 7
    w = Text()
    render_web_counts(w, counts)
    text = w.bytes().decode()
    assert "asyncjob_web_connections_refused_total 3\n" in text
    assert 'asyncjob_web_connections_closed_total{reason="cap_not_authenticated"} 7\n' in text
    assert 'asyncjob_web_connections_closed_total{reason="write_timeout"} 0\n' in text


@pytest.mark.anyio
async def test_a_client_that_reads_none_of_its_answers_is_closed_after_the_write_timeout() -> None:
    limits = ConnectionLimits(header_timeout=60, max_connections=CAP, write_timeout=0.5)
    async with served(limits) as server:
        held: list[asyncio.StreamWriter] = []
        try:
            with anyio.fail_after(10):
                await flood_connection(server.port, get("/metrics", GOOD), held)  # returns once closed
        finally:
            for writer in held:
                writer.close()


@pytest.mark.anyio
async def test_shutting_down_during_a_flood_drops_the_requests_waiting_for_bcrypt_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limits = ConnectionLimits(header_timeout=60, max_connections=CAP, write_timeout=60)
    held: list[asyncio.StreamWriter] = []
    try:
        with slow_bcrypt(monkeypatch, 0.2), anyio.fail_after(30), caplog.at_level(logging.ERROR):
            async with served(limits) as server, anyio.create_task_group() as tg:
                for _ in range(CAP):
                    tg.start_soon(flood_connection, server.port, get("/metrics", WRONG), held)
                await anyio.sleep(1)  # each with a wrong password queued for bcrypt
                server.stop()  # as on SIGTERM
                with anyio.fail_after(10):
                    while server._server.server_state.connections:
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
    finally:
        for writer in held:
            writer.close()
    assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]


@pytest.mark.anyio
async def test_the_server_wakes_once_a_second_for_its_date_and_stops_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from email.utils import parsedate_to_datetime

    from exporter.httpserver.server import SignalsOurs

    ticks: list[float] = []
    on_tick = SignalsOurs.on_tick

    async def counted(self: SignalsOurs, counter: int) -> bool:
        ticks.append(time.monotonic())
        return await on_tick(self, counter)

    monkeypatch.setattr(SignalsOurs, "on_tick", counted)
    async with served(ConnectionLimits()) as server:
        await anyio.sleep(2.5)
        assert 2 <= len(ticks) <= 4  # uvicorn's own loop wakes ten times a second
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        writer.close()
        date = next(line.split(":", 1)[1] for line in head.split("\r\n") if line.lower().startswith("date:"))
        assert abs(parsedate_to_datetime(date).timestamp() - time.time()) < 2
        stopping = time.monotonic()
        server.stop()
        with anyio.fail_after(5):
            while ticks[-1] < stopping:
                await anyio.sleep(0.01)
        assert ticks[-1] - stopping < 0.05  # told at once, not at its next tick
