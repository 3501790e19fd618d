"""Oxlin (Linxo Connect) v2.1: per-user event queues read once each, connections' synchronisations
tracked as jobs, and connections polled through `GET /connections/{id}`.

A synchronisation job's id is `<connection id>:<epoch of its first event>`: stable across
polls and restarts, and unique per sync of a connection. A sync runs across the connection's
channels (EMBEDDED scraping, REDIRECT PSD2), each sending its own events named by the event's
top-level `channel_definition_id`. The sync starts with the first sync event of its connection
(or a RUNNING resource) and ends when every channel that started has ended: all with
SYNC_ALL_SUCCESS (succeeded; PARTIAL_SUCCESS adds reason "partial"), else failed with the first
failure event (AUTH_FAILED, ...) or the FAILED resource status as its reason. Events that name no
channel are read through the resource: the sync ends at a final event once no channel of
`resource.channels[]` runs. When the final event is never read, the connection's own status
closes the sync: SUCCESS, PARTIAL_SUCCESS or FAILED with every started channel's
`last_end_date` at or after the sync's start. A sync first seen at its end has no known start,
hence no duration.

What an answer says (events, their order, connection resources) is read in oxlin_wire.py; this
module polls the queues and connections and folds what they say into syncs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from exporter.config import TargetConfig
from exporter.fetch import NotFound, PollError
from exporter.model import Cause, Connection, Job, Status
from exporter.parsing import bounded_reason, is_digits, parse_timestamp, text_id
from exporter.providers.base import AnswerLedger, BadPayload, Http, PollResult, Provider, gather, segment
from exporter.providers.oxlin_wire import (
    FINAL_STATUSES,
    IDLE_STATUSES,
    SUCCESS_EVENTS,
    EventKey,
    consent_expired,
    events_of,
    is_consent_failure,
    is_failure,
    lapsed,
    parse_connection,
)

JOB_TYPE = "synchronisation"
# Cursor names that hold the end of a connection's last closed sync, not a queue's position.
CLOSED_PREFIX = "closed:"
# Cursor names that mark a connection whose last sync failed for its end user.
USER_PREFIX = "user:"

# Who must act on a failed sync. AUTH_FAILED is documented as the channel's authentication
# failing: the end user's credentials. A bare FAILED status says nothing of its cause.
CAUSES: Mapping[str, Cause] = {"auth_failed": Cause.USER, "closed": Cause.USER}
RUNNING, SUCCEEDED, PARTIAL, FAILED = "running", "succeeded", "partial", "failed"
# A channel's statuses that end its part of a sync, and how: EMPTY (nothing to synchronise on
# it) ended well; CLOSED and FAILED did not. RUNNING and NONE have no outcome of their own.
CHANNEL_ENDS = {
    "SUCCESS": SUCCEEDED,
    "PARTIAL_SUCCESS": PARTIAL,
    "EMPTY": SUCCEEDED,
    "FAILED": FAILED,
    "CLOSED": FAILED,
}


@dataclass
class OpenSync:
    """A connection's synchronisation seen started and not yet ended."""

    id: str
    started: float | None  # None: first seen at its end, its start unknown
    job: Job | None = None
    # Each channel seen taking part: running, succeeded, partial or failed.
    channels: dict[str, str] = field(default_factory=dict)
    failure: str | None = None  # the first failure event's type
    # The connection was seen final once: the queue gets one more read to bring the final event
    # (and its reason: AUTH_FAILED is the end user's) before the connection's status closes it.
    final_seen: bool = False

    def ran_on(self, conn: Connection, state: str | None = None) -> set[str]:
        """The channels this sync ran on (those in `state` when given); every channel of the
        connection when no event or resource named one."""
        if not self.channels:
            return {c.id for c in conn.channels}
        return {ch for ch, st in self.channels.items() if state is None or st == state}

    def outcome(self, conn: Connection, event_type: str = "") -> tuple[Status, str | None]:
        """(status, reason) of the sync once it has ended."""
        if self.failure is None and conn.status == "CLOSED":
            return Status.FAILED, "closed"
        if self.failure is not None or FAILED in self.channels.values() or conn.status == "FAILED":
            return Status.FAILED, bounded_reason(self.failure or "failed")
        partial = (
            PARTIAL in self.channels.values() or conn.status == "PARTIAL_SUCCESS" or "PARTIAL" in event_type
        )
        return Status.SUCCEEDED, "partial" if partial else None


class Oxlin(Provider):
    name = "oxlin"
    config_keys: ClassVar[frozenset[str]] = frozenset({"queues", "connections"})

    @classmethod
    def discovers(cls, target: TargetConfig) -> bool:
        return True  # every sync is found in a queue or a connection's answer

    causes: ClassVar[Mapping[str, Cause]] = CAUSES
    known_reasons = ("auth_failed", "closed", "failed")

    def __init__(self, target: TargetConfig) -> None:
        super().__init__(target)
        self._cursors: dict[str, EventKey] = {}
        self._open: dict[str, OpenSync] = {}  # connection id -> its running sync
        # connection id -> when its last sync ended: later-read events up to then are about it.
        self._closed: dict[str, float] = {}
        self._known: dict[str, None] = dict.fromkeys(target.connections)  # connections to poll, in order
        # Connections whose last sync failed for their end user (AUTH_FAILED, a lapsed consent).
        # Kept as a flag per connection once marked, since the state file only adds and updates
        # cursors: a mark cleared must be written as cleared.
        self._user_failed: dict[str, bool] = {}

    @classmethod
    def check_target(cls, target: TargetConfig) -> list[str]:
        problems = super().check_target(target)
        if not target.queues and not target.connections:
            problems.append("queues: an oxlin target needs queues, connections, or both")
        return problems

    def static_ids(self) -> list[str]:
        return []  # syncs are found in queues, never configured

    def cursors(self) -> dict[str, str]:
        out = {queue: key.text() for queue, key in self._cursors.items()}
        out.update({f"{CLOSED_PREFIX}{conn}": repr(at) for conn, at in self._closed.items()})
        out.update({f"{USER_PREFIX}{conn}": "1" if on else "0" for conn, on in self._user_failed.items()})
        return out

    def restore_cursors(self, cursors: dict[str, str]) -> None:
        for name, text in cursors.items():
            try:
                if name.startswith(USER_PREFIX):
                    # Still polled after a restart, so that it keeps saying it awaits its user.
                    conn = name.removeprefix(USER_PREFIX)
                    self._user_failed[conn] = text == "1"
                    if text == "1":
                        self._known.setdefault(conn, None)
                elif name.startswith(CLOSED_PREFIX):
                    self._closed[name.removeprefix(CLOSED_PREFIX)] = float(text)
                else:
                    self._cursors[name] = EventKey.parse(text)
            except ValueError:
                continue  # an unreadable cursor only means events may be read again

    def id_from_body(self, body: Any) -> str:
        raise BadPayload("id: oxlin synchronisations are found in the configured queues and connections")

    def parse_job(self, obj: Any) -> Job:
        raise BadPayload("oxlin synchronisations are found in the configured queues and connections")

    def sync_job(self, event: dict[str, Any], conn: Connection, now: float) -> Job | None:
        """Fold one CONNECTION event into its connection's sync; the sync's job, or None."""
        event_type = str(event.get("event_type") or "").upper()
        at = parse_timestamp(event.get("creation_date")) or now
        channel = text_id(event.get("channel_definition_id"))
        failed = is_failure(event_type)
        final = failed or event_type in SUCCESS_EVENTS or conn.status in ("FAILED", "CLOSED")
        sync = self._open.get(conn.id)
        first = sync is None
        if sync is None:
            if at <= self._closed.get(conn.id, float("-inf")):
                return None  # about a sync already closed (by its connection's status)
            # A connection closed while idle is news about the connection, not a sync that failed.
            starts = final and conn.status != "CLOSED"
            if not (starts or event_type.startswith("SYNC") or conn.status == "RUNNING"):
                return None  # news about the connection, not about a sync
            sync = OpenSync(f"{conn.id}:{int(at)}", at)
        if failed and sync.failure is None:
            sync.failure = event_type
        # Channels the resource shows running take part, even before their own events are read.
        for ch in conn.channels:
            if ch.status == "RUNNING":
                sync.channels.setdefault(ch.id, RUNNING)
        if channel is not None:
            if failed:
                sync.channels[channel] = FAILED
            elif event_type in SUCCESS_EVENTS:
                sync.channels[channel] = PARTIAL if "PARTIAL" in event_type else SUCCEEDED
            else:
                sync.channels.setdefault(channel, RUNNING)
            ended = final and RUNNING not in sync.channels.values()
        else:
            # No channel named: the resource tells whether any channel still runs.
            ended = final and not any(ch.status == "RUNNING" for ch in conn.channels)
        # A closed connection ends every channel's part at once: none will send its final event.
        ended = ended or conn.status == "CLOSED"
        if ended:
            if first:
                sync.started = None  # first seen at its end: when it began is unknown
            status, reason = sync.outcome(conn, event_type)
        else:
            status, reason = Status.RUNNING, None
        job = self._job(sync, conn, status, reason, event_type, at, now)
        if status.terminal:
            self._close(conn.id, at)
        else:
            sync.job = job
            self._open[conn.id] = sync
        return job

    def _job(
        self,
        sync: OpenSync,
        conn: Connection,
        status: Status,
        reason: str | None,
        raw: str,
        at: float,
        now: float,
    ) -> Job:
        failed = status is Status.FAILED
        user = sync.failure == "AUTH_FAILED" or is_consent_failure(sync.failure or "")
        # Judged by the channels the sync ran on: its failed ones once failed, else its running
        # ones; a lapsed consent on another channel says nothing of this sync.
        if failed:
            on = sync.ran_on(conn, FAILED) or {c.id for c in conn.channels if c.status == "FAILED"}
            on = on or sync.ran_on(conn)
        else:
            on = sync.ran_on(conn, RUNNING) if sync.channels else sync.ran_on(conn)
        consent = consent_expired(conn, now, on)
        job = Job(
            id=sync.id,
            status=status,
            raw_status=raw,
            job_type=JOB_TYPE,
            created=sync.started,
            started=sync.started,
            finished=at if status.terminal else None,
            updated=at,
            reason=reason,
            message=f"{conn.name or conn.id}: {sync.failure or raw} ({conn.status})" if failed else None,
            # A lapsed consent or a consent failure: the end user must renew it.
            cause=Cause.USER if failed and (user or consent) else None,
            awaiting_user=status is not Status.SUCCEEDED and (user or consent),
            # Whom the sync concerns: the end user's bank connection (and its name), for the
            # application team to find that user.
            extra={"connection": conn.id, **({"institution": conn.name} if conn.name else {})},
        )
        if status.terminal:
            # Remembered for the connection: until a sync of it succeeds, its staleness is the
            # end user's to fix, not an operator's.
            if failed and (user or consent or reason == "closed"):
                self._user_failed[conn.id] = True
            else:
                if conn.id in self._user_failed:
                    self._user_failed[conn.id] = False
        return job

    def _close(self, conn_id: str, at: float) -> None:
        self._open.pop(conn_id, None)
        self._closed[conn_id] = max(at, self._closed.get(conn_id, at))

    def closed_by_connection(self, conn: Connection, now: float) -> Job | None:
        """The open sync of `conn` ended by the connection's own status, when its final event
        was never read: a final status, and every started channel ended after the sync began."""
        sync = self._open.get(conn.id)
        if sync is None or sync.started is None or conn.status not in FINAL_STATUSES:
            return None
        started = [c for c in conn.channels if c.id in sync.channels] or list(conn.channels)
        ends = [c.last_end for c in started]
        idle = conn.status in IDLE_STATUSES
        if idle:
            # Closed, or nothing under way: no channel will end it with a fresh end date.
            if any(c.status == "RUNNING" for c in conn.channels):
                return None
        elif not ends or any(end is None or end < sync.started for end in ends):
            return None
        if not sync.final_seen:
            sync.final_seen = True
            return None
        for c in started:
            if sync.channels.get(c.id, RUNNING) == RUNNING:
                sync.channels[c.id] = CHANNEL_ENDS.get(c.status, SUCCEEDED)
        status, reason = sync.outcome(conn)
        fresh = [end for end in ends if end is not None and end >= sync.started]
        at = max(fresh) if fresh else now
        job = self._job(sync, conn, status, reason, conn.status, at, now)
        self._close(conn.id, at)
        return job

    def read_events(self, queue: str, events: list[Any], result: PollResult, jobs: dict[str, Job]) -> None:
        keyed = []
        for event in events:
            if not isinstance(event, dict) or text_id(event.get("id")) is None:
                result.bad_payloads.append(f"queue {queue}: event without an id")
                continue
            keyed.append((EventKey.of(event), event))
        keyed.sort(key=lambda pair: pair[0].sort_key())
        cursor = self._cursors.get(queue)
        now = time.time()
        for key, event in keyed:
            if cursor is not None and not key.after(cursor):
                continue  # read in an earlier cycle
            cursor = key
            result.queue_events.append((queue, str(event.get("event_type") or "UNKNOWN")))
            resource = event.get("resource")
            if str(event.get("resource_type") or "CONNECTION").upper() != "CONNECTION" or resource is None:
                continue
            try:
                conn = parse_connection(resource)
            except BadPayload as e:
                result.bad_payloads.append(f"queue {queue} event {event.get('id')}: {e}")
                continue
            result.connections.append(conn)
            self._known.setdefault(conn.id, None)
            job = self.sync_job(event, conn, now)
            if job is not None:
                jobs[job.id] = job
        if cursor is not None:
            self._cursors[queue] = cursor

    async def poll(
        self, http: Http, tracked: Sequence[str], ledger: AnswerLedger | None = None
    ) -> PollResult:
        result = PollResult()
        # Syncs tracked before a restart carry their connection and start in their id.
        for job_id in tracked:
            conn_id, _, start = job_id.rpartition(":")
            if conn_id and is_digits(start) and conn_id not in self._open:
                self._open[conn_id] = OpenSync(job_id, float(start))
                self._known.setdefault(conn_id, None)

        async def read(queue: str) -> list[Any]:
            return events_of(await http.get_json(f"/queues/{segment(queue)}"))

        jobs: dict[str, Job] = {}
        for queue, outcome in sorted(
            await gather([q for q in self.target.queues if self.lists(q)], read), key=lambda p: p[0]
        ):
            if isinstance(outcome, BadPayload):
                result.bad_payloads.append(f"queue {queue}: {outcome}")
            elif isinstance(outcome, NotFound):
                result.missing.append(f"queue {queue}")
            elif isinstance(outcome, list):
                self.read_events(queue, outcome, result, jobs)

        async def connection(conn_id: str) -> Connection:
            return parse_connection(await http.get_json(f"/connections/{segment(conn_id)}"))

        now = time.time()
        for conn_id, got in await gather(list(self._known), connection):
            if isinstance(got, Connection) and got.id != conn_id:
                result.id_mismatches.append(f"connection {conn_id}: the answer is about connection {got.id}")
            elif isinstance(got, Connection):
                result.connections.append(got)
                closed = self.closed_by_connection(got, now)
                if closed is not None:
                    jobs[closed.id] = closed
                    continue
                sync = self._open.get(got.id)
                # A lapsed consent on a channel the sync runs on stops it until the end user
                # renews it.
                job = sync.job if sync is not None else None
                if (
                    sync is not None
                    and job is not None
                    and not job.awaiting_user
                    and consent_expired(got, now, sync.ran_on(got, RUNNING) if sync.channels else None)
                ):
                    sync.job = replace(job, awaiting_user=True)
                    jobs[sync.id] = sync.job
            elif isinstance(got, NotFound):
                if conn_id in self.target.connections:
                    result.missing.append(f"connection {conn_id}")
                else:
                    self._known.pop(conn_id, None)
                if conn_id in self._user_failed:
                    self._user_failed[conn_id] = False
                sync = self._open.pop(conn_id, None)
                if sync is not None:
                    result.gone.append(sync.id)
            elif isinstance(got, BadPayload):
                result.bad_payloads.append(f"connection {conn_id}: {got}")
            elif isinstance(got, PollError):
                pass  # counted by the client
        result.jobs.extend(jobs.values())
        result.connections = [
            replace(c, awaiting_user=self.awaits_user(c, now)) if self.awaits_user(c, now) else c
            for c in result.connections
        ]
        return result

    def awaits_user(self, conn: Connection, now: float) -> bool:
        """Whether only the connection's end user can make it synchronise again: its last sync
        failed for them (AUTH_FAILED, a lapsed consent on a channel it ran on, a consent or
        SCA failure), or every channel's consent has lapsed."""
        if self._user_failed.get(conn.id):
            return True
        return bool(conn.channels) and lapsed(conn, now) == {c.id for c in conn.channels}
