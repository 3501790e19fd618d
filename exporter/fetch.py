"""One target's HTTP client: reused connections, auth, concurrency limit, request budget, size cap,
and every failure sorted into the bounded reasons of `asyncjob_poll_errors_total`."""

from __future__ import annotations

import contextlib
import enum
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from exporter import __version__
from exporter.auth import AuthError, build_auth, rate_limited
from exporter.config import ResolvedTarget
from exporter.http11 import MAX_LENGTH_DIGITS
from exporter.parsing import JsonTooDeep, is_digits, load_json
from exporter.poll_errors import ERROR_REASONS
from exporter.transport import Http11Transport

USER_AGENT = f"asyncjob-exporter/{__version__}"
MAX_RETRY_AFTER = 3600.0
# An idle connection is closed before common servers close it on their side (uvicorn and
# Node after 5 s): a request sent on a connection the server is closing fails for nothing.
KEEPALIVE_EXPIRY = 4.0
# Answers in flight to one target share a budget of this many answers of the largest size
# allowed (max_response_bytes): 16 answers streaming junk at once cannot hold 16 times that.
BUDGET_ANSWERS = 2
# Content-Encodings we ask for and read (zlib window bits: gzip, zlib-wrapped deflate).
ACCEPT_ENCODING = "gzip, deflate"
DECODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


_CLOSED = httpx.ByteStream(b"")
# A path of these characters, with no dot segment, is one httpx would neither encode nor
# normalise: the base URL's parsed parts with that path are the URL httpx would parse.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_~/.-]*")


def _url_maker(base_url: str) -> Callable[[str], httpx.URL | None] | None:
    """A function from a path (after base_url) to the httpx.URL of base_url + path, or None
    when the path is not plain. Parsing the whole URL is most of a request's building (~11 µs
    a poll); the base is parsed once. None when this httpx keeps its parts otherwise."""
    try:
        base = httpx.URL(base_url)
        parts = base._uri_reference
        if parts.query is not None or parts.fragment is not None:
            return None
        prefix = parts.path

        def make(path: str) -> httpx.URL | None:
            if not _PLAIN_PATH.fullmatch(path) or "/." in path:
                return None
            url = httpx.URL.__new__(httpx.URL)
            url._uri_reference = parts._replace(path=prefix + path)
            return url

        probe = "/jobs/a-1_b~2/c.json"
        if make(probe) != httpx.URL(base_url + probe):
            return None
    except Exception:  # another httpx: parse every URL as before
        return None
    return make


class _Where:
    """`GET host/path` for error messages, built only when one is raised (URL parsing is not free)."""

    __slots__ = ("method", "url")

    def __init__(self, method: str, url: str) -> None:
        self.method, self.url = method, url

    def __str__(self) -> str:
        url = httpx.URL(self.url)
        return f"{self.method} {url.netloc.decode('ascii', 'replace')}{url.path}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class PollError(Exception):
    """A request that failed; `reason` is one of ERROR_REASONS. Messages never carry secrets."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class NotFound(Exception):
    """The provider answered 404: the job is gone, or a configured source (a Basiq user, an
    Oxlin queue, a list URL) is: the provider says which it was (PollResult.missing)."""


@dataclass
class RequestStats:
    """What the renderer shows about a target's requests; the scheduler owns one per target."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_REASONS, 0))
    durations: list[float] = field(default_factory=list)  # drained into the histogram at each cycle
    cycle_errors: int = 0
    cycle_requests: int = 0
    retry_after: float | None = None
    last_error: str = ""
    last_reason: str = ""

    def start_cycle(self) -> None:
        self.cycle_errors = 0
        self.cycle_requests = 0
        self.retry_after = None


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


class RateLimiter:
    """Spaces requests to at most `rate` per second (a leaky bucket with a burst of one second)."""

    def __init__(self, rate: float) -> None:
        self.set_rate(rate)
        self._next = time.monotonic()
        self._lock = anyio.Lock()

    def set_rate(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._burst = max(1.0, rate)

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            earliest = now - self._interval * (self._burst - 1)
            self._next = max(self._next, earliest)
            wait = self._next - now
            self._next += self._interval
        if wait > 0:
            await anyio.sleep(wait)


class Unchanged(enum.Enum):
    """What TargetHttp.get_json_if_new answers when its caller has what the answer's bytes say."""

    UNCHANGED = "unchanged"


# The answer was, byte for byte, one its caller has read already: nothing to decode, parse or apply.
UNCHANGED = Unchanged.UNCHANGED


class TargetHttp:
    """A target's HTTP client: one transport (its connections), auth, limits and request stats.
    Providers call get_json/post_json/get_json_if_new and see only JSON or errors; it keeps
    nothing of what the answers say."""

    def __init__(self, target: ResolvedTarget, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.target = target
        self.base_url = target.config.base_url
        self.host = httpx.URL(self.base_url).netloc.decode("ascii", "replace")
        self.stats = RequestStats()
        self.auth = build_auth(target.config.auth, self.base_url, self.read_body)
        self.concurrency = target.concurrency
        self.shared_by = 1  # replicas of a cluster sharing the target's budgets (share())
        self._limiter = anyio.CapacityLimiter(target.concurrency)
        self._budget = RateLimiter(target.max_requests_per_second) if target.max_requests_per_second else None
        self._max_bytes = target.max_response_bytes
        self.byte_budget = BUDGET_ANSWERS * target.max_response_bytes
        self.bytes_in_flight = 0
        if transport is None:
            # Ours rather than httpcore's pool (docs/benchmarks.md: the pool's bookkeeping cost
            # more than the request).
            transport = Http11Transport(max_keepalive=target.concurrency, keepalive_expiry=KEEPALIVE_EXPIRY)
        # Requests go straight to the transport, with no httpx.AsyncClient: its request
        # building, redirect, cookie and hook steps cost more than the transport's exchange, and
        # none is wanted (no redirect is followed, no cookie kept). The headers are those such a
        # client would send, in its order.
        self._transport = transport
        self._headers = httpx.Headers(
            {
                "Connection": "keep-alive",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
            }
        )
        # Reads and writes run under request()'s deadline for the whole request, which ends
        # first: no timeout of their own (a cancel scope each, a third of a poll's overhead).
        self._extensions = {"timeout": httpx.Timeout(target.timeout, read=None, write=None).as_dict()}
        self._make_url = _url_maker(self.base_url)

    async def _exchange(
        self, method: str, url: str, params: Mapping[str, str] | None, json_body: Any
    ) -> httpx.Response:
        """httpx's AsyncClient.send(build_request(…), stream=True) as this client would use it:
        no redirect is followed, no cookie kept, no event hook set; the auth flow runs as in httpx."""
        parsed: httpx.URL | str = url
        if params is None and self._make_url is not None and url.startswith(self.base_url):
            parsed = self._make_url(url[len(self.base_url) :]) or url
        request = httpx.Request(
            method, parsed, params=params, json=json_body, headers=self._headers, extensions=self._extensions
        )
        if self.auth is None:
            response = await self._transport.handle_async_request(request)
            response.request = request
            return response
        flow = self.auth.async_auth_flow(request)
        try:
            request = await flow.__anext__()
            while True:
                response = await self._transport.handle_async_request(request)
                response.request = request
                try:
                    request = await flow.asend(response)
                except StopAsyncIteration:
                    return response
                except BaseException:
                    await response.aclose()
                    raise
                # Read by the flow if it needed the body (through read_body: bounded), or not
                # at all: closing keeps the connection only if it was read whole.
                await response.aclose()
        finally:
            await flow.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def share(self, replicas: int) -> None:
        """Take 1/`replicas` of the target's concurrency and request rate: the live replicas of a
        cluster share the provider's limits rather than each using all of them."""
        replicas = max(1, replicas)
        self.shared_by = replicas
        # The pools that fetch a cycle's jobs are as wide as this (fetch_each): a wider pool's
        # extra workers would only queue on the limiter, each request handed over by a wakeup.
        self.concurrency = self._limiter.total_tokens = max(1, -(-self.target.concurrency // replicas))
        if self._budget is not None and self.target.max_requests_per_second:
            self._budget.set_rate(self.target.max_requests_per_second / replicas)

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + (path if path.startswith("/") else "/" + path)

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def post_json(self, path: str, body: Any = None, params: Mapping[str, str] | None = None) -> Any:
        return await self.request("POST", path, params=params, json_body=body)

    async def get_json_if_new(self, path: str, known: Callable[[int], bool]) -> tuple[Any, int] | Unchanged:
        """GET: (its JSON, the fingerprint of the answer's bytes), or UNCHANGED, without decoding
        them, when `known(fingerprint)` says the caller has what those bytes say already (a job
        that did not change: most of a large fleet, most of the time)."""
        answer: tuple[Any, int] | Unchanged = await self.request("GET", path, known=known)
        return answer

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        known: Callable[[int], bool] | None = None,
    ) -> Any:
        """Send one request; return parsed JSON (None for an empty 2xx body); with `known`, what
        get_json_if_new returns.

        Raises NotFound on 404 and PollError for everything else that is not a 2xx.
        """
        async with self._limiter:
            if self._budget is not None:
                await self._budget.acquire()
            stats = self.stats
            stats.requests += 1
            stats.cycle_requests += 1
            started = time.perf_counter()
            try:
                # httpx's timeout is per read: a body that trickles would never end without
                # a deadline on the whole request.
                try:
                    with anyio.fail_after(self.target.timeout):
                        return await self._send(method, path, params, json_body, known)
                except TimeoutError:
                    where = _Where(method, self.url(path))
                    raise PollError(
                        "timeout", f"{where}: no complete answer within {self.target.timeout:g}s"
                    ) from None
            except PollError as e:
                stats.errors[e.reason] += 1
                stats.cycle_errors += 1
                stats.last_error = str(e)
                stats.last_reason = e.reason
                if e.retry_after is not None:
                    stats.retry_after = max(stats.retry_after or 0.0, e.retry_after)
                raise
            finally:
                stats.durations.append(time.perf_counter() - started)

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json_body: Any,
        known: Callable[[int], bool] | None = None,
    ) -> Any:
        url = self.url(path)
        where = _Where(method, url)
        # A GET on a reused connection that fails before any byte of the answer is sent once
        # more by the transport (exporter.transport), never a POST.
        try:
            response = await self._exchange(method, url, params, json_body)
            try:
                body = await self._answer(response, where)
            finally:
                await response.aclose()
                # httpx's response and the stream bound to it refer to each other: a cycle only
                # a pass of the cyclic GC frees. Undone, reference counting frees the request's
                # objects at once, and GC passes stay short (exporter.quiet_gc.QuietGC).
                response.stream = _CLOSED
        except AuthError as e:
            raise PollError(e.reason, f"{where}: {e}", parse_retry_after(e.retry_after)) from None
        except httpx.TimeoutException as e:
            raise PollError("timeout", f"{where}: {_cause(e)} after {self.target.timeout:g}s") from None
        except httpx.HTTPError as e:
            raise PollError("connect", f"{where}: {_cause(e)}") from None
        except (PollError, NotFound):
            raise
        except Exception as e:
            # Whatever else reading one answer raised (a library's surprise, a bug): that
            # answer's error, never the cycle's, which would leave the target's other jobs unread.
            raise PollError("connect", f"{where}: {_cause(e)}") from None
        if known is not None:
            fingerprint = hash(body)
            if known(fingerprint):
                return UNCHANGED
            return self._decode(body, where), fingerprint
        return self._decode(body, where)

    def _decode(self, body: bytes, where: _Where) -> Any:
        if not body.strip():
            return None
        try:
            return load_json(body)  # lone surrogates replaced, depth bounded
        except JsonTooDeep as e:
            raise PollError("bad_body", f"{where}: {e}") from None
        except ValueError:
            raise PollError("bad_body", f"{where}: answer is not JSON") from None
        except Exception as e:  # RecursionError, MemoryError…: this answer's, as above
            raise PollError("bad_body", f"{where}: {_cause(e)}") from None

    async def _answer(self, response: httpx.Response, where: _Where) -> bytes:
        """The body of a 2xx answer; every other status raised as NotFound or PollError."""
        status = response.status_code
        if status == 404:
            # Read whole, so the connection is kept for the next request (closed otherwise):
            # a registered id the provider does not know is answered 404 on its first poll.
            with contextlib.suppress(PollError, httpx.HTTPError):
                await self._read_capped(response, where)
            raise NotFound(str(where))
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            reason = "http_429" if status == 429 else "http_5xx"
            raise PollError(reason, f"{where}: HTTP {status}", retry_after)
        if status == 403 and rate_limited(await self._read_capped(response, where)):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise PollError("http_429", f"{where}: HTTP 403 rate limited", retry_after)
        if status in (401, 403):
            raise PollError("auth", f"{where}: HTTP {status} after renewing credentials")
        if status >= 400:
            raise PollError("http_4xx", f"{where}: HTTP {status}")
        if status >= 300:
            raise PollError("http_4xx", f"{where}: unexpected redirect HTTP {status}")
        return await self._read_capped(response, where)

    async def read_body(self, response: httpx.Response) -> bytes:
        """The body of an answer the auth flow looks into (a token, a 401/403), read as job
        answers are: capped, within the byte budget, inflated no further than the cap. Kept on
        the response (as httpx's own `aread` keeps it), so a later read answers the same bytes."""
        request = response.request
        body = await self._read_capped(response, _Where(request.method, str(request.url)))
        response._content = body
        return body

    async def _read_capped(self, response: httpx.Response, where: _Where) -> bytes:
        """The body, decoded, refused past max_response_bytes or past the target's byte budget.

        Decoding is ours and bounded (zlib's max_length): httpx's decoders inflate a whole
        received piece at once, and 64 KiB of a gzip bomb inflate to 64 MB.
        """
        declared = response.headers.get("Content-Length")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if response.is_stream_consumed:  # read and decoded by httpx already (httpx.MockTransport)
            encoding, declared = "identity", str(len(response.content))
        if (
            encoding == "identity"
            and declared
            and is_digits(declared)
            and (len(declared) > MAX_LENGTH_DIGITS or int(declared) > self._max_bytes)
        ):
            raise PollError("bad_body", f"{where}: answer of {declared} bytes exceeds {self._max_bytes}")
        wbits = DECODINGS.get(encoding)
        if wbits is None and encoding != "identity":
            raise PollError("bad_body", f"{where}: Content-Encoding {encoding[:20]!r} not supported")
        decoder = zlib.decompressobj(wbits) if wbits is not None else None
        body = bytearray()
        try:
            async for raw in response.aiter_bytes() if response.is_stream_consumed else response.aiter_raw():
                while raw:
                    room = self._max_bytes - len(body)
                    if decoder is None:
                        chunk, raw = raw, b""
                    else:
                        try:
                            chunk = decoder.decompress(raw, room + 1)
                        except zlib.error:
                            raise PollError("bad_body", f"{where}: answer is not valid {encoding}") from None
                        raw = decoder.unconsumed_tail
                    if len(chunk) > room:
                        raise PollError("bad_body", f"{where}: answer exceeds {self._max_bytes} bytes")
                    if self.bytes_in_flight + len(chunk) > self.byte_budget:
                        raise PollError(
                            "bad_body",
                            f"{where}: answers in flight exceed the target's budget of {self.byte_budget} bytes",
                        )
                    self.bytes_in_flight += len(chunk)
                    body += chunk
        finally:
            self.bytes_in_flight -= len(body)
        return bytes(body)


def _cause(e: Exception) -> str:
    """`ConnectError: [Errno 111] Connection refused`: the kind of failure and what the OS said."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
