"""Any JSON job API, described in config: a job URL template, an optional list URL, dotted
field paths, optional steps and a status map (SPEC §4)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from exporter.config import GenericFields, TargetConfig
from exporter.fetch import NotFound, PollError
from exporter.model import Job, Status, Step, interned_step, shared_steps
from exporter.parsing import (
    bounded_label,
    bounded_reason,
    lookup,
    map_status,
    parse_int,
    parse_number,
    parse_timestamp,
    text_id,
    time_zone,
)
from exporter.providers.base import (
    AnswerLedger,
    BadPayload,
    Http,
    PollResult,
    Provider,
    fetch_each,
    parse_listed,
    segment,
)

log = logging.getLogger("asyncjob.providers.generic")

# Without a status_map, the normalised names themselves are understood.
IDENTITY: dict[str, Status] = {s.value: s for s in Status}


class Generic(Provider):
    name = "generic"
    config_keys: ClassVar[frozenset[str]] = frozenset(
        {"jobs", "job_path", "list_path", "items", "fields", "steps", "status_map", "timezone"}
    )

    @classmethod
    def discovers(cls, target: TargetConfig) -> bool:
        return bool(target.list_path)

    def __init__(self, target: TargetConfig) -> None:
        super().__init__(target)
        self.fields = target.fields or GenericFields()
        self.status_map = {**IDENTITY, **(target.status_map or {})}
        self._warned: set[str] = set()

    @classmethod
    def check_target(cls, target: TargetConfig) -> list[str]:
        problems = super().check_target(target)
        if not target.job_path and not target.list_path:
            problems.append(
                "job_path: a generic target needs job_path (a URL template with {id}), list_path, or both"
            )
        if target.job_path and "{id}" not in target.job_path:
            problems.append(f"job_path: {target.job_path!r} has no {{id}} placeholder")
        if target.items and not target.list_path:
            problems.append("items: only used with list_path")
        if target.jobs and not target.job_path:
            problems.append("jobs: static job ids need job_path to be polled")
        return problems

    def _miss(self, field: str, path: str) -> None:
        """Say once per field that its path matched nothing: almost always a typo in the config."""
        if field in self._warned:
            return
        self._warned.add(field)
        log.warning(
            "configured path matches nothing in the answer",
            extra={"target": self.target.name, "field": f"fields.{field}", "path": path},
        )

    def _get(self, obj: Any, field: str, path: str | None) -> Any:
        if not path:
            return None
        found, value = lookup(obj, path)
        if not found:
            self._miss(field, path)
        return value

    def parse_job(self, obj: Any) -> Job:
        if not isinstance(obj, dict):
            raise BadPayload("job is not an object")
        f = self.fields
        for field, path in (("id", f.id), ("status", f.status)):
            if not lookup(obj, path)[0]:
                self._miss(field, path)
                raise BadPayload(f"fields.{field}: path {path!r} matches nothing")
        job_id = text_id(self._get(obj, "id", f.id))
        if job_id is None:
            raise BadPayload(f"fields.id: path {f.id!r} is not an id")
        status, raw = map_status(self._get(obj, "status", f.status), self.status_map)
        tz = time_zone(self.target.timezone)
        message = self._get(obj, "message", f.message)
        reason = bounded_reason(self._get(obj, "reason", f.reason))
        return Job(
            id=job_id,
            status=status,
            raw_status=raw,
            job_type=bounded_label(self._get(obj, "type", f.type)),
            percent=parse_number(self._get(obj, "percent", f.percent)),
            created=parse_timestamp(self._get(obj, "created", f.created), tz),
            started=parse_timestamp(self._get(obj, "started", f.started), tz),
            finished=parse_timestamp(self._get(obj, "finished", f.finished), tz),
            updated=parse_timestamp(self._get(obj, "updated", f.updated), tz),
            steps=self._steps(obj),
            records_total=parse_int(self._get(obj, "records_total", f.records_total)),
            records_affected=parse_int(self._get(obj, "records_affected", f.records_affected)),
            records_failed=parse_int(self._get(obj, "records_failed", f.records_failed)),
            attempts=parse_int(self._get(obj, "attempts", f.attempts)),
            # A failed job without an error code fails for the reason its status names.
            reason=(reason or bounded_reason(raw)) if status is Status.FAILED else reason,
            message=str(message) if message not in (None, "") else None,
        )

    def _steps(self, obj: Any) -> tuple[Step, ...]:
        spec = self.target.steps
        if spec is None:
            return ()
        items = self._get(obj, "steps", spec.path)
        if items is None:
            return ()
        if not isinstance(items, list):
            raise BadPayload(f"steps.path: {spec.path!r} is not a list")
        steps = []
        for item in items:
            found, name = lookup(item, spec.name)
            if not found or name is None:
                raise BadPayload(f"steps.name: path {spec.name!r} matches nothing in a step")
            status, raw = map_status(lookup(item, spec.status)[1], self.status_map)
            steps.append(interned_step(bounded_label(name), status, raw))
        return shared_steps(tuple(steps))

    async def _listed(self, http: Http, result: PollResult) -> set[str]:
        """Jobs of the list URL; returns their ids."""
        assert self.target.list_path is not None
        seen: set[str] = set()
        body = await http.get_json(self.target.list_path)
        items_path = self.target.items or ""
        found, items = lookup(body, items_path)
        if not found or not isinstance(items, list):
            what = f"items: path {items_path!r}" if items_path else "list_path: the answer"
            raise BadPayload(f"{what} is not a list of jobs")
        for job in parse_listed(self.parse_job, items, "job list", result):
            seen.add(job.id)
            result.jobs.append(job)
        return seen

    async def poll(
        self, http: Http, tracked: Sequence[str], ledger: AnswerLedger | None = None
    ) -> PollResult:
        result = PollResult()
        seen: set[str] = set()
        listed = False
        if self.target.list_path and self.lists(self.target.list_path):
            try:
                seen = await self._listed(http, result)
                listed = True
            except BadPayload as e:
                result.bad_payloads.append(str(e))
            except NotFound:
                result.missing.append(f"list {self.target.list_path}")
            except PollError:
                pass  # counted by the client
        rest = [job_id for job_id in tracked if job_id not in seen]
        job_path = self.target.job_path
        if job_path:
            direct = await fetch_each(
                http, rest, lambda job_id: job_path.replace("{id}", segment(job_id)), self.parse_job, ledger
            )
            result.jobs.extend(direct.jobs)
            result.gone.extend(direct.gone)
            result.bad_payloads.extend(direct.bad_payloads)
            result.id_mismatches.extend(direct.id_mismatches)
        elif listed:
            # Without a job URL, a job that left the list can no longer be seen.
            result.gone.extend(rest)
        return result
