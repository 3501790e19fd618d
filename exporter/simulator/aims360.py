"""AIMS360's wire format: the OData backgroundjob list (`$filter`, 50 rows a page, `@odata.nextLink`)
and `POST …/backgroundjob/{jobID}/rerun`. A static bearer token, as generated in the ERP.

As the service does, a running job may still say `Queued` while its `percentCompleted` rises,
and `@odata.nextLink` names a backend host (BACKEND_HOST, which never resolves) rather than the
one called (when NEXT_LINK_BACKEND is set): a client must request its path and query from the
host it was configured with.

Options (keys of `POST /_sim/jobs` with `"provider": "aims360"`):

- `rerun_scenario`: what a rerun of the job does (default `success`);
- `rerun_new_id`: whether a rerun answers a new `jobId` or the same one, queued again
  (default RERUN_NEW_ID);
- `can_rerun: false`: a failed job says `canReRun: "No"` and refuses reruns;
- `rerun_window`: seconds after the failure during which a rerun is allowed
  (`maximumDateTimeToExecuteJob`; default a day; null: no limit and the field is null);
- `queued_until`: percent below which a running job still says `Queued` (default 50);
- `undocumented_status`: the `jobStatus` a running job says instead, one AIMS360 does not
  document (e.g. `OnHold`): with `scenario: "stuck"`, a job held in a new state.
"""

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

from exporter.simulator.lifecycle import SimJob, provider_options
from exporter.simulator.serving import CREDENTIALS, guarded

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
# The service's nextLink names a backend host; this one never resolves, so only a client that
# keeps to its configured host reads the next page. NEXT_LINK_BACKEND says whether links name it.
BACKEND_HOST = "aims360-backend-1.invalid"
NEXT_LINK_BACKEND = True
RERUN_NEW_ID = False
OPTIONS = (
    "rerun_scenario",
    "rerun_new_id",
    "can_rerun",
    "rerun_window",
    "queued_until",
    "undocumented_status",
)
# `field eq 'value'`, in parentheses or not; OData's keywords in any case, as the service takes them.
CLAUSE = re.compile(r"^\(?\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*\)?$", re.IGNORECASE)
OR = re.compile(r"\s+or\s+", re.IGNORECASE)


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
    extra = provider_options(spec, OPTIONS)
    extra.setdefault("row_id", int(sim.book.new_id()) + 50000)
    extra.setdefault("attempts", 0)
    # What a rerun of this job does when it fails.
    extra.setdefault("rerun_scenario", "success")
    extra.setdefault("rerun_window", 86400.0)
    return SimJob(provider=NAME, **spec)


def rerun_deadline(job: SimJob, now: float) -> float | None:
    """`maximumDateTimeToExecuteJob` of a failed job: until when it may be rerun (None: no limit)."""
    finished = job.finished_at(now)
    window = job.extra.get("rerun_window")
    if finished is None or window is None:
        return None
    return finished + float(window)


def may_rerun(job: SimJob, now: float) -> bool:
    if job.state(now)[0] != "failed" or not job.extra.get("can_rerun", True):
        return False
    deadline = rerun_deadline(job, now)
    return deadline is None or now <= deadline


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
    if phase == "running" and percent < float(job.extra.get("queued_until", 50)):
        status, text = "Queued", "Job is queued."  # the service moves the status late
    if phase == "running" and job.extra.get("undocumented_status"):
        status = str(job.extra["undocumented_status"])
        text = f"Job is {status}."
    created = float(job.extra.get("first_created", job.created))
    failed = phase == "failed"
    deadline = rerun_deadline(job, now) if failed and job.extra.get("can_rerun", True) else None
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
        "purgeDateTime": dotnet(created + PURGE_DAYS * 86400),
        "purgeDays": PURGE_DAYS,
        "canReRun": "Yes" if failed and job.extra.get("can_rerun", True) else "No",
        "maximumDateTimeToExecuteJob": dotnet(deadline),
        "numberOfAttempts": job.extra["attempts"],
        "createdBy": "support@aims360.com",
        "createdDate": dotnet(created),
        "modifiedBy": "support@aims360.com",
        "modifiedDate": dotnet(job.updated_at(now)),
    }


def matcher(odata_filter: str) -> Any:
    """A predicate for `field eq 'value' or …` (the subset the exporter sends); None if unsupported.

    Field names match whatever their case, as the service's do: its documentation filters on
    `jobId` while its rows spell `jobID`, and both are answered alike. Values compare exactly.
    """
    text = odata_filter.strip()
    while text.startswith("(") and text.endswith(")") and "(" not in text[1:-1]:
        text = text[1:-1].strip()
    clauses = []
    for part in OR.split(text):
        m = CLAUSE.match(part.strip())
        if m is None:
            return None
        clauses.append((m.group(1).lower(), m.group(2).replace("''", "'")))

    def match(r: dict[str, Any]) -> bool:
        fields = {key.lower(): value for key, value in r.items()}
        return any(str(fields.get(field)) == value for field, value in clauses)

    return match


def odata_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": "", "message": message}}, status_code=status)


def routes(sim: Simulator) -> list[Route]:

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
            url = request.url.replace(query=query)
            if NEXT_LINK_BACKEND:
                url = url.replace(hostname=BACKEND_HOST)
            body["@odata.nextLink"] = str(url)
        return JSONResponse(body)

    async def rerun(request: Request) -> Response:
        if not authorised(request):
            return odata_error(401, "Authorization has been denied for this request.")
        old = sim.book.get(NAME, request.path_params["job_id"])
        if old is None:
            return odata_error(404, "Job not found.")
        now = time.time()
        if old.state(now)[0] != "failed":
            return odata_error(400, "Only a failed job can be re-run.")
        if not may_rerun(old, now):
            return odata_error(400, "This job can no longer be re-run.")
        if not old.extra.get("rerun_new_id", RERUN_NEW_ID):
            # The same job runs again: same jobID, a new attempt, its timeline starts over.
            old.extra.setdefault("first_created", old.created)
            old.extra["attempts"] += 1
            old.scenario = old.extra["rerun_scenario"]
            old.created = now
            return JSONResponse(
                {
                    "jobId": old.id,
                    "jobStatus": "Queued",
                    "publishLink": f"{request.base_url}aims360/reports/v1.0/publishlink/{old.extra['row_id']}",
                    "publishLinkAccessScope": "Private",
                }
            )
        new = sim.create(
            NAME,
            scenario=old.extra["rerun_scenario"],
            job_type=old.job_type,
            step_seconds=old.step_seconds,
            error_detail=old.error_detail,
            extra={
                "attempts": old.extra["attempts"] + 1,
                "rerun_scenario": old.extra["rerun_scenario"],
                "rerun_new_id": True,
            },
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
