"""Every replica shows the whole cluster, against a real PostgreSQL: the job API and the pages list
the other replicas' jobs as their owners committed them, each with its owner, in one order across
pages; the landing page lists the members; an unreadable database leaves this replica's jobs
shown, saying so."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest

from exporter.cluster.leases import Leases
from exporter.cluster.member import Member
from exporter.cluster.store import PostgresStore
from exporter.config import build_settings
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.routes import build_app
from exporter.runtime import Runtime, connect_store
from exporter.sharding import shard_of

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SHARDS = 16
TTL = 60.0  # no lease lapses while a test runs: rounds are run by the test


@dataclass
class Replica:
    runtime: Runtime
    member: Member
    down: bool = False  # its connections to the database fail (the pages' included)

    @property
    def leases(self) -> Leases:
        return self.member.leases

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(self.runtime)), base_url="http://r"
        )

    def track(self, n: int, status: Status = Status.RUNNING, prefix: str = "") -> list[str]:
        """`n` jobs of target t in the shards this replica holds, tracked here."""
        held = set(self.leases.held())
        found = (f"{prefix or self.leases.replica}-{i}" for i in itertools.count())
        ids = list(itertools.islice((i for i in found if shard_of("t", i, SHARDS) in held), n))
        for job_id in ids:
            self.runtime.tracker.track(
                "t", Job(job_id, status, job_type="connection", created=10.0), "registered"
            )
        return ids


def replica(dsn: str, name: str, address: str = "") -> Replica:
    settings = build_settings(
        {
            "targets": [
                {"name": "t", "provider": "basiq", "base_url": "https://x"},
                {"name": "u", "provider": "basiq", "base_url": "https://x"},
            ]
        },
        PROVIDERS,
    )
    rt = Runtime(settings)
    for t in settings.targets:
        rt.tracker.set_target(settings.resolved(t))
    made: Replica | None = None

    async def connect() -> psycopg.AsyncConnection:
        if made is not None and made.down:
            raise psycopg.OperationalError("connection refused (the test's)")
        return await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)

    leases = Leases(connect=connect, replica=name, shards=SHARDS, address=address, ttl=TTL)
    store = PostgresStore(dsn, name, leases, connect)
    member = Member(rt.tracker, rt.scheduler, store, leases)
    connect_store(store, rt.tracker, rt.scheduler)
    rt.member, rt.store, rt.scheduler.cluster = member, store, member
    made = Replica(rt, member)
    return made


async def settle(*replicas: Replica) -> None:
    """Lease rounds until the shards are balanced and every replica has loaded its own."""
    for _ in range(3):
        for r in replicas:
            await r.leases.round()
            r.member.reachable = not r.leases.failing


@pytest.fixture
async def pair(dsn: str) -> AsyncIterator[tuple[Replica, Replica]]:
    a, b = replica(dsn, "a", "http://a.example:9701/"), replica(dsn, "b", "javascript:alert(1)")
    for r in (a, b):
        await r.member.store.open(SHARDS)
    await settle(a, b)
    yield a, b
    for r in (a, b):
        r.down = False
        # Committed here: no writer task runs in these tests, and a handover waits for it (up to
        # a sixth of the TTL) before letting the shards go.
        await r.member.store.flush()
        await r.leases.leave()
        await r.member.store.close()


async def one_each(a: Replica, b: Replica, status: Status = Status.RUNNING) -> tuple[str, str]:
    """A job a works, committed (as a's owner would), and one b works; their ids."""
    (theirs,) = a.track(1, status)
    (mine,) = b.track(1)
    await a.member.store.flush()
    return theirs, mine


def documents(answer: httpx.Response) -> list[tuple[str, str, str | None]]:
    assert answer.status_code == 200, answer.text
    return [(j["target"], j["id"], j["owner"]) for j in answer.json()["jobs"]]


async def test_any_replica_lists_every_job_of_the_cluster_with_the_replica_that_owns_it(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    mine, theirs = b.track(3), a.track(3)
    await a.member.store.flush()  # b's own are in its memory: shown whether committed or not
    async with b.client() as client:
        listed = documents(await client.get("/api/v1/jobs"))
    expected = sorted([("t", i, "a") for i in theirs] + [("t", i, "b") for i in mine])
    assert listed == expected  # in (target, id) order, each with its owner
    async with a.client() as client:  # and a, whose view of b's jobs waits for b's commit
        assert {o for _, _, o in documents(await client.get("/api/v1/jobs"))} == {"a"}
        await b.member.store.flush()
        assert documents(await client.get("/api/v1/jobs")) == expected


async def test_a_registration_another_replica_took_is_listed_before_its_owner_takes_it_in(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    held = set(b.leases.held())
    job_id = next(i for i in (f"for-b-{n}" for n in itertools.count()) if shard_of("t", i, SHARDS) in held)
    a.member.register_for_owner("t", job_id)  # as a registration on a does: written for b
    await a.member.store.flush()
    assert job_id not in b.runtime.tracker.targets["t"].jobs  # b's catch-up read has not run
    async with b.client() as client:
        assert documents(await client.get("/api/v1/jobs")) == [("t", job_id, "b")]
        assert f"/jobs/t/{job_id}" in (await client.get("/jobs")).text
        assert (await client.get(f"/api/v1/targets/t/jobs/{job_id}")).json()["owner"] == "b"


async def test_a_job_this_replica_dropped_stays_dropped_when_another_replicas_list_shows_it_again(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    (gone,) = b.track(1, prefix="gone")
    b.runtime.tracker.drop("t", gone, "deleted")
    await b.member.store.flush()
    a.member.hand_over("t", [Job(gone, Status.RUNNING)])  # a's list shows it: written for b
    (again,) = b.track(1, prefix="again")
    b.runtime.tracker.drop("t", again, "deleted")
    await b.member.store.flush()
    a.member.register_for_owner("t", again)  # registered anew on a: b takes it in again
    await a.member.store.flush()
    async with b.client() as client:
        assert documents(await client.get("/api/v1/jobs")) == [("t", again, "b")]
        assert (await client.get(f"/api/v1/targets/t/jobs/{gone}")).status_code == 404
        assert (await client.get(f"/jobs/t/{gone}")).status_code == 404


async def test_paging_and_filters_run_across_the_replicas_in_one_order(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    failed = a.track(2, Status.FAILED, "fa") + b.track(2, Status.FAILED, "fb")
    running = a.track(3, prefix="ra") + b.track(3, prefix="rb")
    for r in (a, b):
        await r.member.store.flush()
    async with b.client() as client:
        pages, after = [], ""
        for _ in range(10):
            answer = (await client.get(f"/api/v1/jobs?limit=3{after}")).json()
            pages.append([j["id"] for j in answer["jobs"]])
            if answer["next"] is None:
                break
            after = f"&after={answer['next']}"
        assert [len(p) for p in pages] == [3, 3, 3, 1]
        assert [i for p in pages for i in p] == sorted(failed + running)
        only_failed = await client.get("/api/v1/jobs?status=failed&target=t")
        assert sorted(i for _, i, _ in documents(only_failed)) == sorted(failed)
        assert documents(await client.get("/api/v1/jobs?target=u")) == []
        assert (await client.get("/api/v1/jobs?limit=0")).status_code == 422
        assert (await client.get("/api/v1/jobs?after=no-slash")).status_code == 422


async def test_hostile_queries_are_refused_or_find_nothing_never_an_error(
    pair: tuple[Replica, Replica],
) -> None:
    _, b = pair
    async with b.client() as client:
        assert (await client.get(f"/api/v1/jobs?limit={'9' * 5000}")).status_code == 422
        assert (
            await client.get("/api/v1/jobs?after=t/a%00")
        ).status_code == 422  # PostgreSQL's text holds no NUL
        listing = await client.get("/jobs?id=a%00")
        assert listing.status_code == 200 and "elsewhere-unreadable" not in listing.text
        assert (await client.get("/jobs/t/a%00b")).status_code == 404
        assert (await client.get("/api/v1/targets/t/jobs/a%00b")).status_code == 404
        answer = (await client.get("/api/v1/jobs?after=t/%F0%9F%98%80'%3B--")).json()  # data, never SQL
        assert answer["jobs"] == [] and "incomplete" not in answer


async def test_a_job_of_another_replica_has_its_api_answer_and_its_page_saying_who_owns_it(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    theirs, mine = await one_each(a, b, Status.FAILED)
    async with b.client() as client:
        answer = await client.get(f"/api/v1/targets/t/jobs/{theirs}")
        assert answer.status_code == 200 and answer.json()["owner"] == "a"
        assert answer.json()["status"] == "failed"
        assert (await client.get(f"/api/v1/targets/t/jobs/{mine}")).json()["owner"] == "b"
        assert (await client.get("/api/v1/targets/t/jobs/nobody-has-it")).status_code == 404
        page = (await client.get(f"/jobs/t/{theirs}")).text
        assert 'id="from-owner"' in page and re.search(r'<dd id="owner">a</dd>', page)
        assert re.search(r'<dd id="owner">b</dd>', (await client.get(f"/jobs/t/{mine}")).text)
        listing = (await client.get("/jobs")).text
    rows = dict(re.findall(r'/jobs/t/([^"]+)">[^<]*</a></td>\s*<td class="owner">([^<]*)</td>', listing))
    assert rows == {theirs: "a", mine: "b"}


async def test_a_delete_of_another_replicas_job_names_the_replica_to_send_it_to(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    theirs, mine = await one_each(a, b)
    async with b.client() as client:
        answer = await client.delete(f"/api/v1/targets/t/jobs/{theirs}")
        assert answer.status_code == 421, answer.text
        assert answer.json()["owner"] == "a" and answer.json()["owner_url"] == "http://a.example:9701/"
        assert theirs in a.runtime.tracker.targets["t"].jobs  # nothing dropped anywhere
        assert (await client.delete("/api/v1/targets/t/jobs/nobody-has-it")).status_code == 404
        assert (await client.delete(f"/api/v1/targets/t/jobs/{mine}")).status_code == 204
    async with a.client() as client:
        assert (await client.delete(f"/api/v1/targets/t/jobs/{theirs}")).status_code == 204
    assert theirs not in a.runtime.tracker.targets["t"].jobs


async def test_a_job_held_here_is_shown_as_held_not_as_last_committed(pair: tuple[Replica, Replica]) -> None:
    a, _ = pair
    (job_id,) = a.track(1)
    await a.member.store.flush()
    a.runtime.tracker.track(
        "t", Job(job_id, Status.SUCCEEDED, job_type="connection", created=10.0), "registered"
    )
    async with a.client() as client:
        listed = (await client.get("/api/v1/jobs")).json()["jobs"]
    assert [(j["id"], j["status"], j["owner"]) for j in listed] == [(job_id, "succeeded", "a")]


async def test_with_the_database_unreadable_a_replica_shows_its_own_jobs_and_says_the_rest_cannot_be_read(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    theirs, mine = await one_each(a, b)
    b.down = True  # the pages' connection, not opened yet, fails as a database out of reach does
    async with b.client() as client:
        answer = (await client.get("/api/v1/jobs")).json()
        assert [j["id"] for j in answer["jobs"]] == [mine]
        assert "cannot be read now" in answer["incomplete"] and "connection refused" in answer["incomplete"]
        listing = await client.get("/jobs")
        assert listing.status_code == 200 and 'id="elsewhere-unreadable"' in listing.text
        assert f"/jobs/t/{mine}" in listing.text and f"/jobs/t/{theirs}" not in listing.text
        assert (await client.get(f"/api/v1/targets/t/jobs/{theirs}")).status_code == 503
        # Nor can a DELETE be told where to go: retry, nothing dropped.
        refused = await client.delete(f"/api/v1/targets/t/jobs/{theirs}")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert theirs in a.runtime.tracker.targets["t"].jobs
        page = await client.get(f"/jobs/t/{theirs}")
        assert page.status_code == 503 and 'id="unreadable"' in page.text
        # Once a lease round has failed too, nothing is tried: the pages say why at once.
        b.member.reachable = False
        answer = (await client.get("/api/v1/jobs")).json()
        assert [j["id"] for j in answer["jobs"]] == [mine] and "incomplete" in answer
        landing = (await client.get("/")).text
        assert "unreachable" in landing and 'data-replica="a"' in landing  # members as last seen


async def test_the_landing_page_lists_the_members_with_the_shards_each_holds(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    await b.leases.round()  # b's view of a's count after a's last claims
    async with b.client() as client:
        page = (await client.get("/")).text
    members = dict(re.findall(r'<tr data-replica="([^"]+)">.*?<td class="num">(\d+)</td>', page, re.S))
    assert members == {"a": str(len(a.leases.held())), "b": str(len(b.leases.held()))}
    assert sum(map(int, members.values())) == SHARDS and 'id="unowned"' not in page
    assert "This replica: <strong>b</strong>" in page
    assert '<a href="http://a.example:9701/">' in page  # a's advertised address, linked
    assert "javascript:alert(1)" in page and 'href="javascript:' not in page  # b's shown, never linked


async def test_out_of_cluster_mode_the_list_pages_only_when_asked_and_names_no_owner() -> None:
    rt = replica("postgresql://unused", "x").runtime
    rt.member = None
    for i in range(5):
        rt.tracker.track("t", Job(f"j{i}", Status.RUNNING), "registered")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(rt)), base_url="http://r"
    ) as client:
        whole = (await client.get("/api/v1/jobs")).json()
        assert whole["count"] == 5 and "next" not in whole and "owner" not in whole["jobs"][0]
        first = (await client.get("/api/v1/jobs?limit=2")).json()
        rest = (await client.get(f"/api/v1/jobs?limit=4&after={first['next']}")).json()
        page: list[Any] = first["jobs"] + rest["jobs"]
        assert [j["id"] for j in page] == [f"j{i}" for i in range(5)] and rest["next"] is None
        assert "Cluster" not in (await client.get("/")).text
