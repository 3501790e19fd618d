"""The benchmark harness runs end to end at tiny sizes. Nothing here is timed: `make bench` measures."""

from __future__ import annotations

from typing import Any

import pytest

from bench import detection, machine, memory, poll, report, scale, scrape


def quiet(_: str) -> None:
    return None


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return {
        "machine": machine.describe(),
        "seconds": 0.0,
        "scrape": scrape.run(n_jobs=50, unchanged=1, changed=1, baseline_reps=1, log=quiet, profile=[]),
        "memory": memory.run((50,)),
        "scale": scale.run(
            total_jobs=100, total_shards=2, unchanged=1, changed=1, baseline_reps=1, choice_jobs=50, log=quiet
        ),
    }


def test_scrape_serves_every_job_series_through_the_real_server(results: dict[str, Any]) -> None:
    s = results["scrape"]
    assert s["http"]["content_encoding"] == "gzip"
    assert s["served"]["per_job_samples"] == 50 * s["series_per_job"]
    assert s["baseline"]["bytes"] > 0


def test_memory_is_read_in_a_fresh_process(results: dict[str, Any]) -> None:
    (m,) = results["memory"]["sizes"]
    assert m["jobs"] == 50
    assert m["rss_before_bytes"] > 0


def test_shards_split_every_job_and_per_job_metrics_false_drops_per_job_series(
    results: dict[str, Any],
) -> None:
    sc = results["scale"]
    assert sum(x["jobs"] for x in sc["shards"]) == 100
    assert sc["per_job_metrics"]["series_per_job_true"] == results["scrape"]["series_per_job"]


def test_the_report_names_the_command_and_the_machine(results: dict[str, Any]) -> None:
    text = report.render(results, ".venv/bin/python -m bench")
    assert "`.venv/bin/python -m bench`" in text
    assert f"{results['machine']['nproc']} CPUs" in text
    assert len(report.targets(results)) == 5  # 2 scrape, 1 memory size, 2 scale


@pytest.mark.e2e
def test_poll_compares_the_exporter_with_a_bare_client_against_the_simulator() -> None:
    r = poll.run(n_jobs=50, rounds=1)
    assert r["ours_cpu_ms_per_poll"] > 0 and r["bare_cpu_ms_per_poll"] > 0
    assert r["sniffio"]["installed"]


@pytest.mark.e2e
def test_detection_sees_a_failed_job_in_metrics() -> None:
    r = detection.run(jobs=1, poll_interval=0.5, step_seconds=0.2, timeout=30)
    assert len(r["latencies_s"]) == 1
