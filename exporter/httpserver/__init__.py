"""The HTTP server: uvicorn with our h11 protocol (protocol), a small answer in one send
(head_with_body), the cap on open connections and TLS done by the connection (front_door), the
answers it gives without the ASGI app (fast_path), and the server itself (server). `HttpAnswer`
is what a handler of exporter.api gives either side."""

from __future__ import annotations

from typing import NamedTuple

# A request's or an answer's headers, names in lower case (as h11 and ASGI give them).
Headers = list[tuple[bytes, bytes]]


class HttpAnswer(NamedTuple):
    """An answer as written on the wire: its status, its headers (content-length included) and its body."""

    status: int
    headers: Headers
    body: bytes
