"""The simulator's shared server: job book, tokens, request counts, fault injection and the
control endpoints (`/_sim/…`). Each provider's wire format lives in its own module."""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from exporter.simulator.lifecycle import SCENARIOS, JobBook, SimJob

# Credentials the simulator accepts; the demo and the tests write them into secret files.
CREDENTIALS = {
    "basiq_api_key": "ZGVtby1iYXNpcS1hcGkta2V5OnNlY3JldA==",
    "client_id": "demo-client",
    "client_secret": "demo-client-secret-9f2c",
    "username": "ops@example.com",
    "password": "demo-user-password-71ab",
    "bearer_token": "demo-static-bearer-4d1e",
}


FAULT_KINDS = (
    "status",  # answer `status` (500, 502, 503, 429…), with Retry-After when `retry_after` is set
    "timeout",  # wait `delay` seconds before answering
    "trickle",  # send the real answer one byte every `delay` seconds
    "truncated",  # cut the real answer in half
    "not_json",  # an HTML error page with 200
    "wrong_content_type",  # the real answer as text/plain
    "reset",  # start the answer, then drop the connection
    "oversized",  # a 64 MiB JSON answer, streamed
    "expire_token",  # expire every issued token, then answer normally
)


@dataclass
class Fault:
    """An injected misbehaviour for requests of `provider` (`*`: all), optionally only on
    routes whose key starts with `route` (e.g. `basiq.job`) and only for `job_id`."""

    kind: str
    provider: str = "*"
    route: str | None = None
    job_id: str | None = None
    status: int = 500
    retry_after: float | None = None
    delay: float = 30.0
    remaining: int | None = None  # None: until cleared
    # A status fault's text, e.g. Basiq's 403 "Rate limit exceeded" or "Token has expired".
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")


@dataclass
class Tokens:
    """Issued tokens and when they expire."""

    ttl: float = 3600.0
    issued: dict[str, float] = field(default_factory=dict)

    def issue(self, ttl: float | None = None) -> tuple[str, float]:
        token = secrets.token_urlsafe(24)
        life = self.ttl if ttl is None else ttl
        self.issued[token] = time.time() + life
        return token, life

    def check(self, request: Request) -> str | None:
        """'ok', 'expired' or None (missing or unknown)."""
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return None
        expires = self.issued.get(header[7:])
        if expires is None:
            return None
        return "ok" if time.time() < expires else "expired"

    def expire_all(self) -> None:
        for token in self.issued:
            self.issued[token] = 0.0


class Simulator:
    def __init__(self, step_seconds: float = 2.0, token_ttl: float = 3600.0, seed: int | None = None) -> None:
        self.book = JobBook()
        self.tokens = Tokens(ttl=token_ttl)
        self.step_seconds = step_seconds
        self.requests: Counter[str] = Counter()
        self.faults: list[Fault] = []
        self.rng = random.Random(seed)
        self.providers: dict[str, Any] = {}

    # --- jobs ------------------------------------------------------------------------
    def create(self, provider: str, **spec: Any) -> SimJob:
        module = self.providers[provider]
        spec.setdefault("step_seconds", self.step_seconds)
        if "age" in spec:  # a job created this many seconds ago (history, week-old jobs)
            spec["created"] = time.time() - float(spec.pop("age"))
        scenario = spec.get("scenario", "success")
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}")
        job: SimJob = module.new_job(self, **spec)
        return self.book.add(job)

    def random_job(self) -> SimJob:
        provider = self.rng.choice(sorted(self.providers))
        scenario = self.rng.choices(["success", "fail", "slow", "stuck", "partial"], [6, 2, 1, 1, 1])[0]
        return self.create(provider, scenario=scenario)

    # --- faults ----------------------------------------------------------------------
    def fault_for(self, provider: str, route: str, job_id: str | None) -> Fault | None:
        for f in self.faults:
            if f.provider not in ("*", provider):
                continue
            if f.route is not None and not route.startswith(f.route):
                continue
            if f.job_id is not None and f.job_id != job_id:
                continue
            if f.remaining is not None:
                if f.remaining <= 0:
                    continue
                f.remaining -= 1
            return f
        return None

    def app(self) -> Starlette:
        from exporter.simulator import providers

        routes: list[Route] = []
        for name, module in providers.MODULES.items():
            self.providers[name] = module
            routes.extend(module.routes(self))
        routes.extend(self.control_routes())
        return Starlette(routes=routes)

    # --- control ---------------------------------------------------------------------
    def control_routes(self) -> list[Route]:
        async def create(request: Request) -> Response:
            spec = await request.json()
            provider = spec.pop("provider", None)
            if provider not in self.providers:
                return JSONResponse({"error": f"provider must be one of {sorted(self.providers)}"}, 422)
            count = spec.pop("count", None)  # a fleet at once (benchmarks): answers the ids only
            try:
                if isinstance(count, int) and count > 0:
                    ids = [self.create(provider, **dict(spec)).id for _ in range(count)]
                    return JSONResponse({"provider": provider, "ids": ids}, 201)
                job = self.create(provider, **spec)
            except (TypeError, ValueError) as e:
                return JSONResponse({"error": str(e)}, 422)
            return JSONResponse(
                {
                    "provider": provider,
                    "id": job.id,
                    "scenario": job.scenario,
                    "owner": job.owner,
                    "created": job.created,
                },
                201,
            )

        async def stats(request: Request) -> Response:
            return JSONResponse(
                {
                    "requests": dict(self.requests),
                    "jobs": {p: len(jobs) for p, jobs in self.book.jobs.items()},
                }
            )

        async def faults(request: Request) -> Response:
            if request.method == "DELETE":
                self.faults.clear()
                return Response(status_code=204)
            spec = await request.json()
            try:
                fault = Fault(**spec)
            except (TypeError, ValueError) as e:
                return JSONResponse({"error": str(e)}, 422)
            self.faults.append(fault)
            return JSONResponse({"faults": len(self.faults)}, 201)

        async def expire(request: Request) -> Response:
            self.tokens.expire_all()
            return Response(status_code=204)

        return [
            Route("/_sim/jobs", create, methods=["POST"]),
            Route("/_sim/stats", stats),
            Route("/_sim/faults", faults, methods=["POST", "DELETE"]),
            Route("/_sim/tokens/expire", expire, methods=["POST"]),
        ]


def guarded(
    sim: Simulator, provider: str, key: str, handler: Callable[[Request], Any]
) -> Callable[[Request], Any]:
    """Wrap a provider route: count it, then apply any matching fault."""

    async def wrapped(request: Request) -> Response:
        sim.requests[key] += 1
        fault = sim.fault_for(provider, key, request.path_params.get("job_id"))
        if fault is None:
            response: Response = await handler(request)
            return response
        return await misbehave(sim, fault, request, handler)

    return wrapped


async def misbehave(
    sim: Simulator, fault: Fault, request: Request, handler: Callable[[Request], Any]
) -> Response:
    """Answer `request` the way `fault` says."""
    if fault.kind == "status":
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        answer: dict[str, Any] = {"error": f"injected {fault.status}"}
        if fault.detail is not None:
            answer["detail"] = fault.detail
        return JSONResponse(answer, status_code=fault.status, headers=headers)
    if fault.kind == "not_json":
        return Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html")
    if fault.kind == "oversized":

        async def big() -> AsyncIterator[bytes]:
            yield b'{"pad":"'
            for _ in range(64):
                yield b"x" * (1024 * 1024)
            yield b'"}'

        return StreamingResponse(big(), media_type="application/json")
    if fault.kind == "expire_token":
        sim.tokens.expire_all()
    if fault.kind == "timeout":
        await anyio.sleep(fault.delay)
    real: Response = await handler(request)
    body = bytes(real.body)
    if fault.kind == "truncated":
        return Response(
            body[: max(1, len(body) // 2)], status_code=real.status_code, media_type="application/json"
        )
    if fault.kind == "wrong_content_type":
        return Response(body, status_code=real.status_code, media_type="text/plain")
    if fault.kind == "trickle":

        async def slow() -> AsyncIterator[bytes]:
            for i in range(len(body)):
                yield body[i : i + 1]
                await anyio.sleep(fault.delay)

        return StreamingResponse(slow(), status_code=real.status_code, media_type="application/json")
    if fault.kind == "reset":

        async def broken() -> AsyncIterator[bytes]:
            yield body[: len(body) // 2]
            raise ConnectionResetError("injected connection reset")

        headers = {"Content-Length": str(len(body))}
        return StreamingResponse(
            broken(), status_code=real.status_code, media_type="application/json", headers=headers
        )
    return real
