"""DELETE of a job through the API is remembered: discovery does not bring it back while the
provider keeps listing it, across a restart too; registering it again tracks it again."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from exporter.config import build_settings
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.routes import build_app
from exporter.runtime import Runtime, connect_store
from exporter.state import Store
from exporter.tracked import TOMBSTONE_SECONDS

SETTINGS = build_settings(
    {"targets": [{"name": "b", "provider": "basiq", "base_url": "https://x", "users": ["u"]}]}, PROVIDERS
)


def started(state_file: Path | None = None) -> tuple[Runtime, TestClient, Store | None]:
    runtime = Runtime(SETTINGS)
    store = None
    if state_file is not None:
        store = Store(str(state_file))
        connect_store(store, runtime.tracker, runtime.scheduler, history=store)
    runtime.tracker.set_target(SETTINGS.resolved(SETTINGS.targets[0]))
    return runtime, TestClient(build_app(runtime)), store


LISTED = PollResult(jobs=[Job("listed", Status.RUNNING, job_type="connection")])


def test_a_deleted_discovered_job_is_not_tracked_again_while_listed() -> None:
    runtime, client, _ = started()
    runtime.tracker.apply("b", LISTED, now=1_000)
    assert "listed" in runtime.tracker.targets["b"].jobs
    assert client.delete("/api/v1/targets/b/jobs/listed").status_code == 204
    for cycle in range(1, 4):
        runtime.tracker.apply("b", LISTED, now=1_000 + cycle)
    assert client.get("/api/v1/targets/b/jobs/listed").status_code == 404


def test_the_tombstone_lasts_as_long_as_the_job_is_listed() -> None:
    runtime, client, _ = started()
    runtime.tracker.apply("b", LISTED, now=1_000)
    client.delete("/api/v1/targets/b/jobs/listed")
    # Listed every day for three tombstone lifetimes: each sighting renews it.
    day = 86_400.0
    now = 1_000.0
    while now < 1_000 + 3 * TOMBSTONE_SECONDS:
        now += day
        runtime.tracker.apply("b", LISTED, now=now)
        runtime.tracker.sweep(now)
    assert "listed" not in runtime.tracker.targets["b"].jobs


def test_a_deleted_job_registered_again_is_tracked_again() -> None:
    runtime, client, _ = started()
    runtime.tracker.apply("b", LISTED, now=1_000)
    client.delete("/api/v1/targets/b/jobs/listed")
    r = client.post("/api/v1/targets/b/jobs", json={"id": "listed"})
    assert r.status_code == 202
    assert "listed" in runtime.tracker.targets["b"].jobs


def test_the_deletion_survives_a_restart(tmp_path: Path) -> None:
    runtime, client, store = started(tmp_path / "state.db")
    assert store is not None
    runtime.tracker.apply("b", LISTED, now=1_000)
    assert client.delete("/api/v1/targets/b/jobs/listed").status_code == 204
    store.close()

    runtime, client, store = started(tmp_path / "state.db")
    assert store is not None
    runtime.tracker.apply("b", LISTED)
    assert client.get("/api/v1/targets/b/jobs/listed").status_code == 404
    store.close()
