"""The poll transport reads answers exactly as h11 does: the same answers (status, reason,
headers, body, whether the connection may serve another request) and the same refusals, over
generated answers arriving in generated pieces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import h11
import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from exporter.http11 import MAX_HEAD_BYTES, READ_SIZE, HttpConnection
from exporter.transport import Http11Transport, Origin
from tests.hostile import watchdog

URL = "http://origin.test/jobs/1"
ORIGIN: Origin = ("http", "origin.test", 80)


class Starved(Exception):
    """The answer stopped before its end and the connection stays open: both sides wait."""


class Pieces(anyio.abc.ByteStream):
    """A connection whose answer arrives in the given pieces, then ends (`closed`) or waits."""

    def __init__(self, pieces: list[bytes], closed: bool) -> None:
        self.pieces = list(pieces)
        self.closed = closed

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self.pieces:
            if self.closed:
                raise anyio.EndOfStream
            raise Starved
        piece = self.pieces.pop(0)
        assert len(piece) <= max_bytes
        return piece

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class Scripted(Http11Transport):
    """Our transport, its one connection playing `stream`."""

    def __init__(self, stream: Pieces) -> None:
        super().__init__()
        self.stream = stream

    async def _connect(self, origin: Origin, timeout: float | None, request: httpx.Request) -> HttpConnection:
        return HttpConnection(self.stream)


Outcome = tuple[Any, ...]


async def ours(pieces: list[bytes], closed: bool, method: str) -> Outcome:
    transport = Scripted(Pieces(pieces, closed))
    try:
        response = await transport.handle_async_request(httpx.Request(method, URL))
        body = b"".join([piece async for piece in response.aiter_raw()])
        await response.aclose()
    except Starved:
        return ("waits",)
    except httpx.RemoteProtocolError:
        return ("refused",)
    reason = response.extensions["reason_phrase"]
    reusable = bool(transport._idle.get(ORIGIN))
    return ("answer", response.status_code, reason, response.headers.raw, body, reusable)


def theirs(pieces: list[bytes], closed: bool, method: str) -> Outcome:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.send(h11.Request(method=method, target="/jobs/1", headers=[("Host", "origin.test")]))
    conn.send(h11.EndOfMessage())
    feed = iter(pieces)
    answer: h11.Response | None = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                piece = next(feed, None)
                if piece is None and not closed:
                    return ("waits",)
                conn.receive_data(piece or b"")
            elif isinstance(event, h11.Response):
                answer = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif not isinstance(event, h11.InformationalResponse):
                return ("refused",)  # ConnectionClosed before an answer
    except h11.RemoteProtocolError:
        return ("refused",)
    assert answer is not None
    reusable = conn.their_state is h11.DONE and conn.trailing_data == (b"", False)
    return ("answer", answer.status_code, answer.reason, answer.headers.raw_items(), body, reusable)


# --- generated answers --------------------------------------------------------------------------

# Bytes that sit on the edges of the grammar: separators, controls, obs-text, signs, hex prefixes.
EDGY = st.sampled_from(list(b"aZ09 \t,;:-+_xX.\x00\x01\x7f\x80\xff\r\n"))
edgy_bytes = st.lists(EDGY, max_size=8).map(bytes)


def mostly(good: list[bytes], odd: list[bytes], other: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Usually one of `good`, else an odd one or anything `other` makes."""

    @st.composite
    def pick(draw: st.DrawFn) -> bytes:
        which = draw(st.integers(0, 15))
        return draw(st.sampled_from(odd) if which == 14 else other if which == 15 else st.sampled_from(good))

    return pick()


versions = mostly(
    [b"HTTP/1.1", b"HTTP/1.0"],
    [b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1"],
    edgy_bytes.map(b"HTTP/".__add__),
)
codes = mostly(
    [b"200", b"204", b"304", b"404", b"500"],
    [b"999", b"000", b"099", b"100", b"101", b"103", b"2000", b"20"],
    edgy_bytes,
)
reasons = mostly(
    [b" OK", b"", b" Not Found"],
    [b" ", b" Not\tFound", b" caf\xe9", b" a\x00b", b" x\ry"],
    edgy_bytes.map(b" ".__add__),
)
names = mostly([b"X-Id", b"Content-Type", b"connection"], [b"Bad Name", b"", b" X", b"X\x00"], edgy_bytes)
values = mostly(
    [b"a", b"application/json", b"x  y", b"", b"close", b"keep-alive"],
    [b"Close, x", b"closed", b"\x80\xff", b"a\x00", b"a\rb", b"\x7f"],
    edgy_bytes,
)
lengths = [
    b"5, 5",
    b"05",
    b"-5",
    b"+5",
    b"0x5",
    b"5_0",
    b"1" * 20,
    b"1" * 21,
    b"9" * 4301,
    b" 5 ",
    b"",
    b"5, 6",
]
encodings = [b"CHUNKED", b"gzip, chunked", b"chunked, chunked", b"identity", b"chunked;q=1", b""]
endings = mostly([b"\r\n"], [b"\n", b"\r", b"\r\r\n"], st.just(b"\r\n"))


@st.composite
def header_blocks(draw: st.DrawFn, framing: list[tuple[bytes, bytes]] = []) -> bytes:  # noqa: B006
    fields = [(draw(names), draw(values)) for _ in range(draw(st.integers(0, 3)))] + framing
    fields = draw(st.permutations(fields))
    lines: list[bytes] = []
    for name, value in fields:
        if lines and draw(st.integers(0, 19)) == 0:
            lines.append(draw(st.sampled_from([b" ", b"\t", b"  "])) + value)  # an obsolete fold
        separator = draw(mostly([b": "], [b":", b" : ", b":\t", b": \t"], st.just(b": ")))
        lines.append(name + separator + value + draw(st.sampled_from([b"", b"", b"", b" ", b"\t"])))
    return b"".join(line + draw(endings) for line in lines)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=20))
        size = draw(
            mostly(
                [b"%x" % len(data), b"%X" % len(data), b"%x;ext=1" % len(data)],
                [
                    b"00%x" % len(data),
                    b"-5",
                    b"+5",
                    b"0x5",
                    b"5_0",
                    b"ff" * 11,
                    b"%x \t" % len(data),
                    b" %x" % len(data),
                ],
                edgy_bytes,
            )
        )
        out += size + draw(endings) + data + draw(mostly([b"\r\n"], [b"\n", b"", b"\r"], edgy_bytes))
    last = draw(mostly([b"0"], [b"000", b"0;x", b"0 "], st.just(b"0")))
    trailers = draw(st.one_of(st.just(b""), st.just(b""), header_blocks()))
    return out + last + b"\r\n" + trailers + draw(endings)


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """A head and a body framed as the head says, each part now and then wrong."""
    body = draw(st.binary(max_size=40))
    framing: list[tuple[bytes, bytes]] = []
    kind = draw(st.sampled_from(["length", "length", "chunked", "chunked", "until close", "both"]))
    if kind in ("length", "both"):
        framing.append(
            (b"Content-Length", b"%d" % (len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, 10**19]))))
        )
        if draw(st.integers(0, 4)) == 0:
            framing.append((b"content-length", draw(st.sampled_from(lengths))))
    if kind in ("chunked", "both"):
        body = draw(chunked_bodies())
        framing.append((b"Transfer-Encoding", draw(mostly([b"chunked"], encodings, st.just(b"chunked")))))
    head = draw(versions) + b" " + draw(codes) + draw(reasons) + draw(endings) + draw(header_blocks(framing))
    interim = draw(
        st.sampled_from(
            [b"", b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early\r\nLink: x\r\n\r\n"]
        )
    )
    extra = draw(
        st.one_of(st.just(b""), st.just(b""), st.binary(max_size=20), st.just(b"HTTP/1.1 200 OK\r\n\r\n"))
    )
    return interim + head + draw(endings) + body + extra


@dataclass
class Arrival:
    pieces: list[bytes]
    closed: bool
    method: str


@st.composite
def arrivals(draw: st.DrawFn) -> Arrival:
    raw = draw(st.one_of(answers(), answers(), answers(), st.binary(max_size=60)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=4)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    pieces = [piece[i : i + READ_SIZE] for piece in pieces if piece for i in range(0, len(piece), READ_SIZE)]
    return Arrival(pieces, draw(st.booleans()), draw(st.sampled_from(["GET", "GET", "HEAD"])))


async def agree(arrival: Arrival) -> Outcome:
    expected = theirs(arrival.pieces, arrival.closed, arrival.method)
    with watchdog(10):  # a loop that never awaits lets no deadline of the event loop fire
        got = await ours(arrival.pieces, arrival.closed, arrival.method)
    assert got == expected, arrival
    return got


@pytest.mark.anyio
@given(arrival=arrivals())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(arrival=Arrival([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabc"], True, "GET"))
@example(arrival=Arrival([b"HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\n{}"], True, "GET"))
@example(arrival=Arrival([b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 4301 + b"\r\n\r\n{}"], True, "GET"))
@example(
    arrival=Arrival([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n\r\n"], False, "GET")
)
@example(
    arrival=Arrival([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2, 2\r\n\r\n{}"], False, "GET")
)
async def test_every_answer_reads_as_h11_reads_it(arrival: Arrival) -> None:
    outcome = await agree(arrival)
    event(outcome[0] if outcome[0] != "answer" else f"answer, reusable: {outcome[-1]}")


@pytest.mark.anyio
@pytest.mark.parametrize("size", [b"-5", b"0x5", b"+5", b"5_0", b" 5", b"", b"1" * 21, b"\xff"])
async def test_chunk_sizes_h11_refuses_are_refused(size: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n"
    assert await agree(Arrival([answer], False, "GET")) == ("refused",)


@pytest.mark.anyio
@pytest.mark.parametrize("code", [b"000", b"099", b"101", b"20", b"2000"])
async def test_status_codes_h11_refuses_are_refused(code: bytes) -> None:
    answer = b"HTTP/1.1 " + code + b" OK\r\nContent-Length: 2\r\n\r\n{}"
    assert await agree(Arrival([answer], True, "GET")) == ("refused",)


@pytest.mark.anyio
async def test_a_head_that_grows_past_the_bound_is_refused_at_once() -> None:
    pieces = [b"HTTP/1.1 200 OK\r\nX: " + b"a" * (READ_SIZE - 20), b"a" * READ_SIZE]
    assert await agree(Arrival(pieces, False, "GET")) == ("refused",)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "extra",
    [b"x", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"\r\n"],
)
async def test_bytes_after_an_answer_keep_its_connection_from_being_reused(extra: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    assert (await agree(Arrival([answer], False, "GET")))[-1] is True  # the same answer alone is kept
    outcome = await agree(Arrival([answer + extra], False, "GET"))
    assert outcome[0] == "answer" and outcome[-1] is False


@pytest.mark.anyio
async def test_a_read_of_thousands_of_tiny_chunks_lets_the_event_loop_turn() -> None:
    """64 KiB of one-byte chunks (~10,000 of them) arrive in one read: the event loop turns
    while they are parsed, so scrapes and other polls are not held for the whole read."""
    body = b"1\r\nx\r\n" * 10_000
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    pieces = [answer[i : i + READ_SIZE] for i in range(0, len(answer), READ_SIZE)]
    turns = 0
    done = anyio.Event()

    async def count_turns() -> None:
        nonlocal turns
        while not done.is_set():
            await anyio.lowlevel.checkpoint()
            turns += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(count_turns)
        outcome = await ours(pieces, True, "GET")
        done.set()
    assert outcome[0] == "answer" and outcome[4] == b"x" * 10_000
    assert turns > 10_000 // 64 // 2  # without the turns: one per read (2 reads)
