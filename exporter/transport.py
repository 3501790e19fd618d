"""The poll client's connection pool: HTTP/1.1 connections kept alive per origin over anyio
streams, under httpx. httpx stays the client (auth flows, timeouts, decoding); this replaces
httpcore's pool, whose bookkeeping costs more per request than the request itself
(docs/benchmarks.md). Each exchange on a connection, and the strict reading of its answer, is
exporter/http11.py.

A connection goes back to the pool only when its answer was read whole, may be kept alive, and
not a byte follows it; an idle one with anything to read is closed, never reused.

A GET or HEAD on a reused connection that fails before any byte of the answer (the server
closed it while it sat idle) is sent once more on a fresh connection; other methods never are.
"""

from __future__ import annotations

import functools
import ssl
import time

import anyio
import anyio.abc
import httpx

from exporter.http11 import Body, HttpConnection, NoAnswer, describe, exchange, request_bytes

# Idle connections older than this are closed rather than reused.
DEFAULT_KEEPALIVE_EXPIRY = 4.0
IDEMPOTENT = frozenset({"GET", "HEAD"})

Origin = tuple[str, str, int]


class Http11Transport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 connections per origin, most recently used first."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        max_keepalive: int = 16,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
    ) -> None:
        self._ssl_context = ssl_context
        self._max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, list[HttpConnection]] = {}
        self._closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        data = request_bytes(request, await request.aread())
        method = request.method
        for attempt in (0, 1):
            conn = await self._take(origin)
            if conn is None:
                conn = await self._connect(origin, timeouts.get("connect"), request)
            try:
                answer = await exchange(conn, data, method, read_timeout, timeouts.get("write"))
            except NoAnswer:
                await conn.close()
                if conn.reused and method in IDEMPOTENT and attempt == 0:
                    continue
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending an answer", request=request
                ) from None
            except BaseException:
                await conn.close()
                raise
            body = Body(conn, answer, read_timeout, functools.partial(self._release, origin))
            return httpx.Response(
                answer.status,
                headers=answer.headers,
                stream=body,
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
            )
        raise AssertionError("unreachable")

    async def _connect(self, origin: Origin, timeout: float | None, request: httpx.Request) -> HttpConnection:
        scheme, host, port = origin
        try:
            with anyio.fail_after(timeout):
                if scheme == "https":
                    stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                        host,
                        port,
                        ssl_context=self.ssl_context,
                        tls_hostname=host,
                        tls_standard_compatible=False,
                    )
                else:
                    stream = await anyio.connect_tcp(host, port)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {timeout:g}s", request=request) from None
        except (OSError, ssl.SSLError, anyio.BrokenResourceError) as e:
            raise httpx.ConnectError(describe(e), request=request) from None
        return HttpConnection(stream)

    async def _take(self, origin: Origin) -> HttpConnection | None:
        stack = self._idle.get(origin)
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if now - conn.idle_since < self.keepalive_expiry and not conn.is_readable():
                conn.reused = True
                return conn
            await conn.close()
        return None

    async def _release(self, origin: Origin, conn: HttpConnection) -> None:
        if self._closed:
            await conn.close()
            return
        now = time.monotonic()
        conn.idle_since = now
        stack = self._idle.setdefault(origin, [])
        # The bottom of the stack is the longest idle: expired ones go there first.
        while stack and (
            len(stack) >= self._max_keepalive or now - stack[0].idle_since >= self.keepalive_expiry
        ):
            await stack.pop(0).close()
        stack.append(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for stack in idle.values():
            for conn in stack:
                await conn.close()
