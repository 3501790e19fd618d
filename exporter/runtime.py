"""The running exporter: settings, tracker, scheduler, exposition and state store (a file, or a
cluster's PostgreSQL through exporter.cluster.member) wired together, plus reload."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from exporter import catalogue
from exporter.config import ConfigError, Settings, load_settings
from exporter.history import timeline
from exporter.job_history import Bounds
from exporter.memory_history import MemoryHistory
from exporter.model import Job, placeholder
from exporter.parsing import clean_text
from exporter.providers import PROVIDERS
from exporter.providers.base import BadPayload
from exporter.quiet_gc import QuietGC
from exporter.render import Exposition
from exporter.scheduler import Scheduler
from exporter.state import StateUnwritable, state_metrics_text
from exporter.store import JobHistory, Retired, StateStore
from exporter.tracked import TrackedJob
from exporter.tracker import Tracker
from exporter.watchdog import Watchdog

if TYPE_CHECKING:
    from exporter.cluster.member import Member

log = logging.getLogger("asyncjob.runtime")


class KeepsCursors(Protocol):
    """The scheduler's side of a state store: it restores and saves its providers' cursors there."""

    store: StateStore | None


def connect_store(
    store: StateStore, tracker: Tracker, scheduler: KeepsCursors, history: JobHistory | None = None
) -> None:
    """Hand the tracker and the scheduler the state store: the store hears every change and
    commits it; the tracker takes a target's jobs from the last run (`restore`), holds a counted
    increment until its mark is committed (`after_commit`) and looks an old tombstone up (`buried`);
    the scheduler keeps its cursors there. A `history` (the SQLite store is one) takes the jobs
    retention drops, in the transaction that drops them."""
    tracker.listeners.append(store)
    tracker.restore = store.restore
    tracker.after_commit = store.after_commit
    tracker.buried = store.buried
    if history is not None:
        tracker.retire = history.keep
    scheduler.store = store


class WrongShard(Exception):
    def __init__(self, shard: int) -> None:
        super().__init__(f"job belongs to shard {shard}")
        self.shard = shard


class Rereadable(Protocol):
    """A file read again at each reload besides the config (exporter.webconfig_reload.LiveWebConfig)."""

    def read(self) -> Callable[[], None]:
        """Read it afresh; return what applies it. ValueError names a problem."""
        ...


class Runtime:
    def __init__(
        self,
        settings: Settings,
        config_file: str | None = None,
        shard: int = 0,
        total_shards: int = 1,
        web_config: Rereadable | None = None,
    ) -> None:
        self.settings = settings
        self.config_file = config_file
        self.web_config = web_config
        self.tracker = Tracker()
        self.scheduler = Scheduler(self.tracker, shard, total_shards)
        self.exposition = Exposition(self.tracker, self.scheduler.http_stats, self._reload_text)
        self.last_reload_ok = True
        self.last_reload_at = time.time()
        self.store: StateStore | None = None
        self.member: Member | None = None  # with state_url: this replica's part in the cluster
        self.gc = QuietGC()
        # Finished jobs past retention: in memory until a state file takes them (open_state).
        self.history: JobHistory = MemoryHistory()
        self.tracker.retire = self.history.keep
        self._apply_history_bounds()

    def _apply_history_bounds(self) -> None:
        g = self.settings.global_
        self.history.bounds = Bounds(g.history, g.history_max_jobs, g.history_max_bytes)

    def _reload_text(self) -> bytes:
        ok, at = catalogue.CONFIG_RELOAD_SUCCESSFUL, catalogue.CONFIG_RELOAD_SUCCESS_TIMESTAMP
        return (
            (
                f"{ok.header_text}{ok.name} {1 if self.last_reload_ok else 0}\n"
                f"{at.header_text}{at.name} {self.last_reload_at:.3f}\n"
            ).encode()
            + (self.store.metrics_text() if self.store is not None else state_metrics_text(0, 0))
            + (self.member.metrics_text() if self.member is not None else b"")
            + (self._quarantine_text())
            + self.history.history_metrics_text()
        )

    def _quarantine_text(self) -> bytes:
        now, name_ = time.time(), catalogue.JOBS_QUARANTINED.name
        lines = [catalogue.JOBS_QUARANTINED.header_text]
        for name, state in self.tracker.targets.items():
            held = sum(1 for job_id in list(state.quarantined) if state.in_quarantine(job_id, now))
            lines.append(f'{name_}{{target="{name}"}} {held}\n')
        return "".join(lines).encode()

    def open_state(self, replica: str = "") -> None:
        """Open the state file (when configured) and restore what it holds; with `state_url`, set
        up this replica of the cluster (named `replica` unless the config names it), which
        connects when it runs."""
        if self.settings.state_url:
            from exporter.cluster.member import join

            self.member = join(self.settings, replica, self.tracker, self.scheduler)
            connect_store(self.member.store, self.tracker, self.scheduler)
            self.store = self.member.store
            self.scheduler.cluster = self.member
            return
        if not self.settings.state_file:
            return
        from exporter.state import Store

        store = Store(self.settings.state_file)
        connect_store(store, self.tracker, self.scheduler, history=store)
        self.store = self.history = store
        self._apply_history_bounds()

    async def run(self) -> None:
        watchdog = Watchdog(
            self.settings.watchdog_timeout, self.store.quarantine if self.store is not None else None
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(watchdog.run)
            tg.start_soon(self.gc.run)  # after open_state: the restored jobs are frozen at once
            tg.start_soon(self.exposition.jobs.refresh_in_background)
            if self.member is not None:
                await self.member.open()  # waits for the database; polls nothing before it
                tg.start_soon(self.member.run)
            if self.store is not None:
                tg.start_soon(self.store.run)
            await self.scheduler.run(self.settings)

    async def close(self) -> None:
        """Commit what is pending and close the state store."""
        if self.store is not None:
            done = self.store.close()
            if done is not None:
                await done

    def reload(self) -> list[str]:
        """Re-read the config file and the web config file; on a problem in either keep both
        running configs (the API token with them) and return the problems."""
        if not self.config_file and self.web_config is None:
            return ["no --config.file to reload"]
        problems: list[str] = []
        new = self.settings
        if self.config_file:
            try:
                new = load_settings(self.config_file, PROVIDERS)
            except ConfigError as e:
                problems += e.problems
        apply_web: Callable[[], None] | None = None
        if self.web_config is not None:
            try:
                apply_web = self.web_config.read()
            except ValueError as e:
                problems.append(f"--web.config.file: {e}")
        if problems:
            self.last_reload_ok = False
            log.error(
                "config reload failed; keeping the running config", extra={"problems": "; ".join(problems)}
            )
            return problems
        if new is not self.settings:
            self.settings = new
            self._apply_history_bounds()
            self.scheduler.apply(new)
        if apply_web is not None:
            apply_web()
        self.last_reload_ok = True
        self.last_reload_at = time.time()
        log.info("config reloaded", extra={"targets": len(new.targets)})
        return []

    # --- registration ------------------------------------------------------------------
    @property
    def state_error(self) -> str | None:
        """Why the state cannot be written now; None when it can (or there is none)."""
        if self.member is not None and not self.member.reachable:
            return self.member.unreachable_because()
        return self.store.error if self.store is not None else None

    async def register(self, target: str, body: Any, source: str | None = None) -> TrackedJob:
        """Track a job from `{"id": …}` or the provider's own job answer (parsed from the JSON
        text `source`, when given), and return once the registration is committed to the state
        file (when there is one). Raises KeyError for an unknown target, BadPayload naming the
        field, WrongShard, CapReached, StateUnwritable."""
        error = self.state_error
        if error is not None:
            raise StateUnwritable(error)
        tracked = self._track(target, body, source)
        if self.store is not None:
            await self.store.committed()
        return tracked

    def _track(self, target: str, body: Any, source: str | None = None) -> TrackedJob:
        state = self.tracker.targets[target]
        provider = (
            self.scheduler.runners[target].provider
            if target in self.scheduler.runners
            else PROVIDERS[state.config.provider](state.config.config)
        )
        job_id = provider.id_from_body(body)  # refuses ids holding control characters or lone surrogates
        # The rest is free text: lone surrogates become U+FFFD (walked only when an escape in
        # the source can have made one).
        body = clean_text(body, source)
        if self.member is not None and not self.member.owns(target, job_id):
            return self.member.register_for_owner(target, job_id)
        if not self.scheduler.owns(target, job_id):
            from exporter.sharding import shard_of

            raise WrongShard(shard_of(target, job_id, self.scheduler.total_shards))
        job: Job = placeholder(job_id)
        if isinstance(body, dict) and set(body) - {"id"}:  # more than an id: the provider's own answer
            try:
                parsed = provider.parse_job(body)
                if parsed.id == job_id:
                    job = parsed
            except (BadPayload, KeyError, TypeError, ValueError):
                pass  # an answer of another shape: track the id and read the job at its first poll
        existing = state.jobs.get(job_id)
        if existing is not None and job.is_placeholder:
            return existing
        self.scheduler.register(target, job)
        return state.jobs[job_id]


def job_document(target: str, t: TrackedJob) -> dict[str, Any]:
    """The API's view of a tracked job, free text included (it stays out of labels)."""
    j, durations = t.job, t.step_duration  # worked out from the step times: once, not once a step
    return {
        "target": target,
        "id": j.id,
        "provider": t.provider,
        "job_type": j.job_type,
        "status": str(j.status),
        "raw_status": j.raw_status,
        "percent": j.effective_percent(),
        "created": j.created,
        "started": j.started,
        "finished": j.finished,
        "updated": j.updated,
        "last_progress": t.last_progress,
        "first_seen": t.first_seen,
        "source": t.source,
        "awaiting_user": j.awaiting_user,
        "reason": j.reason,
        "cause": None if t.cause is None else str(t.cause),
        # First seen finished longer than `retention` before the exporter knew of it: not counted,
        # no per-job series, never paged.
        "is_history": t.is_history,
        "message": j.message,
        "records": {"total": j.records_total, "affected": j.records_affected, "failed": j.records_failed},
        "attempts": j.attempts,
        "reruns": t.reruns,
        "history": timeline(t.history, time.time()),
        "steps": [
            {
                "name": s.name,
                "status": str(s.status),
                "raw_status": s.raw_status,
                "reason": s.reason,
                "message": s.message,
                "duration_seconds": durations.get(s.name),
            }
            for s in j.steps
        ],
    }


def retired_document(r: Retired) -> dict[str, Any]:
    """The API's view of a job kept in the history: as when it was tracked, and when retention
    dropped its series."""
    return {**job_document(r.target, r.tracked), "from_history": True, "dropped_at": r.dropped_at}
