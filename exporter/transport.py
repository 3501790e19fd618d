"""HTTP/1.1 under httpx: connections kept per origin over anyio streams, answers read straight
from the socket. httpx stays the client (auth flows, timeouts, decoding); this replaces
httpcore's pool, whose bookkeeping costs more per request than the request itself.

A GET or HEAD on a reused connection that fails before any byte of the answer (the server
closed it while it sat idle) is sent once more on a fresh connection; other methods never are.
"""

from __future__ import annotations

import select
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import anyio.abc
import httpx

# Idle connections older than this are closed rather than reused.
DEFAULT_KEEPALIVE_EXPIRY = 4.0
MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 4096
READ_SIZE = 65536
IDEMPOTENT = frozenset({"GET", "HEAD"})

Origin = tuple[str, str, int]


class _NoAnswer(Exception):
    """The connection ended before any byte of the answer."""


class _Connection:
    __slots__ = ("buffer", "idle_since", "reused", "socket", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        # Looked up once: anyio builds every attribute of the stream (getpeername…) on each look-up.
        self.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.reused = False

    def is_readable(self) -> bool:
        """An idle connection that has something to read was closed (or spoken to) by the server."""
        if self.socket is None:
            return True
        try:
            poller = select.poll()  # not select.select: it fails on descriptors past 1023
            poller.register(self.socket.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    async def fill(self, timeout: float | None) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        try:
            if timeout is None:  # the caller holds a deadline of its own (exporter.fetch)
                data = await self.stream.receive(READ_SIZE)
            else:
                with anyio.fail_after(timeout):
                    data = await self.stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return False
        self.buffer += data
        return True

    async def close(self) -> None:
        await anyio.aclose_forcefully(self.stream)


@dataclass
class _Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None  # None: chunked or until close
    chunked: bool
    keep_alive: bool


def _parse_head(head: bytes, method: str) -> _Answer:
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:40]!r}")
    status = int(code)
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    connection = b""
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise httpx.RemoteProtocolError(f"malformed header line {line[:40]!r}")
        value = value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit() or (length is not None and length != int(value)):
                raise httpx.RemoteProtocolError("malformed Content-Length")
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
        elif lower == b"connection":
            connection = value.lower()
    keep_alive = b"close" not in connection if version == b"HTTP/1.1" else b"keep-alive" in connection
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        length, chunked = 0, False
    elif chunked:
        length = None
    elif length is None:
        keep_alive = False  # the body ends where the connection does
    return _Answer(status, reason, headers, length, chunked, keep_alive)


@dataclass
class _Body(httpx.AsyncByteStream):
    """The answer's body as it arrives; the connection goes back to the pool once it is read
    whole, and is closed if the reader stops early."""

    transport: Http11Transport
    origin: Origin
    conn: _Connection
    answer: _Answer
    timeout: float | None
    done: bool = field(default=False)
    closed: bool = field(default=False)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn, answer = self.conn, self.answer
        try:
            if answer.chunked:
                async for piece in self._chunks():
                    yield piece
            elif answer.length is not None:
                left = answer.length
                while left:
                    if not conn.buffer and not await conn.fill(self.timeout):
                        raise httpx.RemoteProtocolError("peer closed connection before the body ended")
                    piece = _take_bytes(conn.buffer, left)
                    left -= len(piece)
                    yield piece
            else:
                while True:
                    if conn.buffer:
                        piece = bytes(conn.buffer)
                        conn.buffer.clear()
                        yield piece
                    if not await conn.fill(self.timeout):
                        break
        except (OSError, anyio.BrokenResourceError) as e:
            raise httpx.ReadError(_describe(e)) from None
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the answer") from None
        self.done = True

    async def _line(self) -> bytes:
        conn = self.conn
        while True:
            end = conn.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(conn.buffer[:end])
                del conn.buffer[: end + 2]
                return line
            if len(conn.buffer) > MAX_LINE_BYTES:
                raise httpx.RemoteProtocolError("chunk size line too long")
            if not await conn.fill(self.timeout):
                raise httpx.RemoteProtocolError("peer closed connection before the body ended")

    async def _chunks(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            size_text = (await self._line()).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"malformed chunk size {size_text[:20]!r}") from None
            if size == 0:
                while await self._line():  # trailers, up to the empty line
                    pass
                return
            while size:
                if not conn.buffer and not await conn.fill(self.timeout):
                    raise httpx.RemoteProtocolError("peer closed connection before the body ended")
                piece = _take_bytes(conn.buffer, size)
                size -= len(piece)
                yield piece
            if await self._line():
                raise httpx.RemoteProtocolError("chunk not followed by CRLF")

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.done and self.answer.keep_alive and not self.conn.buffer:
            await self.transport._release(self.origin, self.conn)
        else:
            await self.conn.close()


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
        self._idle: dict[Origin, list[_Connection]] = {}
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
        data = _request_bytes(request, await request.aread())
        method = request.method
        for attempt in (0, 1):
            conn = await self._take(origin)
            if conn is None:
                conn = await self._connect(origin, timeouts.get("connect"), request)
            try:
                answer = await self._exchange(conn, data, method, read_timeout, timeouts.get("write"))
            except _NoAnswer:
                await conn.close()
                if conn.reused and method in IDEMPOTENT and attempt == 0:
                    continue
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending an answer", request=request
                ) from None
            except BaseException:
                await conn.close()
                raise
            body = _Body(self, origin, conn, answer, read_timeout)
            return httpx.Response(
                answer.status,
                headers=answer.headers,
                stream=body,
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
            )
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        conn: _Connection,
        data: bytes,
        method: str,
        read_timeout: float | None,
        write_timeout: float | None,
    ) -> _Answer:
        """Send the request, read the answer's head. _NoAnswer when not a byte came back."""
        try:
            if write_timeout is None:
                await conn.stream.send(data)
            else:
                with anyio.fail_after(write_timeout):
                    await conn.stream.send(data)
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
            if conn.reused:
                raise _NoAnswer from None
            raise httpx.WriteError(_describe(e)) from None
        buffer = conn.buffer
        try:
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    head = bytes(buffer[:end])
                    del buffer[: end + 4]
                    answer = _parse_head(head, method)
                    if 100 <= answer.status < 200:
                        continue  # an interim answer (100 Continue): the real one follows
                    return answer
                if len(buffer) > MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError("answer head too large")
                if not await conn.fill(read_timeout):
                    if not buffer:
                        raise _NoAnswer
                    raise httpx.RemoteProtocolError("peer closed connection in the middle of the answer head")
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the answer") from None
        except (OSError, anyio.BrokenResourceError) as e:
            if not buffer:
                raise _NoAnswer from None
            raise httpx.ReadError(_describe(e)) from None

    async def _connect(self, origin: Origin, timeout: float | None, request: httpx.Request) -> _Connection:
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
            raise httpx.ConnectError(_describe(e), request=request) from None
        return _Connection(stream)

    async def _take(self, origin: Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if now - conn.idle_since < self.keepalive_expiry and not conn.is_readable():
                conn.reused = True
                return conn
            await conn.close()
        return None

    async def _release(self, origin: Origin, conn: _Connection) -> None:
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


def _take_bytes(buffer: bytearray, limit: int) -> bytes:
    """Up to `limit` bytes off the front of `buffer` (one copy when it all goes)."""
    if len(buffer) <= limit:
        piece = bytes(buffer)
        buffer.clear()
    else:
        piece = bytes(buffer[:limit])
        del buffer[:limit]
    return piece


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    url = request.url
    target = url.raw_path
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), target)]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    if chunked:
        lines.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n")
    else:
        lines.append(body)
    return b"".join(lines)


def _describe(e: BaseException) -> str:
    """What went wrong in the OS's words: `[Errno 111] Connection refused` rather than anyio's
    `All connection attempts failed`."""
    cause = e.__cause__ if isinstance(e.__cause__, OSError) else None
    inner = cause or e
    text = str(inner).strip()
    return text or type(inner).__name__
