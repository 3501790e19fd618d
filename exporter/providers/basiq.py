"""Basiq jobs (`GET /jobs/{id}`) with steps, and discovery through `GET /users/{id}/jobs`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from exporter.fetch import NotFound, PollError
from exporter.model import Job, Status, Step
from exporter.parsing import bounded_reason, parse_timestamp
from exporter.providers.base import BadPayload, Http, PollResult, Provider, fetch_each, gather

STEP_STATUS = {
    "pending": Status.PENDING,
    "in-progress": Status.RUNNING,
    "success": Status.SUCCEEDED,
    "failed": Status.FAILED,
}


def _error_of(result: Any) -> tuple[str | None, str | None]:
    """(code, free text) of a failed step's result, in any of Basiq's three spellings."""
    if not isinstance(result, dict):
        return None, None
    if result.get("type") == "list" and isinstance(result.get("data"), list):
        for item in result["data"]:
            if isinstance(item, dict):
                return _error_of(item)
        return None, None
    code = result.get("code")
    text = result.get("detail") or result.get("details") or result.get("title")
    return bounded_reason(code), (str(text) if text else None)


def parse_step(obj: Any) -> Step:
    if not isinstance(obj, dict) or not isinstance(obj.get("title"), str):
        raise BadPayload("steps[].title")
    raw = str(obj.get("status") or "")
    status = STEP_STATUS.get(raw.lower(), Status.UNKNOWN)
    result = obj.get("result")
    awaiting = isinstance(result, dict) and result.get("type") == "mfa" and not status.terminal
    reason, message = _error_of(result) if status is Status.FAILED else (None, None)
    return Step(obj["title"], status, raw, reason, message, awaiting)


def job_status(steps: Sequence[Step]) -> Status:
    """A Basiq job has no status of its own: it is the sum of its steps."""
    if not steps:
        return Status.PENDING
    if any(s.status is Status.FAILED for s in steps):
        return Status.FAILED
    if all(s.status is Status.SUCCEEDED for s in steps):
        return Status.SUCCEEDED
    if any(s.status in (Status.RUNNING, Status.SUCCEEDED) for s in steps):
        return Status.RUNNING
    if all(s.status is Status.PENDING for s in steps):
        return Status.PENDING
    return Status.UNKNOWN


class Basiq(Provider):
    name = "basiq"
    job_path = "/jobs/{id}"
    config_keys: ClassVar[frozenset[str]] = frozenset({"jobs", "users"})
    known_reasons = (
        "invalid-credentials",
        "user-action-required",
        "system-unavailable",
        "maintenance",
        "connector-error",
        "institution-not-available",
        "service-unavailable",
        "job-timed-out",
        "unknown-error",
    )

    def parse_job(self, obj: Any) -> Job:
        if not isinstance(obj, dict):
            raise BadPayload("job is not an object")
        job_id = obj.get("id")
        if not isinstance(job_id, str | int) or isinstance(job_id, bool) or not str(job_id):
            raise BadPayload("id")
        raw_steps = obj.get("steps") or []
        if not isinstance(raw_steps, list):
            raise BadPayload("steps")
        steps = tuple(parse_step(s) for s in raw_steps)
        status = job_status(steps)
        failed = next((s for s in steps if s.status is Status.FAILED), None)
        created = parse_timestamp(obj.get("created"))
        updated = parse_timestamp(obj.get("updated"))
        raw = ",".join(f"{s.name}:{s.raw_status}" for s in steps)
        return Job(
            id=str(job_id),
            status=status,
            raw_status=raw,
            job_type=str(obj.get("jobType") or ""),
            created=created,
            # Basiq starts a job as it is created, and its last update of a finished job is its end.
            started=created,
            finished=updated if status.terminal else None,
            updated=updated,
            steps=steps,
            reason=(failed.reason or "unknown-error") if failed else None,
            message=failed.message if failed else None,
            awaiting_user=any(s.awaiting_user for s in steps),
        )

    async def poll(self, http: Http, tracked: Sequence[str]) -> PollResult:
        result = PollResult()
        seen: set[str] = set()

        async def user_jobs(user: str) -> list[Any]:
            body = await http.get_json(f"/users/{user}/jobs")
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise BadPayload("data")
            return list(body["data"])

        for user, outcome in await gather(self.target.users, user_jobs):
            if isinstance(outcome, list):
                for obj in outcome:
                    try:
                        job = self.parse_job(obj)
                    except BadPayload as e:
                        result.bad_payloads.append(f"user {user} job list: {e}")
                        continue
                    result.jobs.append(job)
                    seen.add(job.id)
            elif isinstance(outcome, BadPayload):
                result.bad_payloads.append(f"user {user} job list: {outcome}")
            elif isinstance(outcome, NotFound | PollError):
                pass  # counted by the client; the user's jobs are polled one by one below

        rest = [job_id for job_id in tracked if job_id not in seen]
        direct = await fetch_each(http, rest, lambda job_id: f"/jobs/{job_id}", self.parse_job)
        result.jobs.extend(direct.jobs)
        result.gone.extend(direct.gone)
        result.bad_payloads.extend(direct.bad_payloads)
        return result
