"""What any replica shows of the whole cluster: the jobs of the shards other replicas work, read
from PostgreSQL as their owners last committed them, and the members with what each holds.

The read is a network away: the routes await it before calling the handlers (exporter.api stays
plain functions of what it is given; exporter.pages awaits it itself). A read that fails or takes
longer than READ_TIMEOUT leaves the pages showing this replica's jobs, saying the rest cannot be
read now; while the lease round cannot reach the database, nothing is tried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import psycopg

from exporter.cluster.batch import JobKey
from exporter.cluster.reads import ClusterJob

if TYPE_CHECKING:
    from exporter.cluster.member import Member

# A page waits no longer than this for other replicas' jobs: it answers with its own instead.
READ_TIMEOUT = 3.0


@dataclass(frozen=True)
class Elsewhere:
    """Jobs other replicas work, as committed, in (target, id) order; `error` says why none could
    be read; `more` that more matched than were read."""

    jobs: list[ClusterJob] = field(default_factory=list)
    error: str | None = None
    more: bool = False
    last: JobKey | None = None  # the last key read (of a job shown or not): a page goes on after it


@dataclass(frozen=True)
class MemberRow:
    """A member of the cluster as the landing page shows it."""

    replica: str
    address: str  # a link when it is an http(s) URL
    shards: int
    this: bool


def _unreadable(member: Member, e: BaseException | None = None) -> Elsewhere:
    why = str(e).strip() if e is not None and str(e).strip() else None
    if why is None:
        why = type(e).__name__ if e is not None else member.unreachable_because()
    return Elsewhere(error=f"other replicas' jobs cannot be read now: {why}")


async def jobs_elsewhere(
    member: Member,
    target: str | None = None,
    status: str | None = None,
    id_prefix: str = "",
    after: JobKey | None = None,
    limit: int = 1000,
) -> Elsewhere:
    """Up to `limit` jobs of other replicas, after `after` in (target, id) order, as their owners
    last committed them; and registrations others took for this replica's shards, not taken in
    yet (never one this replica dropped)."""
    if "\x00" in id_prefix:
        return Elsewhere()  # no id holds a NUL (the store replaces it), nor can PostgreSQL's text
    if not member.reachable:
        return _unreadable(member)
    try:
        with anyio.fail_after(READ_TIMEOUT):
            rows = await member.store.cluster_jobs(
                target, after, limit + 1, status=status, id_prefix=id_prefix, skip_shards=member.kept
            )
    except (psycopg.Error, OSError, TimeoutError) as e:
        return _unreadable(member, e)
    read = rows[:limit]
    last = (read[-1].target, read[-1].tracked.job.id) if read else None
    return Elsewhere([j for j in read if not _dropped_here(member, j)], more=len(rows) > limit, last=last)


def _dropped_here(member: Member, job: ClusterJob) -> bool:
    """A job of this replica's shards that it dropped, written again by another replica's list:
    its catch-up read leaves such a job dropped (a registration, though, is taken in again)."""
    if job.shard not in member.kept or job.tracked.source == "registered":
        return False
    state = member.tracker.targets.get(job.target)
    job_id = job.tracked.job.id
    if state is not None and job_id in state.tombstones:
        return True
    return member.store.buried(job.target, job_id) is not None


async def job_elsewhere(member: Member, target: str, job_id: str) -> Elsewhere:
    """The job as its owner last committed it (none when no replica has it)."""
    if "\x00" in job_id:
        return Elsewhere()
    if not member.reachable:
        return _unreadable(member)
    try:
        with anyio.fail_after(READ_TIMEOUT):
            found = await member.store.cluster_job(target, job_id)
    except (psycopg.Error, OSError, TimeoutError) as e:
        return _unreadable(member, e)
    return Elsewhere([found] if found is not None and not _dropped_here(member, found) else [])


@dataclass(frozen=True)
class Cluster:
    """The landing page's view of the cluster."""

    replica: str
    held: int  # shards this replica holds now
    shards: int
    reachable: bool
    why: str | None  # why the state database cannot be reached
    members: list[MemberRow]
    unowned: int  # shards no member held as the last round counted

    def link(self, row: MemberRow) -> str | None:
        """A member's advertised address as a link: http(s) alone (a config value, but a page
        must never carry a javascript: or data: link)."""
        return row.address if row.address.lower().startswith(("http://", "https://")) else None


def cluster(member: Member) -> Cluster:
    """The live members as the last lease round read them, this replica among them with the
    shards it holds now (the round counted before its own claims)."""
    me, held = member.leases.replica, len(member.leases.held())
    rows = [
        MemberRow(p.replica, p.address, held if p.replica == me else p.shards, p.replica == me)
        for p in member.leases.peers
    ]
    if not any(r.this for r in rows):  # not joined yet, or the database out of reach
        rows.append(MemberRow(me, member.leases.address, held, True))
    rows.sort(key=lambda r: r.replica)
    shards = member.store.shards
    return Cluster(
        replica=me,
        held=held,
        shards=shards,
        reachable=member.reachable,
        why=None if member.reachable else member.unreachable_because(),
        members=rows,
        unowned=max(0, shards - sum(r.shards for r in rows)),
    )
