"""One anyio task per target: poll on the exporter's own schedule, back off when the provider
fails, honour Retry-After, and hand each cycle's answers to the tracker."""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from exporter.config import ResolvedTarget, Settings
from exporter.fetch import RequestStats, TargetHttp
from exporter.model import Job, placeholder
from exporter.providers import PROVIDERS, Provider
from exporter.providers.base import AnswerLedger, PollResult
from exporter.store import StateStore
from exporter.tracked import TargetState, TrackedJob
from exporter.tracker import CapReached, Tracker

log = logging.getLogger("asyncjob.scheduler")

MAX_BACKOFF = 600.0
SWEEP_INTERVAL = 1.0
# New ids polled per wake-up (about one a second): a burst of registrations is polled this many
# a second, oldest first, not all at once (the provider and the front door keep their share);
# the next full cycle polls whatever is left.
FRESH_PER_WAKE = 128
# Answers folded into the tracker per turn of the event loop (~2 ms): a cycle's 10,000
# answers at once would hold every scrape for a good part of a second, and a turn of 200
# (~5-10 ms) made a scrape wait behind it, and behind the other turns of the same pass.
APPLY_SLICE = 100
# Answers that came during a cycle are folded into the tracker this often, so that a long cycle
# (10,000 jobs, a slow provider, a request waiting for its timeout) shows each answer within
# about this long, not once its slowest request has ended.
EARLY_EVERY = 0.1


class Sharing(Protocol):
    """The cluster's side of the scheduler (exporter.cluster.member.Member): which jobs and
    discovery sources this replica works now, and where a listed job of another replica goes."""

    def owns(self, target: str, job_id: str) -> bool: ...

    def lists(self, target: str) -> Callable[[str], bool]: ...

    def hand_over(self, target: str, jobs: list[Job]) -> None:
        """Jobs a list of this replica showed that another replica works: written for it."""
        ...


@dataclass
class TargetRunner:
    config: ResolvedTarget
    provider: Provider
    http: TargetHttp
    # Its answers between a poll and the tracker: fingerprints of unchanged answers, answers
    # to apply while the cycle goes on.
    ledger: AnswerLedger = field(default_factory=AnswerLedger)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    wake: anyio.Event = field(default_factory=anyio.Event)
    failures: int = 0
    # Ids registered through the API since the last cycle, oldest first: a wake-up polls these alone.
    fresh: dict[str, None] = field(default_factory=dict)
    # A wake-up starts the full cycle now (jobs of shards just taken over from another replica).
    full_now: bool = False


def next_delay(interval: float, failures: int, retry_after: float | None, rng: random.Random) -> float:
    """The wait before the next cycle: the interval, or exponential backoff with jitter after
    failed cycles, and never less than the provider's Retry-After."""
    delay = interval
    if failures:
        ceiling = min(max(interval, MAX_BACKOFF), interval * 2**failures)
        delay = rng.uniform(max(interval, ceiling / 2), ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class Scheduler:
    def __init__(self, tracker: Tracker, shard: int = 0, total_shards: int = 1) -> None:
        self.tracker = tracker
        self.runners: dict[str, TargetRunner] = {}
        self._tg: TaskGroup | None = None
        self._rng = random.Random()
        self.shard = shard
        self.total_shards = total_shards
        self.store: StateStore | None = None  # when a state file is configured
        self.cluster: Sharing | None = None  # when replicas share a state database
        self.replicas = 1  # live replicas sharing each target's concurrency and request rate
        tracker.listeners.append(self)  # to forget the answers of jobs it drops (AnswerLedger.last)

    def owns(self, target: str, job_id: str) -> bool:
        if self.cluster is not None:
            return self.cluster.owns(target, job_id)
        if self.total_shards <= 1:
            return True
        from exporter.sharding import shard_of

        return shard_of(target, job_id, self.total_shards) == self.shard

    def http_stats(self) -> dict[str, tuple[int, dict[str, int]]]:
        return {name: (r.http.stats.requests, dict(r.http.stats.errors)) for name, r in self.runners.items()}

    async def run(self, settings: Settings) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self.apply(settings)
            tg.start_soon(self._sweeper)

    def apply(self, settings: Settings) -> None:
        """Start, restart or stop target tasks so they match `settings`; tracked jobs of
        unchanged and changed targets are kept."""
        assert self._tg is not None
        wanted = {t.name: settings.resolved(t) for t in settings.targets}
        for name in list(self.runners):
            if name not in wanted:
                self.runners.pop(name).scope.cancel()
                self.tracker.remove_target(name)
                log.info("target removed", extra={"target": name})
        for name, rt in wanted.items():
            runner = self.runners.get(name)
            if runner is not None and runner.config == rt:
                continue
            if runner is not None:
                runner.scope.cancel()
            self.tracker.set_target(rt)
            provider = PROVIDERS[rt.provider](rt.config)
            if self.cluster is not None:
                provider.lists = self.cluster.lists(name)
            if self.store is not None:
                provider.restore_cursors(self.store.cursors(name))
            jobs = self.tracker.targets[name].jobs
            provider.restore_reruns({job_id: t.reruns for job_id, t in jobs.items() if t.reruns})
            new = TargetRunner(rt, provider, TargetHttp(rt), AnswerLedger(self._holds(name)))
            new.http.share(self.replicas)
            self.runners[name] = new
            if rt.poll_interval_below_advice:
                log.warning(
                    "poll_interval is below the provider's advice",
                    extra={
                        "target": name,
                        "poll_interval": rt.poll_interval,
                        "advised": provider.advised_poll_interval,
                    },
                )
            self._tg.start_soon(self._run_target, new)

    def _holds(self, name: str) -> Callable[[str, Job], bool]:
        """Whether the tracker holds `job` (a provider's answer, equal if not the same object)
        for that job of target `name`: not a placeholder, nor an answer that came since from
        the provider's list or through the API."""
        targets = self.tracker.targets

        def holds(job_id: str, job: Job) -> bool:
            state = targets.get(name)
            tracked = state.jobs.get(job_id) if state is not None else None
            return tracked is not None and tracked.polled and (tracked.job is job or tracked.job == job)

        return holds

    # Tracker listener: a job dropped is forgotten by its target's ledger.
    def job_changed(self, target: TargetState, tracked: TrackedJob) -> None:
        return None

    def job_removed(self, target: TargetState, job_id: str) -> None:
        runner = self.runners.get(target.config.name)
        if runner is not None:
            runner.ledger.forget(job_id)

    def tombstone_renewed(self, target: TargetState, job_id: str) -> None:
        return None

    def register(self, target: str, job: Job) -> None:
        """Track a job handed over through the API and poll it soon."""
        self.tracker.track(target, job, "registered")
        self.poll_soon(target, job.id)

    def poll_soon(self, target: str, job_id: str) -> None:
        """Poll a job just tracked at the next wake-up, alone, rather than at the next full cycle."""
        runner = self.runners.get(target)
        if runner is not None:
            runner.fresh[job_id] = None
            runner.wake.set()

    def share_budgets(self, replicas: int) -> None:
        """The cluster has `replicas` live members: each target's limits are split among them."""
        if replicas != self.replicas:
            self.replicas = replicas
            for runner in self.runners.values():
                runner.http.share(replicas)
            log.info("provider limits shared among the live replicas", extra={"replicas": replicas})

    def taken_in(self, target: str, cursors: dict[str, str]) -> None:
        """Shards of the cluster were just taken in: their sources' cursors, and the configured
        jobs that fall in them (which another replica tracked until now)."""
        runner = self.runners.get(target)
        if runner is None:
            return
        runner.provider.restore_cursors(cursors)
        self._track_static(runner)
        # The jobs taken in waited for a replica already (one that died, say): poll them now.
        runner.full_now = True
        runner.wake.set()

    def _track_static(self, runner: TargetRunner) -> None:
        name = runner.config.name
        for job_id in runner.provider.static_ids():
            if self.owns(name, job_id) and job_id not in self.tracker.targets[name].jobs:
                with contextlib.suppress(CapReached):  # counted as dropped{reason="cap"}
                    self.tracker.track(name, placeholder(job_id), "static")

    async def _sweeper(self) -> None:
        while True:
            self.tracker.sweep()
            await anyio.sleep(SWEEP_INTERVAL)

    async def _run_target(self, runner: TargetRunner) -> None:
        name = runner.config.name
        try:
            with runner.scope:
                self._hand_over(name)
                self._track_static(runner)
                while True:
                    started = time.monotonic()
                    runner.wake = anyio.Event()
                    runner.fresh.clear()  # a full cycle polls them too
                    await self._cycle(runner)
                    stats = runner.http.stats
                    delay = next_delay(
                        runner.config.poll_interval, runner.failures, stats.retry_after, self._rng
                    )
                    await self._until_due(runner, started + delay)
        finally:
            with anyio.CancelScope(shield=True):
                await runner.http.aclose()

    async def _until_due(self, runner: TargetRunner, due: float) -> None:
        """Wait for the next full cycle. A registration wakes us first: after a moment for
        others to arrive, the ids registered meanwhile are polled alone (not every job of the
        target again), FRESH_PER_WAKE at most, oldest first, and the full cycle stays due when
        it was. Jobs taken over from another replica of a cluster start the full cycle at once."""
        while True:
            with anyio.move_on_after(max(0.0, due - time.monotonic())):
                await runner.wake.wait()
            if not runner.wake.is_set() or runner.full_now:
                runner.full_now = False
                return
            await anyio.sleep(max(0.0, min(1.0, runner.config.poll_interval, due - time.monotonic())))
            if time.monotonic() >= due:
                return
            runner.wake = anyio.Event()
            pending = self.tracker.targets[runner.config.name].pending
            batch = list(itertools.islice(runner.fresh, FRESH_PER_WAKE))
            for job_id in batch:
                del runner.fresh[job_id]
            fresh = [job_id for job_id in batch if job_id in pending]
            if runner.fresh:
                runner.wake.set()  # the rest at the next wake-up
            if fresh:
                await self._cycle(runner, fresh)

    def _hand_over(self, name: str) -> None:
        """After a change of --total-shards, drop the static and discovered jobs restored from
        the state file that now belong to another shard (their owner finds them itself).
        Registered jobs stay: nobody else would learn of them."""
        if self.total_shards <= 1 or self.cluster is not None:
            return
        state = self.tracker.targets[name]
        for job_id, tracked in list(state.jobs.items()):
            if tracked.source != "registered" and not self.owns(name, job_id):
                self.tracker.drop(name, job_id, "resharded")

    async def _apply(self, name: str, result: PollResult, now: float) -> None:
        """tracker.apply, a slice of answers at a time, letting scrapes in between; the rest of
        the result (reruns, gone jobs, connections, queue events) follows the answers, as in
        one apply."""
        jobs = result.jobs
        state = self.tracker.targets[name]
        if state.quarantined:  # an answer about a quarantined job is not read either (a list's)
            jobs = [job for job in jobs if not state.in_quarantine(job.id, now)]
        slices = [jobs[i : i + APPLY_SLICE] for i in range(0, len(jobs), APPLY_SLICE)] or [[]]
        for part in slices[:-1]:
            self.tracker.apply(name, PollResult(jobs=part), now)
            await anyio.lowlevel.checkpoint()
        self.tracker.apply(name, replace(result, jobs=slices[-1]), now)

    def _ours(self, name: str, jobs: list[Job]) -> list[Job]:
        if self.cluster is not None:
            # Another replica's jobs are written for it; a job of a shard this replica keeps but
            # cannot work now (the database out of reach) is not applied either.
            mine = [j for j in jobs if self.cluster.owns(name, j.id)]
            if len(mine) < len(jobs):
                self.cluster.hand_over(name, [j for j in jobs if not self.cluster.owns(name, j.id)])
            return mine
        if self.total_shards <= 1:
            return jobs
        # Another shard's jobs are left to it, unless this replica accepted them already.
        known = self.tracker.targets[name].jobs
        return [j for j in jobs if j.id in known or self.owns(name, j.id)]

    async def _apply_early(
        self, name: str, ledger: AnswerLedger, done: anyio.Event, applied: list[int]
    ) -> None:
        """Fold the answers of the running cycle into the tracker every EARLY_EVERY seconds
        until `done`; whatever comes after the last pass is applied with the cycle's result."""
        while not done.is_set():
            with anyio.move_on_after(EARLY_EVERY):
                await done.wait()
            jobs = ledger.take_early()
            if jobs:
                applied[0] += len(jobs)
                await self._apply(name, PollResult(jobs=self._ours(name, jobs)), time.time())

    @staticmethod
    def _note_missing(
        name: str, state: TargetState, stats: RequestStats, missing: list[str], full: bool
    ) -> None:
        """Count and keep the configured sources that answered 404 in this cycle; a full cycle
        also forgets those that answer again. A missing source does not make the target down:
        its other sources and jobs are still polled."""
        now = time.time()
        for source in dict.fromkeys(missing):
            stats.errors["not_found"] += 1
            if source not in state.missing:
                state.missing[source] = now
                log.warning(
                    "configured source answers 404: nothing of it is polled until it is back",
                    extra={"target": name, "source": source, "reason": "not_found"},
                )
        if full:
            for source in [s for s in state.missing if s not in missing]:
                del state.missing[source]
                log.info("configured source answers again", extra={"target": name, "source": source})

    async def _cycle(self, runner: TargetRunner, ids: list[str] | None = None) -> None:
        name = runner.config.name
        state = self.tracker.targets[name]
        http = runner.http
        stats = http.stats
        stats.start_cycle()
        t0 = time.perf_counter()
        tracked = self.tracker.pollable(name) if ids is None else ids
        if self.cluster is not None:
            tracked = [job_id for job_id in tracked if self.cluster.owns(name, job_id)]
        if state.quarantined:
            now = time.time()
            tracked = [job_id for job_id in tracked if not state.in_quarantine(job_id, now)]
        ledger = runner.ledger
        ledger.early = []
        done, applied = anyio.Event(), [0]
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._apply_early, name, ledger, done, applied)
            try:
                result = await runner.provider.poll(http, tracked, ledger)
            except Exception:
                # A provider bug must not take the exporter down; it shows as a bad cycle.
                log.exception("provider failed", extra={"target": name})
                result = PollResult(bad_payloads=["provider error"])
            finally:
                done.set()  # the last pass runs to its end: no answer is half applied
        late = ledger.end_cycle()
        result.jobs = self._ours(name, late + result.jobs)
        await self._apply(name, result, time.time())
        # No await between the last apply and this: the queue events' counter increments are
        # held until the commit that holds these cursors (kill -9 must not count them twice).
        if self.store is not None:
            cursors = runner.provider.cursors()
            if cursors:
                self.store.save_cursors(name, cursors)
        if ids is None and len(ledger.last) > len(state.jobs):
            # An answer read while its job was dropped (a DELETE meanwhile) left its fingerprint behind.
            for job_id in [j for j in ledger.last if j not in state.jobs]:
                del ledger.last[job_id]
        request_errors = stats.cycle_errors
        self._note_missing(name, state, stats, result.missing, full=ids is None)
        # Answers that arrived but cannot be applied, by reason: the first one names the cycle's error.
        answer_errors = [
            (reason, problems)
            for reason, problems in (("bad_body", result.bad_payloads), ("id_mismatch", result.id_mismatches))
            if problems
        ]
        for reason, problems in answer_errors:
            stats.errors[reason] += len(problems)
            stats.cycle_errors += len(problems)
            log.warning(
                "unreadable provider answer" if reason == "bad_body" else "answer about another id",
                extra={
                    "target": name,
                    "host": runner.http.host,
                    "reason": reason,
                    "error": "; ".join(problems[:5]),
                },
            )
        durations, stats.durations = stats.durations, []
        for i, seconds in enumerate(durations, 1):
            state.poll_duration.observe(seconds)
            if i % (APPLY_SLICE * 10) == 0:
                await anyio.lowlevel.checkpoint()
        state.polled_once = True
        ok = stats.cycle_errors == 0
        state.up = ok
        if ok:
            state.last_success = time.time()
            runner.failures = 0
        else:
            if request_errors:
                state.last_error, state.last_error_reason = stats.last_error, stats.last_reason
            else:
                reason, problems = answer_errors[0]
                state.last_error, state.last_error_reason = problems[0], reason
            # Back off only when nothing got through: a few failing jobs are not an outage.
            if stats.cycle_errors >= stats.cycle_requests:
                runner.failures += 1
            log.warning(
                "poll cycle had errors",
                extra={
                    "target": name,
                    "host": runner.http.host,
                    "reason": state.last_error_reason,
                    "error": state.last_error,
                    "errors": stats.cycle_errors,
                    "requests": stats.cycle_requests,
                },
            )
        log.debug(
            "poll cycle",
            extra={
                "target": name,
                "jobs": applied[0] + len(result.jobs),
                "gone": len(result.gone),
                "seconds": round(time.perf_counter() - t0, 4),
            },
        )
