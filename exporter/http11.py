"""One HTTP/1.1 exchange on one client connection: the request's bytes sent, the answer read
straight from the socket by a parser that accepts exactly what h11 accepts. The connection pool
that hands out these connections is exporter/transport.py.

The grammar is h11's (`h11/_abnf.py`, `_readers.py`, `_headers.py`), held to it by a
differential test (tests/unit/test_transport_h11.py): what h11 refuses is a
RemoteProtocolError here, and nothing an answer says can make a read loop without awaiting.
A body read whole, on an answer that may be kept alive, with not a byte after it, hands its
connection back through `Body.release`; any other is closed.

The path of an answer: `exchange()` sends the request and reads the head (`read_lines`, then
`parse_head`, which checks the header fields); the `Body` it goes into reads the rest by
Content-Length, by chunks or until the connection closes.
"""

from __future__ import annotations

import re
import select
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import anyio.lowlevel
import httpx

# Bytes buffered while a head, a chunk header or the trailers are incomplete (h11's
# max_incomplete_event_size); past it the answer is refused.
MAX_HEAD_BYTES = 64 * 1024
READ_SIZE = 65536
# Chunks read between two turns of the event loop at most.
CHUNKS_PER_TURN = 64
# h11 reads no Content-Length of more digits (10^20 bytes is past any answer).
MAX_LENGTH_DIGITS = 20

# h11's grammar (RFC 9110/9112 as h11 reads it), byte for byte.
_TOKEN = b"-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FOLD = (b" ", b"\t")
_NOT_IN_VALUE = re.compile(rb"[\x00\r\n\x0b\x0c]")  # NUL and `\s` but space and tab
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_BLANK_LINE = re.compile(rb"\n\r?\n")


def _refuse(message: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(message)


class NoAnswer(Exception):
    """The connection ended before any byte of the answer."""


def _take_lines(buffer: bytearray) -> list[bytes] | None:
    """The lines up to the first blank line, taken off the front of `buffer`; None while that
    blank line has not come. As h11: a line ends at LF, a CR before it is dropped."""
    if buffer[:1] == b"\n":
        del buffer[:1]
        return []
    if buffer[:2] == b"\r\n":
        del buffer[:2]
        return []
    blank = _BLANK_LINE.search(buffer)
    if blank is None:
        return None
    end = blank.end()
    text = bytes(buffer[:end])
    del buffer[:end]
    if text.count(b"\n") == text.count(b"\r\n"):  # every line ends in CRLF: one split does
        return text[:-4].split(b"\r\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in text.split(b"\n")[:-2]]


def _take_bytes(buffer: bytearray, limit: int) -> bytes:
    """Up to `limit` bytes off the front of `buffer` (one copy when it all goes)."""
    if len(buffer) <= limit:
        piece = bytes(buffer)
        buffer.clear()
    else:
        piece = bytes(buffer[:limit])
        del buffer[:limit]
    return piece


@dataclass
class _Fields:
    """A block of header fields, validated as h11 validates them."""

    headers: list[tuple[bytes, bytes]]
    length: int | None  # Content-Length
    chunked: bool  # Transfer-Encoding: chunked (the only coding h11 reads)
    close: bool  # Connection: close


def _parse_fields(lines: list[bytes]) -> _Fields:
    headers: list[tuple[bytes, bytes]] = []
    length_text: bytes | None = None
    chunked = close = False
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        i += 1
        # An obsolete line fold (a line that begins with a space or a tab) continues the line
        # before, as h11 joins it.
        if line[:1] in _FOLD:
            raise _refuse("continuation line at start of headers")
        while i < n and lines[i][:1] in _FOLD:
            line += b" " + lines[i].lstrip(b" \t")
            i += 1
        # h11's `token ":" OWS field-value OWS`, where a field value holds no NUL and no
        # whitespace but spaces and tabs between its visible bytes.
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not name or name.translate(None, _TOKEN) or _NOT_IN_VALUE.search(value):
            raise _refuse(f"malformed header line {line[:40]!r}")
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit():  # "5, 5" is 5, as in h11
                values = {v.strip() for v in value.split(b",")}
                value = values.pop()
                if values or not value.isdigit():
                    raise _refuse("malformed Content-Length")
            if len(value) > MAX_LENGTH_DIGITS or (length_text is not None and value != length_text):
                raise _refuse("malformed or conflicting Content-Length")
            if length_text is not None:
                continue  # a repeat of the same length: kept once, as h11 keeps it
            length_text = value
        elif lower == b"transfer-encoding":
            value = value.lower()
            if chunked or value != b"chunked":
                raise _refuse(f"Transfer-Encoding {value[:20]!r} not supported")
            chunked = True
        elif lower == b"connection":
            close = close or b"close" in [v.strip() for v in value.lower().split(b",")]
        headers.append((name, value))
    return _Fields(headers, None if length_text is None else int(length_text), chunked, close)


@dataclass
class AnswerHead:
    """What an answer's head says: its status, headers and how its body is framed."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None  # None: chunked or until close
    chunked: bool
    keep_alive: bool


def parse_head(lines: list[bytes], method: str) -> AnswerHead | None:
    """The answer a head says, None for an interim one (1xx): the real one follows."""
    if not lines:
        raise _refuse("no status line")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise _refuse(f"malformed status line {lines[0][:40]!r}")
    version, code, reason = status_line.group(1, 2, 3)
    status = int(code)
    if status < 100 or status == 101:  # 101: no upgrade was asked for
        raise _refuse(f"status {status} is no answer to a request")
    fields = _parse_fields(lines[1:])
    if status < 200:
        return None
    keep_alive = not fields.close and version >= b"1.1"
    length = fields.length
    if method == "HEAD" or status in (204, 304):
        length, chunked = 0, False
    elif fields.chunked:
        length, chunked = None, True
    else:
        chunked = False
        if length is None:
            keep_alive = False  # the body ends where the connection does
    return AnswerHead(status, reason or b"", fields.headers, length, chunked, keep_alive)


class HttpConnection:
    """One connection to an origin and the bytes read from it not yet parsed; `idle_since` and
    `reused` are the pool's."""

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

    async def more(self, timeout: float | None) -> None:
        """Read more, in the middle of an answer: its end is a protocol error."""
        if not await self.fill(timeout):
            raise _refuse("peer closed connection in the middle of the answer")

    async def read_lines(self, timeout: float | None) -> list[bytes]:
        """The lines up to the next blank line (a head or trailers), however they arrive."""
        while (lines := _take_lines(self.buffer)) is None:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise _refuse("answer head too large")
            await self.more(timeout)
        return lines

    async def read_line(self, timeout: float | None) -> bytes:
        """The next line with its CRLF (a chunk header: h11 ends it at CRLF only)."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise _refuse("chunk header too long")
            await self.more(timeout)
        line = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 2]
        return line

    async def close(self) -> None:
        await anyio.aclose_forcefully(self.stream)


async def exchange(
    conn: HttpConnection,
    data: bytes,
    method: str,
    read_timeout: float | None,
    write_timeout: float | None,
) -> AnswerHead:
    """Send the request, read the answer's head. NoAnswer when not a byte came back, or when a
    reused connection refused the request (the server closed it while it sat idle)."""
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
            raise NoAnswer from None
        raise httpx.WriteError(describe(e)) from None
    buffer = conn.buffer
    try:
        while True:
            if not buffer and not await conn.fill(read_timeout):
                raise NoAnswer
            if buffer[0] < 0x21:  # as h11: no status line begins so
                raise _refuse("answer does not begin with a status line")
            answer = parse_head(await conn.read_lines(read_timeout), method)
            if answer is not None:
                return answer
            await anyio.lowlevel.checkpoint()  # interim answers may come thousands to a read
    except TimeoutError:
        raise httpx.ReadTimeout("timed out waiting for the answer") from None
    except (OSError, anyio.BrokenResourceError) as e:
        if not buffer:
            raise NoAnswer from None
        raise httpx.ReadError(describe(e)) from None


@dataclass
class Body(httpx.AsyncByteStream):
    """The answer's body as it arrives; its connection is handed to `release` once the body is
    read whole and may serve another request, and is closed otherwise (a reader that stops
    early, an answer that ends with the connection)."""

    conn: HttpConnection
    answer: AnswerHead
    timeout: float | None
    release: Callable[[HttpConnection], Awaitable[None]]
    done: bool = field(default=False)
    closed: bool = field(default=False)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        answer = self.answer
        try:
            if answer.chunked:
                async for piece in self._chunks():
                    yield piece
            elif answer.length is not None:
                async for piece in self._exactly(answer.length):
                    yield piece
            else:
                async for piece in self._until_close():
                    yield piece
        except (OSError, anyio.BrokenResourceError) as e:
            raise httpx.ReadError(describe(e)) from None
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the answer") from None
        self.done = True

    async def _exactly(self, size: int) -> AsyncIterator[bytes]:
        """`size` bytes (> 0 each time round: every pass takes a byte or awaits one)."""
        conn = self.conn
        while size:
            if not conn.buffer:
                await conn.more(self.timeout)
            piece = _take_bytes(conn.buffer, size)
            size -= len(piece)
            yield piece

    async def _until_close(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            if conn.buffer:
                piece = bytes(conn.buffer)
                conn.buffer.clear()
                yield piece
            if not await conn.fill(self.timeout):
                return

    async def _chunks(self) -> AsyncIterator[bytes]:
        conn = self.conn
        chunks = 0
        while True:
            chunks += 1
            if chunks % CHUNKS_PER_TURN == 0:
                # A read of 64 KiB of one-byte chunks is ~10,000 chunks, ~30 ms of parsing: let
                # the event loop (scrapes, other polls) turn in between.
                await anyio.lowlevel.checkpoint()
            header = _CHUNK_HEADER.fullmatch(await conn.read_line(self.timeout))
            if header is None:
                raise _refuse("malformed chunk header")
            size = int(header[1], 16)
            if size == 0:
                _parse_fields(await conn.read_lines(self.timeout))  # the trailers, validated and dropped
                return
            async for piece in self._exactly(size):
                yield piece
            for byte in b"\r\n":  # byte by byte: a wrong one is refused without waiting for more
                if not conn.buffer:
                    await conn.more(self.timeout)
                if conn.buffer[0] != byte:
                    raise _refuse("chunk not followed by CRLF")
                del conn.buffer[:1]

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.done and self.answer.keep_alive and not self.conn.buffer:
            await self.release(self.conn)
        else:
            await self.conn.close()


def request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request as it goes on the wire: request line, headers as httpx holds them, body."""
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


def describe(e: BaseException) -> str:
    """What went wrong in the OS's words: `[Errno 111] Connection refused` rather than anyio's
    `All connection attempts failed`."""
    cause = e.__cause__ if isinstance(e.__cause__, OSError) else None
    inner = cause or e
    text = str(inner).strip()
    return text or type(inner).__name__
