"""A hostile provider on 127.0.0.1: it answers each request path with the raw bytes a test (or
the catalogue below) gives it, well formed or not, at the pace it likes, for as long as it
likes; and a watchdog that fails a test whose code stops awaiting.

    with Hostile({"/jobs/bad": ANSWERS["chunk size -5"]}) as server:
        ... TargetHttp of a target whose base_url is server.url ...

An answer is bytes (sent whole; the connection then serves the next request) or a function
of the request returning the pieces to send (an iterable, which may never end; `Pause(s)`
between pieces waits, `CLOSE` hangs up). Paths without an answer get a 404. Everything
stops when the `with` block ends: the listener, every connection, every endless answer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType


@dataclass(frozen=True)
class Pause:
    seconds: float


CLOSE = object()  # in a played answer: hang up here

Piece = bytes | Pause | object
Answer = bytes | Callable[["Request"], Iterable[Piece]]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    head: bytes
    body: bytes


def head(status: str = "200 OK", *headers: str, length: int | None = None) -> bytes:
    """A head: the status, the headers given, Content-Length when `length` is given."""
    lines = [f"HTTP/1.1 {status}", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_answer(body: bytes, status: str = "200 OK") -> bytes:
    return head(status, "Content-Type: application/json", length=len(body)) + body


def endless(first: bytes, piece: bytes = b" " * 65536) -> Answer:
    """`first`, then `piece` again and again until the client hangs up or the server stops."""

    def play(request: Request) -> Iterator[Piece]:
        yield first
        while True:
            yield piece

    return play


@functools.cache
def _gzipped_spaces(size: int) -> bytes:
    compress = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    return b"".join(compress.compress(block) for _ in range(size >> 20)) + compress.flush()


def gzip_bomb(inflated: int, status: str = "200 OK") -> Answer:
    """An answer of a few hundred KB that inflates to `inflated` bytes of spaces (made once, when
    first played)."""

    def play(request: Request) -> Iterator[Piece]:
        body = _gzipped_spaces(inflated)
        yield (
            head(status, "Content-Type: application/json", "Content-Encoding: gzip", length=len(body)) + body
        )

    return play


def late(answer: bytes, after: float, extra: bytes) -> Answer:
    """`answer`, then `extra` once `after` seconds have passed, on the same connection."""

    def play(request: Request) -> Iterator[Piece]:
        yield answer
        yield Pause(after)
        yield extra

    return play


# Every answer the attacks of issue 20 played against the poll transport, by name.
ANSWERS: dict[str, Answer] = {
    "chunk size -5": head("200 OK", "Transfer-Encoding: chunked") + b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk size 0x5": head("200 OK", "Transfer-Encoding: chunked") + b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size +5": head("200 OK", "Transfer-Encoding: chunked") + b"+5\r\nhello\r\n0\r\n\r\n",
    "chunk size 5_0": head("200 OK", "Transfer-Encoding: chunked") + b"5_0\r\nhello\r\n0\r\n\r\n",
    "status 000": head("000 OK", length=2) + b"{}",
    "Content-Length of 4,301 digits": head("200 OK", "Content-Length: " + "9" * 4301) + b"{}",
    "Content-Length of 20 digits, body never ends": head("200 OK", length=10**19 + 1) + b"{",
    "extra bytes after the body": json_answer(b"{}") + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    "endless chunked body": endless(
        head("200 OK", "Transfer-Encoding: chunked"), b"10000\r\n" + b" " * 65536 + b"\r\n"
    ),
    "endless interim answers": endless(b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 2048),
    "head without end": endless(b"HTTP/1.1 200 OK\r\nX-Long: ", b"a" * 65536),
    "endless 401": endless(head("401 Unauthorized", "Content-Type: application/json")),
    "endless 403": endless(head("403 Forbidden", "Content-Type: application/json")),
    "gzip bomb": gzip_bomb(300 << 20),
    "gzip bomb 401": gzip_bomb(300 << 20, "401 Unauthorized"),
    "gzip bomb 403": gzip_bomb(300 << 20, "403 Forbidden"),
}


class Hostile:
    """The server; `url` is its base URL, `requests` what it read, in order."""

    def __init__(self, answers: Mapping[str, Answer] | None = None) -> None:
        self.answers: dict[str, Answer] = dict(answers or {})
        self.requests: list[Request] = []
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Hostile:
        self._start(self._accept)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._socks.append(sock)
                self.connections += 1
            self._start(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        buffer = b""
        with sock, contextlib.suppress(OSError):
            sock.settimeout(0.2)
            while not self._stop.is_set():
                request, buffer = self._read(sock, buffer)
                if request is None:
                    return
                self.requests.append(request)
                answer = self.answers.get(
                    request.path, json_answer(b'{"error": "not found"}', "404 Not Found")
                )
                if not self._play(sock, answer, request):
                    return

    def _read(self, sock: socket.socket, buffer: bytes) -> tuple[Request | None, bytes]:
        while b"\r\n\r\n" not in buffer:
            data = self._recv(sock)
            if not data:
                return None, buffer
            buffer += data
        raw, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            data = self._recv(sock)
            if not data:
                return None, buffer
            rest += data
        method, target = [*raw.split(b"\r\n", 1)[0].split(b" "), b"", b""][:2]
        path = target.decode("latin-1").split("?", 1)[0]
        return Request(method.decode("latin-1"), path, raw, rest[:length]), rest[length:]

    def _recv(self, sock: socket.socket) -> bytes:
        while not self._stop.is_set():
            try:
                return sock.recv(65536)
            except TimeoutError:
                continue
        return b""

    def _play(self, sock: socket.socket, answer: Answer, request: Request) -> bool:
        """Send the answer; False once the connection is done with."""
        pieces: Iterable[Piece] = [answer] if isinstance(answer, bytes) else answer(request)
        for piece in pieces:
            if self._stop.is_set() or piece is CLOSE:
                return False
            if isinstance(piece, Pause):
                if self._stop.wait(piece.seconds):
                    return False
            elif isinstance(piece, bytes):
                sock.settimeout(1.0)
                try:
                    sock.sendall(piece)
                except TimeoutError:  # the client reads no more: try again unless stopping
                    continue
                finally:
                    sock.settimeout(0.2)
        return True


class Hung(BaseException):
    """Raised by the watchdog inside the block. A BaseException, so no `except Exception` in the
    code under test can swallow it and call the hang a timeout; it leaves the block as an
    AssertionError, a plain test failure."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Fail the test (raise Hung in the main thread) if the block runs longer than `seconds`.

    A signal, not a deadline of the event loop: a loop that never awaits gives a deadline no
    chance to fire, while Python runs a signal handler between any two bytecodes."""

    def fire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"still running after {seconds:g} s: a loop that does not await?")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Hung as e:
        raise AssertionError(str(e)) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class PeakRss:
    """The largest growth of this process's resident memory over a block, in bytes: the kernel's
    high-water mark (VmHWM, reset through /proc/self/clear_refs) where it can be reset, and
    /proc/self/statm read every 2 ms otherwise."""

    def __enter__(self) -> PeakRss:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.before = self._rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._peak = self.before
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._sampler.join()
        if self._hwm_reset:
            self._peak = max(self._peak, self._hwm())
        self.growth = self._peak - self.before

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _hwm(self) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss())
