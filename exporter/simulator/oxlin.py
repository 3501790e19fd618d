"""Oxlin's (Linxo Connect v2.1) wire format: `POST /token` (JSON body), per-user queues of events,
`GET /connections/{id}` and the two synchronize calls.

Each simulated job is one synchronisation of one connection across its channels (EMBEDDED
`8700`, REDIRECT `8701`). Every channel sends its own events, each naming it in the event's
top-level `channel_definition_id`: SYNC_STARTED, then SYNC_RUNNING at each step, then
SYNC_ALL_SUCCESS or the failure event. The scenario plays on one channel (the REDIRECT one for
`mfa`, whose PSD2 consent lapsed; else the EMBEDDED one); every other channel succeeds after
one step. The connection's resource (in each event, and from `GET /connections/{id}`) is
RUNNING until every channel ended, then SUCCESS, PARTIAL_SUCCESS (`partial`) or FAILED.
Events and resources are functions of time like every other simulated job; an event's id is
its rank in its queue, which never changes since new events are always the latest.

Options (keys of `POST /_sim/jobs` with `"provider": "oxlin"`):

- `connection`: the connection synchronised (default: a free one of a small pool);
- `per_channel: true`: channels run and send events on their own (see PER_CHANNEL);
- `channels`: the channels that take part (default `["8700", "8701"]`);
- `scenario_channel`: the channel the scenario plays on;
- `missed_final: true`: the sync's last event never reaches the queue (only the connection's
  status tells the sync ended);
- `channel_field: false`: events without the top-level `channel_definition_id` (only the
  resource's `channels[]` tell which channels run);
- `error_code`: the failure event (default AUTH_FAILED: the end user's credentials);
- `end_status: "CLOSED" | "NONE"`: the sync sends no final event; once it would have ended, the
  connection is CLOSED (its channels too: closed by its user) or NONE (nothing under way, its
  channels EMPTY: nothing to synchronise);
- `lapsed_channel`: a REDIRECT channel that takes no part in the sync, listed in the resource
  with a lapsed PSD2 consent (the sync runs on the other channels: list them in `channels`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter.simulator.lifecycle import SimJob, provider_options
from exporter.simulator.serving import CREDENTIALS, guarded

if TYPE_CHECKING:
    from exporter.simulator.app import Simulator

NAME = "oxlin"
QUEUE = "20"
# Connections new syncs pick from (the first free one), so a demo sees the same few again.
POOL = ("4242", "4243", "4244", "4245", "4246", "4247")
EMBEDDED, REDIRECT = "8700", "8701"
CONSENT_DAYS = 90
QUEUE_LENGTH = 100  # events a queue answer holds at most, the newest
OPTIONS = (
    "channels",
    "scenario_channel",
    "missed_final",
    "channel_field",
    "per_channel",
    "end_status",
    "lapsed_channel",
)
END_STATUSES = {"CLOSED": "CLOSED", "NONE": "EMPTY"}  # the connection's status -> its channels'
# Whether channels other than the scenario's run (and send events) on their own by default;
# when not, they end with the scenario's channel and only its events are sent.
PER_CHANNEL = True


def new_job(sim: Simulator, **spec: Any) -> SimJob:
    spec.setdefault("id", sim.book.new_id())
    spec.setdefault("steps", ("accounts", "transactions", "balances"))
    spec.setdefault("owner", QUEUE)
    spec.setdefault("job_type", "synchronisation")
    spec.setdefault("error_code", "AUTH_FAILED")
    connection = spec.pop("connection", None) or free_connection(sim)
    extra = provider_options(spec, OPTIONS)
    channels = [str(c) for c in extra.get("channels") or (EMBEDDED, REDIRECT)]
    extra["channels"] = channels
    default = REDIRECT if spec.get("scenario") == "mfa" and REDIRECT in channels else channels[0]
    extra["scenario_channel"] = str(extra.get("scenario_channel") or default)
    if extra["scenario_channel"] not in channels:
        raise ValueError("scenario_channel must be one of channels")
    if extra.get("end_status") not in (None, *END_STATUSES):
        raise ValueError(f"end_status must be one of {', '.join(END_STATUSES)}")
    extra["connection"] = str(connection)
    extra.setdefault("name", f"WBX Test Bank {connection}")
    return SimJob(provider=NAME, **spec)


def free_connection(sim: Simulator) -> str:
    busy = {j.extra["connection"] for j in sim.book.of(NAME) if j.finished_at() is None}
    for conn in POOL:
        if conn not in busy:
            return conn
    return str(5000 + int(sim.book.new_id()))


def channel_end(job: SimJob, channel: str, now: float) -> tuple[float | None, str]:
    """(when the channel's part of the sync ended, or None; its status at `now`)."""
    main = job.extra["scenario_channel"]
    if channel != main and not job.extra.get("per_channel", PER_CHANNEL):
        end, status = channel_end(job, main, now)
        return end, "SUCCESS" if status == "PARTIAL_SUCCESS" else status
    if channel != main:
        end = job.started_at() + job.seconds_per_step
        return (end, "SUCCESS") if now >= end else (None, "RUNNING")
    phase, _, _ = job.state(now)
    finished = job.finished_at(now)
    if finished is None:
        return None, "RUNNING"
    if phase == "failed":
        return finished, "FAILED"
    return finished, "PARTIAL_SUCCESS" if job.scenario == "partial" else "SUCCESS"


def connection_at(job: SimJob, at: float) -> dict[str, Any]:
    """The connection's resource as this sync leaves it at `at`."""
    at += 1e-6  # an event at a step boundary shows the state it starts, not float rounding's
    previous = job.created - 3600  # the connection's last sync, an hour before this one
    expires = job.created + CONSENT_DAYS * 86400
    if job.scenario == "mfa":
        expires = job.created - 86400  # the PSD2 consent lapsed: the user must renew it
    channels = []
    ends = {}
    for channel in job.extra["channels"]:
        end, ch_status = channel_end(job, channel, at) if at >= job.started_at() else (None, "RUNNING")
        ends[channel] = ch_status
        ok = ch_status == "SUCCESS"
        body: dict[str, Any] = {
            "channel_definition_id": channel,
            "status": ch_status,
            "last_success_date": int(end if ok and end else previous),
            "last_end_date": int(end if end else previous),
        }
        if channel == REDIRECT:
            body["expires"] = int(expires)
        channels.append(body)
    statuses = set(ends.values())
    ended = job.finished_at(at)
    if job.extra.get("end_status") and ended is not None:
        # Closed, or left with nothing under way, where the sync would have ended.
        for body in channels:
            body["status"] = END_STATUSES[job.extra["end_status"]]
            body["last_success_date"] = body["last_end_date"] = int(previous)
        statuses = {job.extra["end_status"]}
    lapsed_channel = job.extra.get("lapsed_channel")
    if lapsed_channel:
        channels.append(
            {
                "channel_definition_id": str(lapsed_channel),
                "status": "FAILED",
                "last_success_date": int(previous - 86400),
                "last_end_date": int(previous),
                "expires": int(job.created - 86400),
            }
        )
    if statuses & set(END_STATUSES):
        status = next(iter(statuses))
    elif "RUNNING" in statuses:
        status = "RUNNING"
    elif "FAILED" in statuses:
        status = "FAILED"
    elif "PARTIAL_SUCCESS" in statuses:
        status = "PARTIAL_SUCCESS"
    else:
        status = "SUCCESS"
    return {
        "id": job.extra["connection"],
        "provider_id": "200",
        "name": job.extra["name"],
        "status": status,
        "creation_date": int(job.created - 30 * 86400),
        "channels": channels,
    }


def job_events(job: SimJob, now: float) -> list[tuple[float, str, str]]:
    """(time, event type, channel) of the sync's events up to `now`."""
    start = job.started_at()
    if now < start:
        return []
    main = job.extra["scenario_channel"]
    per_channel = job.extra.get("per_channel", PER_CHANNEL)
    channels = job.extra["channels"] if per_channel else [main]
    events = [(start, "SYNC_STARTED", channel) for channel in channels]
    for channel in channels:
        if channel != main:
            end, _ = channel_end(job, channel, now)
            if end is not None:
                events.append((end, "SYNC_ALL_SUCCESS", channel))
    phase, index, _ = job.state(now)
    if phase == "awaiting_user":
        return events
    per = job.seconds_per_step
    finished = job.finished_at(now)
    boundaries = [start + i * per for i in range(1, min(index, len(job.steps) - 1) + 1)]
    events += [(at, "SYNC_RUNNING", main) for at in boundaries if finished is None or at < finished]
    if finished is not None and not job.extra.get("missed_final") and not job.extra.get("end_status"):
        events.append((finished, "SYNC_ALL_SUCCESS" if phase == "succeeded" else job.error_code, main))
    return events


def queue_events(sim: Simulator, queue: str, now: float) -> list[dict[str, Any]]:
    # Purged syncs keep their events: ids are ranks and must not move.
    jobs = [j for j in sim.book.jobs.get(NAME, {}).values() if j.owner == queue]
    timeline = sorted(
        (
            (at, job.created, job.id, channel, event, job)
            for job in jobs
            for at, event, channel in job_events(job, now)
        ),
        key=lambda e: e[:4],
    )
    out = []
    for rank, (at, _, _, channel, event, job) in enumerate(timeline, start=1):
        body: dict[str, Any] = {
            "id": str(rank),
            "event_type": event,
            "resource_type": "CONNECTION",
            "creation_date": int(at),
            "resource": connection_at(job, at),
        }
        if job.extra.get("channel_field", job.extra.get("per_channel", PER_CHANNEL)):
            body["channel_definition_id"] = channel
        out.append(body)
    return out[-QUEUE_LENGTH:]


def latest(sim: Simulator, connection: str) -> SimJob | None:
    jobs = [j for j in sim.book.of(NAME) if j.extra["connection"] == connection]
    return max(jobs, key=lambda j: j.created) if jobs else None


def routes(sim: Simulator) -> list[Route]:

    def denied(request: Request) -> Response | None:
        if sim.tokens.check(request) == "ok":
            return None
        return JSONResponse({"error": "invalid_token", "error_description": "Token invalid or expired"}, 401)

    async def token(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid_request", "error_description": "JSON body expected"}, 400)
        if not isinstance(body, dict) or body.get("provider") != "linxoConnect":
            return JSONResponse({"error": "invalid_request", "error_description": "provider"}, 400)
        if body.get("client_id") != CREDENTIALS["client_id"] or (
            body.get("client_secret") != CREDENTIALS["client_secret"]
        ):
            return JSONResponse({"error": "invalid_client"}, 401)
        grant = body.get("grant_type")
        if grant == "password":
            if (
                body.get("username") != CREDENTIALS["username"]
                or body.get("password") != CREDENTIALS["password"]
            ):
                return JSONResponse({"error": "invalid_grant"}, 400)
        elif grant != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        access, life = sim.tokens.issue()
        return JSONResponse({"access_token": access, "token_type": "bearer", "expires_in": int(life)})

    async def queue(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        events = queue_events(sim, request.path_params["queue_id"], time.time())
        # The API answers one event as itself and several as a list.
        return JSONResponse(events[0] if len(events) == 1 else events)

    async def connection(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        job = latest(sim, request.path_params["connection_id"])
        if job is None:
            return JSONResponse({"error": "not_found", "error_description": "Connection not found"}, 404)
        return JSONResponse(connection_at(job, time.time()))

    async def synchronize_one(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        conn = request.path_params["connection_id"]
        previous = latest(sim, conn)
        if previous is None:
            return JSONResponse({"error": "not_found", "error_description": "Connection not found"}, 404)
        sim.create(NAME, connection=conn, owner=previous.owner)
        return Response(status_code=204)

    async def synchronize_all(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        connections = sorted({j.extra["connection"]: j.owner for j in sim.book.of(NAME)}.items())
        for conn, owner in connections:
            sim.create(NAME, connection=conn, owner=owner)
        return JSONResponse({"connection_links": [f"/connections/{c}" for c, _ in connections]})

    return [
        Route("/oxlin/token", guarded(sim, NAME, "oxlin.token", token), methods=["POST"]),
        Route("/oxlin/queues/{queue_id}", guarded(sim, NAME, "oxlin.queue", queue)),
        Route(
            "/oxlin/connections/synchronize",
            guarded(sim, NAME, "oxlin.synchronize", synchronize_all),
            methods=["POST"],
        ),
        Route("/oxlin/connections/{connection_id}", guarded(sim, NAME, "oxlin.connection", connection)),
        Route(
            "/oxlin/connections/{connection_id}/synchronize",
            guarded(sim, NAME, "oxlin.synchronize", synchronize_one),
            methods=["POST"],
        ),
    ]
