"""WillSuite's wire format: `POST /oauth/token/` (JSON body) and `GET /engine/api/api-jobs/{id}`."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter.simulator.lifecycle import SimJob
from exporter.simulator.serving import CREDENTIALS, guarded

if TYPE_CHECKING:
    from exporter.simulator.app import Simulator

NAME = "willsuite"
# WillSuite writes start_time/end_time in its accounts' local time, without a zone.
LOCAL = ZoneInfo("Europe/London")
JOB_TYPES = ("customer_case_bulk_update", "customer_bulk_import", "case_export")
CASE_ERROR = "Case does not exist or record already updated."


def local(ts: float) -> str:
    return datetime.fromtimestamp(ts, LOCAL).strftime("%Y-%m-%d %H:%M:%S")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_job(sim: Simulator, **spec: Any) -> SimJob:
    spec.setdefault("id", str(uuid.UUID(int=sim.rng.getrandbits(128), version=4)))
    spec.setdefault("steps", ("validate", "update", "report"))
    spec.setdefault("job_type", sim.rng.choice(JOB_TYPES))
    spec.setdefault("total_records", 773)
    spec.setdefault("error_detail", "The import file could not be read.")
    return SimJob(provider=NAME, **spec)


def record_failures(job: SimJob, count: int) -> str:
    blocks = [
        f"Case ID: {uuid.uuid5(uuid.NAMESPACE_URL, f'{job.id}/{i}')} "
        f"failed with the following errors:\n\n{CASE_ERROR}"
        for i in range(count)
    ]
    line = "-" * 27
    return line + "\n" + ("\n" + "-" * 54 + "\n").join(blocks) + "\n" + line if blocks else ""


def job_body(job: SimJob, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    phase, _, _ = job.state(now)
    total, affected, failed = job.records(now)
    status = {
        "pending": "pending",
        "awaiting_user": "pending",
        "running": "processing",
        "succeeded": "completed",
        "failed": "failed",
    }[phase]
    finished = job.finished_at(now)
    if phase == "failed":
        message = job.error_detail
    elif phase == "succeeded":
        message = record_failures(job, failed)
    else:
        message = ""
    return {
        "id": job.id,
        "type": job.job_type,
        "company_id": "aff00be6-f734-4094-a8ae-62874485dac0",
        "start_time": local(job.started_at()) if phase not in ("pending", "awaiting_user") else None,
        "end_time": local(finished) if finished is not None else None,
        "status": status,
        "message": message,
        "total_records": total,
        "effected_records": affected,
        "created_at": iso(job.created),
        "updated_at": iso(job.updated_at(now)),
    }


def routes(sim: Simulator) -> list[Route]:

    def denied() -> Response:
        return JSONResponse({"message": "Unauthenticated."}, status_code=401)

    async def token(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid_request", "message": "expected a JSON body"}, 400)
        if not isinstance(body, dict) or body.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if body.get("client_id") != CREDENTIALS["client_id"] or (
            body.get("client_secret") != CREDENTIALS["client_secret"]
        ):
            return JSONResponse({"error": "invalid_client", "message": "Client authentication failed"}, 401)
        access, life = sim.tokens.issue()
        return JSONResponse({"token_type": "Bearer", "expires_in": int(life), "access_token": access})

    async def get_job(request: Request) -> Response:
        if sim.tokens.check(request) != "ok":
            return denied()
        job = sim.book.get(NAME, request.path_params["job_id"])
        if job is None:
            return JSONResponse({"message": "Not found."}, status_code=404)
        return JSONResponse(job_body(job))

    return [
        Route("/willsuite/oauth/token/", guarded(sim, NAME, "willsuite.token", token), methods=["POST"]),
        Route("/willsuite/engine/api/api-jobs/{job_id}", guarded(sim, NAME, "willsuite.job", get_job)),
    ]
