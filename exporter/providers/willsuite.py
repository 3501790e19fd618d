"""WillSuite API jobs: `GET /api-jobs/{id}`, one request per tracked job (no discovery).

A job with `end_time` set is finished whatever its status says (WillSuite's docs: stop polling
then): failed when its status says so or no record of it went through, else succeeded. Records
refused in `message` ("Case ID: … failed with the following errors") are the integrating
application's data: reason `record_errors`, the end user's side (the application team's).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from exporter.model import NO_EXTRA, Cause, Job, Status
from exporter.parsing import bounded_label, map_status, parse_int, parse_timestamp, text_id, time_zone
from exporter.providers.base import AnswerLedger, BadPayload, Http, PollResult, Provider, fetch_each, segment

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
    # A failed API job is the service's to explain; records it refused ("Case does not exist or
    # record already updated.") are the data the application sent: its team's to fix.
    causes: ClassVar[Mapping[str, Cause]] = {"failed": Cause.PROVIDER, "record_errors": Cause.USER}
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
        total = parse_int(obj.get("total_records"))
        affected = parse_int(obj.get("effected_records"))
        ended = parse_timestamp(obj.get("end_time"), tz)
        if ended is not None and not status.terminal:
            # Ended whatever the status says: failed only when no record went through.
            none_through = bool(total) and (affected == 0 or failures >= (total or 0))
            status = Status.FAILED if none_through else Status.SUCCEEDED
        reason = None
        if status is Status.FAILED:
            reason = "record_errors" if failures else "failed"
        elif failures:
            # A finished job whose records were refused: its records' reason and cause.
            reason = "record_errors"
        return Job(
            id=job_id,
            status=status,
            raw_status=raw,
            job_type=bounded_label(obj.get("type")),
            created=parse_timestamp(obj.get("created_at")),
            started=parse_timestamp(obj.get("start_time"), tz),
            finished=ended if status.terminal else None,
            updated=parse_timestamp(obj.get("updated_at")),
            records_total=total,
            records_affected=affected,
            # A finished job without a message had no failed record.
            records_failed=failures if (message or status.terminal) else None,
            reason=reason,
            message=message,
            extra={"company": sys.intern(company)}
            if (company := text_id(obj.get("company_id")))
            else NO_EXTRA,
        )

    async def poll(
        self, http: Http, tracked: Sequence[str], ledger: AnswerLedger | None = None
    ) -> PollResult:
        return await fetch_each(
            http, tracked, lambda job_id: f"/api-jobs/{segment(job_id)}", self.parse_job, ledger
        )
