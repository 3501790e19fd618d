"""The answers the HTTP server gives without the ASGI app: /metrics and /healthz in the loop turn
that read the request, registrations by a task of the protocol's (exporter.httpserver.protocol).
Each runs the app's own handler (exporter.api) behind the app's basic auth and response headers.

Through ASGI a request waits for several turns of a busy loop (a task is started, then routed,
then the body sent), each behind every poll answer ready meanwhile; that wait, not the body,
was most of a scrape's time while polling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import BaseRoute, Match, Router

from exporter.api import Api, register_target
from exporter.basic_auth import BasicAuthMiddleware
from exporter.httpserver import Headers, HttpAnswer
from exporter.httpserver.front_door import Verified, everyone
from exporter.webconfig import ResponseHeadersMiddleware


class FastPath:
    """What the protocol answers itself, the app's way: the same handler, headers and auth
    (the protocol adds `extra`, the headers the app's middleware adds to every answer).
    A request whose credentials the app has not verified yet (bcrypt), or a path with escapes
    for a registration, goes to the app, which verifies and caches them."""

    def __init__(
        self,
        api: Api,
        auth: BasicAuthMiddleware | None,
        extra: Headers,
        metrics_path: str | None,
        health: bool,
    ) -> None:
        self.api, self.auth, self.extra = api, auth, extra  # `extra` as read last (a reload)
        self.metrics_path = None if metrics_path is None else metrics_path.encode()
        self.health = health

    def answer_now(self, method: bytes, target: bytes, headers: Headers) -> HttpAnswer | None:
        """The answer to a GET or HEAD without a body; None when the app is to give it."""
        raw = target.partition(b"?")[0]
        if b"%" in raw:
            try:
                raw = unquote(raw.decode("ascii")).encode()
            except UnicodeError:
                return None
        if raw == self.metrics_path:
            return self.api.metrics(headers) if verified(self.auth, headers) else None
        if raw == b"/healthz" and self.health:
            return self.api.healthz()
        return None

    def registration(self, target: bytes, headers: Headers) -> str | None:
        """The target of a POST this answers (`/api/v1/targets/{target}/jobs`); None when the
        app is to answer it."""
        raw = target.partition(b"?")[0]
        if b"%" in raw:
            return None
        name = register_target(raw.decode("ascii"))  # h11 takes visible ASCII alone in a target
        if name is None or not verified(self.auth, headers):
            return None
        return name

    async def register(self, target: str, headers: Headers, body: bytes) -> HttpAnswer:
        """A registration taken by `registration`, its whole body here."""
        return await self.api.register(target, headers, body)


def fast_path(
    app: Starlette, api: Api, telemetry_path: str, metrics: Any, healthz: Any, ours: tuple[type, ...]
) -> FastPath | None:
    """The fast path of `app`, whose `metrics` and `healthz` endpoints run `api`'s handlers: a
    path is answered directly only where the app's routing leads to its endpoint. None when the
    app holds middleware of a kind other than basic auth, response headers and `ours` (its
    effect unknown)."""
    front = app_front_door(app, ours)
    if front is None:
        return None
    auth, extra = front
    metrics_route = _first_route(app.routes, telemetry_path)
    health_route = _first_route(app.routes, "/healthz")
    serve_metrics = getattr(metrics_route, "endpoint", None) == metrics
    serve_health = getattr(health_route, "endpoint", None) == healthz
    return FastPath(api, auth, extra, telemetry_path if serve_metrics else None, serve_health)


def _first_route(routes: list[BaseRoute], path: str) -> BaseRoute | None:
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    for route in routes:
        if route.matches(scope)[0] is not Match.NONE:
            return route
    return None


def app_front_door(
    app: Starlette, ours: tuple[type, ...]
) -> tuple[BasicAuthMiddleware | None, Headers] | None:
    """The app's basic auth and the headers it adds to every answer, for answers given without
    it; None when it holds middleware of another kind than those and `ours`."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()  # now: the auth cache read is the app's
    auth: BasicAuthMiddleware | None = None
    extra: Headers = []
    layer: Any = app.middleware_stack
    while not isinstance(layer, Router):
        if isinstance(layer, BasicAuthMiddleware):
            auth = layer
        elif isinstance(layer, ResponseHeadersMiddleware):
            extra = layer.headers
        elif not isinstance(layer, (ServerErrorMiddleware, ExceptionMiddleware, *ours)):
            return None
        layer = layer.app
    return auth, extra


def verified(auth: BasicAuthMiddleware | None, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether `headers` carry credentials `auth` has verified (its cache: no bcrypt)."""
    if auth is None:
        return True
    credentials = b""
    for name, value in headers:
        if name == b"authorization":
            credentials = value  # the last one, as the middleware reads them
    return auth.verified(credentials)


def credentials_check(app: Starlette, ours: tuple[type, ...]) -> Verified:
    """Whether a request's credentials were verified by the app's basic auth (its cache: no
    bcrypt); every request when there is none (or middleware of another kind)."""
    front = app_front_door(app, ours)
    auth = front[0] if front is not None else None
    if auth is None:
        return everyone
    return lambda headers: verified(auth, headers)
