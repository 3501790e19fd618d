"""Who gets a connection at --web.max-connections; TLS done by the connection itself so that
handshakes count against the cap and a closed TLS connection gives its descriptor back at once;
failed accepts (out of file descriptors) logged once per burst.

A cap that closed only connections still waiting for headers was a lock: 520 clients pipelining
wrong passwords (each with a request queued for bcrypt) or not reading their answers held every
slot, and every new connection, a scrape with good cached credentials included, was reset. Past
the cap the connection closed now is, in this order: one that has not authenticated a request
(the oldest first: a flood's newest connection is the last to go), one that does not read its
answers (writes paused longest), one that has authenticated but waits idle for its next request.
Only when every other connection has authenticated and is being answered is the new one refused.

asyncio's own TLS server does the handshake before the HTTP protocol exists, so handshakes were
not counted; and it closes a TLS connection by waiting up to 30 s for the client's close_notify,
holding the descriptor meanwhile. Here each TLS connection is counted from its accept, and
closing it sends close_notify and closes the socket once the bytes written are sent, as Go's
crypto/tls does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("asyncjob.server")

# Refusals (or failed accepts) closer together than this are one burst: logged once.
BURST_GAP = 10.0

Headers = Sequence[tuple[bytes, bytes]]  # a request's, names in lower case (as h11 gives them)
# Whether a request's headers carry credentials the front door has verified (basic auth's
# cache; always True without basic auth).
Verified = Callable[[Headers], bool]

# Why a connection was closed at the cap (the `reason` of asyncjob_web_connections_closed_total).
NOT_AUTHENTICATED, NOT_READING, IDLE = "cap_not_authenticated", "cap_not_reading", "cap_idle"
# Ranks past the cap: the lowest is closed first; the oldest within a rank.
RANKS = (NOT_AUTHENTICATED, NOT_READING, IDLE)


class Seat(Protocol):
    """A connection as the door sees it."""

    def cap_rank(self) -> tuple[int, float] | None:
        """(index in RANKS, since when) if it may be closed to make room; None if not."""

    def close_for_room(self) -> None:
        """Close it now, releasing its descriptor."""


@dataclass
class WebCounts:
    """What the HTTP servers of this process refused and closed (rendered on /metrics)."""

    refused: int = 0
    closed: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*RANKS, "header_timeout", "write_timeout"), 0)
    )


WEB_COUNTS = WebCounts()


class Burst:
    """True for the first of events closer together than `gap` seconds."""

    def __init__(self, gap: float = BURST_GAP) -> None:
        self.gap = gap
        self.last = -gap - 1.0

    def first(self) -> bool:
        now = time.monotonic()
        first, self.last = now - self.last > self.gap, now
        return first


def warn_if_past_open_files_limit(max_connections: int) -> None:
    """The cap keeps accepts from failing only if it sits below the open-files limit."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections > soft - 64:
        log.warning(
            "--web.max-connections is not below the open-files limit: accepts may fail "
            "(EMFILE) before the cap is reached",
            extra={"max_connections": max_connections, "open_files_limit": soft},
        )


def log_accept_errors_once_per_burst(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports every failed accept (EMFILE, ENFILE, ENOBUFS, ENOMEM) with a traceback
    and retries a second later; one line per burst says the same."""
    previous = loop.get_exception_handler()
    burst = Burst()
    count = [0]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            count[0] += 1
            if burst.first():
                error = context.get("exception")
                log.error(
                    "cannot accept connections; retrying every second, logged once per burst",
                    extra={"error": f"{type(error).__name__}: {error}", "accept_errors": count[0]},
                )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def everyone(headers: Headers) -> bool:
    return True


class FrontDoor:
    """The open connections of one server (TLS handshakes included), in the order they came."""

    def __init__(
        self, max_connections: int, verified: Verified = everyone, counts: WebCounts = WEB_COUNTS
    ) -> None:
        self.max_connections = max_connections
        self.verified = verified
        self.counts = counts
        self.open: dict[Seat, None] = {}
        self._burst = Burst()

    def enter(self, seat: Seat) -> bool:
        """Count `seat` in. Past the cap, close the connection that matters least to make room;
        False when there is none: `seat` is refused (the caller closes it)."""
        self.open[seat] = None
        if len(self.open) <= self.max_connections:
            return True
        victim, rank = self._least_needed(seat)
        if victim is None:
            self.open.pop(seat, None)
            self.counts.refused += 1
            self._say_once()
            return False
        self.open.pop(victim, None)
        self.counts.closed[RANKS[rank]] += 1
        self._say_once()
        victim.close_for_room()
        return True

    def leave(self, seat: Seat) -> None:
        self.open.pop(seat, None)

    def _least_needed(self, newcomer: Seat) -> tuple[Seat | None, int]:
        best: Seat | None = None
        best_key = (len(RANKS), 0.0)
        for seat in self.open:  # oldest first
            if seat is newcomer:
                continue
            key = seat.cap_rank()
            if key is None or key >= best_key:
                continue
            if key[0] == 0:
                return seat, 0  # the oldest that has not authenticated: no need to look further
            best, best_key = seat, key
        return best, best_key[0]

    def _say_once(self) -> None:
        if self._burst.first():
            log.warning(
                "connection cap reached: closing connections that have not authenticated or do not "
                "read their answers, refusing new ones when every open one has authenticated; "
                "logged once per burst",
                extra={
                    "max_connections": self.max_connections,
                    "refused": self.counts.refused,
                    "closed": sum(self.counts.closed[r] for r in RANKS),
                },
            )


# --- TLS --------------------------------------------------------------------------------------


class ClosingTLS:
    """A TLS transport whose close() sends close_notify and closes the socket once the bytes
    written are sent, without waiting for the client's close_notify (asyncio waits up to 30 s,
    holding the descriptor)."""

    __slots__ = ("_raw", "_tls")

    def __init__(self, tls: asyncio.Transport, raw: asyncio.Transport) -> None:
        self._tls, self._raw = tls, raw

    def write(self, data: bytes) -> None:
        self._tls.write(data)

    def close(self) -> None:
        self._tls.close()  # close_notify, handed to the socket's transport
        self._raw.close()  # which closes once it has sent what it holds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tls, name)


class TLSFront(asyncio.Protocol):
    """One TLS connection from its accept until its handshake is done, counted against the cap
    meanwhile; then handed to the HTTP protocol (`make_http()`), with the bytes that came with
    the handshake's end."""

    def __init__(
        self,
        make_http: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        door: FrontDoor,
        handshake_timeout: float,
        shutdown_timeout: float,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.make_http, self.context, self.door = make_http, context, door
        self.handshake_timeout, self.shutdown_timeout = handshake_timeout, shutdown_timeout
        self.tasks = tasks
        self.raw: asyncio.Transport | None = None
        self.handshake: asyncio.Task[None] | None = None
        self.arrived = time.monotonic()
        self.early = b""  # bytes after the handshake, before the HTTP protocol took over
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.raw = transport
        transport.pause_reading()  # start_tls reads from here on
        if not self.door.enter(self):
            transport.abort()
            return
        self.handshake = asyncio.get_running_loop().create_task(self._shake_hands(transport))
        self.tasks.add(self.handshake)
        self.handshake.add_done_callback(self.tasks.discard)

    async def _shake_hands(self, raw: asyncio.Transport) -> None:
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw,
                self,
                self.context,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
                ssl_shutdown_timeout=self.shutdown_timeout,
            )
        except (OSError, asyncio.CancelledError):  # refused, timed out, closed for room, shut down
            self._give_up()
            return
        self.door.leave(self)  # the HTTP protocol counts itself in
        if self.gone or tls is None:
            self._give_up()
            return
        http = self.make_http()
        tls.set_protocol(http)
        http.connection_made(ClosingTLS(tls, raw))  # type: ignore[arg-type]
        if self.early:
            http.data_received(self.early)

    def _give_up(self) -> None:
        self.door.leave(self)
        if self.raw is not None:
            self.raw.abort()

    # Until the HTTP protocol takes over, the TLS layer reports to this one.
    def data_received(self, data: bytes) -> None:
        self.early += data

    def eof_received(self) -> bool | None:
        self.gone = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.door.leave(self)

    # As the door sees it.
    def cap_rank(self) -> tuple[int, float] | None:
        return 0, self.arrived

    def close_for_room(self) -> None:
        if self.handshake is not None:
            self.handshake.cancel()
        if self.raw is not None:
            self.raw.abort()


class TLSFronted:
    """uvicorn's `http=` protocol factory for a TLS port: each accepted connection starts as a
    TLSFront, then becomes `http`'s protocol."""

    def __init__(
        self,
        http: Callable[..., asyncio.Protocol],
        context: ssl.SSLContext,
        door: FrontDoor,
        handshake_timeout: float,
        shutdown_timeout: float,
    ) -> None:
        self.http, self.context, self.door = http, context, door
        self.handshake_timeout, self.shutdown_timeout = handshake_timeout, shutdown_timeout

    def __call__(self, **kwargs: Any) -> TLSFront:
        server_state = kwargs["server_state"]
        return TLSFront(
            lambda: self.http(**kwargs),
            self.context,
            self.door,
            self.handshake_timeout,
            self.shutdown_timeout,
            server_state.tasks,
        )
