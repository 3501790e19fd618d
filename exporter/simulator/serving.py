"""What every provider simulator's routes share with the server: the credentials it accepts, the
tokens it issues, and `guarded`, which counts each request and applies any injected fault."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

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


# Requests about one job the simulator remembers (`GET /_sim/requests`), the newest.
JOB_REQUESTS_KEPT = 200_000


@dataclass(frozen=True)
class JobRequest:
    """A request about one job: when, on which route, and who sent it. `client` tells clients
    apart by their credential (each process holds its own token from the token endpoint; a
    fingerprint, not the token), so a test can see which of several replicas polled a job."""

    at: float
    key: str
    job_id: str
    client: str


def client_of(request: Request) -> str:
    credential = request.headers.get("authorization", "")
    return hashlib.sha256(credential.encode()).hexdigest()[:12] if credential else ""


class Served(Protocol):
    """What a guarded route needs of the simulator (exporter.simulator.app.Simulator)."""

    requests: Counter[str]
    job_requests: deque[JobRequest]
    tokens: Tokens

    def fault_for(self, provider: str, route: str, job_id: str | None) -> Fault | None: ...


def guarded(
    sim: Served, provider: str, key: str, handler: Callable[[Request], Any]
) -> Callable[[Request], Any]:
    """Wrap a provider route: count it, then apply any matching fault."""

    async def wrapped(request: Request) -> Response:
        sim.requests[key] += 1
        job_id = request.path_params.get("job_id")
        if job_id is not None:
            sim.job_requests.append(JobRequest(time.time(), key, job_id, client_of(request)))
        fault = sim.fault_for(provider, key, job_id)
        if fault is None:
            response: Response = await handler(request)
            return response
        return await misbehave(sim, fault, request, handler)

    return wrapped


async def misbehave(
    sim: Served, fault: Fault, request: Request, handler: Callable[[Request], Any]
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
