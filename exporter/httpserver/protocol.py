"""The HTTP server's h11 protocol: a deadline for a request's headers, one for a client that
reads none of its answers, its place under the cap on open connections (front_door chooses
which to close past it), and the answers of the fast path (fast_path) written without the app.

uvicorn's keep-alive timeout starts only after a first response and stops at the first byte
of the next request, so a client that connects and sends nothing, or half a request line,
was held for ever; enough of them exhaust the file descriptors and /metrics stops answering.

A GET or HEAD the fast path answers is written in the loop turn that read the request; a
registration it takes is answered by a task of ours, through the app's own handler but
without uvicorn's ASGI request cycle.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from exporter.httpserver import Headers, HttpAnswer
from exporter.httpserver.front_door import WEB_COUNTS, FrontDoor
from exporter.httpserver.front_door import Headers as RequestHeaders
from exporter.httpserver.head_with_body import HeadWithBody

log = logging.getLogger("asyncjob.server")

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 512
CLOSE = (b"connection", b"close")
# Pipelined requests answered directly one from the other's call stack, at most.
MAX_NESTED = 16
# Answers up to this size go out in one write with their head; a larger body is written as it
# is (copying a scrape's megabytes behind its head cost more than the send it saved).
JOIN_AT_MOST = 64 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """--web.read-header-timeout and --web.max-connections; and how long a client may read
    none of its answers (its writes paused) before it is closed."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    write_timeout: float = DEFAULT_HEADER_TIMEOUT


class FastAnswers(Protocol):
    """The answers the protocol gives without the app (exporter.httpserver.fast_path.FastPath),
    and the headers the app adds to every answer (`extra`, as read last: a reload)."""

    extra: Headers

    def answer_now(self, method: bytes, target: bytes, headers: Headers) -> HttpAnswer | None:
        """The answer to a GET or HEAD without a body; None when the app is to give it."""

    def registration(self, target: bytes, headers: Headers) -> str | None:
        """The target of a POST this answers (a registration); None when the app is to."""

    async def register(self, target: str, headers: Headers, body: bytes) -> HttpAnswer:
        """The answer to a registration `registration` took, its whole body here."""


# As the app's error middleware answers a bug.
BUG = HttpAnswer(
    500,
    [(b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")],
    b"Internal Server Error",
)


def protocol_factory(
    limits: ConnectionLimits, door: FrontDoor, fast_path: FastAnswers | None = None
) -> Callable[..., GuardedH11]:
    """uvicorn's `http=`: a GuardedH11 for each connection."""
    return functools.partial(GuardedH11, limits=limits, door=door, fast_path=fast_path)


class AppCall:
    """The app as one connection calls it: a call still under way when the connection goes is
    cancelled if the connection never authenticated (a wrong password waiting for bcrypt is not
    checked for a client that is gone, nor for one closed to make room)."""

    __slots__ = ("abandoned", "app", "task")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.task: asyncio.Task[Any] | None = None
        self.abandoned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.task = asyncio.current_task()
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.abandoned:
                raise
        finally:
            self.task = None

    def abandon(self) -> None:
        if self.task is not None:
            self.abandoned = True
            self.task.cancel()


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol (made by `protocol_factory`) that closes a connection whose request
    headers are not complete `header_timeout` seconds after it opened (or after its previous
    response), whose request body is not complete `header_timeout` seconds after its headers,
    or whose client reads none of its answers for `write_timeout`; and counts itself in `door`,
    which closes connections past the cap (exporter.httpserver.front_door). A GET or HEAD
    without a body that `fast_path` answers is answered at once. A registration that it takes,
    whose whole body came with it, is answered by a task of ours: no ASGI request cycle, scope
    or middleware chain (most of a registration's cost besides its own work). Every other
    request goes to the app."""

    _timer: asyncio.TimerHandle | None = None
    _phase: type[h11.IDLE] | type[h11.SEND_BODY] | None = None
    _since = 0.0  # time.monotonic() the phase began
    _posting = False  # a registration taken by the fast path is being answered
    _close_after = False  # the server shuts down: close once that answer is sent
    _nested = 0  # fast-path answers under way in this call stack (pipelined requests)
    _arrived = 0.0  # time.monotonic() it was counted in
    _trusted = False  # a request of it carried credentials the front door verified
    _paused_since = 0.0  # time.monotonic() our writes were paused (the client not reading)
    _write_timer: asyncio.TimerHandle | None = None
    _calls: AppCall

    def __init__(
        self, *, limits: ConnectionLimits, door: FrontDoor, fast_path: FastAnswers | None, **uvicorn: Any
    ) -> None:
        super().__init__(**uvicorn)
        self._header_timeout, self._write_timeout = limits.header_timeout, limits.write_timeout
        self._door, self._fast = door, fast_path

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._calls = AppCall(self.app)
        self.app = self._calls
        self._arrived = time.monotonic()
        self._await(h11.IDLE)
        if not self._door.enter(self):
            transport.abort()

    # --- as the door sees it (exporter.httpserver.front_door.Seat) ---

    def cap_rank(self) -> tuple[int, float] | None:
        if not self._trusted:
            return 0, self._arrived
        if self._paused_since:
            return 1, self._paused_since
        if self._phase is not None:  # idle between requests, or a body to come
            return 2, self._since
        return None

    def close_for_room(self) -> None:
        self._stop()
        self._cancel_timer()
        if self._trusted and not self._paused_since:
            self.transport.close()  # idle: nothing of ours is lost
        else:
            self.transport.abort()

    def _trust(self, headers: RequestHeaders) -> None:
        if not self._trusted and self._door.verified(headers):
            self._trusted = True

    # --- a client that reads none of its answers ---

    def pause_writing(self) -> None:
        super().pause_writing()
        self._paused_since = time.monotonic()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self._write_timeout, self._write_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._paused_since = 0.0

    def _write_late(self) -> None:
        self._write_timer = None
        if not self._paused_since:
            return  # resumed meanwhile
        left = self._paused_since + self._write_timeout - time.monotonic()
        if left > 0:
            self._write_timer = self.loop.call_later(left, self._write_late)
            return
        WEB_COUNTS.closed["write_timeout"] += 1
        self.transport.abort()  # what it holds cannot be delivered

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase is not h11.SEND_BODY:  # headers in: the body has as long again
                self._await(h11.SEND_BODY)
        elif state is not h11.IDLE:  # the whole request is in
            self._stop()

    def _fast_or_app(self) -> None:
        conn = self.conn
        # Not while our writes are paused (a client that sends and does not read): the
        # app's answers wait for the client to drain them, direct answers would pile up.
        fast = self._fast
        if (
            fast is not None
            and conn.our_state is h11.IDLE
            and conn.their_state is h11.IDLE
            and not self.flow.write_paused
        ):
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                super().handle_events()  # h11 raises it again there, and uvicorn answers 400
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._trust(event.headers)
                if self._answer_now(fast, event) or self._take_registration(fast, event):
                    return

            # Not ours: uvicorn reads the same event next.
            def replay() -> Any:
                del conn.next_event
                return event

            conn.next_event = replay  # type: ignore[method-assign]
        super().handle_events()

    def _answer_now(self, fast: FastAnswers, request: h11.Request) -> bool:
        """Answer `request` now if `fast` does; False leaves it to the app."""
        if request.method not in (b"GET", b"HEAD") or self.conn.they_are_waiting_for_100_continue:
            return False
        headers = list(request.headers)
        for name, value in headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return False
        try:
            answer = fast.answer_now(request.method, request.target, headers)
        except Exception:
            log.exception("direct answer failed; the app answers instead")
            return False
        if answer is None:
            return False
        end = self.conn.next_event()  # no body: the request ends here
        assert isinstance(end, h11.EndOfMessage), end
        self._unset_keepalive_if_required()
        self._respond(request, answer, fast.extra)
        return True

    def _take_registration(self, fast: FastAnswers, request: h11.Request) -> bool:
        """Take a registration that `fast` answers and whose body is all here; False leaves
        it to the app (nothing read but the request's head, which uvicorn reads again)."""
        if request.method != b"POST":
            return False
        conn = self.conn
        if conn.they_are_waiting_for_100_continue:
            return False
        length = None
        for name, value in request.headers:
            if name == b"transfer-encoding":
                return False
            if name == b"content-length":
                length = int(value)  # h11 checked it: digits, and one value
        if length is None or len(conn.trailing_data[0]) < length:
            return False  # a body still to come: the app reads it
        try:
            headers = list(request.headers)
            target = fast.registration(request.target, headers)
        except Exception:
            log.exception("direct answer failed; the app answers instead")
            return False
        if target is None:
            return False
        body = b""
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event  # all here: never NEED_DATA
            body += event.data
        self._unset_keepalive_if_required()
        self._posting = True
        task = self.loop.create_task(self._register(fast, request, target, headers, body))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)
        return True

    async def _register(
        self, fast: FastAnswers, request: h11.Request, target: str, headers: Headers, body: bytes
    ) -> None:
        extra: Headers | tuple[()] = fast.extra
        try:
            answer = await fast.register(target, headers, body)
        except Exception:  # as the app's error middleware answers a bug
            log.exception("exception in a direct answer")
            answer, extra = BUG, ()
        finally:
            self._posting = False
        if self.transport.is_closing():
            return  # the client went away; the work is done (a registration: committed)
        self._respond(request, answer, extra)

    def _respond(self, request: h11.Request, answer: HttpAnswer, extra: Headers | tuple[()]) -> None:
        """Send `answer` to `request` with the `extra` headers the app adds to every answer (a
        small one in one write), then go on as uvicorn does after the app's last send
        (keep-alive, a pipelined request, Connection: close)."""
        status, headers, body = answer
        out = [*self.server_state.default_headers, *headers, *extra]
        if self._close_after or CLOSE in request.headers:
            out.append(CLOSE)
        send, write = self.conn.send, self.transport.write
        head = send(h11.Response(status_code=status, headers=out, reason=STATUS_PHRASES[status])) or b""
        data = (send(h11.Data(data=body)) or b"") if request.method != b"HEAD" else b""
        end = send(h11.EndOfMessage()) or b""
        if len(data) <= JOIN_AT_MOST:
            write(head + data + end)  # a small answer: one send, not two
        else:  # a large body (a scrape) is written as it is, not copied behind its head
            write(head)
            write(data)
            if end:
                write(end)
        if self.conn.our_state is h11.MUST_CLOSE:
            send(h11.ConnectionClosed())
            self.transport.close()
        if self._nested >= MAX_NESTED:
            # Each pipelined request answered directly answers the next from in here: past
            # a few, the rest go on from the loop, not deeper into the stack.
            self.loop.call_soon(self.on_response_complete)
            return
        self._nested += 1
        try:
            self.on_response_complete()
        finally:
            self._nested -= 1

    def shutdown(self) -> None:
        if self._posting:  # answered first, then closed (uvicorn would close it now)
            self._close_after = True
            return
        if not self._trusted:  # its request, if any, is dropped quietly (connection_lost)
            self.transport.abort()
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        if not self._trusted and self.headers is not None:
            self._trust(self.headers)  # verified by the app meanwhile (bcrypt)
        super().on_response_complete()  # reads a pipelined request, if one came
        if not self.transport.is_closing():
            state = self.conn.their_state
            if state is h11.IDLE or state is h11.SEND_BODY:  # a request, or its body, to come
                self._await(state)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        self._cancel_timer()
        self._door.leave(self)
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)
        if not self._trusted:
            self._calls.abandon()

    def handle_events(self) -> None:
        cycle = self.cycle
        self._fast_or_app()
        if self.cycle is not None and self.cycle is not cycle:  # a request came in
            self.cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]
            self._trust(self.headers)

    # One timer a connection, left running across requests: when it fires, it closes the
    # connection if the phase it waits for began header_timeout ago, else it is set again
    # for that phase's end (a timer set and cancelled per request cost more than the rest).
    def _await(self, phase: type[h11.IDLE] | type[h11.SEND_BODY]) -> None:
        self._phase = phase
        self._since = time.monotonic()
        if self._timer is None:
            self._timer = self.loop.call_later(self._header_timeout, self._late)

    def _stop(self) -> None:
        self._phase = None

    def _late(self) -> None:
        self._timer = None
        if self._phase is None:
            return  # set again by the next _await
        left = self._since + self._header_timeout - time.monotonic()
        if left > 0:
            self._timer = self.loop.call_later(left, self._late)
        elif self.conn.their_state is self._phase:
            WEB_COUNTS.closed["header_timeout"] += 1
            self._close()

    def _close(self) -> None:
        self._stop()
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
