"""A scripted HTTP/1.1 server on 127.0.0.1 for the HTTP client's tests: each accepted connection
is handed to a function that reads requests and writes whatever bytes the test wants, well
formed or not."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Script = Callable[[int, "Peer"], None]


class Peer:
    """One accepted connection, seen from the server."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def read_request(self) -> bytes | None:
        """The next request's head and body (Content-Length only); None when the client closed."""
        while b"\r\n\r\n" not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buffer += data
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            data = self.sock.recv(65536)
            if not data:
                return None
            rest += data
        self._buffer = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, body: bytes = b'{"ok": true}', status: str = "200 OK", close: bool = False) -> None:
        self.send(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            + (b"Connection: close\r\n" if close else b"")
            + b"\r\n"
            + body
        )


@contextmanager
def serve(script: Script, tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, list[bytes]]]:
    """Run `script(n, peer)` for the n-th accepted connection; yield the base URL and the
    requests the scripts read (in order). With `tls`, connections are TLS (https)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[bytes] = []
    stop = threading.Event()

    class Recording(Peer):
        def read_request(self) -> bytes | None:
            request = super().read_request()
            if request is not None:
                seen.append(request)
            return request

    def handle(n: int, sock: socket.socket) -> None:
        # OSError: the client went away, which is the client's business.
        with sock, contextlib.suppress(OSError):
            peer = tls.wrap_socket(sock, server_side=True) if tls is not None else sock
            with peer:
                script(n, Recording(peer))

    def accept() -> None:
        n = 0
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(n, sock), daemon=True).start()
            n += 1

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", seen
    finally:
        stop.set()
        thread.join(5)
        listener.close()
