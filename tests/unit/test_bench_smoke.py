"""The benchmark harness runs end to end at tiny sizes. Nothing here is timed: `make bench` measures."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from bench import (
    auth,
    changes,
    cluster,
    cluster_report,
    detection,
    lockout,
    machine,
    memory,
    pgdriver,
    poll,
    registration,
    report,
    scrape,
    series,
    simulated,
)


def quiet(_: str) -> None:
    return None


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return {
        "machine": machine.describe(),
        "seconds": 0.0,
        "scrape": scrape.run(n_jobs=60, seconds=1.0, log=quiet),
        "changes": changes.run(sizes=(100, 400), reps=1),
        "memory": memory.run(sizes=(20, 60), seconds=1.0, settle=0.0, log=quiet),
        "series": series.run(n=200, log=quiet),
    }


def test_scrape_serves_one_gzip_member_with_every_job_while_polling(results: dict[str, Any]) -> None:
    s = results["scrape"]
    assert s["content_encoding"] == "gzip"
    assert s["served"]["per_job_samples"] >= 60 * s["series_per_job"]
    assert s["metrics"]["n"] > 0 and s["healthz"]["n"] > 0
    assert s["baseline"]["generate_latest_ms"] > 0
    assert s["served"]["format"] == "OpenMetrics 1.0.0"  # what Prometheus' Accept header gets


def test_series_counts_each_mode_of_the_same_fleet(results: dict[str, Any]) -> None:
    modes = results["series"]["modes"]
    assert modes["all"]["jobs_with_series"] == 200
    assert modes["exceptions"]["jobs_with_series"] == 10  # the 5 % that need a person
    assert modes["none"]["jobs_with_series"] == 0
    assert modes["all"]["series"] > modes["exceptions"]["series"] > modes["none"]["series"]


def test_changes_are_timed_at_both_sizes(results: dict[str, Any]) -> None:
    c = results["changes"]
    assert (c["small"]["jobs"], c["large"]["jobs"]) == (100, 400)
    assert set(c["ratios"]) >= {"add_rendered_us", "update_rendered_us", "drop_rendered_us"}


def test_memory_is_the_rss_growth_of_the_polling_cli(results: dict[str, Any]) -> None:
    small, large = results["memory"]["sizes"]
    assert (small["jobs"], large["jobs"]) == (20, 60)
    assert large["from_jobs"] == 20 and "bytes_per_job" in large
    assert large["content_encoding"] == "gzip"


def test_the_report_names_the_command_and_has_a_row_per_target(results: dict[str, Any]) -> None:
    text = report.render(results, ".venv/bin/python -m bench")
    assert "`.venv/bin/python -m bench`" in text
    assert f"{results['machine']['nproc']} CPUs" in text
    assert len(report.targets(results)) == 4 + 1 + 3 + 1  # scrape, series, changes, memory at 60 jobs


@pytest.mark.e2e
def test_poll_compares_the_exporter_with_a_bare_client_against_the_simulator() -> None:
    r = poll.run(n_jobs=50, rounds=1)
    assert r["ours_cpu_ms_per_poll"] > 0 and r["bare_cpu_ms_per_poll"] > 0
    first = r["first_full_poll"]  # one scheduler cycle over 250 jobs, every one answered
    assert first["jobs"] == 250 and first["ours_wall_s"] > 0 and first["bare_wall_s"] > 0
    assert any(row["what"].startswith("first full poll of 250 jobs") for row in report.poll_targets(r))
    assert r["sniffio"]["installed"]


@pytest.mark.e2e
def test_poll_compares_this_transport_with_one_of_another_revision() -> None:
    """`python -m bench.poll --against REV`: the same poll path over two transports, one of them
    exporter/transport.py as git holds it at REV (here HEAD), every job read by both."""
    from exporter.transport import Http11Transport

    makers = {"this tree": Http11Transport, "HEAD": poll.transport_at("HEAD")}
    assert makers["HEAD"] is not Http11Transport
    with simulated.simulator(step_seconds=600.0) as url:
        r = anyio.run(poll.compare_transports, url, makers, 30, 1, 4)
    assert set(r["cpu_ms_per_poll"]) == {"this tree", "HEAD"} and all(
        v > 0 for v in r["cpu_ms_per_poll"].values()
    )


@pytest.mark.e2e
def test_detection_sees_a_failed_job_in_metrics() -> None:
    r = detection.run(jobs=1, poll_interval=0.5, step_seconds=0.2, timeout=30)
    assert len(r["latencies_s"]) == 1


@pytest.mark.e2e
def test_registration_compares_the_cli_with_bare_starlette_while_it_polls() -> None:
    r = registration.run(n_jobs=20, poll_interval=1, concurrency=8, scrape_every=0.1, bare_seconds=0.5)
    # Time-bounded: as many as fit in the interval, every one accepted, each second counted.
    assert r["exporter"]["requests"] > 0 and r["exporter"]["statuses"] == {"202": r["exporter"]["requests"]}
    assert r["bare"]["statuses"] == {"202": r["bare"]["requests"]}
    assert sum(r["exporter"]["each_second"]) == r["exporter"]["requests"]
    assert r["slowest_5s_ratio"] > 0
    assert r["exporter"]["server_cpu_us_per_request"] > 0 and r["metrics"]["scrapes"] > 0
    assert r["poll_requests_during"] > 0  # a poll cycle of the polled jobs met the registrations
    assert r["state_file_bytes"] > 0 and r["jobs_tracked_after"] > 20
    text = "\n".join(report.registration_body(r))
    assert "bare Starlette" in text and len(report.registration_targets(r)) == 3


@pytest.mark.e2e
def test_auth_scrapes_with_credentials_while_a_flood_is_refused() -> None:
    r = auth.run(flood=4, seconds=1.0, cost=4, every=0.1, timing_samples=2, log=quiet)
    assert r["alone"]["n"] > 0 and r["flooded"]["n"] > 0  # every scrape answered 200
    assert r["flood_answers"] > 0
    assert report.targets({"auth": r})[0]["what"].startswith("authenticated /metrics p99")
    assert "## Basic auth under a wrong-password flood" in "\n".join(auth.body(r))


@pytest.mark.e2e
def test_the_soak_registers_through_the_cli_and_counts_every_acknowledged_job_once() -> None:
    from bench import jobrate

    r = jobrate.run(seconds=6.0, warmup=2.0, rate=10.0, log=quiet)
    assert r["acknowledged"] > 0 and r["counted"] == r["acknowledged"] and r["refused"] == 0
    assert r["state_last_bytes"] > 0 and r["fds"][0] > 0 and len(r["samples"]) >= 2
    assert report.targets({"soak": r})[0]["what"].startswith("RSS growth over")
    assert "## Soak at a steady job rate" in "\n".join(report.soak_body(r))
    cost = jobrate.capacity(n=200)
    assert (
        cost["finished_job_row_bytes"] > cost["tombstone_row_bytes"] > 0
        and cost["tombstone_memory_bytes"] > 0
    )


@pytest.mark.postgres
def test_both_postgresql_drivers_write_through_a_real_server_and_are_reported() -> None:
    results = pgdriver.run(rounds=3, batches=2)
    for name in ("psycopg", "asyncpg"):
        assert len(results[name]) == 2
        for r in results[name]:
            assert r["rows"] == 3 + 2 * pgdriver.ROWS
            assert r["one"]["p50_ms"] > 0 and r["batch"]["p50_ms"] > 0 and r["cpu_s"] > 0
    text = "\n".join(pgdriver.body(results))
    assert "| psycopg 3" in text and "| asyncpg |" in text


@pytest.mark.e2e
def test_lockout_scrapes_on_new_connections_while_more_connections_than_the_cap_flood() -> None:
    r = lockout.run(clients=24, max_connections=16, seconds=1.0, cost=4, every=0.1, log=quiet)
    assert r["alone"]["n"] > 0 and r["flooded"]["n"] > 0 and r["flooded_missed"] == 0
    assert r["flood_closed_by_server"] > 0 and r["cap_log_lines"] >= 1
    assert report.targets({"lockout": r})[0]["what"].startswith(
        "authenticated /metrics p99 on new connections"
    )
    assert "## The connection cap under a flood" in "\n".join(lockout.body(r))


@pytest.mark.postgres
@pytest.mark.e2e
def test_cluster_measures_replicas_sharing_postgresql_beside_one_sqlite_process() -> None:
    """3 replicas of the CLI and one SQLite process on the same jobs; a replica killed and its jobs
    polled again by the others; the statements PostgreSQL received, read from pg_stat_statements."""
    r = cluster.run(**cluster.QUICK, log=quiet)  # `python -m bench.cluster --quick`
    one, many = r["sqlite"], r["cluster"]
    assert one["processes"] == 1 and many["processes"] == 3
    for m in (one, many):
        assert m["steady"]["polls"] > 0 and m["steady"]["cpu_ms_per_poll"] > 0
        reg = m["registrations"]
        assert reg["requests"] > 0 and reg["statuses"] == {"202": reg["requests"]}
    # PostgreSQL's CPU is read from /proc in clock ticks (10 ms): the quick size's steady window,
    # where no job changes, may cost it less than one; the first full poll writes every job.
    assert many["first_full_poll_postgres_cpu_s"] > 0 and many["steady"]["postgres_cpu_ms_per_poll"] >= 0
    assert many["registrations"]["postgres_cpu_us_per_registration"] > 0
    # Every job answered once was written once, in a few statements, not one a job.
    first = many["first_full_poll_statements"]
    assert first["job_rows_written"] >= 60 and 0 < first["job_write_calls"] < 60
    kill = many["kill"]
    assert kill["victim_jobs"] > 0 and kill["survivors_running"] == 60
    assert 0 < kill["taken_over_s"] <= kill["polled_again_s"]
    assert "fsync=on" in many["postgres_settings"] and "synchronous_commit=on" in many["postgres_settings"]
    assert len(cluster_report.targets(r)) == 5
    text = "\n".join(cluster_report.body(r))
    assert (
        "## Cluster mode: 3 replicas sharing PostgreSQL" in text
        and "### On paper: 1,000,000 live jobs" in text
    )
