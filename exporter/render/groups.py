"""The group cache: per-job series kept as compressed bytes in groups of GROUP_SIZE jobs,
marked dirty on change and rendered again in the background, so a scrape only joins bytes."""

from __future__ import annotations

from collections.abc import Iterator

import anyio

from exporter.render.deflate import gzip_member
from exporter.render.jobs import JOB_FAMILIES, JOB_FAMILY_HEADERS_GZ, job_prefix
from exporter.tracker import TargetState, TrackedJob

# Jobs per compressed group: a refresh of one group (~1 ms) is the longest a scrape waits
# on the background refresh; more jobs per group would compress a little better.
GROUP_SIZE = 32


class Group:
    """Up to GROUP_SIZE jobs of one target and their cached gzip members, one per family.

    Only the members are kept: a refresh renders the group's jobs again from the tracker's
    state, so memory per job is the tracker's own plus a share of compressed bytes.
    """

    __slots__ = ("gz", "jobs", "state")

    def __init__(self, state: TargetState) -> None:
        self.state = state
        self.jobs: dict[str, TrackedJob] = {}
        self.gz: tuple[bytes, ...] | None = None  # None until first rendered

    def refresh(self) -> None:
        parts: list[list[str]] = [[] for _ in JOB_FAMILIES]
        state = self.state
        for tracked in self.jobs.values():
            prefix = job_prefix(state, tracked)
            for part, family in zip(parts, JOB_FAMILIES, strict=True):
                part.append(family.lines(tracked, prefix))
        self.gz = tuple(gzip_member("".join(p).encode()) if any(p) else b"" for p in parts)


class JobSeries:
    """The per-job part of the exposition; a Tracker listener.

    A change only marks the job's group dirty. Dirty groups are rendered and compressed
    again by `refresh` (in the background while the server runs, a group at a time so the
    event loop stays responsive), so a scrape joins cached members and does not grow with
    polling work. A scrape that comes before the refresh serves the group's previous
    members: every group is a consistent snapshot, at most one refresh old.
    """

    def __init__(self) -> None:
        self.groups: dict[str, list[Group]] = {}  # target -> groups
        self.where: dict[tuple[str, str], Group] = {}  # (target, job_id) -> its group
        self.dirty: set[Group] = set()
        self.version = 0  # bumped whenever a group's members changed
        self.scrapes = 0  # scrapes being served; the background refresh waits for them

    def job_changed(self, state: TargetState, tracked: TrackedJob) -> None:
        key = (state.config.name, tracked.job.id)
        # History (first seen finished long ago) is not news: no series, so nothing pages for it.
        if not state.config.config.per_job_metrics or tracked.history:
            if key in self.where:
                self.job_removed(state, tracked.job.id)
            return
        group = self.where.get(key)
        if group is None:
            groups = self.groups.setdefault(key[0], [])
            group = next((g for g in groups if len(g.jobs) < GROUP_SIZE), None)
            if group is None:
                group = Group(state)
                groups.append(group)
            self.where[key] = group
        group.jobs[key[1]] = tracked
        group.state = state
        self.dirty.add(group)

    def job_removed(self, state: TargetState, job_id: str) -> None:
        group = self.where.pop((state.config.name, job_id), None)
        if group is None:
            return
        group.jobs.pop(job_id, None)
        if group.jobs:
            self.dirty.add(group)
            return
        groups = self.groups.get(state.config.name, [])
        if group in groups:
            groups.remove(group)
        self.dirty.discard(group)
        self.version += 1

    def _all(self) -> list[Group]:
        return [g for gs in self.groups.values() for g in gs]

    def _refresh(self, group: Group) -> None:
        self.dirty.discard(group)
        group.refresh()
        self.version += 1

    def refresh(self) -> None:
        """Render every dirty group now."""
        for g in list(self.dirty):
            self._refresh(g)

    async def refresh_in_background(self, period: float = 0.1) -> None:
        """Keep the cached members current, a group at a time; scrapes go first."""
        while True:
            while self.dirty:
                with anyio.move_on_after(0.25):  # a scrape is being served: let it finish
                    while self.scrapes > 0:
                        await anyio.sleep(0.001)
                if self.dirty:
                    self._refresh(next(iter(self.dirty)))
                await anyio.sleep(0)
            await anyio.sleep(period)

    def members(self, fresh: bool) -> Iterator[bytes]:
        """Every family's header member, then each group's member of that family."""
        if fresh:
            self.refresh()
        groups = self._all()
        for g in groups:
            if g.gz is None:  # never rendered yet: nothing older to serve
                self._refresh(g)
        for i, header in enumerate(JOB_FAMILY_HEADERS_GZ):
            yield header
            for g in groups:
                chunk = g.gz[i] if g.gz else b""
                if chunk:
                    yield chunk
