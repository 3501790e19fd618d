"""The exporter's answers as plain handlers, (target, headers, body) → HttpAnswer: /metrics, the
probes, /-/reload and the job API. The Starlette routes (exporter.routes) and the HTTP server's
fast path (exporter.httpserver.fast_path) are thin adapters over them, so both run this code.
In cluster mode the other replicas' jobs are a network away: the route reads them first
(exporter.cluster.view) and hands them to the handler, which only merges them with its own."""

from __future__ import annotations

import heapq
import hmac
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.httpserver import Headers, HttpAnswer
from exporter.model import STATUSES
from exporter.parsing import JsonTooDeep, is_digits, load_json
from exporter.providers.base import BadPayload
from exporter.render.formats import content_type, wants_openmetrics
from exporter.runtime import Runtime, WrongShard, job_document, retired_document
from exporter.state import StateUnwritable
from exporter.tracked import TrackedJob
from exporter.tracker import CapReached

if TYPE_CHECKING:
    from exporter.cluster.view import Elsewhere

UNAUTHORISED = "missing or wrong API token (Authorization: Bearer, or X-Asyncjob-Token)"
REGISTER_PREFIX, REGISTER_SUFFIX = "/api/v1/targets/", "/jobs"
# The content types a browser posts cross-site without asking first (a CORS "simple request").
FORM_MEDIA_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
_REGISTER_HEADERS = (b"x-asyncjob-token", b"authorization", b"content-type", b"content-length")
# As Starlette's JSONResponse writes it.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_JSON_TYPE = (b"content-type", b"application/json")
_TEXT_TYPE = (b"content-type", b"text/plain; charset=utf-8")
_GZIPPED = ((b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding"))
# One answer for every /healthz: its headers are never changed (the app and the HTTP server
# add theirs to a list of their own).
_HEALTHY = HttpAnswer(200, [(b"content-length", b"3"), _TEXT_TYPE], b"ok\n")
# The most jobs one answer of GET /api/v1/jobs holds when it pages (`limit`); in cluster mode,
# whose jobs are read from PostgreSQL, it always pages, CLUSTER_PAGE jobs unless `limit` says
# otherwise: follow `next` for the rest. Reading and parsing 10,000 rows took 0.38 s (30,000 jobs
# in PostgreSQL, a loaded 2-core machine); 1,000 take a tenth of that.
MAX_PAGE = 10_000
CLUSTER_PAGE = 1_000


@dataclass(frozen=True)
class JobsQuery:
    """What `GET /api/v1/jobs` asks: filters, the key the page starts after, its size (None: all)."""

    target: str | None
    status: str | None
    after: tuple[str, str] | None
    limit: int | None


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def json_answer(status: int, document: Any, *more: tuple[bytes, bytes]) -> HttpAnswer:
    body = _JSON.encode(document).encode()
    return HttpAnswer(status, [(b"content-length", b"%d" % len(body)), _JSON_TYPE, *more], body)


def error(status: int, message: str, **more: Any) -> HttpAnswer:
    return json_answer(status, {"error": message, **more})


def retry_later(message: str) -> HttpAnswer:
    """503 with Retry-After: nothing was done (or acknowledged); the same request may be sent again."""
    return json_answer(503, {"error": message}, (b"retry-after", b"5"))


def text_answer(status: int, text: str) -> HttpAnswer:
    body = text.encode()
    return HttpAnswer(status, [(b"content-length", b"%d" % len(body)), _TEXT_TYPE], body)


def first(headers: Headers, name: bytes) -> str:
    """The first value of header `name` (lower case) as Starlette reads it; "" when absent."""
    for n, value in headers:
        if n == name:
            return value.decode("latin-1")
    return ""


def _wanted(headers: Headers, names: tuple[bytes, ...]) -> dict[bytes, bytes | None]:
    """The first value of each of `names` (lower case), None when absent: one pass for all."""
    found: dict[bytes, bytes | None] = dict.fromkeys(names)
    for name, value in headers:
        if name in found and found[name] is None:
            found[name] = value
    return found


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/*+json`, any parameters: what the API reads. A form
    post (which a browser sends cross-site without asking) is neither."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def cross_site(headers: Headers) -> HttpAnswer | None:
    """The refusal of a POST a browser may have sent from another site (a form, or a fetch
    without preflight); None for any other. Without an API token nothing else would stop it."""
    media = first(headers, b"content-type").split(";", 1)[0].strip().lower()
    if media in FORM_MEDIA_TYPES:
        return error(415, f"{media} is not read here: send no body, or application/json")
    # Browsers say where a request comes from; curl, Prometheus' tooling and scripts say nothing.
    if first(headers, b"sec-fetch-site").lower() in ("cross-site", "same-site"):
        return error(403, "a request from another site is refused")
    return None


def register_target(path: str) -> str | None:
    """The target of a registration path, `/api/v1/targets/{target}/jobs`; None for another path."""
    if not (path.startswith(REGISTER_PREFIX) and path.endswith(REGISTER_SUFFIX)):
        return None
    target = path[len(REGISTER_PREFIX) : -len(REGISTER_SUFFIX)]
    return target if target and "/" not in target else None


class Api:
    """The handlers, over one runtime. `lifecycle` (--web.enable-lifecycle) turns on /-/reload;
    `external_url` (--web.external-url) is the base of the OpenAPI document's links."""

    def __init__(self, runtime: Runtime, lifecycle: bool = False, external_url: str = "") -> None:
        self.runtime = runtime
        self.lifecycle = lifecycle
        self.external_url = external_url

    # --- for Prometheus and the orchestrator ---

    def metrics(self, headers: Headers) -> HttpAnswer:
        """The exposition, gzipped when asked, OpenMetrics when preferred."""
        accept_encoding: bytes | None = None
        accept: bytes | None = None
        for name, value in headers:  # the first of each, as Starlette reads them
            if name == b"accept-encoding":
                if accept_encoding is None:
                    accept_encoding = value
            elif name == b"accept" and accept is None:
                accept = value
        gz = accept_encoding is not None and b"gzip" in accept_encoding
        om = accept is not None and wants_openmetrics(accept.decode("latin-1"))
        body = self.runtime.exposition.render(gz=gz, fresh=False, openmetrics=om)
        length, media = (b"content-length", b"%d" % len(body)), (b"content-type", content_type(om).encode())
        return HttpAnswer(200, [*_GZIPPED, length, media] if gz else [length, media], body)

    def healthz(self) -> HttpAnswer:
        return _HEALTHY

    def readyz(self) -> HttpAnswer:
        runtime = self.runtime
        if runtime.state_error is not None:
            return text_answer(503, f"state file cannot be written: {runtime.state_error}\n")
        waiting = [n for n, s in runtime.tracker.targets.items() if not s.polled_once]
        if waiting:
            return text_answer(503, f"waiting for first poll of: {', '.join(sorted(waiting))}\n")
        return text_answer(200, "ready\n")

    def reload(self, headers: Headers) -> HttpAnswer:
        # As Prometheus: a config reload over HTTP is an opt-in, and it is an API call.
        if not self.lifecycle:
            return text_answer(403, "Lifecycle API is not enabled.\n")
        refused = cross_site(headers)
        if refused is not None:
            return refused
        if not self.authorised(headers):
            return error(401, "missing or wrong API token")
        problems = self.runtime.reload()
        if problems:
            return error(400, "config reload failed; the running config is kept", problems=problems)
        return text_answer(200, "config reloaded\n")

    # --- the API token ---

    def authorised(self, headers: Headers) -> bool:
        wanted = _wanted(headers, _REGISTER_HEADERS[:2])
        return self.token_ok(wanted[b"x-asyncjob-token"], wanted[b"authorization"] or b"")

    def token_ok(self, header: bytes | None, authorization: bytes) -> bool:
        token = self.runtime.settings.api.token()
        if token is None:
            return True
        secret = token.get_secret_value().encode()
        # X-Asyncjob-Token beside basic auth credentials, which take the Authorization header.
        if header is not None:
            given = header.decode("latin-1").strip()
        else:
            scheme, _, given = authorization.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return False
            given = given.strip()
        # An empty token never matches, whatever the file held (config refuses an empty one).
        return bool(given) and bool(secret) and hmac.compare_digest(given.encode(), secret)

    # --- POST /api/v1/targets/{target}/jobs: the busiest route ---

    async def register(self, target: str, headers: Headers, body: bytes) -> HttpAnswer:
        """A registration whose whole body is here (the fast path's)."""
        refused = self.registration_refused(target, headers)
        if refused is not None:
            return refused
        if len(body) > self.runtime.settings.api.max_body_bytes:
            return self.body_too_large()
        return await self.registered(target, body)

    def registration_refused(self, target: str, headers: Headers) -> HttpAnswer | None:
        """The refusal a registration's head earns before its body is read; None for none."""
        wanted = _wanted(headers, _REGISTER_HEADERS)
        if not self.token_ok(wanted[b"x-asyncjob-token"], wanted[b"authorization"] or b""):
            return error(401, UNAUTHORISED)
        if target not in self.runtime.tracker.targets:
            return error(404, f"unknown target {target!r}")
        if not is_json_media_type((wanted[b"content-type"] or b"").decode("latin-1")):
            return error(415, "the body must be application/json (or application/*+json)")
        declared = (wanted[b"content-length"] or b"").decode("latin-1")
        if declared and is_digits(declared) and int(declared) > self.runtime.settings.api.max_body_bytes:
            return self.body_too_large()
        return None

    def body_too_large(self) -> HttpAnswer:
        return error(413, f"body larger than {self.runtime.settings.api.max_body_bytes} bytes")

    async def registered(self, target: str, raw: bytes) -> HttpAnswer:
        """The answer to a registration whose head was accepted, once its body is read."""
        try:
            # Strict UTF-8 and no replacement of lone surrogates: an id holding one is refused
            # (422) rather than replaced, since replacing would make distinct ids collide.
            text = raw.decode("utf-8")
            body = load_json(text, replace_surrogates=False)
        except JsonTooDeep as e:
            return error(422, f"body: {e}", field="body")
        except ValueError:
            return error(400, "body is not JSON (in UTF-8)")
        try:
            tracked = await self.runtime.register(target, body, text)
        except BadPayload as e:
            # A provider names the field, optionally followed by ": why" (see BadPayload).
            field, _, why = (str(e) or "id").partition(": ")
            why = why or (
                "no usable job id in the body (missing, blank, or holding a control character "
                "or a lone surrogate)"
            )
            return error(422, f"{field}: {why}", field=field)
        except WrongShard as e:
            return error(421, str(e), shard=e.shard)
        except CapReached as e:
            return error(409, str(e))
        except StateUnwritable as e:
            # Not acknowledged: the client retries. A job already tracked stays pending, written later.
            return retry_later(f"registration cannot be made durable: {e}")
        return json_answer(202, job_document(target, tracked))

    # --- the rest of the job API ---

    def jobs_query(
        self,
        headers: Headers,
        target: str | None,
        status: str | None,
        after: str | None = None,
        limit: str | None = None,
    ) -> JobsQuery | HttpAnswer:
        """The query of `GET /api/v1/jobs` read from its parameters, or the answer refusing it. In
        cluster mode it pages whether or not `limit` asks (CLUSTER_PAGE jobs a page by default)."""
        if not self.authorised(headers):
            return error(401, UNAUTHORISED)
        if status and status not in STATUSES:
            return error(422, f"status: must be one of {', '.join(STATUSES)}", field="status")
        if target and target not in self.runtime.tracker.targets:
            return error(404, f"unknown target {target!r}")
        size: int | None = None
        if limit:
            if not (is_digits(limit) and len(limit) <= 6) or not 1 <= int(limit) <= MAX_PAGE:
                return error(422, f"limit: a whole number from 1 to {MAX_PAGE}", field="limit")
            size = int(limit)
        elif self.runtime.member is not None:
            size = CLUSTER_PAGE
        start: tuple[str, str] | None = None
        if after:
            after_target, slash, after_id = after.partition("/")
            if not slash or "\x00" in after:  # no id holds a NUL (nor can PostgreSQL's text)
                return error(422, "after: the `next` of the previous page (target/id)", field="after")
            start = (after_target, after_id)
        return JobsQuery(target or None, status or None, start, size)

    def list_jobs(self, query: JobsQuery, elsewhere: Elsewhere | None = None) -> HttpAnswer:
        """This replica's jobs matching `query`, with (in cluster mode) the other replicas' jobs
        the route read for it (`elsewhere`), in (target, id) order, code point by code point.
        `next` is the `after` of the page that follows, null on the last."""
        member = self.runtime.member
        me = member.leases.replica if member is not None else None
        mine: list[tuple[tuple[str, str], str, TrackedJob]] = []
        for name, state in self.runtime.tracker.targets.items():
            if query.target is not None and name != query.target:
                continue
            for job_id, t in state.jobs.items():
                if query.status is not None and t.job.status != query.status:
                    continue
                if query.after is not None and (name, job_id) <= query.after:
                    continue
                mine.append(((name, job_id), name, t))
        limit = query.limit
        picked = sorted(mine, key=_first) if limit is None else heapq.nsmallest(limit + 1, mine, key=_first)
        rows: list[tuple[tuple[str, str], dict[str, Any]]] = []
        for key, name, t in picked:
            document = job_document(name, t)
            if member is not None:
                document["owner"] = me
            rows.append((key, document))
        more = False
        if elsewhere is not None:
            targets = self.runtime.tracker.targets
            for job in elsewhere.jobs:
                key = (job.target, job.tracked.job.id)
                its = targets.get(job.target)
                if its is None or key[1] not in its.jobs:  # a job held here: this replica's is fresher
                    rows.append((key, {**job_document(job.target, job.tracked), "owner": job.owner}))
            rows.sort(key=_first)
            more = elsewhere.more
        if limit is not None and len(rows) > limit:
            rows, more = rows[:limit], True
        out = [document for _, document in rows]
        answer: dict[str, Any] = {"jobs": out, "count": len(out)}
        if limit is not None:
            last = rows[-1][0] if rows else elsewhere.last if elsewhere is not None else None
            answer["next"] = "/".join(last) if more and last is not None else None
        if elsewhere is not None and elsewhere.error is not None:
            answer["incomplete"] = elsewhere.error
        return json_answer(200, answer)

    def wants_job_elsewhere(self, headers: Headers, target: str, job_id: str) -> bool:
        """Whether the answer about this job needs other replicas' (cluster mode, a caller with the
        token, a known target, a job this replica neither tracks nor keeps in its history)."""
        state = self.runtime.tracker.targets.get(target)
        return (
            self.runtime.member is not None
            and state is not None
            and job_id not in state.jobs
            and self.authorised(headers)
            and self.runtime.history.retired(target, job_id) is None
        )

    def get_job(
        self, headers: Headers, target: str, job_id: str, elsewhere: Elsewhere | None = None
    ) -> HttpAnswer:
        if not self.authorised(headers):
            return error(401, UNAUTHORISED)
        state = self.runtime.tracker.targets.get(target)
        if state is None:
            return error(404, f"unknown target {target!r}")
        member = self.runtime.member
        tracked = state.jobs.get(job_id)
        if tracked is None:
            # Dropped at retention: answered from the history while it keeps the job.
            retired = self.runtime.history.retired(target, job_id)
            if retired is not None:
                return json_answer(200, retired_document(retired))
            if elsewhere is not None and elsewhere.jobs:
                found = elsewhere.jobs[0]
                return json_answer(200, {**job_document(target, found.tracked), "owner": found.owner})
            if elsewhere is not None and elsewhere.error is not None:
                return retry_later(elsewhere.error)
            return error(404, f"job {job_id!r} is not tracked by target {target!r}")
        document = job_document(target, tracked)
        if member is not None:
            document["owner"] = member.leases.replica
        return json_answer(200, document)

    def delete_job(
        self, headers: Headers, target: str, job_id: str, elsewhere: Elsewhere | None = None
    ) -> HttpAnswer:
        """Stop tracking a job (204). In a cluster, a job another replica works is dropped by that
        replica only: 421 names it (`owner`, and `owner_url` when it advertises one)."""
        if not self.authorised(headers):
            return error(401, UNAUTHORISED)
        if target not in self.runtime.tracker.targets:
            return error(404, f"unknown target {target!r}")
        if self.runtime.tracker.drop(target, job_id, "deleted"):
            return HttpAnswer(204, [], b"")
        member = self.runtime.member
        if member is not None and elsewhere is not None and elsewhere.jobs:
            owner = elsewhere.jobs[0].owner
            if owner is None:
                return retry_later(f"job {job_id!r}'s shard is between replicas: retry")
            more: dict[str, str] = {"owner": owner}
            address = next((p.address for p in member.leases.peers if p.replica == owner and p.address), None)
            if address:
                more["owner_url"] = address
            return error(
                421,
                f"job {job_id!r} of target {target!r} is worked by replica {owner!r}: send the DELETE there",
                **more,
            )
        if elsewhere is not None and elsewhere.error is not None:
            return retry_later(elsewhere.error)
        return error(404, f"job {job_id!r} is not tracked by target {target!r}")

    def openapi(self) -> HttpAnswer:
        from exporter.openapi import openapi_document

        return json_answer(200, openapi_document(self.external_url))
