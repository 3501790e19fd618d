"""The cluster mode with real processes: a PostgreSQL from Debian, the simulator and three replicas
of the CLI reading one YAML (tests/cluster_harness.py), with a short lease TTL.

Every job is exported by exactly one replica and the shards are shared out; a replica killed with
`kill -9` has its jobs polled by the others within a lease TTL and two polls, loses no acknowledged
registration and counts no job twice, and no job is polled by two replicas after the handover; a
replica paused past its lease (SIGSTOP) inside a write lands no stale write when continued; a
replica replaced in a rolling update hands its jobs over at once; PostgreSQL stopped for two TTLs
leaves every replica serving what it held, and connections cut again and again lose nothing
acknowledged and count nothing twice; a job's page in a real Prometheus and Alertmanager keeps
firing, the same alert, while its job moves to another replica.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.sharding import shard_of
from tests.cluster_harness import SHARDS, TARGET, Cluster, Replica, cluster, settle_time
from tests.harness import ROOT, wait_for
from tests.postgres import Postgres
from tests.realstack import (
    Prometheus,
    alertmanager,
    prometheus,
    require_binaries,
    rules_with_short_for,
    stack_output,
    webhook,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def three(tmp_path: Path, postgres_server: Postgres) -> Iterator[Cluster]:
    with cluster(tmp_path, postgres_server) as c:
        yield c


def failing(c: Cluster, what: str) -> str:
    return f"{what}\n{c.output()}"


def test_every_job_is_exported_by_exactly_one_replica_and_each_holds_a_third_of_the_shards(
    three: Cluster,
) -> None:
    c = three
    replicas = c.live()
    held = c.shards_held(replicas)
    assert sum(held) == SHARDS, failing(c, f"shards held {held}")
    assert all(SHARDS / 3 * 0.6 <= h <= SHARDS / 3 * 1.4 for h in held), failing(c, f"shards held {held}")
    # The database says the same: each replica's leases are those it counts.
    owners = c.owners()
    for r in replicas:
        assert sum(1 for owner in owners.values() if owner == r.name) == r.total(
            "asyncjob_cluster_shards_held"
        )

    # Registered through every replica, whichever replica works them.
    jobs = c.create(45, scenario="stuck")
    for n, job_id in enumerate(jobs):
        assert replicas[n % 3].register(job_id) == 202, failing(c, f"registering {job_id}")

    wanted = set(jobs)
    wait_for(
        lambda: c.exported_once(wanted),
        timeout=20,
        what=failing(c, "every job exported by exactly one replica"),
    )
    by_job = c.exporters()
    assert set(by_job) == wanted
    assert all(len(exporting) == 1 for exporting in by_job.values())
    # The replica exporting a job is the one holding its shard's lease.
    for job_id, (exporting,) in by_job.items():
        assert exporting.name == owners[shard_of(TARGET, job_id, SHARDS)], job_id
    # Each replica exports jobs, the jobs of the shards it holds, and polls only those.
    for r in replicas:
        assert r.job_ids(), failing(c, f"{r.name} exports no job")
    polled_by = {job_id: {client for _, j, client in c.polls() if j == job_id} for job_id in wanted}
    assert all(len(clients) == 1 for clients in polled_by.values()), polled_by


def register_all(c: Cluster, jobs: list[str], replicas: list[Replica]) -> None:
    for n, job_id in enumerate(jobs):
        assert replicas[n % len(replicas)].register(job_id) == 202, failing(c, f"registering {job_id}")


def first_polls_after(c: Cluster, job_ids: set[str], since: float, excluded: set[str]) -> dict[str, float]:
    """When each job was first polled after `since` by a client not in `excluded`."""
    first: dict[str, float] = {}
    for at, job_id, client in c.polls():
        if job_id in job_ids and at > since and client not in excluded and job_id not in first:
            first[job_id] = at
    return first


def test_a_replica_killed_has_its_jobs_polled_again_by_the_others_and_nothing_is_lost_or_counted_twice(
    three: Cluster,
) -> None:
    c, timing = three, three.timing
    replicas = c.live()
    try:
        # Jobs that finish at once, counted by their first owners.
        early = c.create(30, scenario="success", step_seconds=0.2)
        register_all(c, early, replicas)
        wait_for(lambda: c.finished() == len(early), timeout=20, what="the early jobs counted")
        # Jobs that run across the kill and finish after it (three steps of 5 s).
        running = c.create(45, scenario="success", step_seconds=5.0)
        register_all(c, running, replicas)
        wait_for(lambda: c.exported_once(set(running)), timeout=20, what="the running jobs exported")

        by_job = c.exporters()
        victim = max(replicas, key=lambda r: sum(1 for j in running if by_job[j] == [r]))
        survivors = [r for r in replicas if r is not victim]
        victim_jobs = victim.job_ids()
        assert victim_jobs & set(running), "the victim works none of the running jobs"
        counted_before = c.finished(survivors)
        victim_shards = int(victim.total("asyncjob_cluster_shards_held"))
        assert all(r.total("asyncjob_cluster_takeovers_total") == 0 for r in replicas)
        assert c.finished() == len(early)

        # Registrations keep coming to every replica while one is killed.
        storm = c.create(60, scenario="stuck")
        acknowledged: dict[str, float] = {}  # job id -> when its 202 came
        owners = c.owners()

        def register_storm() -> None:
            for n, job_id in enumerate(storm):
                if replicas[n % 3].register(job_id) == 202:
                    acknowledged[job_id] = time.time()
                time.sleep(0.04)

        thread = threading.Thread(target=register_storm)
        thread.start()
        time.sleep(1.0)
        killed_at = time.time()
        c.kill(victim)
        thread.join(60)
        assert not thread.is_alive()

        victim_clients = {client for at, j, client in c.polls() if j in victim_jobs and at < killed_at}
        assert len(victim_clients) == 1, victim_clients
        # Its unfinished jobs are polled again by the others.
        unfinished = victim_jobs & set(running)
        retaken = wait_for(
            lambda: (
                (first := first_polls_after(c, unfinished, killed_at, victim_clients)).keys() == unfinished
                and first
            ),
            timeout=settle_time(timing),
            what="the victim's jobs polled again",
        )
        delay = max(retaken.values()) - killed_at
        bound = timing.lease_ttl + 2 * timing.poll
        print(
            f"kill -9 to the last of its {len(unfinished)} jobs polled again: {delay:.2f}s (bound {bound:g}s)"
        )

        # Every acknowledged registration is worked by one survivor; so is every other job.
        # The kill came amid the registrations: those sent to the victim after it went unanswered,
        # and the survivors took some of its shards' jobs before anyone held those shards again.
        assert len(acknowledged) < len(storm)
        orphans = [
            job_id
            for job_id, at in acknowledged.items()
            if at > killed_at and owners[shard_of(TARGET, job_id, SHARDS)] == victim.name
        ]
        assert orphans, "no registration of the victim's shards came while it was dead"
        everyone = set(acknowledged) | set(running) | set(early)
        wait_for(
            lambda: c.exported_once(everyone, survivors),
            timeout=settle_time(timing),
            what="every acknowledged job exported by one survivor",
        )
        # Every running job finishes and is counted once: by the survivor that works it.
        wait_for(
            lambda: c.finished(survivors) >= counted_before + len(running),
            timeout=40,
            what="the running jobs counted",
        )
        time.sleep(3 * timing.poll)
        assert c.finished(survivors) == counted_before + len(running)

        # After the handover no job is polled by two replicas.
        after = max(retaken.values())
        clients: dict[str, set[str]] = {}
        for at, job_id, client in c.polls():
            if at > after:
                clients.setdefault(job_id, set()).add(client)
        twice = {job_id: cs for job_id, cs in clients.items() if len(cs) > 1}
        assert not twice, twice
        assert not (set().union(*clients.values()) & victim_clients)
        # Its shards were taken over, each once, as the survivors count them.
        assert sum(r.total("asyncjob_cluster_takeovers_total") for r in survivors) == victim_shards
        assert delay <= bound, f"kill -9 to every job of the victim polled again took {delay:.2f}s"
    except AssertionError as e:
        raise AssertionError(f"{e}\n{c.output()}") from None


def test_a_replica_paused_inside_a_write_past_its_lease_lands_no_stale_write_and_counts_nothing_twice(
    three: Cluster,
) -> None:
    c, timing = three, three.timing
    replicas = c.live()
    try:
        # Three steps of 4 s: running when the replica is paused, finished while it sleeps.
        work = c.create(45, scenario="success", step_seconds=4.0)
        # And jobs that never end: polled throughout, they move to the others and back.
        stuck = c.create(30, scenario="stuck")
        register_all(c, work + stuck, replicas)
        wait_for(lambda: c.exported_once(set(work) | set(stuck)), timeout=20, what="the jobs exported")
        by_job = c.exporters()
        victim = max(replicas, key=lambda r: sum(1 for j in work if by_job[j] == [r]))
        survivors = [r for r in replicas if r is not victim]
        victim_jobs = victim.job_ids() & set(work)
        assert victim_jobs and victim.job_ids() & set(stuck)
        assert c.finished() == 0, "jobs finished before the pause: lengthen them"

        # Paused (SIGSTOP) in the middle of a write transaction: after its fencing locked its
        # leases, before its commit, the worst moment to sleep through a lease.
        with c.writes_held():
            wait_for(lambda: c.writing(victim), timeout=15, what="the replica writing its jobs' steps")
            victim.popen.send_signal(signal.SIGSTOP)
        paused_at = time.time()
        try:
            # Past its lease: the others take its jobs, which finish in their hands.
            def finished_by_others() -> bool:
                rows = c.rows(victim_jobs)
                return len(rows) == len(victim_jobs) and all(
                    status == "succeeded" and written_by != victim.name
                    for written_by, status in rows.values()
                )

            wait_for(
                finished_by_others,
                timeout=settle_time(timing) + 15,
                what="the paused replica's jobs finished by the others",
            )
            assert time.time() - paused_at > timing.lease_ttl
            takers = {written_by for written_by, _ in c.rows(victim_jobs).values()}
            assert takers <= {r.name for r in survivors}, takers
        finally:
            victim.popen.send_signal(signal.SIGCONT)
            continued_at = time.time()

        # It wakes, finds its leases gone, lets its jobs go and is handed its share back.
        wait_for(
            lambda: "cluster leases lost to another replica" in victim.output(),
            timeout=settle_time(timing),
            what="the paused replica seeing its leases lost",
        )
        c.wait_settled(replicas, timeout=settle_time(timing) + 10)
        wait_for(
            lambda: c.exported_once(set(work) | set(stuck)),
            timeout=settle_time(timing),
            what="every job exported once",
        )
        wait_for(lambda: c.finished() >= len(work), timeout=30, what="every job counted")
        time.sleep(3 * timing.poll)

        # Whatever it wrote on waking was fenced off: the jobs it held are as their new owners
        # finished them.
        rows = c.rows(victim_jobs)
        assert all(status == "succeeded" for _, status in rows.values()), rows
        assert {written_by for written_by, _ in rows.values()} <= {r.name for r in survivors}, rows
        # Each job counted once, over the three; each exported by one replica.
        assert c.finished() == len(work), [r.total("asyncjob_jobs_finished_total") for r in replicas]
        assert c.exported_once(set(work) | set(stuck))
        # From its waking on, each job is polled by one replica, then (handed back) by the next:
        # never by two in turn, as a replica polling what it no longer holds would.
        clients: dict[str, list[str]] = {}
        for at, job_id, client in c.polls():
            if at > continued_at and job_id in stuck:
                seen = clients.setdefault(job_id, [])
                if not seen or seen[-1] != client:
                    seen.append(client)
        assert all(len(turns) <= 2 for turns in clients.values()), clients
        assert len(clients) == len(stuck)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{c.output()}") from None


def test_a_replica_replaced_in_a_rolling_update_hands_its_jobs_over_at_once_and_nothing_is_counted_twice(
    three: Cluster,
) -> None:
    c, timing = three, three.timing
    replicas = c.live()
    try:
        work = c.create(30, scenario="success", step_seconds=4.0)
        stuck = c.create(30, scenario="stuck")
        everyone = set(work) | set(stuck)
        register_all(c, work + stuck, replicas)
        wait_for(lambda: c.exported_once(everyone), timeout=20, what="the jobs exported")
        leaving = max(replicas, key=lambda r: len(r.job_ids() & set(stuck)))
        left_jobs = leaving.job_ids() & set(stuck)
        assert left_jobs
        clients = {client for _, j, client in c.polls() if j in left_jobs}
        assert len(clients) == 1

        assert c.finished() == 0, "jobs finished before the replica left: lengthen them"
        # Stopped as an orchestrator does (SIGTERM): it hands its leases back as it goes, so the
        # others poll its jobs well within a lease TTL, not once the leases lapse.
        left_at = time.time()
        assert leaving.stop() == 0, leaving.output()[-3000:]
        retaken = wait_for(
            lambda: (
                (first := first_polls_after(c, left_jobs, left_at, clients)).keys() == left_jobs and first
            ),
            timeout=settle_time(timing),
            what="the leaving replica's jobs polled by the others",
        )
        handed_over_in = max(retaken.values()) - left_at
        # Handed back, not taken over once lapsed.
        assert all(r.total("asyncjob_cluster_takeovers_total") == 0 for r in c.live())
        print(f"SIGTERM to the last of its {len(left_jobs)} jobs polled by the others: {handed_over_in:.2f}s")
        # Its replacement joins and is handed its share.
        joined = c.start()
        c.wait_ready([joined])
        c.wait_settled(timeout=settle_time(timing) + 10)
        wait_for(
            lambda: c.exported_once(everyone), timeout=settle_time(timing), what="every job exported once"
        )
        assert joined.job_ids() & everyone
        wait_for(lambda: c.finished() >= len(work), timeout=30, what="every job counted")
        time.sleep(3 * timing.poll)
        # Each counted once, by the replicas running now (none had finished when it left).
        assert c.finished() == len(work)
        assert handed_over_in < timing.lease_ttl, f"handed over in {handed_over_in:.2f}s"
    except AssertionError as e:
        raise AssertionError(f"{e}\n{c.output()}") from None


def test_postgresql_stopped_leaves_every_replica_serving_what_it_held_and_loses_nothing(
    three: Cluster,
) -> None:
    c, timing = three, three.timing
    replicas = c.live()
    try:
        # Jobs that finish across the outage (three steps of 4 s), and jobs that never do.
        work = c.create(30, scenario="success", step_seconds=4.0)
        stuck = c.create(15, scenario="stuck")
        register_all(c, work + stuck, replicas)
        everyone = set(work) | set(stuck)
        wait_for(lambda: c.exported_once(everyone), timeout=20, what="the jobs exported")
        held = {r.name: r.job_ids() for r in replicas}
        owners = c.owners()
        assert len(owners) == SHARDS

        c.pg.stop()
        down_at = time.time()
        try:
            wait_for(
                lambda: all(r.total("asyncjob_cluster_state_reachable") == 0 for r in replicas),
                timeout=2 * timing.lease_ttl,
                what="every replica seeing the database gone",
            )
            refused = c.create(3, scenario="stuck")
            while time.time() - down_at < 2 * timing.lease_ttl:
                for r in replicas:
                    # Still serving, still exporting what it held, not ready, taking no registration.
                    assert r.job_ids() == held[r.name], f"{r.name} changed what it exports while down"
                    for page in ("/", "/jobs"):
                        assert httpx.get(f"{r.url}{page}", timeout=5).status_code == 200, page
                    assert r.total("asyncjob_cluster_state_reachable") == 0
                    assert httpx.get(f"{r.url}/readyz", timeout=5).status_code == 503
                    assert r.register(refused[replicas.index(r)]) == 503
                time.sleep(0.5)
        finally:
            c.pg.start()

        wait_for(
            lambda: all(r.total("asyncjob_cluster_state_reachable") == 1 for r in replicas),
            timeout=settle_time(timing),
            what="every replica reaching the database again",
        )
        c.wait_settled(replicas, timeout=settle_time(timing))
        # Each replica renewed its own leases: the same shards, the same replicas.
        assert c.owners() == owners
        wait_for(
            lambda: c.exported_once(everyone), timeout=settle_time(timing), what="every job exported once"
        )
        assert {r.name: r.job_ids() & everyone for r in replicas} == {
            n: ids & everyone for n, ids in held.items()
        }
        wait_for(lambda: c.finished() >= len(work), timeout=40, what="every finished job counted")
        time.sleep(3 * timing.poll)
        assert c.finished() == len(work)
        assert all(r.register(stuck[0]) == 202 for r in replicas)  # registrations taken again
    except AssertionError as e:
        raise AssertionError(f"{e}\n{c.output()}") from None


def test_connections_cut_again_and_again_lose_no_acknowledged_registration_and_count_nothing_twice(
    three: Cluster,
) -> None:
    c, timing = three, three.timing
    replicas = c.live()
    try:
        # Jobs that finish while the connections are cut (three steps of 1.5 s), registered as
        # the cuts go on; a registration refused meanwhile (503) is not acknowledged.
        work = c.create(45, scenario="success", step_seconds=1.5)
        acknowledged: list[str] = []
        cutting = threading.Event()
        cuts = [0]

        def cut() -> None:
            # What a PostgreSQL failover or a restarted proxy does to every replica at once.
            while not cutting.is_set():
                killed = c.pg.psql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'asyncjob-exporter %'",
                    database=c.url.rsplit("/", 1)[1],
                )
                cuts[0] += int(killed or 0)
                time.sleep(0.7)

        thread = threading.Thread(target=cut)
        thread.start()
        try:
            for n, job_id in enumerate(work):
                if replicas[n % 3].register(job_id) == 202:
                    acknowledged.append(job_id)
                time.sleep(0.1)
            time.sleep(timing.lease_ttl)  # cuts while the jobs finish
        finally:
            cutting.set()
            thread.join(30)
        assert cuts[0] > 10, cuts
        assert acknowledged, "no registration got through"

        wait_for(
            lambda: c.exported_once(set(acknowledged)),
            timeout=settle_time(timing),
            what="every acknowledged job exported once",
        )
        # A registration refused with a 503 may still have been taken (its commit was cut, then
        # tried again): the jobs tracked are the acknowledged ones and perhaps more, each once.
        tracked = set(c.exporters()) & set(work)
        assert tracked >= set(acknowledged)
        wait_for(lambda: c.finished() >= len(tracked), timeout=30, what="every tracked job counted")
        time.sleep(3 * timing.poll)
        assert set(c.exporters()) & set(work) == tracked
        assert c.exported_once(tracked)
        assert c.finished() == len(tracked)
        c.wait_settled(replicas, timeout=settle_time(timing))
        print(
            f"{cuts[0]} connections cut; {len(acknowledged)} of {len(work)} registrations acknowledged, "
            f"{len(tracked)} tracked"
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\n{c.output()}") from None


RULES = ROOT / "alerts" / "asyncjob.rules.yml"
SCRAPE_JOB = "asyncjob"
SCRAPE = 1.0  # realstack.prometheus scrapes and evaluates every second


def rules_with_grace(rules_text: str, seconds: int) -> str:
    """The rule file with every `keep_firing_for` set to `seconds`, the rest as shipped."""
    doc = yaml.safe_load(rules_text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = f"{seconds}s"
    return yaml.safe_dump(doc, sort_keys=False, width=1000)


def prometheus_alerts(prom: Prometheus, alertname: str, job_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prom.url}/api/v1/alerts", timeout=10).json()
    return [
        a
        for a in answer["data"]["alerts"]
        if a["labels"].get("alertname") == alertname and a["labels"].get("job_id") == job_id
    ]


def alertmanager_alerts(am_url: str, alertname: str, job_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{am_url}/api/v2/alerts", timeout=10).json()
    return [
        a for a in answer if a["labels"].get("alertname") == alertname and a["labels"].get("job_id") == job_id
    ]


@pytest.mark.realstack
def test_a_failed_jobs_page_keeps_firing_as_one_alert_while_its_job_moves_to_another_replica(
    tmp_path: Path, postgres_server: Postgres
) -> None:
    binaries = require_binaries()
    with cluster(tmp_path, postgres_server) as c, webhook(tmp_path) as hook:
        timing = c.timing
        replicas = c.live()
        instances = [r.url.removeprefix("http://") for r in replicas]
        with (
            alertmanager(tmp_path, binaries, hook.url) as am,
            prometheus(tmp_path, binaries, instances, am.url, SCRAPE_JOB) as prom,
        ):
            try:
                wait_for(
                    lambda: len(prom.vector(f'up{{job="{SCRAPE_JOB}"}} == 1')) == 3,
                    timeout=30,
                    what="Prometheus scraping the three replicas",
                )
                # The mixin's least grace for a page while its job moves (lease TTL, two polls,
                # two scrapes and an evaluation), with half again for a busy machine; the shipped
                # `for:` durations are minutes, the test's as many seconds.
                grace = math.ceil(1.5 * (timing.lease_ttl + 2 * timing.poll + 3 * SCRAPE))
                prom.load_rules(rules_with_grace(rules_with_short_for(RULES.read_text(), 1 / 60), grace))

                # Failed with a code nobody mapped: its cause is unknown, and it pages.
                (job_id,) = c.create(1, scenario="fail", step_seconds=1.0, error_code="simulated-outage")
                assert replicas[0].register(job_id) == 202
                wait_for(lambda: c.exported_once({job_id}), timeout=20, what="the failing job exported")
                (owner,) = c.exporters()[job_id]
                fired = wait_for(
                    lambda: hook.firing("AsyncJobFailed", job_id=job_id),
                    timeout=40,
                    what="AsyncJobFailed at the webhook",
                )
                assert "instance" not in fired[0]["labels"]
                (alert,) = prometheus_alerts(prom, "AsyncJobFailed", job_id)
                active_at = alert["activeAt"]
                (sent,) = alertmanager_alerts(am.url, "AsyncJobFailed", job_id)

                c.kill(owner)
                killed_at = time.time()
                survivors = [r.url.removeprefix("http://") for r in c.live()]
                # The job is exported again, by another replica, and Prometheus scrapes it there.
                wait_for(
                    lambda: (
                        {
                            s["metric"]["instance"]
                            for s in prom.vector(
                                f'asyncjob_job_status{{job_id="{job_id}", status="failed"}} == 1'
                            )
                        }
                        & set(survivors)
                    ),
                    timeout=settle_time(timing),
                    what="the failed job scraped from another replica",
                )
                # Past the grace: the page holds because the job is exported again, not by the grace.
                while time.time() < killed_at + grace + 3 * SCRAPE:
                    alerts = prometheus_alerts(prom, "AsyncJobFailed", job_id)
                    assert len(alerts) == 1, alerts
                    assert alerts[0]["state"] == "firing" and alerts[0]["activeAt"] == active_at, alerts
                    time.sleep(0.5)
                assert prom.vector(
                    f'ALERTS{{alertname="AsyncJobFailed", job_id="{job_id}", alertstate="firing"}}'
                )
                (still,) = alertmanager_alerts(am.url, "AsyncJobFailed", job_id)
                assert still["startsAt"] == sent["startsAt"] and still["status"]["state"] == "active"
                # The receiver heard of one alert, firing, never resolved.
                told = [a for a in hook.alerts() if a["labels"].get("job_id") == job_id]
                assert {a["status"] for a in told} == {"firing"}, told
                assert len({tuple(sorted(a["labels"].items())) for a in told}) == 1, told
                assert len({a["startsAt"] for a in told}) == 1, told
            except AssertionError as e:
                raise AssertionError(f"{e}\n{c.output()}\n{stack_output(tmp_path, hook)}") from None
