"""The scheduler's share of the event loop: a fixed pool of workers per fetch, and a cycle's
answers folded into the tracker a slice at a time."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from exporter.fetch import PollError
from exporter.model import Job, Status
from exporter.providers.base import PER_TURN, BadPayload, PollResult, Provider, gather
from exporter.providers.willsuite import WillSuite
from exporter.scheduler import APPLY_SLICE, Scheduler, TargetRunner
from tests.tools import cyclic_garbage
from tests.unit.test_tracker import tracker

if TYPE_CHECKING:
    import httpx

    from exporter.tracker import Tracker


def willsuite_runner(
    handler: Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]],
    provider: type[Provider] | None = None,
) -> tuple[Tracker, TargetRunner]:
    """A tracker with one WillSuite target "t", and its runner, whose requests `handler` answers
    (an httpx.MockTransport handler) and whose provider is `provider` (a WillSuite subclass)."""
    import httpx

    from exporter.config import build_settings
    from exporter.fetch import TargetHttp
    from exporter.providers import PROVIDERS

    s = build_settings(
        {"targets": [{"name": "t", "provider": "willsuite", "base_url": "https://api.example.com"}]},
        PROVIDERS,
    )
    rt = s.resolved(s.targets[0])
    tr = tracker()
    tr.set_target(rt)
    polling = (provider or WillSuite)(rt.config)
    return tr, TargetRunner(rt, polling, TargetHttp(rt, transport=httpx.MockTransport(handler)))


@pytest.mark.anyio
async def test_gather_runs_a_fixed_pool_of_workers_over_every_item_once() -> None:
    running = peak = 0
    tasks_during: list[int] = []

    async def fetch(item: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        tasks_during.append(len(anyio.get_running_tasks()))
        for _ in range(4):  # an answer takes a few turns to come
            await anyio.sleep(0)
        running -= 1
        if item == 7:
            raise BadPayload("seven")
        return item * 2

    results = await gather(range(1000), fetch, width=16)
    assert peak == 16
    assert max(tasks_during) < 16 + 10  # the workers and the test's own tasks, not 1,000
    assert sorted(item for item, _ in results) == list(range(1000))
    outcomes = dict(results)
    assert outcomes[3] == 6 and isinstance(outcomes[7], BadPayload)


@pytest.mark.anyio
async def test_a_cycles_answers_reach_the_tracker_in_slices_with_the_loop_free_in_between() -> None:
    tr = tracker(max_jobs_per_target=10_000)
    scheduler = Scheduler(tr)
    n = APPLY_SLICE * 5 + 3
    for i in range(n):
        tr.track("t", Job(str(i), Status.RUNNING), "static", now=1)
    seen_between: list[int] = []
    done = False

    async def scrape_meanwhile() -> None:
        while not done:
            seen_between.append(sum(t.job.status is Status.SUCCEEDED for t in tr.targets["t"].jobs.values()))
            await anyio.lowlevel.checkpoint()

    result = PollResult(jobs=[Job(str(i), Status.SUCCEEDED) for i in range(n)], gone=["0"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(scrape_meanwhile)
        await anyio.lowlevel.checkpoint()
        await scheduler._apply("t", result, now=2)
        done = True
    # Others ran between slices, and saw the answers arrive a slice at a time.
    assert {APPLY_SLICE, 2 * APPLY_SLICE} <= set(seen_between)
    state = tr.targets["t"]
    assert len(state.jobs) == n - 1 and "0" not in state.jobs  # `gone` came after every answer
    assert tr.pollable("t") == []


@pytest.mark.anyio
async def test_a_failed_cycle_logs_the_host_the_reason_and_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    tr, runner = willsuite_runner(refused)
    tr.track("t", Job("1", Status.RUNNING), "static", now=1)
    with caplog.at_level("WARNING", logger="asyncjob.scheduler"):
        await Scheduler(tr)._cycle(runner)
    (record,) = [r for r in caplog.records if r.getMessage() == "poll cycle had errors"]
    assert record.host == "api.example.com" and record.reason == "connect"  # type: ignore[attr-defined]
    assert "Connection refused" in record.error  # type: ignore[attr-defined]
    assert tr.targets["t"].up is False
    await runner.http.aclose()


def recording_scheduler(interval: str, static: int = 0) -> tuple[Scheduler, Any, list[list[str]]]:
    """A scheduler with one WillSuite target whose polls are recorded (the ids each asked for),
    not sent; `static` running jobs tracked from the start."""
    import httpx

    from exporter.config import build_settings
    from exporter.fetch import TargetHttp
    from exporter.providers import PROVIDERS
    from exporter.scheduler import TargetRunner

    s = build_settings(
        {
            "global": {"poll_interval": interval},
            "targets": [{"name": "t", "provider": "willsuite", "base_url": "https://api.example.com"}],
        },
        PROVIDERS,
    )
    rt = s.resolved(s.targets[0])
    tr = tracker()
    tr.set_target(rt)
    for i in range(static):
        tr.track("t", Job(f"old-{i}", Status.RUNNING), "static", now=1)
    polled: list[list[str]] = []

    class Recording(WillSuite):
        async def poll(self, http: object, tracked: Sequence[str], ledger: object = None) -> PollResult:
            polled.append(list(tracked))
            return PollResult()

    runner = TargetRunner(
        rt, Recording(rt.config), TargetHttp(rt, transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    )
    scheduler = Scheduler(tr)
    scheduler.runners["t"] = runner
    return scheduler, runner, polled


@pytest.mark.anyio
async def test_a_registration_wakes_a_poll_of_the_new_ids_alone_and_the_full_cycle_stays_due() -> None:
    """A wake-up polls what was registered since (batched), not every job of the target again:
    under a stream of registrations a full cycle per wake-up grows with the target."""
    scheduler, runner, polled = recording_scheduler("3s", static=50)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler._run_target, runner)
            while not polled:
                await anyio.sleep(0.01)
            assert len(polled[0]) == 50  # the first cycle: every job
            scheduler.register("t", Job("new-1", Status.PENDING))
            scheduler.register("t", Job("new-2", Status.PENDING))
            while len(polled) < 2:
                await anyio.sleep(0.01)
            assert sorted(polled[1]) == ["new-1", "new-2"]  # the wake-up: the new ids alone
            while len(polled) < 3:
                await anyio.sleep(0.01)
            assert len(polled[2]) == 52  # the full cycle, when it was due
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_burst_of_registrations_is_polled_a_bounded_batch_a_wake_up_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst must not turn into as many provider requests at once: each wake-up polls at most
    FRESH_PER_WAKE new ids, the oldest first, the rest at the next wake-ups."""
    from exporter import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "FRESH_PER_WAKE", 3)
    scheduler, runner, polled = recording_scheduler("60s")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler._run_target, runner)
            while not polled:
                await anyio.sleep(0.01)
            for i in range(7):
                scheduler.register("t", Job(f"new-{i}", Status.PENDING))
            while len(polled) < 4:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert polled[1:] == [["new-0", "new-1", "new-2"], ["new-3", "new-4", "new-5"], ["new-6"]]


@pytest.mark.anyio
async def test_a_pool_takes_up_at_most_per_turn_items_a_turn_of_the_loop() -> None:
    loop = asyncio.get_running_loop()
    turn = 0
    counting = True

    def next_turn() -> None:  # runs once a turn of the loop
        nonlocal turn
        turn += 1
        if counting:
            loop.call_soon(next_turn)

    started: Counter[int] = Counter()

    async def fetch(item: int) -> int:
        started[turn] += 1
        await anyio.sleep(0)
        return item

    loop.call_soon(next_turn)
    results = await gather(range(500), fetch, width=16)
    counting = False
    assert sorted(item for item, _ in results) == list(range(500))
    assert max(started.values()) == PER_TURN  # 16 workers ready at once take up 8 items a turn


@pytest.mark.anyio
async def test_failed_items_leave_no_cyclic_garbage() -> None:
    """A failure kept in the results must not hold the frames that hold the results: frozen
    while a cycle runs (exporter.quiet_gc.QuietGC), that cycle would wait for a full GC pass."""

    async def fetch(item: int) -> int:
        await anyio.sleep(0)
        raise PollError("connect", f"{item}: refused")

    with cyclic_garbage() as left:
        results = await gather(range(20), fetch, width=4)
        assert all(isinstance(outcome, PollError) for _, outcome in results)
        del results
    assert left == []


@pytest.mark.anyio
async def test_a_cycles_answers_reach_the_tracker_while_slower_ones_are_still_awaited() -> None:
    """A job's answer is folded in as it comes, not when the cycle's slowest answer has come:
    a provider that keeps one request waiting must not hold every other job's news."""
    import httpx

    release = anyio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[1]
        if job_id == "slow":
            await release.wait()
        return httpx.Response(200, json={"id": job_id, "status": "completed", "type": "bulk"})

    tr, runner = willsuite_runner(answer)
    for job_id in ("quick", "slow"):
        tr.track("t", Job(job_id, Status.RUNNING), "static", now=1)
    jobs = tr.targets["t"].jobs
    async with anyio.create_task_group() as tg:
        tg.start_soon(Scheduler(tr)._cycle, runner)
        with anyio.fail_after(5):
            while jobs["quick"].job.status is not Status.SUCCEEDED:
                await anyio.sleep(0.01)
        assert jobs["slow"].job.status is Status.RUNNING  # its request is still out
        release.set()
    assert jobs["slow"].job.status is Status.SUCCEEDED
    assert runner.ledger.early is None  # nothing left behind for the next cycle
    await runner.http.aclose()


@pytest.mark.anyio
async def test_an_answer_the_tracker_holds_already_is_not_parsed_again() -> None:
    """A job whose answer comes back byte for byte the same is neither decoded nor parsed nor
    applied again; a changed answer is, and so is any answer after the job was dropped and
    registered again (the tracker then holds a placeholder, not that answer)."""
    import httpx

    status = {"j": "processing"}

    def answer(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(200, json={"id": job_id, "status": status[job_id], "type": "bulk"})

    parsed: list[str] = []

    class Counting(WillSuite):
        def parse_job(self, obj: Any) -> Job:
            parsed.append(obj["status"])
            return super().parse_job(obj)

    tr, runner = willsuite_runner(answer, Counting)
    scheduler = Scheduler(tr)
    runner.ledger.holds = scheduler._holds("t")
    scheduler.runners["t"] = runner
    scheduler.register("t", Job("j", Status.PENDING))
    jobs = tr.targets["t"].jobs

    def status_of_j() -> Status:
        return jobs["j"].job.status

    await scheduler._cycle(runner)
    await scheduler._cycle(runner)  # the same bytes: not parsed
    assert parsed == ["processing"] and status_of_j() is Status.RUNNING
    status["j"] = "completed"
    await scheduler._cycle(runner, ["j"])
    assert parsed == ["processing", "completed"] and status_of_j() is Status.SUCCEEDED

    tr.drop("t", "j", "deleted")
    assert "j" not in runner.ledger.last
    scheduler.register("t", Job("j", Status.PENDING))
    await scheduler._cycle(runner, ["j"])  # the bytes it had before, but the tracker holds a placeholder
    assert parsed == ["processing", "completed", "completed"] and jobs["j"].job.status is Status.SUCCEEDED
    await runner.http.aclose()


@pytest.mark.anyio
async def test_the_hash_of_an_answer_read_while_its_job_was_dropped_does_not_stay() -> None:
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[1]
        if job_id == "gone-meanwhile":
            tr.drop("t", job_id, "deleted")  # a DELETE while its answer is on its way
        return httpx.Response(200, json={"id": job_id, "status": "processing", "type": "bulk"})

    tr, runner = willsuite_runner(answer)
    scheduler = Scheduler(tr)
    scheduler.runners["t"] = runner
    for job_id in ("gone-meanwhile", "kept"):
        tr.track("t", Job(job_id, Status.RUNNING), "static", now=1)
    await scheduler._cycle(runner)
    assert set(runner.ledger.last) == {"kept"} and set(tr.targets["t"].jobs) == {"kept"}
    await runner.http.aclose()


@pytest.mark.anyio
async def test_an_unchanged_answer_is_applied_again_when_the_list_changed_the_job_since() -> None:
    """A job of a generic target comes from the list or, when the list fails, its own path.
    Its own answer, the same bytes as two cycles ago, must replace what the list said since."""
    import json

    import httpx

    from exporter.config import build_settings
    from exporter.fetch import TargetHttp
    from exporter.providers import PROVIDERS
    from exporter.scheduler import TargetRunner

    own = json.dumps({"id": "x", "status": "running", "percent": 60}).encode()
    listed: list[Any] = []  # empty: the list answers 503

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jobs":
            return httpx.Response(200, json=listed) if listed else httpx.Response(503)
        return httpx.Response(200, content=own, headers={"content-type": "application/json"})

    s = build_settings(
        {
            "targets": [
                {
                    "name": "t",
                    "provider": "generic",
                    "base_url": "https://api.example.com",
                    "list_path": "/jobs",
                    "job_path": "/jobs/{id}",
                    "fields": {"percent": "percent"},
                }
            ]
        },
        PROVIDERS,
    )
    rt = s.resolved(s.targets[0])
    tr = tracker()
    tr.set_target(rt)
    scheduler = Scheduler(tr)
    runner = TargetRunner(
        rt, PROVIDERS["generic"](rt.config), TargetHttp(rt, transport=httpx.MockTransport(answer))
    )
    runner.ledger.holds = scheduler._holds("t")
    scheduler.runners["t"] = runner
    scheduler.register("t", Job("x", Status.PENDING))

    def job() -> Job:
        return tr.targets["t"].jobs["x"].job

    await scheduler._cycle(runner)  # the list is down: x is read from its own path
    assert (job().status, job().percent) == (Status.RUNNING, 60)
    listed.append({"id": "x", "status": "queued"})
    await scheduler._cycle(runner)  # the list says otherwise (lagging behind)
    assert job().status is not Status.RUNNING
    listed.clear()
    await scheduler._cycle(runner)  # down again: x's own answer, the bytes of the first cycle
    assert (job().status, job().percent) == (Status.RUNNING, 60)
    await runner.http.aclose()


@pytest.mark.anyio
async def test_a_quarantined_job_is_neither_polled_nor_read_until_its_quarantine_ends() -> None:
    import httpx

    from exporter.tracked import QUARANTINE_SECONDS

    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[-1]
        asked.append(job_id)
        return httpx.Response(200, json={"id": job_id, "status": "completed"})

    tr, runner = willsuite_runner(answer)
    for job_id in ("poisoned", "healthy"):
        tr.track("t", Job(job_id, Status.RUNNING), "static", now=1)
    state = tr.targets["t"]
    state.quarantined["poisoned"] = time.time()  # as restored from the state file
    scheduler = Scheduler(tr)
    await scheduler._cycle(runner)
    assert asked == ["healthy"]
    # An answer about it from elsewhere (a list) is not read either.
    await scheduler._apply("t", PollResult(jobs=[Job("poisoned", Status.SUCCEEDED)]), time.time())
    assert state.jobs["poisoned"].job.status is Status.RUNNING
    state.quarantined["poisoned"] = time.time() - QUARANTINE_SECONDS  # served its time
    await scheduler._cycle(runner)
    assert asked[1:] == ["poisoned"] and not state.quarantined


def basiq_runner(handler: Any, users: list[str]) -> tuple[Any, Any]:
    """A tracker with one Basiq target "b" discovering through `users`, and its runner."""
    import httpx

    from exporter.config import build_settings
    from exporter.fetch import TargetHttp
    from exporter.providers import PROVIDERS
    from exporter.scheduler import TargetRunner

    s = build_settings(
        {
            "targets": [
                {"name": "b", "provider": "basiq", "base_url": "https://au-api.basiq.io", "users": users}
            ]
        },
        PROVIDERS,
    )
    rt = s.resolved(s.targets[0])
    tr = tracker()
    tr.set_target(rt)
    provider = PROVIDERS["basiq"](rt.config)
    return tr, TargetRunner(rt, provider, TargetHttp(rt, transport=httpx.MockTransport(handler)))


@pytest.mark.anyio
async def test_a_configured_source_that_answers_404_is_counted_named_and_forgotten_once_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx

    from exporter.render.aggregates import render_aggregates, render_http_stats
    from exporter.render.text import Text

    gone = {"ea3a81"}

    def handler(request: httpx.Request) -> httpx.Response:
        user = request.url.path.split("/")[2]
        if user in gone:
            body = {"type": "list", "data": [{"type": "error", "code": "resource-not-found",
                                              "detail": "Requested user does not exist."}]}  # fmt: skip
            return httpx.Response(404, json=body)
        return httpx.Response(200, json={"type": "list", "data": []})

    tr, runner = basiq_runner(handler, ["ea3a81", "b71f02"])
    scheduler = Scheduler(tr)
    scheduler.runners["b"] = runner
    with caplog.at_level("WARNING", logger="asyncjob.scheduler"):
        await scheduler._cycle(runner)
        await scheduler._cycle(runner)
    state = tr.targets["b"]
    assert list(state.missing) == ["user ea3a81"]
    assert runner.http.stats.errors["not_found"] == 2  # one a cycle
    # The other user is still read: a missing source does not make the target down.
    assert state.up is True
    (record,) = [r for r in caplog.records if r.getMessage().startswith("configured source answers 404")]
    assert record.source == "user ea3a81"  # type: ignore[attr-defined]
    w = Text()
    render_http_stats(w, scheduler.http_stats())
    text = render_aggregates([state]).decode() + w.bytes().decode()
    assert 'asyncjob_source_missing_since_timestamp_seconds{target="b",source="user ea3a81"}' in text
    assert 'asyncjob_poll_errors_total{target="b",reason="not_found"} 2' in text
    gone.clear()
    await scheduler._cycle(runner)
    assert state.missing == {}
    await runner.http.aclose()


@pytest.mark.anyio
async def test_a_targets_ledger_asks_the_tracker_whether_it_holds_an_answer() -> None:
    """The runner Scheduler.apply starts keeps its answers in a ledger of its own, whose
    unchanged answers count as known only while the tracker holds the job they said."""
    from exporter.config import build_settings
    from exporter.providers import PROVIDERS

    s = build_settings(
        {"targets": [{"name": "t", "provider": "willsuite", "base_url": "http://127.0.0.1:1"}]},
        PROVIDERS,
    )
    tr = tracker()
    scheduler = Scheduler(tr)
    answer = Job("j", Status.RUNNING)
    async with anyio.create_task_group() as tg:
        scheduler._tg = tg
        scheduler.apply(s)
        ledger = scheduler.runners["t"].ledger
        tg.cancel_scope.cancel()  # nothing is polled: the wiring alone is under test
    ledger.last["j"] = (hash(b"answer"), answer)
    assert not ledger.known("j", hash(b"answer"))  # not tracked
    tr.track("t", Job("j", Status.PENDING), "registered", now=1)
    assert not ledger.known("j", hash(b"answer"))  # tracked as registered, not as that answer
    tr.apply("t", PollResult(jobs=[answer]), now=2)
    assert ledger.known("j", hash(b"answer"))
    assert not ledger.known("j", hash(b"another answer"))
    tr.drop("t", "j", "deleted")
    assert "j" not in ledger.last  # forgotten with the job
