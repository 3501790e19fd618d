"""AIMS360's wire format: the OData backgroundjob list (`$filter`, 50 rows a page, `@odata.nextLink`)
and `POST …/backgroundjob/{jobID}/rerun`. A static bearer token, as generated in the ERP."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter.simulator.lifecycle import SimJob

if TYPE_CHECKING:
    from exporter.simulator.app import Simulator

NAME = "aims360"
PAGE_SIZE = 50
MAX_URL = 2048  # longer request lines are refused, as IIS and most proxies do
PURGE_DAYS = 30
CATEGORIES = (
    ("Reports", "Production Forecasting Report"),
    ("Reports", "Open Orders Report"),
    ("Imports", "Style Import"),
    ("Exports", "Inventory Export"),
)
CLAUSE = re.compile(r"^\(?\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*\)?$")


def dotnet(ts: float | None) -> str | None:
    """A .NET round-trip timestamp: seven fractional digits."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def new_job(sim: Simulator, **spec: Any) -> SimJob:
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")[:17]
    spec.setdefault("id", f"{uuid.UUID(int=sim.rng.getrandbits(128), version=4)}-{stamp}")
    category = sim.rng.choice(CATEGORIES)
    spec.setdefault("job_type", "/".join(category))
    spec.setdefault("error_detail", "The report could not be generated: timeout reading the warehouse.")
    extra = spec.setdefault("extra", {})
    extra.setdefault("row_id", int(sim.book.new_id()) + 50000)
    extra.setdefault("attempts", 0)
    # What a rerun of this job does when it fails: a scenario for the new job.
    extra.setdefault("rerun_scenario", "success")
    return SimJob(provider=NAME, **spec)


def row(job: SimJob, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    phase, _, percent = job.state(now)
    status, text = {
        "pending": ("Queued", "Job is queued."),
        "awaiting_user": ("Queued", "Job is queued."),
        "running": ("Inprogress", "Job is in progress."),
        "succeeded": ("Completed", "Report completed."),
        "failed": ("Failed", job.error_detail),
    }[phase]
    category, _, sub = job.job_type.partition("/")
    started = job.started_at() if phase not in ("pending", "awaiting_user") else None
    return {
        "ID": job.extra["row_id"],
        "jobCategoryID": 1002,
        "categoryName": category,
        "jobSubCategoryID": 1003,
        "subCategoryName": sub,
        "jobDescription": f"Create {sub}",
        "clientRequestId": None,
        "jobStatus": status,
        "jobStatusText": text,
        "percentCompleted": int(percent) if phase != "succeeded" else 100,
        "jobID": job.id,
        "startDate": dotnet(started),
        "completedDate": dotnet(job.finished_at(now)),
        "purgeDateTime": dotnet(job.created + PURGE_DAYS * 86400),
        "purgeDays": PURGE_DAYS,
        "canReRun": "Yes" if phase == "failed" else "No",
        "numberOfAttempts": job.extra["attempts"],
        "createdBy": "support@aims360.com",
        "createdDate": dotnet(job.created),
        "modifiedBy": "support@aims360.com",
        "modifiedDate": dotnet(job.updated_at(now)),
    }


def matcher(odata_filter: str) -> Any:
    """A predicate for `field eq 'value' or …` (the subset the exporter sends); None if unsupported."""
    clauses = []
    for part in re.split(r"\s+or\s+", odata_filter.strip()):
        m = CLAUSE.match(part.strip())
        if m is None:
            return None
        clauses.append((m.group(1), m.group(2).replace("''", "'")))
    return lambda r: any(str(r.get(field)) == value for field, value in clauses)


def odata_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": "", "message": message}}, status_code=status)


def routes(sim: Simulator) -> list[Route]:
    from exporter.simulator.app import CREDENTIALS, guarded

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {CREDENTIALS['bearer_token']}"

    async def jobs(request: Request) -> Response:
        if len(str(request.url)) > MAX_URL:
            return Response("URI Too Long", status_code=414)
        if not authorised(request):
            return odata_error(401, "Authorization has been denied for this request.")
        odata_filter = request.query_params.get("$filter", "")
        rows = [row(j) for j in sorted(sim.book.of(NAME), key=lambda j: j.created)]
        if odata_filter:
            match = matcher(odata_filter)
            if match is None:
                return odata_error(400, f"The query specified in the URI is not valid: {odata_filter[:80]}")
            rows = [r for r in rows if match(r)]
        skip = int(request.query_params.get("$skip", "0") or 0)
        body: dict[str, Any] = {
            "@odata.context": f"{request.base_url}aims360/jobsmanagement/odata/v1.0/$metadata#backgroundjob",
            "value": rows[skip : skip + PAGE_SIZE],
        }
        if skip + PAGE_SIZE < len(rows):
            query = urlencode({"$filter": odata_filter, "$skip": skip + PAGE_SIZE})
            body["@odata.nextLink"] = f"{request.url.replace(query=query)}"
        return JSONResponse(body)

    async def rerun(request: Request) -> Response:
        if not authorised(request):
            return odata_error(401, "Authorization has been denied for this request.")
        old = sim.book.get(NAME, request.path_params["job_id"])
        if old is None:
            return odata_error(404, "Job not found.")
        if old.state()[0] != "failed":
            return odata_error(400, "Only a failed job can be re-run.")
        new = sim.create(
            NAME,
            scenario=old.extra["rerun_scenario"],
            job_type=old.job_type,
            step_seconds=old.step_seconds,
            error_detail=old.error_detail,
            extra={"attempts": old.extra["attempts"] + 1, "rerun_scenario": old.extra["rerun_scenario"]},
        )
        return JSONResponse(
            {
                "jobId": new.id,
                "jobStatus": "Queued",
                "publishLink": f"{request.base_url}aims360/reports/v1.0/publishlink/{new.extra['row_id']}",
                "publishLinkAccessScope": "Private",
            }
        )

    return [
        Route(
            "/aims360/jobsmanagement/odata/v1.0/backgroundjob",
            guarded(sim, NAME, "aims360.backgroundjob", jobs),
        ),
        Route(
            "/aims360/jobsmanagement/v1.0/backgroundjob/{job_id}/rerun",
            guarded(sim, NAME, "aims360.rerun", rerun),
            methods=["POST"],
        ),
    ]
