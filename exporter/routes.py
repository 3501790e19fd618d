"""The exporter's ASGI app (Starlette): the pages for people (exporter.pages) and, as thin
adapters over exporter.api's handlers, /metrics, the probes, /-/reload and the job API; with
the fast path the HTTP server takes from it (exporter.httpserver.fast_path). In cluster mode the
job API's reads of other replicas' jobs (exporter.cluster.view) are awaited here, before the
handler that merges them with this replica's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from exporter.api import CLUSTER_PAGE, Api, register_target
from exporter.httpserver import Headers, HttpAnswer
from exporter.httpserver.fast_path import FastPath, credentials_check, fast_path
from exporter.httpserver.front_door import Verified, everyone
from exporter.pages import Pages
from exporter.render.groups import JobSeries
from exporter.runtime import Runtime

if TYPE_CHECKING:
    from exporter.cluster.view import Elsewhere

_GONE = HttpAnswer(400, [(b"content-length", b"0")], b"")


class AnswerResponse(Response):
    """A handler's answer as Starlette's response: its status, headers and body as they are."""

    def __init__(self, answer: HttpAnswer) -> None:
        self.status_code, self.raw_headers, self.body = answer
        self.background = None


async def send_answer(send: Send, answer: HttpAnswer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.body})


class Endpoints:
    """Starlette's side of each handler: a request read into the handler's arguments."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def metrics(self, request: Request) -> Response:
        return AnswerResponse(self.api.metrics(request.headers.raw))

    async def healthz(self, request: Request) -> Response:
        return AnswerResponse(self.api.healthz())

    async def readyz(self, request: Request) -> Response:
        return AnswerResponse(self.api.readyz())

    async def reload(self, request: Request) -> Response:
        return AnswerResponse(self.api.reload(request.headers.raw))

    async def openapi(self, request: Request) -> Response:
        return AnswerResponse(self.api.openapi())

    async def list_jobs(self, request: Request) -> Response:
        q = request.query_params
        query = self.api.jobs_query(
            request.headers.raw, q.get("target"), q.get("status"), q.get("after"), q.get("limit")
        )
        if isinstance(query, HttpAnswer):
            return AnswerResponse(query)
        member, elsewhere = self.api.runtime.member, None
        if member is not None:  # the other replicas' jobs: read before the handler, which only merges
            from exporter.cluster.view import jobs_elsewhere

            limit = query.limit or CLUSTER_PAGE
            elsewhere = await jobs_elsewhere(
                member, query.target, query.status, after=query.after, limit=limit
            )
        return AnswerResponse(self.api.list_jobs(query, elsewhere))

    async def _job_elsewhere(self, headers: Headers, target: str, job_id: str) -> Elsewhere | None:
        """In a cluster, the job as its owner committed it, when this replica does not track it."""
        member = self.api.runtime.member
        if member is None or not self.api.wants_job_elsewhere(headers, target, job_id):
            return None
        from exporter.cluster.view import job_elsewhere

        return await job_elsewhere(member, target, job_id)

    async def get_job(self, request: Request) -> Response:
        headers, params = request.headers.raw, request.path_params
        target, job_id = params["target"], params["job_id"]
        elsewhere = await self._job_elsewhere(headers, target, job_id)
        return AnswerResponse(self.api.get_job(headers, target, job_id, elsewhere))

    async def delete_job(self, request: Request) -> Response:
        headers, params = request.headers.raw, request.path_params
        target, job_id = params["target"], params["job_id"]
        elsewhere = await self._job_elsewhere(headers, target, job_id)
        return AnswerResponse(self.api.delete_job(headers, target, job_id, elsewhere))

    async def register(self, scope: Scope, receive: Receive, send: Send, target: str) -> None:
        """`POST /api/v1/targets/{target}/jobs` straight on ASGI: the busiest route, which
        Starlette's routing, request and response objects cost more than the work itself. The
        head is judged before the body is read, the body refused as soon as it is too large."""
        api = self.api
        headers = scope["headers"]
        refused = api.registration_refused(target, headers)
        if refused is not None:
            return await send_answer(send, refused)
        limit = api.runtime.settings.api.max_body_bytes
        raw = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # gone, or closed by the server for a body that came too slowly
                return await send_answer(send, _GONE)
            raw += message.get("body", b"")
            if len(raw) > limit:
                return await send_answer(send, api.body_too_large())
            if not message.get("more_body", False):
                break
        await send_answer(send, await api.registered(target, raw))


class RegisterRoute:
    """The register handler as a plain ASGI endpoint of a Starlette route."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoints.register(scope, receive, send, scope["path_params"]["target"])


class RegistrationsFirst:
    """Registrations straight to their handler, the rest to the app (Starlette's router)."""

    def __init__(self, app: ASGIApp, endpoints: Endpoints) -> None:
        self.app, self.endpoints = app, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            target = register_target(scope.get("path", ""))
            if target is not None:
                await self.endpoints.register(scope, receive, send, target)
                return
        await self.app(scope, receive, send)


class ScrapesHoldRefresh:
    """Holds the background refresh of per-job series (exporter.render.groups) from the moment
    a scrape arrives through the app until its body is sent, so a scrape never waits on it."""

    def __init__(self, app: ASGIApp, jobs: JobSeries, telemetry_path: str = "/metrics") -> None:
        self.app, self.jobs, self.telemetry_path = app, jobs, telemetry_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.telemetry_path:
            await self.app(scope, receive, send)
            return
        self.jobs.scrapes += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.jobs.scrapes -= 1


class ExporterApp:
    """The exporter's ASGI app, the answers the HTTP server gives without it (`fast_path`),
    and whether a request's credentials are verified (`verified`: the connection cap keeps
    connections that sent some, exporter.httpserver.front_door)."""

    def __init__(self, app: ASGIApp, fast_path: FastPath | None, verified: Verified = everyone) -> None:
        self.app = app
        self.fast_path = fast_path
        self.verified = verified

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def build_app(
    runtime: Runtime,
    middleware: Any = None,
    lifecycle: bool = False,
    telemetry_path: str = "/metrics",
    external_url: str = "",
) -> ExporterApp:
    """The exporter's routes. `lifecycle` (--web.enable-lifecycle) turns on POST /-/reload;
    `telemetry_path` (--web.telemetry-path) is where /metrics is served; `external_url`
    (--web.external-url) is the base of the links the pages and the API document make."""
    api = Api(runtime, lifecycle, external_url)
    endpoints = Endpoints(api)
    job = "/api/v1/targets/{target}/jobs/{job_id:path}"
    routes = [
        *Pages(runtime, telemetry_path, external_url).routes(),
        Route(telemetry_path, endpoints.metrics),
        Route("/healthz", endpoints.healthz),
        Route("/readyz", endpoints.readyz),
        Route("/-/reload", endpoints.reload, methods=["POST"]),
        Route("/api/v1/openapi.json", endpoints.openapi),
        Route("/api/v1/jobs", endpoints.list_jobs),
        # Served by RegistrationsFirst; here for other methods (405) and a path under a root_path.
        Route("/api/v1/targets/{target}/jobs", RegisterRoute(endpoints), methods=["POST"]),
        Route(job, endpoints.get_job, methods=["GET"]),
        Route(job, endpoints.delete_job, methods=["DELETE"]),
    ]
    # Inside the user's middleware (basic auth, response headers), before Starlette's routing.
    first = Middleware(RegistrationsFirst, endpoints=endpoints)
    app = Starlette(routes=routes, middleware=[*(middleware or []), first])
    ours = (RegistrationsFirst,)
    return ExporterApp(
        ScrapesHoldRefresh(app, runtime.exposition.jobs, telemetry_path),
        fast_path(app, api, telemetry_path, endpoints.metrics, endpoints.healthz, ours),
        credentials_check(app, ours),
    )
