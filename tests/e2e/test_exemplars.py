"""OpenMetrics as a real Prometheus scrapes it: the exporter answers its Accept header with
OpenMetrics, and the exemplars on the duration histograms reach Prometheus' exemplar storage
with the ids of the jobs that finished, so a slow bucket in Grafana leads to the job's page."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness import create_job, exporter, simulator, wait_for, write_secrets
from tests.realstack import Prometheus, alertmanager, prometheus, require_binaries, webhook

pytestmark = [pytest.mark.realstack, pytest.mark.e2e]

TARGET = "basiq-exemplars"


def exemplar_ids(prom: Prometheus, metric: str) -> set[str]:
    return {
        e["labels"]["job_id"]
        for series in prom.exemplars(metric)
        for e in series["exemplars"]
        if e["labels"].get("target") == TARGET
    }


def test_prometheus_stores_the_finished_jobs_ids_as_exemplars(tmp_path: Path) -> None:
    binaries = require_binaries()
    secrets = write_secrets(tmp_path)
    with ExitStack() as es:
        sim = es.enter_context(simulator(tmp_path, step_seconds=0.5))
        first = create_job(sim, "basiq", scenario="success", job_type="connection")
        config = {
            "global": {"poll_interval": "0.5s", "per_job_series": "exceptions"},
            "targets": [
                {
                    "name": TARGET,
                    "provider": "basiq",
                    "base_url": f"{sim.url}/basiq",
                    "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                    "jobs": [first],
                }
            ],
        }
        exp = es.enter_context(exporter(tmp_path, config))
        hook = es.enter_context(webhook(tmp_path))
        am = es.enter_context(alertmanager(tmp_path, binaries, hook.url))
        instance = exp.url.removeprefix("http://")
        prom = es.enter_context(prometheus(tmp_path, binaries, instance, am.url))
        wait_for(
            lambda: exemplar_ids(prom, "asyncjob_job_duration_seconds_bucket") == {first},
            timeout=40,
            what=f"an exemplar of job {first} in Prometheus",
        )
        # A second job lands in the same bucket later: Prometheus keeps both, each at its time.
        second = create_job(sim, "basiq", scenario="success", job_type="connection")
        r = exp.api("POST", f"/api/v1/targets/{TARGET}/jobs", json={"id": second})
        assert r.status_code == 202, r.text
        wait_for(
            lambda: exemplar_ids(prom, "asyncjob_job_duration_seconds_bucket") == {first, second},
            timeout=40,
            what=f"an exemplar of job {second} in Prometheus",
        )
        assert exemplar_ids(prom, "asyncjob_step_duration_seconds_bucket") <= {first, second}
        assert exemplar_ids(prom, "asyncjob_step_duration_seconds_bucket")
        # Scraped as OpenMetrics: no counter grew a _created series of its own.
        assert prom.vector('{__name__=~".+_created", job="asyncjob"}') == []
        assert prom.vector('asyncjob_jobs_finished_total{status="succeeded"}')[0]["value"][1] == "2"
