"""WillSuite API jobs: `GET /api-jobs/{id}`, one request per tracked job (no discovery)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from exporter.model import NO_EXTRA, Cause, Job, Status
from exporter.parsing import bounded_label, map_status, parse_int, parse_timestamp, text_id, time_zone
from exporter.providers.base import BadPayload, Http, PollResult, Provider, fetch_each, segment

STATUS = {
    "pending": Status.PENDING,
    "processing": Status.RUNNING,
    "completed": Status.SUCCEEDED,
    "failed": Status.FAILED,
}

# `message` lists one block per record that failed: "Case ID: <uuid> failed with the following errors:".
RECORD_FAILURE = re.compile(r"\bID:\s*\S+\s+failed with the following errors", re.IGNORECASE)


def failed_records(message: str | None) -> int:
    return len(RECORD_FAILURE.findall(message or ""))


class WillSuite(Provider):
    name = "willsuite"
    job_path = "/api-jobs/{id}"
    # WillSuite asks clients to poll no more often than every 5-10 minutes.
    advised_poll_interval: ClassVar[float | None] = 300.0
    config_keys: ClassVar[frozenset[str]] = frozenset({"jobs", "timezone"})
    # A failed API job, or records the engine refused: the service's to explain, not an end user's.
    causes: ClassVar[Mapping[str, Cause]] = {"failed": Cause.PROVIDER, "record_errors": Cause.PROVIDER}
    known_reasons = ("failed", "record_errors")

    def parse_job(self, obj: Any) -> Job:
        if not isinstance(obj, dict):
            raise BadPayload("job is not an object")
        job_id = text_id(obj.get("id"))
        if job_id is None:
            raise BadPayload("id")
        if "status" not in obj:
            raise BadPayload("status")
        status, raw = map_status(obj.get("status"), STATUS)
        # start_time/end_time carry no zone: they are the account's local time.
        tz = time_zone(self.target.timezone)
        message = obj.get("message")
        message = str(message) if message else None
        failures = failed_records(message)
        reason = None
        if status is Status.FAILED:
            reason = "record_errors" if failures else "failed"
        return Job(
            id=job_id,
            status=status,
            raw_status=raw,
            job_type=bounded_label(obj.get("type")),
            created=parse_timestamp(obj.get("created_at")),
            started=parse_timestamp(obj.get("start_time"), tz),
            finished=parse_timestamp(obj.get("end_time"), tz) if status.terminal else None,
            updated=parse_timestamp(obj.get("updated_at")),
            records_total=parse_int(obj.get("total_records")),
            records_affected=parse_int(obj.get("effected_records")),
            # A finished job without a message had no failed record.
            records_failed=failures if (message or status.terminal) else None,
            reason=reason,
            message=message,
            extra={"company": sys.intern(company)}
            if (company := text_id(obj.get("company_id")))
            else NO_EXTRA,
        )

    async def poll(self, http: Http, tracked: Sequence[str]) -> PollResult:
        return await fetch_each(http, tracked, lambda job_id: f"/api-jobs/{segment(job_id)}", self.parse_job)
