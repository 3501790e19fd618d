"""Pages for people: the targets (/), a filterable list of jobs (/jobs) and one job with its
timeline (/jobs/{target}/{id}), rendered from Jinja2 templates that escape every value.

Ids and messages come from registrations and providers: every string is hostile until escaped.
The pages sit behind the web config (TLS, basic auth) as /metrics does, not behind the API token.
In cluster mode they show the whole cluster: the members on /, and on /jobs and a job's page the
jobs other replicas work too, awaited from PostgreSQL (exporter.cluster.view), each with its owner.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from exporter import __version__
from exporter.diagnosis import (
    cause_of,
    duration_text,
    is_overdue,
    is_stuck,
    next_step,
    parties,
    runtime_of,
    settled,
)
from exporter.history import timeline
from exporter.job_history import Query
from exporter.model import STATUSES, Cause, Status
from exporter.providers import PROVIDERS
from exporter.runtime import Runtime
from exporter.store import Retired
from exporter.tracked import TargetState, TrackedJob

if TYPE_CHECKING:
    from exporter.cluster.view import Cluster, Elsewhere

PAGE_SIZE = 50
# In cluster mode, the most jobs of other replicas /jobs reads for one view (in target and id
# order, after the target, status and id filters): a view of the whole of a large cluster is
# narrowed by its filters, and says so.
OTHERS_READ = 5000
CAUSES = [str(c) for c in Cause]
_SURROGATE = re.compile("[\ud800-\udfff]")
TEMPLATES = Path(__file__).parent / "templates"


def _clean(text: Any) -> str:
    """Text that encodes as UTF-8: a lone surrogate (valid in JSON escapes) becomes U+FFFD."""
    return _SURROGATE.sub("\ufffd", str(text))


def _segment(text: Any) -> str:
    return quote(_clean(text), safe="")


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _environment(external_url: str = "") -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every {{ value }} is escaped; nothing in the templates is marked safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["segment"] = _segment
    env.filters["when"] = _when
    env.filters["duration"] = duration_text
    env.filters["clean"] = _clean
    env.globals["version"] = __version__
    # Every link starts with it: --web.external-url, or "" for links relative to the host asked.
    env.globals["base"] = external_url.rstrip("/")
    env.globals["query"] = lambda **kw: urlencode(
        {k: _clean(v) for k, v in kw.items() if v not in (None, "")}
    )
    return env


def _page_number(text: str | None) -> int:
    try:
        return max(1, int(text or 1))
    except ValueError:
        return 1


def _moment(text: str | None, problems: list[str]) -> float | None:
    """A time filter: an ISO 8601 date or time (UTC unless it says otherwise), or Unix seconds."""
    if not text:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(text)
        if math.isfinite(seconds):
            return seconds
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        problems.append(f"{text!r} is not a time: give an ISO 8601 time (UTC) or Unix seconds")
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


@dataclass
class JobRow:
    target: str
    tracked: TrackedJob
    stuck: bool
    cause: str | None
    overdue: bool = False
    owner: str | None = None  # in cluster mode: the replica that works it (None: no replica now)


class Pages:
    def __init__(self, runtime: Runtime, telemetry_path: str = "/metrics", external_url: str = "") -> None:
        self.runtime = runtime
        self.telemetry_path = telemetry_path
        self.env = _environment(external_url)

    def _render(self, name: str, status_code: int = 200, **context: Any) -> Response:
        html = self.env.get_template(name).render(telemetry_path=self.telemetry_path, **context)
        return Response(
            html.encode("utf-8", "replace"),
            status_code=status_code,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index),
            Route("/jobs", self.jobs),
            Route("/jobs/{target}/{job_id:path}", self.job),
        ]

    async def index(self, request: Request) -> Response:
        now = time.time()
        targets = []
        for name, state in sorted(self.runtime.tracker.targets.items()):
            by_status = {str(s): 0 for s in STATUSES}
            stuck = overdue = awaiting = 0
            for t in state.jobs.values():
                by_status[str(t.job.status)] += 1
                stuck += is_stuck(state, t, now)
                overdue += is_overdue(state, t, now)
                awaiting += t.job.awaiting_user and not t.job.status.terminal
            targets.append(
                {
                    "name": name,
                    "provider": state.config.provider,
                    "up": state.up,
                    "polled_once": state.polled_once,
                    "last_success": state.last_success,
                    "last_error": state.last_error,
                    "last_error_reason": state.last_error_reason,
                    "missing": sorted(state.missing.items()),
                    "poll_interval": state.config.poll_interval,
                    "stuck_after": state.config.stuck_after,
                    "by_status": by_status,
                    "total": len(state.jobs),
                    "stuck": stuck,
                    "overdue": overdue,
                    "awaiting": awaiting,
                }
            )
        return self._render(
            "index.html.j2",
            targets=targets,
            statuses=[str(s) for s in STATUSES],
            now=now,
            cluster=self._cluster(),
        )

    def _cluster(self) -> Cluster | None:
        """The cluster as this replica's last lease round saw it; None out of cluster mode."""
        if self.runtime.member is None:
            return None
        from exporter.cluster.view import cluster

        return cluster(self.runtime.member)

    async def jobs(self, request: Request) -> Response:
        now = time.time()
        params = request.query_params
        want_target = params.get("target") or None
        want_status = params.get("status") or None
        want_id = params.get("id") or ""
        want_cause = params.get("cause") or None
        want_reason = params.get("reason") or None
        want_stuck = (params.get("stuck") or "").lower() in ("1", "true", "yes")
        want_awaiting = (params.get("awaiting_user") or "").lower() in ("1", "true", "yes")
        want_overdue = (params.get("overdue") or "").lower() in ("1", "true", "yes")
        problems, status_code = [], 200
        if want_status is not None and want_status not in STATUSES:
            problems.append(f"status must be one of {', '.join(STATUSES)}")
            status_code = 400
        if want_cause is not None and want_cause not in CAUSES:
            problems.append(f"cause must be one of {', '.join(CAUSES)}")
            status_code = 400
        since, until = _moment(params.get("since"), problems), _moment(params.get("until"), problems)
        if problems:
            status_code = 400
        targets = self.runtime.tracker.targets
        if want_target is not None and want_target not in targets:
            problems.append(f"no target is named {want_target}")
            status_code = 404
        page, history_page = _page_number(params.get("page")), _page_number(params.get("history_page"))

        def row(name: str, state: TargetState, t: TrackedJob, owner: str | None) -> JobRow | None:
            j = t.job
            if want_status is not None and j.status != want_status:
                return None
            if want_id and not j.id.startswith(want_id):
                return None
            cause = cause_of(t)
            if want_cause is not None and cause != want_cause:
                return None
            if want_reason is not None and j.reason != want_reason:
                return None
            if since is not None or until is not None:
                ended = j.finished or t.seen_terminal_at
                if ended is None or not (since or 0) <= ended < (until or float("inf")):
                    return None
            stuck = is_stuck(state, t, now)
            if want_stuck and not stuck:
                return None
            if want_awaiting and not (j.awaiting_user and not j.status.terminal):
                return None
            overdue = is_overdue(state, t, now)
            if want_overdue and not overdue:
                return None
            return JobRow(name, t, stuck, cause, overdue, owner)

        member = self.runtime.member
        me = member.leases.replica if member is not None else None
        rows: list[JobRow] = []
        elsewhere: Elsewhere | None = None
        if not problems:
            for name, state in sorted(targets.items()):
                if want_target is not None and name != want_target:
                    continue
                for t in state.jobs.values():
                    found = row(name, state, t, me)
                    if found is not None:
                        rows.append(found)
            if member is not None:
                from exporter.cluster.view import jobs_elsewhere

                elsewhere = await jobs_elsewhere(member, want_target, want_status, want_id, limit=OTHERS_READ)
                for job in elsewhere.jobs:
                    # The replicas share the config: a target unknown here (a rolling update) is skipped.
                    its = targets.get(job.target)
                    if its is None or job.tracked.job.id in its.jobs:
                        continue  # a job held here too: this replica's is the fresher
                    found = row(job.target, its, job.tracked, job.owner)
                    if found is not None:
                        rows.append(found)
        # Failures and stuck jobs first, then the most recently moved.
        rows.sort(
            key=lambda r: (r.tracked.job.status is not Status.FAILED, not r.stuck, -r.tracked.last_progress)
        )
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        page = min(page, pages)
        shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        # Finished jobs retention dropped, searched in the store (never stuck, overdue or waiting).
        retired: list[Retired] = []
        retired_total = 0
        if not problems and not (want_stuck or want_awaiting or want_overdue):
            query = Query(
                target=want_target,
                id_prefix=want_id,
                status=want_status,
                cause=want_cause,
                reason=want_reason,
                since=since,
                until=until,
                offset=(history_page - 1) * PAGE_SIZE,
                limit=PAGE_SIZE,
            )
            retired, retired_total = self.runtime.history.search(query)
        history_pages = max(1, -(-retired_total // PAGE_SIZE))
        filters = {
            "target": want_target,
            "status": want_status,
            "id": want_id or None,
            "cause": want_cause,
            "reason": want_reason,
            "since": params.get("since") or None,
            "until": params.get("until") or None,
            "stuck": "1" if want_stuck else None,
            "awaiting_user": "1" if want_awaiting else None,
            "overdue": "1" if want_overdue else None,
        }
        return self._render(
            "jobs.html.j2",
            status_code=status_code,
            rows=shown,
            total=len(rows),
            page=page,
            pages=pages,
            retired=retired,
            retired_total=retired_total,
            history_page=history_page,
            history_pages=history_pages,
            history_period=self.runtime.history.bounds.period,
            filters=filters,
            problems=problems,
            target_names=sorted(targets),
            statuses=[str(s) for s in STATUSES],
            causes=CAUSES,
            now=now,
            cluster=member is not None,
            elsewhere=elsewhere,
            others_read=OTHERS_READ,
        )

    async def job(self, request: Request) -> Response:
        now = time.time()
        target, job_id = request.path_params["target"], request.path_params["job_id"]
        state = self.runtime.tracker.targets.get(target)
        # A look-up, never a walk over the jobs: an id holding a lone surrogate (which alone
        # could not travel in a URL) is refused at registration and replaced in answers and
        # state rows, so every tracked id is found under the text its link carries.
        tracked = state.jobs.get(job_id) if state is not None else None
        retired = None
        member = self.runtime.member
        owner = member.leases.replica if member is not None and tracked is not None else None
        unreadable, remote = None, False
        if state is not None and tracked is None:
            # Dropped at retention: shown from the history while it keeps the job.
            retired = self.runtime.history.retired(target, job_id)
            tracked = retired.tracked if retired is not None else None
            if member is not None:
                owner = member.leases.replica
        if state is not None and tracked is None and member is not None:
            # Another replica's: shown as its owner last committed it.
            from exporter.cluster.view import job_elsewhere

            elsewhere = await job_elsewhere(member, target, job_id)
            if elsewhere.jobs:
                tracked, owner, remote = elsewhere.jobs[0].tracked, elsewhere.jobs[0].owner, True
            unreadable = elsewhere.error
        if state is None or tracked is None:
            what = f"target {target}" if state is None else f"job {job_id} on target {target}"
            return self._render(
                "missing.html.j2", status_code=503 if unreadable else 404, what=what, why=unreadable
            )
        runner = self.runtime.scheduler.runners.get(target)
        provider = (
            runner.provider if runner is not None else PROVIDERS[state.config.provider](state.config.config)
        )
        link = provider.job_link(tracked.job.id)
        durations = tracked.step_duration  # worked out from the step times: once, not once a step
        steps = [
            {
                "name": s.name,
                "status": str(s.status),
                "reason": s.reason,
                "message": s.message,
                "duration": durations.get(s.name),
            }
            for s in tracked.job.steps
        ]
        cause = cause_of(tracked)
        stuck = retired is None and is_stuck(state, tracked, now)
        overdue = retired is None and is_overdue(state, tracked, now)
        ran = runtime_of(tracked, now)
        step = next_step(tracked.job, cause, stuck, overdue, ran)
        runbook = self.runtime.settings.runbook_base_url
        return self._render(
            "job.html.j2",
            target=target,
            state=state,
            t=tracked,
            job=tracked.job,
            cause=cause,
            stuck=stuck,
            overdue=overdue,
            ran=ran,
            parties=parties(tracked.job),
            next_step=step,
            runbook_url=f"{runbook}#{step.alert.lower()}" if step is not None else runbook,
            percent=tracked.job.effective_percent(),
            steps=steps,
            timeline=settled(timeline(tracked.history, now), tracked.job),
            link=link,
            retired=retired,
            retention=state.config.retention,
            now=now,
            cluster=member is not None,
            owner=owner,
            elsewhere=remote,
        )
