"""One replica of a cluster: what it works, and how its tracker follows its leases.

A replica works a job (polls it, exports its series, counts it) while it holds the lease on the
job's virtual shard and has loaded that shard's jobs from the state database; it reads a
discovery source (a Basiq user, an Oxlin queue, a list) while it holds the source's shard. The
rest is wired here, around `Leases` (exporter.cluster.leases) and `PostgresStore`:

- a shard gained: its jobs, tombstones and cursors are read from PostgreSQL and taken into the
  tracker as they were committed (nothing is counted again: each job's counted-once marks come
  with it), and only then is it worked;
- a shard handed to another replica (it is now preferred there, or took it after this replica
  was paused past its lease): what is pending is committed first while the lease still holds,
  then its jobs leave the tracker with no tombstone and nothing counted;
- PostgreSQL unreachable: leases run to their deadline and the shards are no longer worked, but
  their jobs stay in the tracker and their series are exported as last known, so alerts neither
  resolve nor fire again; once it is back, each replica renews its own before any takes another's;
- jobs written for this replica by others (registrations taken by any replica, jobs another
  replica's list showed): a notification wakes the catch-up read at once, and the read runs every
  CATCH_UP_EVERY seconds anyway, since notifications are lost while a listener reconnects.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import psycopg

from exporter import catalogue
from exporter.cluster import schema
from exporter.cluster.batch import CHANNEL
from exporter.cluster.leases import RENEWALS_PER_TTL, Leases
from exporter.cluster.reads import CATCH_UP_ROWS
from exporter.cluster.store import CONNECT_TIMEOUT, PostgresStore
from exporter.config import Settings
from exporter.model import Job, placeholder
from exporter.sharding import shard_of
from exporter.tracked import TrackedJob
from exporter.tracker import CapReached, Tracker

if TYPE_CHECKING:
    from exporter.scheduler import Scheduler

log = logging.getLogger("asyncjob.cluster")

CATCH_UP_EVERY = 1.0
# Change numbers are taken when a row is written and become visible when its transaction commits,
# so one may show up after a higher one was read: each read starts from where the read this many
# rounds ago ended (rows already tracked are skipped).
CATCH_UP_OVERLAP = 5
LISTEN_RETRY = 2.0
# Listed jobs of other replicas' shards remembered as written for them, per target (a list shows
# the same jobs at every cycle: each is written once).
HANDED_REMEMBERED = 100_000


class Wakeable(Protocol):
    """What the member asks of the scheduler (exporter.scheduler.Scheduler)."""

    def poll_soon(self, target: str, job_id: str) -> None: ...

    def share_budgets(self, replicas: int) -> None: ...

    def taken_in(self, target: str, cursors: dict[str, str]) -> None:
        """Shards were taken in: restore the target's cursors, track its configured jobs there."""
        ...


class Member:
    def __init__(self, tracker: Tracker, scheduler: Wakeable, store: PostgresStore, leases: Leases) -> None:
        self.tracker, self.scheduler, self.store, self.leases = tracker, scheduler, store, leases
        leases.on_gained = self._gained
        leases.on_lost = self._lost
        # Shards whose jobs the tracker holds: worked while also held, exported while kept.
        self.kept: set[int] = set()
        self.reachable = False  # the last lease round reached PostgreSQL
        self._joined = False  # a first round was made: it only joins
        self._marks: deque[int] = deque(maxlen=CATCH_UP_OVERLAP)
        self._notified = anyio.Event()
        self.caught_up = 0  # jobs taken in from other replicas' writes
        self._handed: dict[str, dict[str, None]] = {}  # listed jobs written for others, by target

    # --- what the scheduler and the API ask ---------------------------------------------
    def shard(self, target: str, key: str) -> int:
        return shard_of(target, key, self.store.shards)

    def owns(self, target: str, job_id: str) -> bool:
        """Whether this replica works the job now: its shard is held and loaded."""
        shard = self.shard(target, job_id)
        return shard in self.kept and self.leases.holds(shard)

    def lists(self, target: str) -> Callable[[str], bool]:
        """Whether this replica reads a discovery source of `target` now."""
        return lambda source: self.leases.holds(self.shard(target, source))

    def hand_over(self, target: str, jobs: list[Job]) -> None:
        """Jobs one of this replica's lists showed, of shards another replica works: written for
        that replica (once: their owner reads them itself from then on)."""
        handed = self._handed.setdefault(target, {})
        for job in jobs:
            if job.id not in handed:
                self.store.write_for_owner(target, self._snapshot(target, job, "discovered"))
                handed[job.id] = None
        if len(handed) > HANDED_REMEMBERED:
            for job_id in list(itertools.islice(handed, len(handed) - HANDED_REMEMBERED)):
                del handed[job_id]

    def register_for_owner(self, target: str, job_id: str) -> TrackedJob:
        """A registration of a job another replica works: written for it (the 202 waits for the
        commit), which polls it within about a second."""
        tracked = self._snapshot(target, placeholder(job_id), "registered")
        self.store.write_for_owner(target, tracked)
        return tracked

    def _snapshot(self, target: str, job: Job, source: str) -> TrackedJob:
        state = self.tracker.targets[target]
        now = time.time()
        return TrackedJob(
            job=job, provider=state.config.provider, first_seen=now, last_progress=now, source=source
        )

    # --- life ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Migrate the schema and note where the catch-up starts (before any shard is loaded);
        while the database cannot be reached, say so and try again. Raises schema.SchemaError
        for a schema this binary cannot work with."""
        pause = 1.0
        while True:
            try:
                await self.store.open()
                self._marks.append(await self.store.max_seq())
                log.info(
                    "joined the cluster", extra={"replica": self.leases.replica, "shards": self.store.shards}
                )
                return
            except (psycopg.Error, OSError, TimeoutError) as e:
                log.warning(
                    "state database unreachable; trying again",
                    extra={"error": str(e).strip(), "retry_in": pause},
                )
                await anyio.sleep(pause)
                pause = min(pause * 2, 30.0)

    async def run(self) -> None:
        """Renew and balance the leases every third of the TTL, following them with the tracker;
        listen for and catch up on jobs written for this replica. Hands everything back on exit."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen)
                tg.start_soon(self._catch_up_loop)
                while True:
                    await self.step()
                    await anyio.sleep(self.leases.pause())
        finally:
            with anyio.CancelScope(shield=True):
                await self.leases.leave()

    async def step(self) -> None:
        """One lease round, and the tracker brought in line with what it left held. The first
        round only joins (and renews what a replica of the same name held): replicas started
        together then see each other before any claims, rather than the first claiming every
        shard, loading it and handing two thirds over a moment later."""
        await self.leases.round(balance=self._joined)
        self._joined = True
        self.reachable = not self.leases.failing
        if self.reachable:
            self.scheduler.share_budgets(len(self.leases.members))
            await self._follow(set(self.leases.held()))

    # --- following the leases ------------------------------------------------------------
    async def _follow(self, held: set[int]) -> None:
        """After a round that reached the database: let go of what is kept but no longer held
        (taken by another replica while this one could not renew), take in what is held but not
        kept (renewed after a restart under the same name, or a load that failed)."""
        self._let_go(self.kept - held)
        await self._take(held - self.kept)

    async def _gained(self, shards: set[int]) -> None:
        await self._take(shards - self.kept)

    async def _take(self, shards: set[int]) -> None:
        if not shards:
            return
        try:
            await self.store.load(shards)
        except (psycopg.Error, OSError, TimeoutError) as e:
            log.warning("shards not loaded; retried at the next round", extra={"error": str(e).strip()})
            return
        taken = 0
        for state in self.tracker.targets.values():
            taken += len(self.tracker.adopt(state, self.store.restore(state)))
        self.kept |= shards
        for name in self.tracker.targets:
            self.scheduler.taken_in(name, self.store.cursors(name))
        log.info("cluster shards taken in", extra={"shards": len(shards), "jobs": taken})

    async def _lost(self, shards: set[int]) -> None:
        if self.leases.failing:
            return  # the database is out of reach: keep exporting them; _follow decides once it is back
        # Commit what is pending while the lease still holds (a handover); stale changes (the
        # lease passed to another replica already) are dropped by the fencing.
        with anyio.move_on_after(self.leases.ttl / RENEWALS_PER_TTL / 2), contextlib.suppress(Exception):
            await self.store.committed()
        self._let_go(shards)

    def _let_go(self, shards: set[int]) -> None:
        # A new set: the caller (Leases._release) releases every shard it passed, kept or not.
        shards = shards & self.kept
        if not shards:
            return
        gone = 0
        for name, state in self.tracker.targets.items():
            ids = [job_id for job_id in state.jobs if self.shard(name, job_id) in shards]
            gone += self.tracker.let_go(name, ids)
        self.store.forget(shards)
        self.kept -= shards
        log.info("cluster shards let go", extra={"shards": len(shards), "jobs": gone})

    # --- jobs written for this replica ----------------------------------------------------
    async def _listen(self) -> None:
        """Wake the catch-up read when another replica writes a job for one of this replica's
        shards. Only a hint: on any failure, reconnect after a pause."""
        while True:
            try:
                async with await self.store.connect() as conn:
                    await conn.set_autocommit(True)
                    await conn.execute(f"LISTEN {CHANNEL}")
                    while True:
                        # Drain what arrived, then sleep on the socket itself: psycopg's own wait
                        # wakes ten times a second to look for an interrupt, which for a
                        # connection that waits all day is most of what a quiet replica does.
                        async for note in conn.notifies(timeout=0):
                            if self._concerns(note.payload):
                                self._notified.set()
                        await anyio.wait_readable(conn.fileno())
            except (psycopg.Error, OSError) as e:
                log.debug("listener disconnected", extra={"error": str(e).strip()})
            await anyio.sleep(LISTEN_RETRY)

    def _concerns(self, payload: str) -> bool:
        """Whether a notification names a shard this replica keeps (its payload lists shards)."""
        try:
            return not self.kept.isdisjoint(int(s) for s in payload.split(",") if s)
        except ValueError:
            return True  # not ours to judge: read

    async def _catch_up_loop(self) -> None:
        while True:
            with anyio.move_on_after(CATCH_UP_EVERY):
                await self._notified.wait()
            self._notified = anyio.Event()
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                await self.catch_up()

    async def catch_up(self) -> int:
        """Take in the jobs other replicas wrote for the shards this replica works; returns how
        many. A listed job this replica dropped (its tombstone) stays dropped; a registration
        does not."""
        shards = {s for s in self.kept if self.leases.holds(s)}
        if not shards or not self._marks:
            return 0
        targets = self.tracker.targets

        def wanted(target: str, job_id: str) -> bool:
            state = targets.get(target)
            return state is not None and job_id not in state.jobs and self.owns(target, job_id)

        seqs, rows = await self.store.written_by_others(self._marks[0], shards, wanted)
        taken = 0
        for target, tracked in rows:
            state = targets[target]
            job_id = tracked.job.id
            if not wanted(target, job_id):
                continue
            if tracked.source != "registered" and (
                job_id in state.tombstones or self.store.buried(target, job_id) is not None
            ):
                continue
            with contextlib.suppress(CapReached):
                if tracked.job.is_placeholder:
                    # A registration: taken in as written (the database has it; polled at once).
                    self.tracker.adopt(state, [self.store.as_loaded(tracked)])
                else:
                    # A listed answer, as one of its own: a job listed finished is counted here.
                    self.tracker.track(target, tracked.job, tracked.source)
                self.scheduler.poll_soon(target, job_id)
                taken += 1
        newest = max(seqs, default=self._marks[-1])
        if len(seqs) >= CATCH_UP_ROWS:  # a full read: go on from its end at once
            self._marks.clear()
            self._notified.set()
        self._marks.append(newest)
        self.caught_up += taken
        return taken

    def unreachable_because(self) -> str:
        if self.store.error is not None:
            return self.store.error
        if self.leases.counters.renew_errors:
            return "the state database does not answer the lease renewals"
        return "not connected to the state database yet"

    # --- observability --------------------------------------------------------------------
    def metrics_text(self) -> bytes:
        c = self.leases.counters
        values = (
            (catalogue.CLUSTER_REPLICAS, len(self.leases.members)),
            (catalogue.CLUSTER_SHARDS, self.store.shards),
            (catalogue.CLUSTER_SHARDS_HELD, len(self.leases.held())),
            (catalogue.CLUSTER_STATE_REACHABLE, int(self.reachable)),
            (catalogue.CLUSTER_LEASE_RENEW_ERRORS, c.renew_errors),
            (catalogue.CLUSTER_TAKEOVERS, c.takeovers),
            (catalogue.CLUSTER_HANDOVERS, c.handovers),
        )
        return "".join(f"{family.header_text}{family.name} {value}\n" for family, value in values).encode()


def connector(settings: Settings, replica: str) -> Callable[[], Awaitable[psycopg.AsyncConnection]]:
    """How this replica opens a connection to `state_url`: the password read from
    `state_password_file` at each connection (a rotated secret is picked up), else libpq's own
    ways (PGPASSFILE, a service file). No prepared statements: they do not survive a
    transaction-pooling proxy."""
    password_file = settings.state_password_file

    async def connect() -> psycopg.AsyncConnection:
        extra: dict[str, Any] = {}
        if password_file:
            extra["password"] = Path(password_file).read_text(encoding="utf-8").strip()
        conn = await psycopg.AsyncConnection.connect(
            settings.state_url,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"asyncjob-exporter {replica}"[:63],
            prepare_threshold=None,
            **extra,
        )
        # A replica frozen inside a transaction that locks leases (SIGSTOP, a starved host) is
        # ended by the server within a renewal period: each such transaction sets its own bound
        # (exporter.cluster.leases.stalls_end), which holds behind a transaction-pooling proxy
        # where a session setting would not.
        return conn

    return connect


def join(settings: Settings, default_replica: str, tracker: Tracker, scheduler: Scheduler) -> Member:
    """This process as a replica of the cluster `settings.state_url` names (it connects when run)."""
    replica = settings.cluster.replica or default_replica or socket.gethostname()
    connect = connector(settings, replica)
    leases = Leases(
        connect, replica, schema.DEFAULT_SHARDS, settings.cluster.advertise_url, settings.cluster.lease_ttl
    )
    store = PostgresStore(settings.state_url, replica, leases, connect)
    return Member(tracker, scheduler, store, leases)
