"""`--web.config.file` read again at each reload (SIGHUP, `POST /-/reload`): what a reload
changes (basic auth users, response headers, the TLS files) applies from the next request or
handshake, as exporter-toolkit reads its file afresh. The file itself is read and checked by
exporter/webconfig.py."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from starlette.middleware import Middleware

from exporter.basic_auth import BasicAuthMiddleware, Users
from exporter.webconfig import ResponseHeadersMiddleware, WebConfigError, encoded_headers, load_web_config


class ReloadableContext(ssl.SSLContext):
    """The listener's SSLContext, whose every handshake runs on the context read last: asyncio
    starts a connection's TLS with `wrap_bio`, which is handed on to `current`. A reload's
    certificate, key, client CA, client auth type, versions and suites thus apply from the next
    connection on, as exporter-toolkit reads its file at each handshake; open connections keep
    theirs."""

    current: ssl.SSLContext

    def __new__(cls, current: ssl.SSLContext) -> ReloadableContext:
        context = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        context.current = current
        return context

    def __init__(self, current: ssl.SSLContext) -> None:
        super().__init__()

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        return self.current.wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        return self.current.wrap_socket(*args, **kwargs)


class LiveWebConfig:
    """`--web.config.file` read at start and again at each reload (SIGHUP, `POST /-/reload`):
    basic auth users, response headers and TLS files apply from the next request or handshake,
    as exporter-toolkit reads the file afresh. A file with a problem changes nothing. Turning
    TLS on or off needs a restart: the listener is made once."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        first = load_web_config(path)
        # Shared with the middleware (and the answers given without it), changed in place.
        self.users = Users(first.users)
        self.headers = encoded_headers(first.headers)
        self.tls = ReloadableContext(first.context) if first.context is not None else None

    @property
    def ssl(self) -> dict[str, Any]:
        """uvicorn's TLS settings: the listener's context, or nothing without TLS."""
        tls = self.tls
        return {} if tls is None else {"ssl_context_factory": lambda config, default: tls}

    def middleware(self) -> list[Middleware]:
        if not self.path:
            return []
        # Both layers always, even empty: a reload may add headers or users.
        return [
            Middleware(ResponseHeadersMiddleware, headers=self.headers),
            Middleware(BasicAuthMiddleware, users=self.users),
        ]

    def read(self) -> Callable[[], None]:
        """Read the file afresh and return what applies it; WebConfigError names a problem."""
        new = load_web_config(self.path)
        if (new.context is None) != (self.tls is None):
            raise WebConfigError("tls_server_config: turning TLS on or off needs a restart")
        users = Users(new.users, self.users)  # the dummy hash is made here, not while applying

        def apply() -> None:
            self.users.replace(users)
            self.headers[:] = encoded_headers(new.headers)
            if self.tls is not None and new.context is not None:
                self.tls.current = new.context

        return apply
