"""Basiq's wire format: `POST /token`, `GET /jobs/{id}`, `GET /users/{id}/jobs`.

Scenarios and options (keys of `POST /_sim/jobs` with `"provider": "basiq"`; see lifecycle.py for
the shared ones, e.g. `age` to create a job days ago, as the 7-day user lists hold):

- `scenario: "mfa"`: the job has Basiq's MFA flow (`verify-credentials`, `mfa-challenge`,
  `retrieve-accounts`, `retrieve-transactions`); after the first step the `mfa-challenge` step is
  in progress with `[{"type": "mfa", …}]` for ever, or, with `mfa_expiry: <seconds>`, until it
  expires: then the step fails with `error_code` (default `job-timed-out`, as an unanswered
  challenge times out) and the job has failed because the end user never answered.
- `result_form: "array" | "object"`: how step results are sent (default RESULT_FORM; Basiq's
  job examples send arrays, the user-jobs list objects). Errors follow the same form.
- `job_type: "statement"`: a statement job (`verify-credentials`, `retrieve-statements`) whose
  stamps are `createdDate`/`updatedDate`.
- `top_status: true`: the job also carries a top-level `status` (the step vocabulary).
- `error_code`, `fail_step`, `owner` (the user whose list holds the job) as for every provider.

As Basiq documents them: `GET /users/{id}/jobs` lists jobs without `jobType` (its schema has
none; `GET /jobs/{id}` has it) and answers 404 "Requested user does not exist." for a user it
does not know (USERS and the owners of jobs exist); `POST /token` answers 403 "Your account has
been disabled. Please contact Basiq support." to DISABLED_KEY and 403 "Invalid request" (its
rate limit, as if the IP had spent its 1,500 calls) to THROTTLED_KEY.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter.simulator.lifecycle import SimJob, provider_options
from exporter.simulator.serving import CREDENTIALS, guarded

if TYPE_CHECKING:
    from exporter.simulator.app import Simulator

NAME = "basiq"
STEPS = ("verify-credentials", "retrieve-accounts", "retrieve-transactions")
MFA_STEPS = ("verify-credentials", "mfa-challenge", "retrieve-accounts", "retrieve-transactions")
STATEMENT_STEPS = ("verify-credentials", "retrieve-statements")
TOKEN_LIMIT = 1500  # per 5 minutes per IP, as Basiq documents
USERS = ("ea3a81", "b71f02")
LIST_DAYS = 7  # a user's job list holds the jobs of the last 7 days
OPTIONS = ("result_form", "mfa_expiry", "top_status")
# API keys the token endpoint refuses with each of its two 403s (the demo's key is CREDENTIALS').
DISABLED_KEY = "ZGlzYWJsZWQtYWNjb3VudDpzZWNyZXQ="
THROTTLED_KEY = "dGhyb3R0bGVkLWlwOnNlY3JldA=="
RESULT_FORM = "array"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def new_job(sim: Simulator, **spec: Any) -> SimJob:
    extra = provider_options(spec, OPTIONS)
    if extra.get("result_form", RESULT_FORM) not in ("array", "object"):
        raise ValueError("result_form must be array or object")
    spec.setdefault("id", sim.book.new_id())
    spec.setdefault("job_type", "connection")
    if spec.get("scenario") == "mfa":
        spec.setdefault("steps", MFA_STEPS)
        spec.setdefault("error_code", "job-timed-out")
        spec.setdefault("error_detail", "The MFA challenge was not answered in time.")
    elif spec["job_type"] == "statement":
        spec.setdefault("steps", STATEMENT_STEPS)
    spec.setdefault("steps", STEPS)
    spec.setdefault("owner", sim.rng.choice(USERS))
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


def mfa_steps(job: SimJob, now: float) -> tuple[list[tuple[str, Any]], float]:
    """(status, result) of each step of an MFA job at `now`, and its last update."""
    per = job.seconds_per_step
    start = job.started_at()
    elapsed = now - start
    expiry = job.extra.get("mfa_expiry")
    challenge = {
        "type": "mfa",
        "method": "token",
        "description": "Enter the code sent to your phone",
        "expiryMs": int((expiry if expiry is not None else 120) * 1000),
        "isRetry": False,
    }
    pending: tuple[str, Any] = ("pending", None)
    if elapsed < 0:
        return [pending] * len(job.steps), job.created
    link = ("success", {"type": "link", "url": f"/users/{job.owner}/connections/8fce3b"})
    if elapsed < per:
        return [("in-progress", None)] + [pending] * (len(job.steps) - 1), start
    if expiry is not None and elapsed >= per + expiry:
        failure = (
            "failed",
            {"code": job.error_code, "title": "MFA challenge expired", "detail": job.error_detail},
        )
        return [link, failure] + [pending] * (len(job.steps) - 2), start + per + expiry
    return [link, ("in-progress", challenge)] + [pending] * (len(job.steps) - 2), start + per


def plain_steps(job: SimJob, now: float) -> list[tuple[str, Any]]:
    phase, index, _ = job.state(now)
    out: list[tuple[str, Any]] = []
    for i in range(len(job.steps)):
        if i < index or phase == "succeeded":
            out.append(("success", {"type": "link", "url": f"/users/{job.owner}/connections/8fce3b"}))
        elif i == index and phase == "failed":
            out.append(
                ("failed", {"code": job.error_code, "title": "Job failed", "detail": job.error_detail})
            )
        elif i == index and phase == "running":
            out.append(("in-progress", None))
        else:
            out.append(("pending", None))
    return out


def overall(statuses: list[str]) -> str:
    if "failed" in statuses:
        return "failed"
    if all(s == "success" for s in statuses):
        return "success"
    if any(s != "pending" for s in statuses):
        return "in-progress"
    return "pending"


def job_body(job: SimJob, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    if job.scenario == "mfa":
        states, updated = mfa_steps(job, now)
    else:
        states, updated = plain_steps(job, now), job.updated_at(now)
    as_array = job.extra.get("result_form", RESULT_FORM) == "array"
    steps = []
    for title, (status, result) in zip(job.steps, states, strict=True):
        if result is not None and status == "failed":
            result = {"type": "error", **result} if as_array else result
        if result is not None and as_array:
            result = [result]
        steps.append({"title": title, "status": status, "result": result})
    statement = job.job_type == "statement"
    body: dict[str, Any] = {"type": "job", "id": job.id, "jobType": job.job_type}
    body["createdDate" if statement else "created"] = iso(job.created)
    body["updatedDate" if statement else "updated"] = iso(updated)
    if job.extra.get("top_status"):
        body["status"] = overall([s for s, _ in states])
    body["steps"] = steps
    # Only connection jobs name their source (Basiq's JobsLinks schema).
    body["links"] = {"self": f"/jobs/{job.id}"}
    if job.job_type == "connection":
        body["links"]["source"] = f"/users/{job.owner}/connections/8fce3b"
    return body


def listed_body(job: SimJob, now: float | None = None) -> dict[str, Any]:
    """A job as `GET /users/{id}/jobs` lists it: no `jobType` (the documented list has none),
    with its institution."""
    body = job_body(job, now)
    del body["jobType"]
    body["institution"] = {"type": "institution", "id": "AU00000", "links": {"self": "/institutions/AU00000"}}
    return body


def routes(sim: Simulator) -> list[Route]:

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
        key = request.headers.get("authorization", "")
        if len(token_calls) > TOKEN_LIMIT or key == f"Basic {THROTTLED_KEY}":
            # Basiq's error guide: 403 "Invalid request" past 1,500 calls per 5 minutes per IP.
            return error(403, "forbidden-access", "Forbidden Access", "Invalid request")
        if key == f"Basic {DISABLED_KEY}":
            detail = "Your account has been disabled. Please contact Basiq support."
            return error(403, "forbidden-access", "Forbidden Access", detail)
        if key != f"Basic {CREDENTIALS['basiq_api_key']}":
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
        owned = [j for j in sim.book.of(NAME) if j.owner == user]
        if user not in USERS and not owned:
            return error(
                404,
                "resource-not-found",
                "Requested resource is not found.",
                "Requested user does not exist.",
            )
        jobs = [listed_body(j) for j in owned if time.time() - j.created < LIST_DAYS * 86400]
        return JSONResponse({"type": "list", "data": jobs, "links": {"self": f"/users/{user}/jobs"}})

    return [
        Route("/basiq/token", guarded(sim, NAME, "basiq.token", token), methods=["POST"]),
        Route("/basiq/jobs/{job_id}", guarded(sim, NAME, "basiq.job", get_job)),
        Route("/basiq/users/{user_id}/jobs", guarded(sim, NAME, "basiq.user_jobs", user_jobs)),
    ]
