"""The connections the HTTP server keeps: a deadline for a request's headers, a cap on open
connections, and accept errors (out of file descriptors) logged once per burst.

uvicorn's keep-alive timeout starts only after a first response and stops at the first byte
of the next request, so a client that connects and sends nothing, or half a request line,
was held for ever; enough of them exhaust the file descriptors and /metrics stops answering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("asyncjob.server")

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 512
# Accept errors closer together than this are one burst: logged once.
ACCEPT_BURST_GAP = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    """--web.read-header-timeout and --web.max-connections."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def guarded_h11(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """An h11 protocol class for uvicorn's `http=` that closes a connection whose request
    headers are not complete `header_timeout` seconds after it opened (or after its previous
    response), and keeps at most `max_connections` open: past the cap, the connection that
    has waited longest for its headers is closed to make room (one mid-request never is)."""

    waiting: dict[GuardedH11, float] = {}  # connections waiting for headers -> since when

    class GuardedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()
            if len(self.connections) > max_connections:
                oldest = min((c for c in waiting if c is not self), key=waiting.__getitem__, default=self)
                log.debug("connection cap reached; closing the oldest waiting for its headers")
                oldest._close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._headers_in()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_in()
            super().connection_lost(exc)

        def _await_headers(self) -> None:
            self._headers_in()
            waiting[self] = time.monotonic()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_in(self) -> None:
            waiting.pop(self, None)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE:
                self._close()

        def _close(self) -> None:
            self._headers_in()
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11


@contextmanager
def tls_handshake_deadline(seconds: float) -> Iterator[None]:
    """TLS servers created meanwhile on the running loop give a handshake `seconds` (asyncio's
    default is 60 s, and uvicorn does not pass one): a client that connects to the TLS port and
    sends nothing is closed as soon as one that sends no request headers."""
    loop = asyncio.get_running_loop()
    create_server = loop.create_server

    async def with_deadline(*args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", seconds)
        return await create_server(*args, **kwargs)

    loop.create_server = with_deadline  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.create_server  # the class's method again


def log_accept_errors_once_per_burst(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports every failed accept (EMFILE, ENFILE, ENOBUFS, ENOMEM) with a traceback
    and retries a second later; one line per burst says the same."""
    previous = loop.get_exception_handler()
    last = [-ACCEPT_BURST_GAP - 1.0]
    count = [0]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            now = time.monotonic()
            count[0] += 1
            if now - last[0] > ACCEPT_BURST_GAP:
                error = context.get("exception")
                log.error(
                    "cannot accept connections; retrying every second, logged once per burst",
                    extra={"error": f"{type(error).__name__}: {error}", "accept_errors": count[0]},
                )
            last[0] = now
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
