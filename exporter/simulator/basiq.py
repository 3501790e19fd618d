"""Basiq's wire format: `POST /token`, `GET /jobs/{id}`, `GET /users/{id}/jobs`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter.simulator.lifecycle import SimJob

if TYPE_CHECKING:
    from exporter.simulator.app import Simulator

NAME = "basiq"
STEPS = ("verify-credentials", "retrieve-accounts", "retrieve-transactions")
TOKEN_LIMIT = 1500  # per 5 minutes per IP, as Basiq documents
USERS = ("ea3a81", "b71f02")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def new_job(sim: Simulator, **spec: Any) -> SimJob:
    spec.setdefault("id", sim.book.new_id())
    spec.setdefault("steps", STEPS)
    spec.setdefault("owner", sim.rng.choice(USERS))
    spec.setdefault("job_type", "connection")
    spec.setdefault("fail_step", 1)
    return SimJob(provider=NAME, **spec)


def error(status: int, code: str, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": "list",
            "correlationId": "sim",
            "data": [{"type": "error", "code": code, "title": title, "detail": detail}],
        },
        status_code=status,
    )


def job_body(job: SimJob, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    phase, index, _ = job.state(now)
    steps = []
    for i, title in enumerate(job.steps):
        result: Any = None
        if phase == "awaiting_user" and i == 0:
            status = "in-progress"
            result = {
                "type": "mfa",
                "method": "token",
                "description": "Enter the code sent to your phone",
                "expiryMs": 120000,
                "isRetry": False,
            }
        elif i < index or phase == "succeeded":
            status = "success"
            result = {"type": "link", "url": f"/users/{job.owner}/connections/8fce3b"}
        elif i == index and phase == "failed":
            status = "failed"
            result = {"code": job.error_code, "title": "Job failed", "detail": job.error_detail}
        elif i == index and phase == "running":
            status = "in-progress"
        else:
            status = "pending"
        steps.append({"title": title, "status": status, "result": result})
    return {
        "type": "job",
        "id": job.id,
        "jobType": job.job_type,
        "created": iso(job.created),
        "updated": iso(job.updated_at(now)),
        "steps": steps,
        "links": {"self": f"/jobs/{job.id}", "source": f"/users/{job.owner}/connections/8fce3b"},
    }


def routes(sim: Simulator) -> list[Route]:
    from exporter.simulator.app import CREDENTIALS, guarded

    token_calls: list[float] = []

    def authorised(request: Request) -> Response | None:
        state = sim.tokens.check(request)
        if state == "ok":
            return None
        if state == "expired":
            return error(403, "forbidden-access", "Forbidden Access", "Token has expired")
        return error(401, "unauthorized-access", "Unauthorized Access", "You are not authorized")

    async def token(request: Request) -> Response:
        now = time.time()
        token_calls[:] = [t for t in token_calls if now - t < 300] + [now]
        if len(token_calls) > TOKEN_LIMIT:
            return error(403, "forbidden-access", "Forbidden Access", "Rate limit of the token endpoint")
        if request.headers.get("authorization") != f"Basic {CREDENTIALS['basiq_api_key']}":
            return error(401, "unauthorized-access", "Unauthorized Access", "Invalid API key")
        if request.headers.get("basiq-version") != "3.0":
            return error(400, "parameter-not-valid", "Parameter not valid", "basiq-version must be 3.0")
        form = parse_qs((await request.body()).decode())
        if form.get("scope") != ["SERVER_ACCESS"]:
            return error(400, "parameter-not-valid", "Parameter not valid", "scope")
        access, life = sim.tokens.issue()
        return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": int(life)})

    async def get_job(request: Request) -> Response:
        if (denied := authorised(request)) is not None:
            return denied
        job = sim.book.get(NAME, request.path_params["job_id"])
        if job is None:
            return error(404, "resource-not-found", "Resource not found", "Job not found")
        return JSONResponse(job_body(job))

    async def user_jobs(request: Request) -> Response:
        if (denied := authorised(request)) is not None:
            return denied
        user = request.path_params["user_id"]
        jobs = [
            job_body(j) for j in sim.book.of(NAME) if j.owner == user and time.time() - j.created < 7 * 86400
        ]
        return JSONResponse({"type": "list", "data": jobs, "links": {"self": f"/users/{user}/jobs"}})

    return [
        Route("/basiq/token", guarded(sim, NAME, "basiq.token", token), methods=["POST"]),
        Route("/basiq/jobs/{job_id}", guarded(sim, NAME, "basiq.job", get_job)),
        Route("/basiq/users/{user_id}/jobs", guarded(sim, NAME, "basiq.user_jobs", user_jobs)),
    ]
