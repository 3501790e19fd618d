"""uvicorn serving the exporter's app inside our task group, with our protocol (protocol), the
cap on open connections and TLS done by the connection (front_door); signals are ours."""

from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext, suppress
from typing import Any

import uvicorn

from exporter.httpserver.front_door import (
    FrontDoor,
    TLSFronted,
    everyone,
    log_accept_errors_once_per_burst,
    warn_if_past_open_files_limit,
)
from exporter.httpserver.protocol import ConnectionLimits, protocol_factory
from exporter.parsing import is_digits


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:10110`, `0.0.0.0:10110`, `127.0.0.1:0`, `[::1]:10110` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not is_digits(port) or int(port) > 65535:
        raise ValueError(f"--web.listen-address {address!r}: expected [host]:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class ListenError(OSError):
    pass


class SignalsOurs(uvicorn.Server):
    """uvicorn's server, leaving SIGTERM/SIGINT/SIGHUP to the exporter, and waking once a
    second, not ten times: its loop ticks to format the Date header (once a second) and to see
    whether it should exit, which `stop` now says at once. An exporter with little to do spent a
    tenth of its CPU on those wakeups."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()

    def capture_signals(self) -> Any:
        return nullcontext()

    async def main_loop(self) -> None:
        # on_tick(0) formats the Date header and says whether to exit (a request limit or stop).
        while not await self.on_tick(0):
            with suppress(TimeoutError):
                async with asyncio.timeout(1.0 - time.time() % 1.0):  # the next whole second
                    await self._exit.wait()

    def stop(self) -> None:
        self.should_exit = True
        self._exit.set()


class Server:
    """uvicorn serving an ASGI app inside our task group. The app's `fast_path` and `verified`
    (exporter.routes.ExporterApp) are given to the protocol and the front door."""

    def __init__(
        self,
        app: Any,
        address: str,
        ssl: dict[str, Any] | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        host, port = parse_listen_address(address)
        self.address = address
        limits = limits or ConnectionLimits()
        warn_if_past_open_files_limit(limits.max_connections)
        self.door = FrontDoor(limits.max_connections, getattr(app, "verified", everyone))
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,
            http=protocol_factory(limits, self.door, getattr(app, "fast_path", None)),  # type: ignore[arg-type]
            **(ssl or {}),
        )
        config.load()
        if config.ssl is not None:
            # The protocol does TLS, not the listener: handshakes count against the cap, and a
            # closed connection's descriptor is released at once (exporter.httpserver.front_door).
            config.http_protocol_class = TLSFronted(  # type: ignore[assignment]
                config.http_protocol_class, config.ssl, self.door, limits.header_timeout, limits.write_timeout
            )
            config.ssl = None
        self._server = SignalsOurs(config)

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for s in servers:
            for sock in s.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def serve(self) -> None:
        log_accept_errors_once_per_burst(asyncio.get_running_loop())
        try:
            await self._server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind; say so in our words
            raise ListenError(f"cannot listen on {self.address} (address in use or not available)") from None

    def stop(self) -> None:
        self._server.stop()
