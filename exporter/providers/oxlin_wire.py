"""Oxlin (Linxo Connect) v2.1 on the wire: a queue's answer read into events, an event's place
in its queue, a connection resource read into a `Connection` with its channels, and what the
event types and statuses Oxlin documents say. No state: exporter/providers/oxlin.py folds these
into synchronisation jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter.model import Channel, Connection
from exporter.parsing import bounded_label, is_digits, parse_timestamp, text_id
from exporter.providers.base import BadPayload

# Event types that end a channel's part of a sync well (PARTIAL ones with reason "partial").
SUCCESS_EVENTS = frozenset({"SYNC_ALL_SUCCESS", "PARTIAL_SUCCESS", "SYNC_PARTIAL_SUCCESS"})
# Every connection status Oxlin documents, by what it says of a sync: RUNNING runs one; SUCCESS,
# PARTIAL_SUCCESS and FAILED end it with their outcome; CLOSED (the connection was closed) ends
# it failed; NONE (no synchronisation under way or on record) ends it as its channels say.
FINAL_STATUSES = frozenset({"SUCCESS", "PARTIAL_SUCCESS", "FAILED", "CLOSED", "NONE"})
# Statuses that end a sync whatever the channels' end dates say: nothing will run on them.
IDLE_STATUSES = frozenset({"CLOSED", "NONE"})

# Keys an object holding a queue's events may use.
EVENT_LISTS = ("events", "data", "items", "results", "value")


def is_failure(event_type: str) -> bool:
    return event_type.endswith(("_FAILED", "_FAILURE", "_ERROR"))


def is_consent_failure(event_type: str) -> bool:
    """A failure about the PSD2 consent or its strong authentication: only the end user can renew it."""
    return is_failure(event_type) and ("CONSENT" in event_type or "SCA" in event_type)


def events_of(body: Any) -> list[Any]:
    """A queue answer's events: one event, a list of them, or an object holding the list."""
    if body is None:
        return []
    if isinstance(body, list):
        return body
    if not isinstance(body, dict):
        raise BadPayload("queue answer is neither an event nor a list of events")
    if "event_type" in body:
        return [body]
    for key in EVENT_LISTS:
        if isinstance(body.get(key), list):
            return list(body[key])
    lists = [v for v in body.values() if isinstance(v, list)]
    if len(lists) == 1:
        return lists[0]
    raise BadPayload("queue answer holds no list of events")


@dataclass(frozen=True, order=True)
class EventKey:
    """Where an event stands in its queue: by numeric id when there is one, else by creation date."""

    date: float
    number: int | None

    @classmethod
    def of(cls, event: dict[str, Any]) -> EventKey:
        raw = text_id(event.get("id"))
        return cls(
            parse_timestamp(event.get("creation_date")) or 0.0, int(raw) if raw and is_digits(raw) else None
        )

    def after(self, other: EventKey) -> bool:
        if self.number is not None and other.number is not None:
            return self.number > other.number
        return self.date > other.date

    def sort_key(self) -> tuple[int, float]:
        return (self.number if self.number is not None else -1, self.date)

    def text(self) -> str:
        # repr: a float's exact text (`:g` would keep six digits of an epoch).
        return f"{'' if self.number is None else self.number}@{self.date!r}"

    @classmethod
    def parse(cls, text: str) -> EventKey:
        number, _, date = text.partition("@")
        return cls(float(date or 0), int(number) if is_digits(number) else None)


def parse_connection(resource: Any) -> Connection:
    if not isinstance(resource, dict):
        raise BadPayload("connection is not an object")
    conn_id = text_id(resource.get("id"))
    if conn_id is None:
        raise BadPayload("connection id")
    channels = []
    listed = resource.get("channels") or []
    if not isinstance(listed, list):
        raise BadPayload("channels")
    for ch in listed:
        if not isinstance(ch, dict) or text_id(ch.get("channel_definition_id")) is None:
            raise BadPayload("channels[].channel_definition_id")
        channels.append(
            Channel(
                id=str(text_id(ch.get("channel_definition_id"))),
                status=str(ch.get("status") or "").upper(),
                last_success=parse_timestamp(ch.get("last_success_date")),
                last_end=parse_timestamp(ch.get("last_end_date")),
                expires=parse_timestamp(ch.get("expires")),
            )
        )
    successes = [c.last_success for c in channels if c.last_success is not None]
    return Connection(
        id=conn_id,
        status=str(resource.get("status") or "").upper(),
        name=bounded_label(resource.get("name")),
        last_success=max(successes) if successes else None,
        channels=tuple(channels),
    )


def lapsed(conn: Connection, now: float) -> set[str]:
    """The channels whose PSD2 consent lapsed: only the end user can renew it (SCA)."""
    return {c.id for c in conn.channels if c.expires is not None and c.expires <= now}


def consent_expired(conn: Connection, now: float, channels: set[str] | None = None) -> bool:
    """Whether a consent lapsed on one of `channels` (every channel of `conn` when None): a
    scraping channel and a PSD2 channel are separate, and one's consent says nothing of the other."""
    gone = lapsed(conn, now)
    return bool(gone if channels is None else gone & channels)
