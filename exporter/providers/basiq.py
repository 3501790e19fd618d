"""Basiq jobs (`GET /jobs/{id}`) with steps, and discovery through `GET /users/{id}/jobs`.

A step's `result` comes as an object or as an array of them (Basiq's own examples use both),
and is a link on success, an error on failure, or an MFA challenge while the job waits for its
end user's one-time code (the `mfa-challenge` step). Connection jobs stamp `created`/`updated`,
statement jobs `createdDate`/`updatedDate`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from exporter.config import TargetConfig
from exporter.fetch import NotFound, PollError
from exporter.model import NO_EXTRA, Cause, Job, Status, Step, interned_step, shared_steps
from exporter.parsing import bounded_reason, parse_timestamp, text_id
from exporter.providers.base import (
    AnswerLedger,
    BadPayload,
    Http,
    PollResult,
    Provider,
    fetch_each,
    gather,
    parse_listed,
    segment,
)

STEP_STATUS = {
    "pending": Status.PENDING,
    "in-progress": Status.RUNNING,
    "success": Status.SUCCEEDED,
    "failed": Status.FAILED,
}
MFA_STEP = "mfa-challenge"
UNKNOWN_ERROR = "unknown-error"

USER, PROVIDER = Cause.USER, Cause.PROVIDER
# Who must act on each failure code Basiq documents (its "Handling jobs" guide and code list).
# Where the guide gives no recommended action the choice is ours: docs/providers.md says which.
CAUSES: Mapping[str, Cause] = {
    # The end user: wrong or changed credentials, a bank popup or T&Cs only they can accept,
    # a declined or revoked consent, a connection they must re-create.
    "invalid-credentials": USER,
    "user-action-required": USER,
    "account-not-accessible-requires-user-action": USER,
    "authorization-failed": USER,
    "invalid-connection": USER,
    "bank-statement-invalid": USER,
    "bank-statement-not-supported": USER,
    # The uploaded statement or CSV file, or the data sent with it (getUserJobs' result codes):
    # the end user who uploaded it, or the application that sent it, must fix and send again.
    "institution-not-found": USER,
    "missing-required-field": USER,
    "missing-required-field-value": USER,
    "invalid-field-value": USER,
    "invalid-csv-row": USER,
    "row-count-exceeded": USER,
    "account-data-differs": USER,
    "empty-file": USER,
    "txn-after-last-updated-date": USER,
    # Basiq, its connectors or the institution.
    "institution-disabled": PROVIDER,
    "institution-not-available": PROVIDER,
    "institution-not-supported": PROVIDER,
    "system-unavailable": PROVIDER,
    "service-unavailable": PROVIDER,
    "maintenance": PROVIDER,
    "maintenance-error": PROVIDER,
    "connector-error": PROVIDER,
    "job-timed-out": PROVIDER,
    "internal-server-error": PROVIDER,
    "bank-statement-parsing-error": PROVIDER,
    # A statement of a product Basiq's parser does not know yet: Basiq must add it.
    "bank-statement-new-product": PROVIDER,
    # unknown-error says nobody knows: it stays unknown.
}


def results_of(result: Any) -> list[dict[str, Any]]:
    """A step's result as a list of objects: an object, an array, or `{type: list, data: [...]}`."""
    if isinstance(result, dict):
        if result.get("type") == "list" and isinstance(result.get("data"), list):
            return [item for item in result["data"] if isinstance(item, dict)]
        return [result]
    if isinstance(result, list):
        return [item for item in result if isinstance(item, dict)]
    return []


def error_of(items: Sequence[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(code, free text) of a failed step's result, in any of Basiq's spellings."""
    for item in items:
        if item.get("type") not in (None, "error") or "code" not in item:
            continue
        text = item.get("detail") or item.get("details") or item.get("title")
        return bounded_reason(item.get("code")), (str(text) if text else None)
    return None, None


def parse_step(obj: Any) -> Step:
    if not isinstance(obj, dict) or not isinstance(obj.get("title"), str):
        raise BadPayload("steps[].title")
    raw = str(obj.get("status") or "")
    status = STEP_STATUS.get(raw.lower(), Status.UNKNOWN)
    items = results_of(obj.get("result"))
    awaiting = not status.terminal and any(item.get("type") == "mfa" for item in items)
    reason, message = error_of(items) if status is Status.FAILED else (None, None)
    return interned_step(obj["title"], status, raw, reason, message, awaiting)


_SOURCE = re.compile(r"/users/([^/?#]+)(?:/connections/([^/?#]+))?")
# Jobs of one connection share one mapping of whom they concern (bounded, emptied when full).
_WHOM: dict[tuple[str, str], Mapping[str, str]] = {}
WHOM_MAX = 4096


def _links(obj: dict[str, Any]) -> Iterator[Any]:
    links = obj.get("links")
    if isinstance(links, dict):
        yield links.get("source")
    for step in obj.get("steps") or ():
        if isinstance(step, dict):
            yield from (
                item.get("url") for item in results_of(step.get("result")) if item.get("type") == "link"
            )


def whom(obj: dict[str, Any]) -> Mapping[str, str]:
    """The end user and connection a job concerns, from its `links.source` (else a step's link):
    the application team's handle on a failure only that user can fix."""
    for url in _links(obj):
        found = _SOURCE.search(url) if isinstance(url, str) else None
        if found is None:
            continue
        key = (found.group(1), found.group(2) or "")
        mapping = _WHOM.get(key)
        if mapping is None:
            if len(_WHOM) >= WHOM_MAX:
                _WHOM.clear()
            mapping = _WHOM[key] = {"user": sys.intern(key[0])} | (
                {"connection": sys.intern(key[1])} if key[1] else {}
            )
        return mapping
    return NO_EXTRA


def job_status(steps: Sequence[Step]) -> Status:
    """A Basiq job without a status of its own is the sum of its steps."""
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


# What a job is, read from its steps when it does not say (the user-jobs list has no `jobType`):
# the step that only statement or report jobs have, else a connection's steps or source link.
TYPE_STEPS = {"retrieve-statements": "statement", "create-report": "report"}
CONNECTION_STEPS = frozenset({"verify-credentials", "retrieve-accounts", "retrieve-transactions", MFA_STEP})


def job_type_of(obj: dict[str, Any], steps: Sequence[Step]) -> str:
    """`jobType` when the job carries it, else what its steps and links say (connection,
    statement, report), else empty."""
    declared = obj.get("jobType")
    if declared:
        return str(declared)
    for step in steps:
        kind = TYPE_STEPS.get(step.name)
        if kind is not None:
            return kind
    links = obj.get("links")
    source = links.get("source") if isinstance(links, dict) else None
    if isinstance(source, str) and "/connections/" in source:
        return "connection"
    if steps and all(step.name in CONNECTION_STEPS for step in steps) and len(steps) > 1:
        return "connection"
    return ""


def stamp(obj: dict[str, Any], *keys: str) -> float | None:
    return next((ts for key in keys if (ts := parse_timestamp(obj.get(key))) is not None), None)


class Basiq(Provider):
    name = "basiq"
    job_path = "/jobs/{id}"
    config_keys: ClassVar[frozenset[str]] = frozenset({"jobs", "users"})

    causes: ClassVar[Mapping[str, Cause]] = CAUSES
    known_reasons = (*CAUSES, UNKNOWN_ERROR)

    @classmethod
    def discovers(cls, target: TargetConfig) -> bool:
        return bool(target.users)

    def parse_job(self, obj: Any) -> Job:
        if not isinstance(obj, dict):
            raise BadPayload("job is not an object")
        job_id = text_id(obj.get("id"))
        if job_id is None:
            raise BadPayload("id")
        raw_steps = obj.get("steps") or []
        if not isinstance(raw_steps, list):
            raise BadPayload("steps")
        steps = shared_steps(tuple(parse_step(s) for s in raw_steps))
        status = job_status(steps)
        # A top-level status, when the job carries one, is the job's own word.
        top = STEP_STATUS.get(str(obj.get("status") or "").lower())
        if top is not None:
            status = top
        failed = next((s for s in steps if s.status is Status.FAILED), None)
        created = stamp(obj, "created", "createdDate")
        updated = stamp(obj, "updated", "updatedDate")
        # One string for every job with the same steps in the same states.
        raw = sys.intern(",".join(f"{s.name}:{s.raw_status}" for s in steps))
        is_failed = status is Status.FAILED
        return Job(
            id=job_id,
            status=status,
            raw_status=raw,
            job_type=sys.intern(job_type_of(obj, steps)),
            created=created,
            # Basiq starts a job as it is created, and its last update of a finished job is its end.
            started=created,
            finished=updated if status.terminal else None,
            updated=updated,
            steps=steps,
            reason=((failed.reason if failed else None) or UNKNOWN_ERROR) if is_failed else None,
            message=failed.message if failed and is_failed else None,
            # A challenge that failed (expired, or wrong codes) waits on the end user whatever its code.
            cause=Cause.USER if is_failed and failed is not None and failed.name == MFA_STEP else None,
            awaiting_user=not status.terminal and any(s.awaiting_user for s in steps),
            extra=whom(obj),
        )

    async def poll(
        self, http: Http, tracked: Sequence[str], ledger: AnswerLedger | None = None
    ) -> PollResult:
        result = PollResult()
        seen: set[str] = set()

        async def user_jobs(user: str) -> list[Any]:
            body = await http.get_json(f"/users/{segment(user)}/jobs")
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise BadPayload("data")
            return list(body["data"])

        for user, outcome in await gather([u for u in self.target.users if self.lists(u)], user_jobs):
            if isinstance(outcome, list):
                for job in parse_listed(self.parse_job, outcome, f"user {user} job list", result):
                    result.jobs.append(job)
                    seen.add(job.id)
            elif isinstance(outcome, BadPayload):
                result.bad_payloads.append(f"user {user} job list: {outcome}")
            elif isinstance(outcome, NotFound):
                # "Requested user does not exist": deleted, or a wrong id in the config.
                result.missing.append(f"user {user}")
            elif isinstance(outcome, PollError):
                pass  # counted by the client; the user's jobs are polled one by one below

        rest = [job_id for job_id in tracked if job_id not in seen]
        direct = await fetch_each(
            http, rest, lambda job_id: f"/jobs/{segment(job_id)}", self.parse_job, ledger
        )
        result.jobs.extend(direct.jobs)
        result.gone.extend(direct.gone)
        result.bad_payloads.extend(direct.bad_payloads)
        result.id_mismatches.extend(direct.id_mismatches)
        return result
