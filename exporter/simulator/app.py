"""The simulator's server: job book, request counts, the faults injected and the control endpoints
(`/_sim/…`). Each provider's wire format lives in its own module; what their routes share with
this one (credentials, tokens, `guarded`) in exporter.simulator.serving."""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter, deque
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter.simulator.lifecycle import SCENARIOS, JobBook, SimJob
from exporter.simulator.serving import JOB_REQUESTS_KEPT, Fault, JobRequest, Tokens


class Simulator:
    def __init__(self, step_seconds: float = 2.0, token_ttl: float = 3600.0, seed: int | None = None) -> None:
        self.book = JobBook()
        self.tokens = Tokens(ttl=token_ttl)
        self.step_seconds = step_seconds
        self.requests: Counter[str] = Counter()
        self.job_requests: deque[JobRequest] = deque(maxlen=JOB_REQUESTS_KEPT)
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

        async def job_requests(request: Request) -> Response:
            """Requests about jobs (`?job_id=` one of them), oldest first: who asked, and when."""
            job_id = request.query_params.get("job_id")
            return JSONResponse(
                {
                    "requests": [
                        dataclasses.asdict(r)
                        for r in list(self.job_requests)
                        if job_id is None or r.job_id == job_id
                    ]
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
            Route("/_sim/requests", job_requests),
            Route("/_sim/faults", faults, methods=["POST", "DELETE"]),
            Route("/_sim/tokens/expire", expire, methods=["POST"]),
        ]
