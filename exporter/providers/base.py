"""The one small interface every provider implements, and the pieces providers share.

A provider knows its wire format and nothing else: which requests to send for the
tracked ids (batching, discovery) and how to read the answers into `Job`s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar
from urllib.parse import quote

import anyio

from exporter.config import INHERITED_KEYS
from exporter.fetch import UNCHANGED, NotFound, PollError, Unchanged
from exporter.model import Cause, Connection, Job
from exporter.parsing import text_id, why_not_id

if TYPE_CHECKING:
    from exporter.config import TargetConfig

# Keys of a target every provider accepts; the rest are provider specifics (Provider.config_keys).
COMMON_KEYS = frozenset(
    {"name", "provider", "base_url", "auth", "per_job_metrics", "cause_map", *INHERITED_KEYS}
)


class Http(Protocol):
    """What a provider may ask of its target's HTTP client (exporter.fetch.TargetHttp): requests."""

    concurrency: int  # requests in flight at most (this replica's share, in a cluster)

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any: ...

    async def post_json(self, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any: ...

    # (JSON, fingerprint of the answer's bytes), or UNCHANGED when known(fingerprint).
    async def get_json_if_new(
        self, path: str, known: Callable[[int], bool]
    ) -> tuple[Any, int] | Unchanged: ...


class AnswerLedger:
    """What the scheduler keeps of one target's answers between a poll and the tracker, handed
    to each poll (Provider.poll, fetch_each):

    - `last`: job id -> (fingerprint of the bytes of its last own answer that parsed, the job
      parsed from it). An answer with the same bytes is not decoded again while `holds` says the
      tracker still holds that job (not a placeholder, nor what the provider's list or the API
      said since). A job the tracker drops is forgotten (`forget`).
    - `early`: during a cycle, the jobs parsed so far, which the scheduler applies as they come
      instead of with the cycle's result; None outside a cycle (answers then go to the result).
    """

    __slots__ = ("early", "holds", "last")

    def __init__(self, holds: Callable[[str, Job], bool] | None = None) -> None:
        self.last: dict[str, tuple[int, Job]] = {}
        self.holds = holds
        self.early: list[Job] | None = None

    def known(self, job_id: str, fingerprint: int) -> bool:
        """Whether an answer about `job_id` of this fingerprint says what the tracker holds."""
        last = self.last.get(job_id)
        return (
            last is not None
            and last[0] == fingerprint
            and self.holds is not None
            and self.holds(job_id, last[1])
        )

    def forget(self, job_id: str) -> None:
        self.last.pop(job_id, None)

    def take_early(self) -> list[Job]:
        """The jobs parsed since the last call; those parsed later are kept for the next."""
        jobs, self.early = self.early or [], []
        return jobs

    def end_cycle(self) -> list[Job]:
        """The jobs parsed since the last take_early; later ones go to the poll's result."""
        jobs, self.early = self.early or [], None
        return jobs


@dataclass
class PollResult:
    """What one poll cycle learnt. Errors are already counted by the HTTP client."""

    jobs: list[Job] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    # (queue id, event type) of every queue event read for the first time in this cycle.
    queue_events: list[tuple[str, str]] = field(default_factory=list)
    # Jobs that replace others (an AIMS360 rerun): old id -> new id.
    replaced: dict[str, str] = field(default_factory=dict)
    reruns: int = 0
    # Answers that were JSON but not the provider's shape: counted as bad_body.
    bad_payloads: list[str] = field(default_factory=list)
    # Configured sources that answered 404 (`user ea3a81`, `queue 20`): counted as not_found,
    # named in the log and on the landing page (a 404 for one job is that job gone instead).
    missing: list[str] = field(default_factory=list)
    # Answers to a request about one id that were about another: counted as id_mismatch, never
    # applied (a provider that echoes an escaped id would otherwise track a new job each cycle).
    id_mismatches: list[str] = field(default_factory=list)


class BadPayload(ValueError):
    """A provider answer that parses as JSON but not as the provider's job shape."""


def parse_listed(
    parse: Callable[[Any], Job], items: Iterable[Any], where: str, result: PollResult
) -> Iterator[Job]:
    """Each item of a list answer read into a Job; one that is not a job is told in the result's
    bad_payloads as `where: why` and skipped, the rest of the list still read."""
    for item in items:
        try:
            yield parse(item)
        except BadPayload as e:
            result.bad_payloads.append(f"{where}: {e}")


def _every_source(source: str) -> bool:
    return True


class Provider:
    """Base of every provider. Subclasses set `name` and implement `poll` and `parse_job`."""

    name: ClassVar[str]
    # Provider's own advice on polling, used when the config does not say.
    advised_poll_interval: ClassVar[float | None] = None
    advised_requests_per_second: ClassVar[float | None] = None
    # Failure reasons the provider documents: their counters exist at 0 before the first one.
    known_reasons: ClassVar[tuple[str, ...]] = ()
    # Who must act on each documented failure reason; a reason not named here is `unknown`,
    # unless the job's answer says (Job.cause) or the target's `cause_map` overrides it.
    causes: ClassVar[Mapping[str, Cause]] = {}
    # Target keys (beyond COMMON_KEYS) this provider reads.
    config_keys: ClassVar[frozenset[str]] = frozenset({"jobs"})

    def __init__(self, target: TargetConfig) -> None:
        self.target = target
        # Whether this replica reads a discovery source (a Basiq user, an Oxlin queue, a list or
        # discovery filter) now: in a cluster, the replica holding the source's virtual shard.
        self.lists: Callable[[str], bool] = _every_source

    @classmethod
    def check_target(cls, target: TargetConfig) -> list[str]:
        """Problems with a target's provider-specific keys, as `key: message`."""
        unused = sorted(target.model_fields_set - COMMON_KEYS - cls.config_keys)
        return [f"{key}: not used by provider {cls.name}" for key in unused]

    # Where the provider serves one job (`{id}` replaced), linked from the job pages; None: nowhere.
    job_path: ClassVar[str | None] = None

    def job_link(self, job_id: str) -> str | None:
        """The provider's own URL of a job (a generic target's `job_path`), or None."""
        path = getattr(self.target, "job_path", None) or self.job_path
        if not path:
            return None
        return f"{self.target.base_url}{path.replace('{id}', segment(job_id))}"

    def static_ids(self) -> list[str]:
        return list(self.target.jobs)

    @classmethod
    def discovers(cls, target: TargetConfig) -> bool:
        """Whether the target finds jobs itself (a list, a queue), so that a finished job it
        dropped can be listed again: its tombstone is then kept in the state file."""
        return False

    async def poll(
        self, http: Http, tracked: Sequence[str], ledger: AnswerLedger | None = None
    ) -> PollResult:
        """Fetch the unfinished `tracked` jobs and anything discovery finds. `ledger` (the
        scheduler's) goes to fetch_each, for the jobs read one request each."""
        raise NotImplementedError

    def parse_job(self, obj: Any) -> Job:
        """One job object of the provider's wire format → Job. Raises BadPayload."""
        raise NotImplementedError

    # Keys a registration body may carry the job id under, in order of preference.
    id_keys: ClassVar[tuple[str, ...]] = ("id",)

    def id_from_body(self, body: Any) -> str:
        """The job id in a registration body: `{"id": …}` or the provider's own job answer."""
        problem = None
        if isinstance(body, dict):
            for key in self.id_keys:
                raw = body.get(key)
                value = text_id(raw)
                if value is not None:
                    return value
                if raw is not None and problem is None:
                    problem = f"{key}: {why_not_id(raw)}"
        raise BadPayload(problem or " or ".join(self.id_keys))

    # State that must survive restarts (e.g. Oxlin queue cursors), as plain strings.
    def cursors(self) -> dict[str, str]:
        return {}

    def restore_cursors(self, cursors: dict[str, str]) -> None:
        return None

    def restore_reruns(self, reruns: Mapping[str, int]) -> None:
        """Reruns so far of each tracked job (kept in the state file), so that a rerun budget
        survives restarts and reloads."""
        return None


def segment(job_id: str) -> str:
    """An id made one URL path segment, whatever it holds: ids are data, never paths (a
    registered id is user input). `/`, `?`, `#` and `%` are escaped; so are the dots of `.` and
    `..`, which quoting leaves alone and a URL's dot-segment removal would act on."""
    quoted = quote(job_id, safe="", errors="replace")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


T = TypeVar("T")
R = TypeVar("R")


# Workers of a `gather` unless told: the default `concurrency` of a target.
POOL_WIDTH = 16
# Items a pool takes up per turn of the event loop. Each answer read and each request sent
# costs ~0.2 ms, and a turn runs every task that is ready: 16 answers landing together made a
# turn of ~4 ms of polling alone, which every scrape ready meanwhile waited behind.
PER_TURN = 8


class TurnBudget:
    """At most `per_turn` passes a turn of the (asyncio) event loop; later ones wait a turn."""

    def __init__(self, per_turn: int = PER_TURN) -> None:
        self.per_turn = per_turn
        self.used = 0

    async def take(self) -> None:
        while self.used >= self.per_turn:
            await anyio.sleep(0)
        if self.used == 0:
            # Queued now, so run at the start of the next turn (before the tasks waiting above).
            asyncio.get_running_loop().call_soon(self._reset)
        self.used += 1

    def _reset(self) -> None:
        self.used = 0


async def gather(
    items: Iterable[T], fn: Callable[[T], Awaitable[R]], width: int = POOL_WIDTH
) -> list[tuple[T, R | BaseException]]:
    """Run fn over items with `width` workers, each taking the next item when it is done.

    A fixed pool rather than a task per item: 10,000 tasks started at once hold the event
    loop for a noticeable time and each waiting task holds memory; a pool takes items as
    it goes. PollError, NotFound and BadPayload are returned in place of a result; anything
    else propagates, since it is a bug.
    """
    results: list[tuple[T, R | BaseException]] = []
    queue = iter(items)
    turns = TurnBudget()

    async def worker() -> None:
        for item in queue:  # shared: each item goes to the first worker free
            await turns.take()
            try:
                results.append((item, await fn(item)))
            except (PollError, NotFound, BadPayload) as e:
                # Kept without its traceback: its frames hold `results`, which holds it (a
                # cycle only a full GC pass would free, exporter.quiet_gc.QuietGC).
                results.append((item, e.with_traceback(None)))

    if isinstance(items, Sized):
        width = min(width, len(items))
    async with anyio.create_task_group() as tg:
        for _ in range(max(1, width)):
            tg.start_soon(worker)
    return results


async def fetch_each(
    http: Http,
    ids: Iterable[str],
    path_for: Callable[[str], str],
    parse: Callable[[Any], Job],
    ledger: AnswerLedger | None = None,
) -> PollResult:
    """The common case: one GET per job. 404 → gone; unreadable bodies count as bad_body, and an
    answer about another id as id_mismatch.
    With the scheduler's `ledger`, an answer whose bytes are those of the answer the tracker
    holds is left out, and answers go to `ledger.early` during a cycle (AnswerLedger)."""
    result = PollResult()
    if ledger is None:
        ledger = AnswerLedger()  # nothing known, nothing early: every answer to the result
    known = ledger.known

    # Each answer is sorted as it comes, so no pass over every job follows the fetch.
    async def one(job_id: str) -> None:
        try:
            answer = await http.get_json_if_new(path_for(job_id), partial(known, job_id))
            if answer is UNCHANGED:
                return  # the same bytes as the answer the tracker holds: nothing new
            job = parse(answer[0])
            if job.id != job_id:
                result.id_mismatches.append(f"job {job_id}: the answer is about job {job.id}")
                return
            ledger.last[job_id] = (answer[1], job)  # only once it parsed: a bad answer stays counted
            early = ledger.early
            (result.jobs if early is None else early).append(job)
        except NotFound:
            result.gone.append(job_id)
        except BadPayload as e:
            result.bad_payloads.append(f"job {job_id}: {e}")

    await gather(ids, one, http.concurrency)
    return result
