"""The SQLite state file: what survives a restart, and how its schema is versioned."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from exporter.config import build_settings
from exporter.model import Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.state import SCHEMA_VERSION, StateError, Store, tracked_from_dict, tracked_to_dict
from exporter.tracker import Tracker


class NoScheduler:
    store = None


def tracker_with_store(path: Path) -> tuple[Tracker, Store]:
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tracker = Tracker()
    store = Store(str(path))
    store.attach(tracker, NoScheduler())
    tracker.set_target(s.resolved(s.targets[0]))
    return tracker, store


def test_a_tracked_job_round_trips_whole() -> None:
    tracker = Tracker()
    job = Job(
        "1",
        Status.FAILED,
        job_type="connection",
        created=10.0,
        reason="maintenance",
        message="down",
        steps=(Step("verify-credentials", Status.FAILED, "failed", "maintenance"),),
        records_total=5,
    )
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tracker.set_target(s.resolved(s.targets[0]))
    tracked = tracker.track("t", job, "registered", now=20)
    assert tracked_from_dict(tracked_to_dict(tracked)) == tracked


def test_jobs_marks_cursors_and_tombstones_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_with_store(path)
    tracker.track("t", Job("done", Status.SUCCEEDED), "static", now=1)
    tracker.track("t", Job("run", Status.RUNNING, updated=5), "registered", now=6)
    tracker.track("t", Job("old", Status.SUCCEEDED), "discovered", now=1)
    tracker.drop("t", "old", "retention")
    store.save_cursors("t", {"queue-20": "41@1528112097"})
    store.close()

    tracker, store = tracker_with_store(path)
    jobs = tracker.targets["t"].jobs
    assert set(jobs) == {"done", "run"}
    assert jobs["done"].counted and jobs["run"].last_progress == 5 and jobs["run"].source == "registered"
    assert "old" in tracker.targets["t"].tombstones
    assert store.cursors("t") == {"queue-20": "41@1528112097"}
    assert tracker.targets["t"].agg.finished == {}  # counters restart from zero
    store.close()


def test_the_schema_version_is_recorded_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(str(path)).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer"):
        Store(str(path))


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_text("not a database " * 100)
    with pytest.raises(StateError, match=r"state\.db"):
        Store(str(path))
