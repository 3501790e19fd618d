"""One response's writes on its connection: the head held until its body's first part, so a
small answer goes out in one send (exporter.httpserver.protocol gives it to each ASGI cycle)."""

from __future__ import annotations

import asyncio
from typing import Any


class HeadWithBody:
    """One response's view of its connection: the head (status line and headers, its first
    write) is held until the body's first part and both go out in one send. A send on a
    loopback or LAN socket costs more than the bytes it carries (the kernel delivers them and
    wakes the reader); a small answer thus costs one, not two. A head whose body does not
    follow within the same turn of the event loop (a streamed answer) goes out alone then."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self._flush)
            return
        self._held = b""  # the head went out: later writes go straight through
        if held:
            data = held + data
        self._transport.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, b""
        if held and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
