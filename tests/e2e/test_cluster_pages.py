"""One address serves the pages of a cluster: two replicas of the real CLI on a real PostgreSQL,
against the simulator; a job replica a works is listed, answered and shown by replica b with its
owner, and either replica's landing page lists both members; with PostgreSQL stopped, b's pages
show b's own jobs and say the rest cannot be read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Exporter, create_job, exporter, simulator, wait_for, write_secrets
from tests.postgres import Postgres, new_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

TARGET = "basiq"


def cluster_config(
    sim_url: str, secrets: Path, state_url: str, password_file: Path, replica: str
) -> dict[str, Any]:
    return {
        "global": {"poll_interval": "0.5s"},
        "state_url": state_url,
        "state_password_file": str(password_file),
        "cluster": {
            "replica": replica,
            "lease_ttl": "6s",
            "advertise_url": f"http://{replica}.example:10110/",
        },
        "targets": [
            {
                "name": TARGET,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
            }
        ],
    }


@contextmanager
def two_replicas(tmp: Path, pg: Postgres) -> Iterator[tuple[Any, Exporter, Exporter]]:
    """The simulator and replicas a and b of one cluster on `pg`, both ready."""
    with ExitStack() as stack:
        # The test server's URL carries its password in the query: a replica takes it from a file.
        state_url = new_database(pg).partition("?")[0]
        sim = stack.enter_context(simulator(tmp, step_seconds=0.5))
        secrets = write_secrets(tmp)
        a, b = (
            stack.enter_context(
                exporter(tmp, cluster_config(sim.url, secrets, state_url, pg.password_file, name))
            )
            for name in ("a", "b")
        )
        yield sim, a, b


def members(exp: Exporter) -> dict[str, int]:
    page = httpx.get(f"{exp.url}/", timeout=5).text
    return {
        m: int(n)
        for m, n in re.findall(r'<tr data-replica="([^"]+)">.*?<td class="num">(\d+)</td>', page, re.S)
    }


def owners(exp: Exporter) -> dict[str, str | None]:
    answer = httpx.get(f"{exp.url}/api/v1/jobs?target={TARGET}", timeout=5).json()
    assert "incomplete" not in answer, answer["incomplete"]
    return {j["id"]: j["owner"] for j in answer["jobs"]}


def test_a_job_replica_a_works_is_listed_and_shown_by_replica_b_with_its_owner(
    tmp_path: Path, postgres_server: Postgres
) -> None:
    with two_replicas(tmp_path, postgres_server) as (sim, a, b):
        # Both members, the 256 shards split between them (a hands b its share on b's arrival).
        balanced = wait_for(
            lambda: (
                (m := members(b)).keys() == {"a", "b"}
                and min(m.values()) > 0
                and sum(m.values()) == 256
                and m
            ),
            timeout=30,
            what="both members on b's landing page, every shard held",
        )
        assert members(a).keys() == {"a", "b"}
        landing = httpx.get(f"{b.url}/", timeout=5).text
        assert (
            '<a href="http://a.example:10110/">' in landing and "This replica: <strong>b</strong>" in landing
        )
        # Jobs registered on a: each is worked by the replica holding its shard (a's own, or
        # written for b), until a works one and b another.
        registered: list[str] = []

        def one_each() -> bool:
            job = create_job(sim, "basiq", scenario="fail", error_code="connector-error")
            assert (
                httpx.post(f"{a.url}/api/v1/targets/{TARGET}/jobs", json={"id": job}, timeout=5).status_code
                == 202
            )
            registered.append(job)
            return set(owners(a).values()) >= {"a", "b"}

        wait_for(one_each, timeout=60, interval=0.2, what=f"jobs worked by each replica (shards {balanced})")
        # Worked by a, polled to its end there (its failure committed), then read on b.
        theirs = next(i for i, o in owners(a).items() if o == "a")
        wait_for(
            lambda: (
                httpx.get(f"{b.url}/api/v1/targets/{TARGET}/jobs/{theirs}", timeout=5).json()["status"]
                == "failed"
            ),
            timeout=30,
            what="a's job failed, as b reads it",
        )
        listed = owners(b)
        assert listed[theirs] == "a"
        assert set(listed) == set(registered) and set(listed.values()) == {"a", "b"}
        answer = httpx.get(f"{b.url}/api/v1/targets/{TARGET}/jobs/{theirs}", timeout=5).json()
        assert answer["owner"] == "a" and answer["reason"] == "connector-error"
        page = httpx.get(f"{b.url}/jobs/{TARGET}/{theirs}", timeout=5)
        assert (
            page.status_code == 200
            and '<dd id="owner">a</dd>' in page.text
            and 'id="from-owner"' in page.text
        )
        listing = httpx.get(f"{b.url}/jobs?target={TARGET}&status=failed", timeout=5).text
        row = re.search(rf'/jobs/{TARGET}/{theirs}">[^<]*</a></td>\s*<td class="owner">([^<]*)</td>', listing)
        assert row is not None and row.group(1) == "a"

        # PostgreSQL stopped: b's pages still answer, with b's own jobs, saying the rest cannot be read.
        mine = {i for i, o in listed.items() if o == "b"}
        postgres_server.stop()
        try:
            answer = wait_for(
                lambda: (r := httpx.get(f"{b.url}/api/v1/jobs", timeout=10).json()).get("incomplete") and r,
                timeout=30,
                what="b's list saying the other replicas' jobs cannot be read",
            )
            assert {j["id"] for j in answer["jobs"]} == mine and {j["owner"] for j in answer["jobs"]} == {"b"}
            page = httpx.get(f"{b.url}/jobs?target={TARGET}", timeout=10)
            assert page.status_code == 200 and 'id="elsewhere-unreadable"' in page.text
            assert all(f"/jobs/{TARGET}/{i}" in page.text for i in mine) and theirs not in page.text
            assert httpx.get(f"{b.url}/jobs/{TARGET}/{theirs}", timeout=10).status_code == 503
            assert httpx.get(f"{b.url}/", timeout=10).status_code == 200
        finally:
            postgres_server.start()  # the replicas hand their leases back as they stop
