"""The group cache: per-job series kept as compressed blocks in groups of GROUP_SIZE jobs, one
block per family, marked dirty on change and rendered again in the background; the blocks are
then assembled, family by family, into the job part of the body that every scrape serves.

Every change costs the same whatever the number of jobs: a job finds its group, and a new job a
group with room, through dicts; dropping one does not look at the others.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass

import anyio

from exporter.render.attention import due, effective_mode, needs_person
from exporter.render.deflate import Block, block, combine, concat
from exporter.render.jobs import JOB_FAMILIES, job_prefix
from exporter.tracked import TargetState, TrackedJob

log = logging.getLogger("asyncjob.render")

# Jobs per group: the unit of rendering (~1 ms a group); more jobs per group would compress a
# little better and make each refresh longer.
GROUP_SIZE = 32
# Under steady change the served job part is assembled again at least this often.
MAX_AGE = 0.5
# The background refresh renders groups for about this long a loop turn (~0.7 ms a group).
TURN = 0.003
# Blocks of one family the assembly joins a loop turn (a few ms for the largest families).
CHUNK = 32
# A dirty group waits this long before the background refresh renders it, so that changes
# arriving together (a burst of registrations filling a group, a poll cycle's answers) cost
# one rendering of the group, not one each.
SETTLE = 0.05

HEADER_BLOCKS = tuple(block(f.header()) for f in JOB_FAMILIES)


class Group:
    """Up to GROUP_SIZE jobs of one target and their blocks, one per family.

    Only the blocks are kept: a refresh renders the group's jobs again from the tracker's
    state, so memory per job is the tracker's own plus a share of compressed bytes.
    """

    __slots__ = ("blocks", "dirty", "dirty_since", "jobs", "state")

    def __init__(self, state: TargetState) -> None:
        self.state = state
        self.jobs: dict[str, TrackedJob] = {}
        self.blocks: tuple[Block, ...] | None = None  # None until first rendered
        self.dirty = False
        self.dirty_since = 0.0  # time.monotonic() of the first change not rendered yet

    def refresh(self) -> bool:
        """Render the jobs again; a family whose bytes did not change keeps its block (so the
        assembly reuses that family's column). Returns whether any block changed."""
        parts: list[list[str]] = [[] for _ in JOB_FAMILIES]
        state = self.state
        for tracked in self.jobs.values():
            prefix = job_prefix(state, tracked)
            for part, family in zip(parts, JOB_FAMILIES, strict=True):
                part.append(family.lines(tracked, prefix))
        old = self.blocks
        # "replace": text is cleaned where it enters; should a lone surrogate slip through, it
        # costs one character, not the exposition.
        new = [block("".join(p).encode("utf-8", "replace")) for p in parts]
        if old is not None:
            new = [o if o.data == n.data else n for o, n in zip(old, new, strict=True)]
            if all(o is n for o, n in zip(old, new, strict=True)):
                return False
        self.blocks = tuple(new)
        return True


@dataclass(frozen=True)
class JobPart:
    """The assembled job part of the body: deflate parts, their plain CRC-32 and size."""

    version: int
    parts: tuple[bytes, ...]
    crc: int
    size: int
    at: float  # time.monotonic() of the snapshot it was assembled from
    current_at: float  # every change made before this moment (monotonic) is in the part


class Assembler:
    """Joins the groups' blocks family by family; a family whose blocks are all unchanged
    since the last assembly is reused whole (the common case: a poll moves a few families).

    `steps` yields every CHUNK blocks so the background runs it on the event loop in short
    turns. (In a worker thread each zlib call that lets go of the GIL waits up to the switch
    interval to get it back from a busy loop: seconds for one assembly.)
    """

    def __init__(self) -> None:
        self.columns: list[tuple[tuple[Block, ...], tuple[bytes, ...], int, int]] = []

    def steps(
        self, snapshot: list[tuple[Block, ...]], version: int, at: float, current_at: float
    ) -> Generator[None, None, JobPart]:
        crc = size = 0
        parts: list[bytes] = []
        columns = []
        by_family = zip(*snapshot, strict=True) if snapshot else ((),) * len(HEADER_BLOCKS)
        for i, (header, column) in enumerate(zip(HEADER_BLOCKS, by_family, strict=True)):
            if i < len(self.columns) and self.columns[i][0] == column:
                cached = self.columns[i]
            else:
                blocks = (header, *column)
                data: list[bytes] = []
                c_crc = c_size = 0
                for k in range(0, len(blocks), CHUNK):
                    d, chunk_crc, chunk_size = concat(blocks[k : k + CHUNK])
                    data += d
                    c_crc = combine(c_crc, chunk_crc, chunk_size)
                    c_size += chunk_size
                    yield
                cached = (column, tuple(data), c_crc, c_size)
            columns.append(cached)
            parts += cached[1]
            crc = combine(crc, cached[2], cached[3])
            size += cached[3]
        self.columns = columns
        return JobPart(version, tuple(parts), crc, size, at, current_at)

    def assemble(
        self, snapshot: list[tuple[Block, ...]], version: int, at: float, current_at: float
    ) -> JobPart:
        steps = self.steps(snapshot, version, at, current_at)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                part: JobPart = done.value
                return part


class JobSeries:
    """The per-job part of the exposition; a Tracker listener.

    A change only marks the job's group dirty. Dirty groups are rendered again, oldest first,
    by the background refresh (a group at a time, scrapes first), which assembles the job part
    again at least every MAX_AGE seconds while anything changed. A scrape serves the last
    assembled part: a consistent snapshot, never waiting on rendering.
    """

    def __init__(self) -> None:
        self.groups: dict[str, dict[Group, None]] = {}  # target -> its groups, in order
        self.with_room: dict[str, dict[Group, None]] = {}  # target -> its groups with room
        self.group_of: dict[str, dict[str, Group]] = {}  # target -> job_id -> its group
        self.dirty: deque[Group] = deque()
        self.version = 0  # bumped whenever a group's blocks changed or a group went
        self.scrapes = 0  # scrapes being served; the background refresh waits for them
        self.assembler = Assembler()
        self.part: JobPart | None = None
        self.changed_after_snapshot: float | None = None  # oldest rendered change not assembled
        self.assembling: float | None = None  # oldest change of the assembly under way
        self.modes: dict[str, str] = {}  # target -> all | exceptions | none, as last decided
        # Quiet jobs of targets in `exceptions` mode, by when they are about to become stuck or
        # overdue: a job that stops moving gets no new answer to place it, so it is placed then.
        # One live entry per job (`due_at`); a deadline moved later is queued again on waking.
        self.due_queue: list[tuple[float, str, str]] = []
        self.due_at: dict[tuple[str, str], float] = {}
        self.states: dict[str, TargetState] = {}  # target -> its state, for the queued jobs
        # Set while the background refresh has nothing to do and waits for news (a change, a
        # group gone, an earlier deadline), so that an idle exporter does not tick.
        self._idle: anyio.Event | None = None

    def job_changed(self, state: TargetState, tracked: TrackedJob) -> None:
        self.states[state.config.name] = state
        self._place(state, tracked, self._mode(state), time.time())

    def _place(self, state: TargetState, tracked: TrackedJob, mode: str, now: float) -> None:
        """Put the job in a group (its series are rendered) or take it out, as `mode` says.

        In `exceptions` mode only the jobs that need a person are in groups, so the groups stay
        full and compress as well as in `all`; a quiet job is queued for the moment it would
        become stuck or overdue (a job only starts to need a person through a change or then).
        """
        name, job_id = state.config.name, tracked.job.id
        # History (first seen finished long ago) is not news: no series, so nothing pages for it.
        shown = mode != "none" and not tracked.is_history
        if shown and mode == "exceptions" and not needs_person(tracked, state.config, now):
            self._watch(name, tracked, state, now)
            shown = False
        if not shown:
            if job_id in self.group_of.get(name, {}):
                self._take_out(name, job_id)
            return
        group_of = self.group_of.setdefault(name, {})
        group = group_of.get(job_id)
        if group is None:
            with_room = self.with_room.setdefault(name, {})
            # popitem takes the last entry for good; `del` would leave a hole that later
            # look-ups from the front walk over.
            if with_room:
                group = with_room.popitem()[0]
            else:
                group = Group(state)
                self.groups.setdefault(name, {})[group] = None
            group_of[job_id] = group
            group.jobs[job_id] = tracked
            if len(group.jobs) < GROUP_SIZE:
                with_room[group] = None
        else:
            group.jobs[job_id] = tracked
        group.state = state
        self._mark(group)

    def job_removed(self, state: TargetState, job_id: str) -> None:
        name = state.config.name
        self.due_at.pop((name, job_id), None)
        if job_id in self.group_of.get(name, {}):
            self._take_out(name, job_id)
        self._mode(state)  # fewer jobs: `auto` may go back to every job's series

    def _take_out(self, name: str, job_id: str) -> None:
        group = self.group_of[name].pop(job_id)
        del group.jobs[job_id]
        if group.jobs:
            self.with_room[name][group] = None
            self._mark(group)
            return
        del self.groups[name][group]
        self.with_room[name].pop(group, None)
        group.blocks = None  # also tells the refresh queue it went
        self.version += 1
        self._unassembled(time.monotonic())
        self._news()

    # --- per_job_series: which of a target's jobs have series ----------------------------
    def _mode(self, state: TargetState) -> str:
        """The target's mode now; on a change every job of the target is placed again."""
        name = state.config.name
        old = self.modes.get(name)
        new = effective_mode(state.config, len(state.jobs), old)
        if new == old:
            return new
        self.modes[name] = new
        if state.config.per_job_series == "auto" and (old is not None or new != "all"):
            log.info(
                "per-job series: %s",
                "only the jobs that need a person" if new == "exceptions" else "every job",
                extra={
                    "target": name,
                    "per_job_series": new,
                    "jobs": len(state.jobs),
                    "per_job_series_limit": state.config.per_job_series_limit,
                },
            )
        if old is not None:
            now = time.time()
            for tracked in list(state.jobs.values()):
                self._place(state, tracked, new, now)
        return new

    def _watch(self, name: str, tracked: TrackedJob, state: TargetState, now: float) -> None:
        """Queue a quiet job to be looked at again when it becomes stuck or overdue."""
        when = due(tracked, state.config)
        if when is None or when <= now:
            return
        key = (name, tracked.job.id)
        queued = self.due_at.get(key)
        if queued is not None and queued <= when:
            return  # an earlier look is queued: it queues the later one then
        self.due_at[key] = when
        heapq.heappush(self.due_queue, (when, name, tracked.job.id))
        if self.due_queue[0][0] == when:
            self._news()  # the earliest deadline: the idle refresh must wake for it

    def wake_due(self, now: float) -> None:
        """Give their series to the quiet jobs that became stuck or overdue by `now` (costs what
        is due, not the number of jobs)."""
        queue = self.due_queue
        while queue and queue[0][0] <= now:
            when, name, job_id = heapq.heappop(queue)
            key = (name, job_id)
            if self.due_at.get(key) != when:
                continue  # dropped, or queued again for another time
            del self.due_at[key]
            state = self.states.get(name)
            tracked = state.jobs.get(job_id) if state is not None else None
            if state is None or tracked is None or self.modes.get(name) != "exceptions":
                continue
            self._place(state, tracked, "exceptions", now)  # shown now, or queued for its new deadline

    def tombstone_renewed(self, state: TargetState, job_id: str) -> None:
        return None  # a tombstoned job has no series

    def _mark(self, group: Group) -> None:
        if not group.dirty:
            group.dirty = True
            group.dirty_since = time.monotonic()
            self.dirty.append(group)
            self._news()

    def _news(self) -> None:
        if self._idle is not None:
            self._idle.set()

    def _refresh_next(self) -> None:
        group = self.dirty.popleft()
        group.dirty = False
        if group.jobs and group.refresh():
            self.version += 1
            self._unassembled(group.dirty_since)

    def _unassembled(self, since: float) -> None:
        if self.changed_after_snapshot is None or since < self.changed_after_snapshot:
            self.changed_after_snapshot = since

    def refresh(self) -> None:
        """Render every dirty group now."""
        while self.dirty:
            self._refresh_next()

    def _snapshot(self) -> tuple[list[tuple[Block, ...]], int, float, float]:
        blocks = [g.blocks for gs in self.groups.values() for g in gs if g.blocks is not None]
        now = time.monotonic()
        self.assembling = self.changed_after_snapshot  # in the snapshot, not yet served
        self.changed_after_snapshot = None
        # Dirty groups wait in the order they changed: the oldest bounds what the part holds.
        return blocks, self.version, now, self.dirty[0].dirty_since if self.dirty else now

    def assemble(self) -> JobPart:
        """Assemble the job part now (on the caller's thread)."""
        self.part = self.assembler.assemble(*self._snapshot())
        self.assembling = None
        return self.part

    def staleness(self) -> float:
        """Seconds since the oldest change the served part does not hold (0: it holds all)."""
        if self.part is None:
            return 0.0
        # Changes still to render wait in the order they came; rendered ones that altered a
        # block wait for the next assembly. (A refresh that alters nothing was no news.)
        oldest_dirty = self.dirty[0].dirty_since if self.dirty else None
        missing = [t for t in (oldest_dirty, self.changed_after_snapshot, self.assembling) if t is not None]
        return time.monotonic() - min(missing) if missing else 0.0

    def current(self, fresh: bool) -> JobPart:
        """The job part to serve; `fresh`: every change rendered and assembled first."""
        if fresh or self.part is None:
            self.wake_due(time.time())
            self.refresh()
            if self.part is None or self.part.version != self.version:
                return self.assemble()
        return self.part

    async def refresh_in_background(self, idle_max: float = 1.0) -> None:
        """Keep the served job part current: dirty groups, once dirty for SETTLE seconds, for up
        to TURN seconds a loop turn, scrapes first; the assembly CHUNK blocks a turn, at least
        every MAX_AGE seconds while jobs change. A turn of several groups keeps up when polling
        keeps the loop busy (a group a turn would wait behind every other task's turn). With
        nothing to do it waits for news or the next quiet job's deadline (at most `idle_max`
        seconds, in case the wall clock jumps), not for a period."""
        while True:
            self.wake_due(time.time())
            deadline = time.monotonic() + MAX_AGE
            while self.dirty and time.monotonic() < deadline:
                with anyio.move_on_after(0.25):  # a scrape is being served: let it finish
                    while self.scrapes > 0:
                        await anyio.sleep(0.001)
                wait = self.dirty[0].dirty_since + SETTLE - time.monotonic()
                if wait > 0:
                    await anyio.sleep(wait)
                    continue
                now = time.monotonic()
                turn, settled = now + TURN, now - SETTLE
                while self.dirty and self.dirty[0].dirty_since <= settled and time.monotonic() < turn:
                    self._refresh_next()
                await anyio.sleep(0)
            if self.part is None or self.part.version != self.version:
                steps = self.assembler.steps(*self._snapshot())
                while True:
                    try:
                        next(steps)
                    except StopIteration as done:
                        self.part, self.assembling = done.value, None
                        break
                    await anyio.sleep(0)
            if not self.dirty:
                await self._wait_for_news(idle_max)

    async def _wait_for_news(self, idle_max: float) -> None:
        wait = idle_max
        if self.due_queue:
            wait = min(wait, max(0.0, self.due_queue[0][0] - time.time()))
        self._idle = anyio.Event()
        try:
            with anyio.move_on_after(wait):
                await self._idle.wait()
        finally:
            self._idle = None
