"""A generic JSON job API, shaped like SPEC §4's example: `GET /generic/v1/exports/{id}` and
`GET /generic/v1/exports?state=active` (`{"data": [...]}`), behind a static bearer token."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter.simulator.lifecycle import SimJob
from exporter.simulator.serving import CREDENTIALS, guarded

if TYPE_CHECKING:
    from exporter.simulator.app import Simulator

NAME = "generic"
ACTIVE = ("queued", "working", "waiting_for_input")
KINDS = ("csv_export", "pdf_export", "full_backup")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job(sim: Simulator, **spec: Any) -> SimJob:
    spec.setdefault("id", f"exp_{sim.book.new_id()}")
    spec.setdefault("steps", ("collect", "render", "upload"))
    spec.setdefault("job_type", sim.rng.choice(KINDS))
    spec.setdefault("error_code", "quota_exceeded")
    spec.setdefault("error_detail", "Export quota of the account exceeded.")
    spec.setdefault("total_records", 5000)
    return SimJob(provider=NAME, **spec)


def job_body(job: SimJob, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    phase, _, percent = job.state(now)
    state = {
        "pending": "queued",
        # Not in the demo's status_map on purpose: shows as unknown with the raw state kept.
        "awaiting_user": "waiting_for_input",
        "running": "working",
        "succeeded": "done",
        "failed": "error",
    }[phase]
    total, affected, failed = job.records(now)
    return {
        "id": job.id,
        "kind": job.job_type,
        "state": state,
        "progress": {"pct": percent, "rows": {"total": total, "written": affected, "rejected": failed}},
        "created_at": iso(job.created),
        "started_at": iso(job.started_at()) if phase not in ("pending", "awaiting_user") else None,
        "finished_at": iso(job.finished_at(now)),
        "updated_at": iso(job.updated_at(now)),
        "error": {"code": job.error_code, "message": job.error_detail} if phase == "failed" else None,
    }


def routes(sim: Simulator) -> list[Route]:

    def denied(request: Request) -> Response | None:
        if request.headers.get("authorization") == f"Bearer {CREDENTIALS['bearer_token']}":
            return None
        return JSONResponse({"error": {"code": "unauthorized", "message": "Bad token"}}, status_code=401)

    async def get_job(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        job = sim.book.get(NAME, request.path_params["job_id"])
        if job is None:
            return JSONResponse({"error": {"code": "not_found", "message": "No such export"}}, 404)
        return JSONResponse(job_body(job))

    async def list_jobs(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        bodies = [job_body(j) for j in sim.book.of(NAME)]
        if request.query_params.get("state") == "active":
            bodies = [b for b in bodies if b["state"] in ACTIVE]
        return JSONResponse({"data": bodies, "has_more": False})

    return [
        Route("/generic/v1/exports", guarded(sim, NAME, "generic.list", list_jobs)),
        Route("/generic/v1/exports/{job_id}", guarded(sim, NAME, "generic.job", get_job)),
    ]
