"""HTTP: /metrics, the pages for people (exporter.pages), health, reload and the job registration API (Starlette)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.connections import (
    Answer,
    ConnectionLimits,
    Direct,
    DirectPost,
    Headers,
    guarded_h11,
)
from exporter.front_door import (
    FrontDoor,
    TLSFronted,
    Verified,
    everyone,
    log_accept_errors_once_per_burst,
    warn_if_past_open_files_limit,
)
from exporter.model import STATUSES
from exporter.pages import Pages
from exporter.parsing import JsonTooDeep, is_digits, load_json
from exporter.providers.base import BadPayload
from exporter.render.formats import content_type, wants_openmetrics
from exporter.runtime import Runtime, WrongShard, job_document
from exporter.state import StateUnwritable
from exporter.tracker import CapReached
from exporter.webconfig import BasicAuthMiddleware, ResponseHeadersMiddleware

log = logging.getLogger("asyncjob.server")


def scrapes_first(app: ASGIApp, jobs: Any, telemetry_path: str = "/metrics") -> ASGIApp:
    """Hold the background refresh of per-job series from the moment a scrape arrives until
    its body is sent, so a scrape never waits on rendering."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != telemetry_path:
            await app(scope, receive, send)
            return
        jobs.scrapes += 1
        try:
            await app(scope, receive, send)
        finally:
            jobs.scrapes -= 1

    return wrapped


class ExporterApp:
    """The exporter's ASGI app, the answers the HTTP server gives without it (`direct`,
    `direct_post`), and whether a request's credentials are verified (`verified`: the
    connection cap keeps connections that sent some, exporter.front_door)."""

    def __init__(
        self,
        app: ASGIApp,
        direct: Direct | None,
        direct_post: DirectPost | None = None,
        verified: Verified = everyone,
    ) -> None:
        self.app = app
        self.direct = direct
        self.direct_post = direct_post
        self.verified = verified

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _first_route(routes: list[BaseRoute], path: str) -> BaseRoute | None:
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    for route in routes:
        if route.matches(scope)[0] is not Match.NONE:
            return route
    return None


def _front_door(app: Starlette) -> tuple[BasicAuthMiddleware | None, Headers] | None:
    """The app's basic auth and the headers it adds to every answer, for answers given without
    it; None when it holds middleware of another kind (its effect unknown)."""
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
        elif not isinstance(layer, ServerErrorMiddleware | ExceptionMiddleware | DirectRegistration):
            return None
        layer = layer.app
    return auth, extra


def _verified(auth: BasicAuthMiddleware | None, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    if auth is None:
        return True
    credentials = b""
    for name, value in headers:
        if name == b"authorization":
            credentials = value  # the last one, as the middleware reads them
    return auth.verified(credentials)


def credentials_check(app: Starlette) -> Verified:
    """Whether a request's credentials were verified by the app's basic auth (its cache: no
    bcrypt); every request when there is none (or middleware of another kind)."""
    front = _front_door(app)
    auth = front[0] if front is not None else None
    if auth is None:
        return everyone
    return lambda headers: _verified(auth, headers)


def direct_registrations(app: Starlette, register: Any) -> DirectPost | None:
    """`POST /api/v1/targets/{target}/jobs` answered by the HTTP protocol (exporter.connections)
    through the same handler the app runs, with the app's basic auth (credentials it verified
    already) and headers. A path with escapes, or credentials not verified yet, go to the app."""
    front = _front_door(app)
    if front is None:
        return None
    auth, extra = front

    def post(target: bytes, headers: Headers) -> Callable[[bytes], Awaitable[Answer]] | None:
        raw = target.partition(b"?")[0]
        if b"%" in raw:
            return None
        path = raw.decode("ascii")  # h11 takes visible ASCII alone in a request target
        name = register_target(path)
        if name is None or not _verified(auth, headers):
            return None

        async def answer(body: bytes) -> Answer:
            sent: list[Message] = []

            async def receive() -> Message:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: Message) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
            await register(scope, receive, send, name)
            start, *rest = sent
            return start["status"], [*start["headers"], *extra], b"".join(m.get("body", b"") for m in rest)

        return answer

    return post


def direct_answers(
    app: Starlette, runtime: Runtime, telemetry_path: str, metrics: Any, healthz: Any
) -> Direct | None:
    """/metrics (at `telemetry_path`) and /healthz, answered by the HTTP protocol in the loop
    turn that read the request (exporter.connections) as the app answers them: the same
    headers (http_server_config's included), the same body, basic auth when configured. A
    scrape whose credentials were not verified yet (bcrypt) goes to the app, which verifies
    and caches them. `metrics` and `healthz` are the app's handlers: a path is answered here
    only where the app's routing leads to its handler. None when the app holds middleware of
    another kind (its effect unknown)."""
    front = _front_door(app)
    if front is None:
        return None
    auth, extra = front
    metrics_route = _first_route(app.routes, telemetry_path)
    health_route = _first_route(app.routes, "/healthz")
    serve_metrics = isinstance(metrics_route, Route) and metrics_route.endpoint is metrics
    serve_health = isinstance(health_route, Route) and health_route.endpoint is healthz
    path_bytes = telemetry_path.encode()
    health_headers = [(b"content-length", b"3"), (b"content-type", b"text/plain; charset=utf-8")]

    def direct(method: bytes, target: bytes, headers: Headers) -> tuple[int, Headers, bytes] | None:
        raw = target.partition(b"?")[0]
        if b"%" in raw:
            try:
                raw = unquote(raw.decode("ascii")).encode()
            except UnicodeError:
                return None
        if raw == path_bytes and serve_metrics:
            if not _verified(auth, headers):
                return None
            accept = next((v for n, v in headers if n == b"accept-encoding"), b"")
            gz = b"gzip" in accept
            om = wants_openmetrics(next((v for n, v in headers if n == b"accept"), b"").decode("latin-1"))
            body = runtime.exposition.render(gz=gz, fresh=False, openmetrics=om)
            out = [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")] if gz else []
            out += [
                (b"content-length", b"%d" % len(body)),
                (b"content-type", content_type(om).encode()),
                *extra,
            ]
            return 200, out, body
        if raw == b"/healthz" and serve_health:
            return 200, [*health_headers, *extra], b"ok\n"  # `extra` as read last (a reload)
        return None

    return direct if serve_metrics or serve_health else None


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/*+json`, any parameters: what the API reads. A form
    post (which a browser sends cross-site without asking) is neither."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


# The content types a browser posts cross-site without asking first (a CORS "simple request").
FORM_MEDIA_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


def cross_site(headers: Any) -> Response | None:
    """The refusal of a POST a browser may have sent from another site (a form, or a fetch
    without preflight); None for any other. Without an API token nothing else would stop it."""
    media = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media in FORM_MEDIA_TYPES:
        return _error(415, f"{media} is not read here: send no body, or application/json")
    # Browsers say where a request comes from; curl, Prometheus' tooling and scripts say nothing.
    if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        return _error(403, "a request from another site is refused")
    return None


def _error(status: int, message: str, **more: Any) -> JSONResponse:
    return JSONResponse({"error": message, **more}, status_code=status)


UNAUTHORISED = "missing or wrong API token (Authorization: Bearer, or X-Asyncjob-Token)"
REGISTER_PREFIX, REGISTER_SUFFIX = "/api/v1/targets/", "/jobs"
_REGISTER_HEADERS = (b"x-asyncjob-token", b"authorization", b"content-type", b"content-length")
# As Starlette's JSONResponse writes it.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _headers(scope: Scope, names: tuple[bytes, ...]) -> dict[bytes, bytes | None]:
    """The first value of each of `names` (lower case) in the request, None when absent."""
    found: dict[bytes, bytes | None] = dict.fromkeys(names)
    for name, value in scope["headers"]:
        if name in found and found[name] is None:
            found[name] = value
    return found


async def _send(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(
    send: Send, status: int, document: Any, more: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await _send(
        send, status, _JSON.encode(document).encode(), ((b"content-type", b"application/json"), *more)
    )


class RegisterEndpoint:
    """The register handler as a plain ASGI endpoint of a Starlette route."""

    def __init__(self, register: Any) -> None:
        self.register = register

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.register(scope, receive, send, scope["path_params"]["target"])


def register_target(path: str) -> str | None:
    """The target of a registration path, `/api/v1/targets/{target}/jobs`; None for another path."""
    if not (path.startswith(REGISTER_PREFIX) and path.endswith(REGISTER_SUFFIX)):
        return None
    target = path[len(REGISTER_PREFIX) : -len(REGISTER_SUFFIX)]
    return target if target and "/" not in target else None


class DirectRegistration:
    """Registrations straight to their handler, the rest to the app (Starlette's router)."""

    def __init__(self, app: ASGIApp, register: Any) -> None:
        self.app, self.register = app, register

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            target = register_target(scope.get("path", ""))
            if target is not None:
                await self.register(scope, receive, send, target)
                return
        await self.app(scope, receive, send)


def build_app(
    runtime: Runtime,
    middleware: Any = None,
    lifecycle: bool = False,
    telemetry_path: str = "/metrics",
    external_url: str = "",
) -> ASGIApp:
    """The exporter's routes. `lifecycle` (--web.enable-lifecycle) turns on POST /-/reload;
    `telemetry_path` (--web.telemetry-path) is where /metrics is served; `external_url`
    (--web.external-url) is the base of the links the pages and the API document make."""

    async def metrics(request: Request) -> Response:
        gz = "gzip" in request.headers.get("accept-encoding", "")
        om = wants_openmetrics(request.headers.get("accept", ""))
        body = runtime.exposition.render(gz=gz, fresh=False, openmetrics=om)
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gz else {}
        return Response(body, media_type=content_type(om), headers=headers)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if runtime.state_error is not None:
            return PlainTextResponse(
                f"state file cannot be written: {runtime.state_error}\n", status_code=503
            )
        waiting = [n for n, s in runtime.tracker.targets.items() if not s.polled_once]
        if waiting:
            return PlainTextResponse(
                f"waiting for first poll of: {', '.join(sorted(waiting))}\n", status_code=503
            )
        return PlainTextResponse("ready\n")

    async def reload(request: Request) -> Response:
        # As Prometheus: a config reload over HTTP is an opt-in, and it is an API call.
        if not lifecycle:
            return PlainTextResponse("Lifecycle API is not enabled.\n", status_code=403)
        refused = cross_site(request.headers)
        if refused is not None:
            return refused
        if not authorised(request):
            return _error(401, "missing or wrong API token")
        problems = runtime.reload()
        if problems:
            return _error(400, "config reload failed; the running config is kept", problems=problems)
        return PlainTextResponse("config reloaded\n")

    def authorised(request: Request) -> bool:
        return token_ok(request.headers.get("x-asyncjob-token"), request.headers.get("authorization", ""))

    def token_ok(header: str | None, authorization: str) -> bool:
        token = runtime.settings.api.token()
        if token is None:
            return True
        secret = token.get_secret_value().encode()
        # X-Asyncjob-Token beside basic auth credentials, which take the Authorization header.
        if header is not None:
            given = header.strip()
        else:
            scheme, _, given = authorization.partition(" ")
            if scheme.lower() != "bearer":
                return False
            given = given.strip()
        # An empty token never matches, whatever the file held (config refuses an empty one).
        return bool(given) and bool(secret) and hmac.compare_digest(given.encode(), secret)

    def api(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if not authorised(request):
                return _error(401, UNAUTHORISED)
            response: Response = await handler(request)
            return response

        return wrapped

    async def register(scope: Scope, receive: Receive, send: Send, target: str) -> None:
        """`POST /api/v1/targets/{target}/jobs`, straight on ASGI: the busiest route, which
        Starlette's routing, request and response objects cost more than the work itself."""
        wanted = _headers(scope, _REGISTER_HEADERS)
        x_token, authorization = wanted[b"x-asyncjob-token"], wanted[b"authorization"]
        if not token_ok(
            None if x_token is None else x_token.decode("latin-1"), (authorization or b"").decode("latin-1")
        ):
            return await _send_json(send, 401, {"error": UNAUTHORISED})
        if target not in runtime.tracker.targets:
            return await _send_json(send, 404, {"error": f"unknown target {target!r}"})
        if not is_json_media_type((wanted[b"content-type"] or b"").decode("latin-1")):
            return await _send_json(
                send, 415, {"error": "the body must be application/json (or application/*+json)"}
            )
        limit = runtime.settings.api.max_body_bytes
        declared = (wanted[b"content-length"] or b"").decode("latin-1")
        if declared and is_digits(declared) and int(declared) > limit:
            return await _send_json(send, 413, {"error": f"body larger than {limit} bytes"})
        raw = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # gone, or closed by the server for a body that came too slowly
                return await _send(send, 400, b"", ())
            raw += message.get("body", b"")
            if len(raw) > limit:
                return await _send_json(send, 413, {"error": f"body larger than {limit} bytes"})
            if not message.get("more_body", False):
                break
        try:
            # Strict UTF-8 and no replacement of lone surrogates: an id holding one is refused
            # (422) rather than replaced, since replacing would make distinct ids collide.
            text = raw.decode("utf-8")
            body = load_json(text, replace_surrogates=False)
        except JsonTooDeep as e:
            return await _send_json(send, 422, {"error": f"body: {e}", "field": "body"})
        except ValueError:
            return await _send_json(send, 400, {"error": "body is not JSON (in UTF-8)"})
        try:
            tracked = await runtime.register(target, body, text)
        except BadPayload as e:
            # A provider names the field, optionally followed by ": why" (see BadPayload).
            field, _, why = (str(e) or "id").partition(": ")
            why = why or (
                "no usable job id in the body (missing, blank, or holding a control character "
                "or a lone surrogate)"
            )
            return await _send_json(send, 422, {"error": f"{field}: {why}", "field": field})
        except WrongShard as e:
            return await _send_json(send, 421, {"error": str(e), "shard": e.shard})
        except CapReached as e:
            return await _send_json(send, 409, {"error": str(e)})
        except StateUnwritable as e:
            # Not acknowledged: the client retries. A job already tracked stays pending, written later.
            return await _send_json(
                send, 503, {"error": f"registration cannot be made durable: {e}"}, ((b"retry-after", b"5"),)
            )
        await _send_json(send, 202, job_document(target, tracked))

    async def list_jobs(request: Request) -> Response:
        want_target = request.query_params.get("target")
        want_status = request.query_params.get("status")
        if want_status and want_status not in STATUSES:
            return _error(422, f"status: must be one of {', '.join(STATUSES)}", field="status")
        if want_target and want_target not in runtime.tracker.targets:
            return _error(404, f"unknown target {want_target!r}")
        out = []
        for name, state in sorted(runtime.tracker.targets.items()):
            if want_target and name != want_target:
                continue
            for t in state.jobs.values():
                if want_status and t.job.status != want_status:
                    continue
                out.append(job_document(name, t))
        return JSONResponse({"jobs": out, "count": len(out)})

    async def get_job(request: Request) -> Response:
        target, job_id = request.path_params["target"], request.path_params["job_id"]
        state = runtime.tracker.targets.get(target)
        if state is None:
            return _error(404, f"unknown target {target!r}")
        tracked = state.jobs.get(job_id)
        if tracked is None:
            return _error(404, f"job {job_id!r} is not tracked by target {target!r}")
        return JSONResponse(job_document(target, tracked))

    async def delete_job(request: Request) -> Response:
        target, job_id = request.path_params["target"], request.path_params["job_id"]
        if target not in runtime.tracker.targets:
            return _error(404, f"unknown target {target!r}")
        if not runtime.tracker.drop(target, job_id, "deleted"):
            return _error(404, f"job {job_id!r} is not tracked by target {target!r}")
        return Response(status_code=204)

    async def openapi(request: Request) -> Response:
        from exporter.openapi import openapi_document

        return JSONResponse(openapi_document(external_url))

    routes = [
        *Pages(runtime, telemetry_path, external_url).routes(),
        Route(telemetry_path, metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/-/reload", reload, methods=["POST"]),
        Route("/api/v1/openapi.json", openapi),
        Route("/api/v1/jobs", api(list_jobs)),
        # Served by DirectRegistration; here for other methods (405) and a path under a root_path.
        Route("/api/v1/targets/{target}/jobs", RegisterEndpoint(register), methods=["POST"]),
        Route("/api/v1/targets/{target}/jobs/{job_id:path}", api(get_job), methods=["GET"]),
        Route("/api/v1/targets/{target}/jobs/{job_id:path}", api(delete_job), methods=["DELETE"]),
    ]
    # Inside the user's middleware (basic auth, response headers), before Starlette's routing.
    direct = Middleware(DirectRegistration, register=register)
    app = Starlette(routes=routes, middleware=[*(middleware or []), direct])
    return ExporterApp(
        scrapes_first(app, runtime.exposition.jobs, telemetry_path),
        direct_answers(app, runtime, telemetry_path, metrics, healthz),
        direct_registrations(app, register),
        credentials_check(app),
    )


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:10110`, `0.0.0.0:10110`, `127.0.0.1:0`, `[::1]:10110` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not is_digits(port) or int(port) > 65535:
        raise ValueError(f"--web.listen-address {address!r}: expected [host]:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class ListenError(OSError):
    pass


class Server:
    """uvicorn serving an ASGI app inside our task group; signals are ours to handle."""

    def __init__(
        self,
        app: Any,
        address: str,
        ssl: dict[str, Any] | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        import uvicorn

        host, port = parse_listen_address(address)
        self.address = address
        limits = limits or ConnectionLimits()
        warn_if_past_open_files_limit(limits.max_connections)
        self.door = FrontDoor(limits.max_connections, getattr(app, "verified", everyone))

        class _Quiet(uvicorn.Server):
            def capture_signals(self) -> Any:  # the exporter handles SIGTERM/SIGINT/SIGHUP
                from contextlib import nullcontext

                return nullcontext()

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,
            http=guarded_h11(
                limits, self.door, getattr(app, "direct", None), getattr(app, "direct_post", None)
            ),
            **(ssl or {}),
        )
        config.load()
        if config.ssl is not None:
            # The protocol does TLS, not the listener: handshakes count against the cap, and a
            # closed connection's descriptor is released at once (exporter.front_door).
            config.http_protocol_class = TLSFronted(  # type: ignore[assignment]
                config.http_protocol_class, config.ssl, self.door, limits.header_timeout, limits.write_timeout
            )
            config.ssl = None
        self._server = _Quiet(config)

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for s in servers:
            for sock in s.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def serve(self) -> None:
        import asyncio

        log_accept_errors_once_per_burst(asyncio.get_running_loop())
        try:
            await self._server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind; say so in our words
            raise ListenError(f"cannot listen on {self.address} (address in use or not available)") from None

    def stop(self) -> None:
        self._server.should_exit = True
