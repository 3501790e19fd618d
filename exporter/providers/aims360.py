"""AIMS360 background jobs through OData: tracked ids batched into `jobId eq … or …` filters (its
documentation's spelling; rows spell the field `jobID`), discovery by a configured `$filter`,
`@odata.nextLink` paging, and optional reruns of failed jobs.

The service's next links name a backend host (`apieast1…` for a call to `apieast…`): a link is
requested as its path and query on the configured base URL's host, so the token never leaves
it. A rerun is asked only while the job says `canReRun: Yes` and `maximumDateTimeToExecuteJob`
has not passed, within the target's `max_reruns`; its count survives restarts (the tracker keeps
it in the state file). A rerun may answer the same `jobId`: that job is then tracked again from
queued to its new outcome.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from exporter.config import TargetConfig
from exporter.fetch import NotFound
from exporter.model import Cause, Job, Status
from exporter.parsing import (
    bounded_label,
    bounded_reason,
    map_status,
    parse_int,
    parse_number,
    parse_timestamp,
    text_id,
)
from exporter.providers.base import (
    AnswerLedger,
    BadPayload,
    Http,
    PollResult,
    Provider,
    gather,
    parse_listed,
    segment,
)

JOBS_PATH = "/jobsmanagement/odata/v1.0/backgroundjob"
RERUN_PATH = "/jobsmanagement/v1.0/backgroundjob/{id}/rerun"
# The filter's field as AIMS360's Jobs documentation writes it: `$filter=jobId eq '…'`.
FILTER_FIELD = "jobId"

STATUS = {
    "queued": Status.PENDING,
    "inprogress": Status.RUNNING,
    "completed": Status.SUCCEEDED,
    "failed": Status.FAILED,
}

# Filters longer than this are split: URLs past ~2 kB are refused by some proxies and servers.
MAX_FILTER_CHARS = 1800
# A paging loop that never ends is the server's bug; stop following it here.
MAX_PAGES = 200


def quoted(value: str) -> str:
    """An OData string literal: single quotes, an inner quote doubled."""
    return "'" + value.replace("'", "''") + "'"


def id_batches(ids: Sequence[str], limit: int = MAX_FILTER_CHARS) -> list[list[str]]:
    """`ids` split so that each batch's `jobId eq 'a' or jobId eq 'b' …` stays within `limit` chars."""
    batches: list[list[str]] = []
    size = 0
    for job_id in ids:
        clause = len(f"{FILTER_FIELD} eq {quoted(job_id)}")
        if batches and size + len(" or ") + clause <= limit:
            batches[-1].append(job_id)
            size += len(" or ") + clause
        else:
            batches.append([job_id])
            size = clause
    return batches


def job_status(row: dict[str, Any]) -> tuple[Status, str]:
    status, raw = map_status(row.get("jobStatus"), STATUS)
    # A queued job that already moved is running, whatever its status says.
    if status is Status.PENDING:
        percent = parse_number(row.get("percentCompleted")) or 0.0
        started = parse_timestamp(row.get("startDate")) is not None
        done = parse_timestamp(row.get("completedDate")) is not None
        if percent > 0 or (started and not done):
            status = Status.RUNNING
    return status, raw


WHOM = {"account": "accountCode", "user": "createdBy"}


class Aims360(Provider):
    name = "aims360"
    # A background job fails on the service's side (a report, an import): nothing for an end user.
    causes: ClassVar[Mapping[str, Cause]] = {"failed": Cause.PROVIDER}
    known_reasons = ("failed",)
    config_keys: ClassVar[frozenset[str]] = frozenset({"jobs", "discover_filter", "auto_rerun", "max_reruns"})

    # A backgroundjob row (jobID), a rerun answer (jobId), or {"id": …}.
    id_keys: ClassVar[tuple[str, ...]] = ("jobID", "jobId", "id")

    @classmethod
    def discovers(cls, target: TargetConfig) -> bool:
        return bool(target.discover_filter)

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        # Reruns so far in each job's chain (the original and every rerun of it).
        self._chain: dict[str, int] = {}
        # Jobs already replaced by a rerun: never reported again, even if discovery lists them.
        self._replaced: set[str] = set()

    def restore_reruns(self, reruns: Mapping[str, int]) -> None:
        for job_id, count in reruns.items():
            self._chain[job_id] = max(count, self._chain.get(job_id, 0))

    def id_from_body(self, body: Any) -> str:
        if isinstance(body, dict) and isinstance(body.get("value"), list) and body["value"]:
            return super().id_from_body(body["value"][0])
        return super().id_from_body(body)

    def parse_job(self, obj: Any) -> Job:
        if isinstance(obj, dict) and isinstance(obj.get("value"), list) and len(obj["value"]) == 1:
            obj = obj["value"][0]
        if not isinstance(obj, dict):
            raise BadPayload("backgroundjob row is not an object")
        job_id = text_id(obj.get("jobID")) or text_id(obj.get("jobId"))
        if job_id is None:
            raise BadPayload("jobID")
        if "jobStatus" not in obj:
            raise BadPayload("jobStatus")
        status, raw = job_status(obj)
        category = "/".join(
            str(part) for part in (obj.get("categoryName"), obj.get("subCategoryName")) if part
        )
        text = obj.get("jobStatusText")
        return Job(
            id=job_id,
            status=status,
            raw_status=raw,
            job_type=bounded_label(category),
            percent=parse_number(obj.get("percentCompleted")),
            created=parse_timestamp(obj.get("createdDate")),
            started=parse_timestamp(obj.get("startDate")),
            finished=parse_timestamp(obj.get("completedDate")) if status.terminal else None,
            updated=parse_timestamp(obj.get("modifiedDate")),
            attempts=parse_int(obj.get("numberOfAttempts")),
            reason=bounded_reason(raw) if status is Status.FAILED else None,
            message=str(text) if text else None,
            extra={
                "canReRun": str(obj.get("canReRun") or ""),
                "rerunUntil": str(parse_timestamp(obj.get("maximumDateTimeToExecuteJob")) or ""),
                # Whom the job concerns: the ERP account, and the user who started it.
                # One string of each account and user in the process, not one a job.
                **{key: sys.intern(str(obj[field])) for key, field in WHOM.items() if obj.get(field)},
            },
        )

    async def rows(self, http: Http, odata_filter: str) -> list[Any]:
        """Every row matching `odata_filter`, across pages."""
        body = await http.get_json(JOBS_PATH, {"$filter": odata_filter})
        rows: list[Any] = []
        for _ in range(MAX_PAGES):
            if not isinstance(body, dict) or not isinstance(body.get("value"), list):
                raise BadPayload("value")
            rows.extend(body["value"])
            next_link = body.get("@odata.nextLink")
            if not next_link:
                return rows
            body = await http.get_json(self._on_base_host(str(next_link)))
        raise BadPayload(f"@odata.nextLink: more than {MAX_PAGES} pages")

    def _on_base_host(self, link: str) -> str:
        """A next link's path and query on the configured base URL's scheme and host, whatever
        host the link names: the service names its backend host, and the token must not travel."""
        parts = urlsplit(link)
        if not parts.scheme and not parts.netloc:
            return link
        base = urlsplit(self.target.base_url)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))

    async def poll(
        self, http: Http, tracked: Sequence[str], ledger: AnswerLedger | None = None
    ) -> PollResult:
        result = PollResult()
        wanted = set(tracked)
        # Each query: its filter and the tracked ids it asks for (none for discovery).
        queries: list[tuple[str, frozenset[str]]] = []
        for batch in id_batches(tracked):
            queries.append((" or ".join(f"{FILTER_FIELD} eq {quoted(i)}" for i in batch), frozenset(batch)))
        if self.target.discover_filter and self.lists(self.target.discover_filter):
            queries.append((self.target.discover_filter, frozenset()))

        async def run(query: tuple[str, frozenset[str]]) -> list[Any]:
            return await self.rows(http, query[0])

        answered: set[str] = set()  # tracked ids whose query was answered in full
        seen: set[str] = set()
        failed: list[Job] = []
        for (odata_filter, ids), outcome in await gather(queries, run):
            if isinstance(outcome, BadPayload):
                result.bad_payloads.append(f"backgroundjob {odata_filter[:60]!r}: {outcome}")
                continue
            if isinstance(outcome, NotFound):
                # The backgroundjob endpoint itself: a wrong base_url or a service moved.
                result.missing.append("backgroundjob")
                continue
            if not isinstance(outcome, list):
                continue  # a request error, counted by the client
            answered |= ids
            for job in parse_listed(self.parse_job, outcome, "backgroundjob row", result):
                if job.id in seen or job.id in self._replaced:
                    continue
                seen.add(job.id)
                result.jobs.append(job)
                if job.status is Status.FAILED and job.id in wanted:
                    failed.append(job)
        # Purged (about 30 days after creation) or never there.
        result.gone = [job_id for job_id in tracked if job_id in answered and job_id not in seen]
        if self.target.auto_rerun:
            await self._rerun(http, failed, result)
        return result

    def may_rerun(self, job: Job, now: float) -> bool:
        """canReRun is Yes, maximumDateTimeToExecuteJob (when set) has not passed, budget left."""
        until = job.extra.get("rerunUntil", "")
        return (
            job.extra.get("canReRun", "").lower() == "yes"
            and (not until or now <= float(until))
            and self._chain.get(job.id, 0) < self.target.max_reruns
        )

    async def _rerun(self, http: Http, failed: list[Job], result: PollResult) -> None:
        now = time.time()
        eligible = [job for job in failed if self.may_rerun(job, now)]

        async def rerun(job: Job) -> Job:
            body = await http.post_json(RERUN_PATH.format(id=segment(job.id)))
            new = self.parse_job(body)
            return Job(
                id=new.id,
                status=new.status,
                raw_status=new.raw_status,
                job_type=job.job_type,
                # The same job again keeps when it was made; its run starts anew.
                created=job.created if new.id == job.id else None,
                attempts=(job.attempts or 0) + 1,
            )

        for old, outcome in await gather(eligible, rerun):
            if isinstance(outcome, BadPayload):
                result.bad_payloads.append(f"rerun of {old.id}: {outcome}")
            if not isinstance(outcome, Job):
                continue
            self._chain[outcome.id] = self._chain.pop(old.id, 0) + 1
            if outcome.id != old.id:
                self._replaced.add(old.id)
            result.replaced[old.id] = outcome.id
            result.jobs.append(outcome)
            result.reruns += 1
