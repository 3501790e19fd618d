"""The history of finished jobs: kept when retention drops them, in the state file (or memory),
bounded oldest first by age, rows and bytes, searched in the store, shown on the pages and API."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from exporter import job_history
from exporter.config import build_settings
from exporter.history import timeline
from exporter.job_history import Bounds, Query
from exporter.model import Cause, Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.routes import build_app
from exporter.runtime import Runtime, connect_store
from exporter.state import SCHEMA_VERSION, MemoryHistory, Store
from exporter.store import JobHistory, StateStore
from exporter.tracker import Tracker

RETENTION = 900.0


class NoScheduler:
    store: StateStore | None = None


def failed(job_id: str, reason: str = "invalid-credentials", finished: float = 1000.0) -> Job:
    message = f"{job_id}: the bank refused the credentials"
    return Job(
        job_id,
        Status.FAILED,
        "failed",
        "connection",
        finished=finished,
        reason=reason,
        message=message,
        steps=(Step("verify-credentials", Status.FAILED, reason=reason, message=message),),
    )


def tracker_on(history: JobHistory | None, path: Path | None = None) -> tuple[Tracker, Store | None]:
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
    tracker = Tracker()
    store = None
    if path is not None:
        store = Store(str(path))
        connect_store(store, tracker, NoScheduler(), history=store)
    elif history is not None:
        tracker.retire = history.keep
    tracker.set_target(s.resolved(s.targets[0]))
    return tracker, store


def retire(tracker: Tracker, job: Job, at: float = 1000.0) -> None:
    """Track a finished job seen at `at` and let retention drop it."""
    tracker.track("t", job, "registered", now=at)
    assert tracker.sweep(now=at + RETENTION + 1) == 1


def test_a_failed_job_dropped_at_retention_is_read_back_from_the_file_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    tracker, store = tracker_on(None, path)
    assert store is not None
    retire(tracker, failed("gone-1"))
    store.close()
    # One transaction dropped it from the jobs and kept it in the history.
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
        assert db.execute("SELECT job_id, status, reason, cause FROM history").fetchall() == [
            ("gone-1", "failed", "invalid-credentials", "user")
        ]

    tracker, store = tracker_on(None, path)
    assert store is not None
    assert tracker.targets["t"].jobs == {}
    got = store.retired("t", "gone-1")
    assert got is not None
    assert got.tracked.job.message == "gone-1: the bank refused the credentials"
    assert got.tracked.cause is Cause.USER and got.tracked.job.reason == "invalid-credentials"
    assert timeline(got.tracked.history, 0.0)[-1]["status"] == "failed"
    store.close()


def test_a_retired_job_is_found_before_its_commit_too(tmp_path: Path) -> None:
    tracker, store = tracker_on(None, tmp_path / "state.db")
    assert store is not None
    retire(tracker, failed("waiting"))
    got = store.retired("t", "waiting")  # not flushed yet
    assert got is not None and got.tracked.job.id == "waiting"
    store.close()


def test_only_retention_puts_a_job_in_the_history(tmp_path: Path) -> None:
    history = MemoryHistory()
    tracker, _ = tracker_on(history)
    tracker.track("t", failed("deleted"), "registered", now=1000.0)
    tracker.drop("t", "deleted", "deleted")
    assert history.retired("t", "deleted") is None
    retire(tracker, failed("retained"))
    assert history.retired("t", "retained") is not None


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_the_history_keeps_the_newest_rows_up_to_its_bound(tmp_path: Path, kind: str) -> None:
    history: JobHistory
    if kind == "file":
        tracker, store = tracker_on(None, tmp_path / "state.db")
        assert store is not None
        history = store
    else:
        history = MemoryHistory()
        tracker, store = tracker_on(history)
    history.bounds = Bounds(max_jobs=3)
    for n in range(5):
        retire(tracker, failed(f"j{n}"), at=1000.0 + n)
        if store is not None:
            store.flush()
    found, total = history.search(Query())
    assert total == 3
    assert [r.tracked.job.id for r in found] == ["j4", "j3", "j2"]  # the oldest dropped went first
    assert b"asyncjob_history_jobs 3\n" in history.history_metrics_text()
    if store is not None:
        store.close()


def history_bytes(history: JobHistory) -> int:
    return int(history.history_metrics_text().split(b"\nasyncjob_history_bytes ")[1].split()[0])


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_the_history_keeps_the_newest_bytes_up_to_its_bound(tmp_path: Path, kind: str) -> None:
    history: JobHistory
    if kind == "file":
        tracker, store = tracker_on(None, tmp_path / "state.db")
        assert store is not None
        history = store
    else:
        history = MemoryHistory()
        tracker, store = tracker_on(history)
    retire(tracker, failed("probe"), at=500.0)
    if store is not None:
        store.flush()
    one = history_bytes(history)
    assert one > 0
    history.bounds = Bounds(max_bytes=2 * one + one // 2)  # room for two rows, not three
    for n in range(4):
        retire(tracker, failed(f"b{n}"), at=1000.0 + n)
        if store is not None:
            store.flush()
    found, total = history.search(Query())
    assert [r.tracked.job.id for r in found] == ["b3", "b2"]
    assert total == 2
    held = history_bytes(history)
    assert 0 < held <= history.bounds.max_bytes
    if store is not None:
        store.close()


def test_rows_older_than_the_period_are_pruned_and_a_period_of_zero_keeps_none() -> None:
    history = MemoryHistory()
    tracker, _ = tracker_on(history)
    retire(tracker, failed("old"))
    history.bounds = Bounds(period=60.0)
    assert job_history.prune(history._db, history.bounds, time.time() + 61) == 1
    assert history.retired("t", "old") is None
    history.bounds = Bounds(period=0)
    retire(tracker, failed("never"))
    assert history.retired("t", "never") is None
    assert b"asyncjob_history_jobs 0\n" in history.history_metrics_text()


def searchable() -> MemoryHistory:
    history = MemoryHistory()
    tracker, _ = tracker_on(history)
    retire(tracker, failed("acc-1", "invalid-credentials", finished=1000.0), at=1000.0)
    retire(tracker, failed("acc-2", "institution-not-available", finished=2000.0), at=2000.0)
    retire(tracker, failed("conn-1", "invalid-credentials", finished=3000.0), at=3000.0)
    retire(tracker, Job("acc-3", Status.SUCCEEDED, finished=4000.0), at=4000.0)
    return history


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        (Query(), ["acc-3", "conn-1", "acc-2", "acc-1"]),
        (Query(id_prefix="acc-"), ["acc-3", "acc-2", "acc-1"]),
        (Query(id_prefix="acc-%"), []),  # no wildcard in an id prefix
        (Query(status="failed"), ["conn-1", "acc-2", "acc-1"]),
        (Query(cause="provider"), ["acc-2"]),
        (Query(cause="user", id_prefix="acc"), ["acc-1"]),
        (Query(reason="invalid-credentials"), ["conn-1", "acc-1"]),
        (Query(since=2000.0, until=4000.0), ["conn-1", "acc-2"]),
        (Query(target="other"), []),
    ],
)
def test_the_history_search_narrows_by_each_filter(query: Query, ids: list[str]) -> None:
    found, total = searchable().search(query)
    assert [r.tracked.job.id for r in found] == ids
    assert total == len(ids)


def test_the_history_search_pages_and_counts_every_match() -> None:
    history = searchable()
    first, total = history.search(Query(limit=3))
    second, again = history.search(Query(limit=3, offset=3))
    assert total == again == 4
    assert [r.tracked.job.id for r in first] == ["acc-3", "conn-1", "acc-2"]
    assert [r.tracked.job.id for r in second] == ["acc-1"]


def test_the_search_reads_in_sqlite_not_every_row_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    history = searchable()
    read: list[str] = []
    real = job_history.Found.__init__

    def counting(self: job_history.Found, target: str, dropped_at: float, data: str) -> None:
        read.append(target)
        real(self, target, dropped_at, data)

    monkeypatch.setattr(job_history.Found, "__init__", counting)
    history.search(Query(id_prefix="conn"))
    assert len(read) == 1  # only the match left SQLite


def test_a_file_of_the_previous_schema_gains_the_history(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(str(path)).close()
    with sqlite3.connect(path) as db:
        db.executescript(
            "DROP TRIGGER history_added; DROP TRIGGER history_replaced; DROP TRIGGER history_removed;"
        )
        db.executescript("DROP TABLE history; DROP TABLE history_size;")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION - 1),))
    tracker, store = tracker_on(None, path)
    assert store is not None
    retire(tracker, failed("after-upgrade"))
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT job_id FROM history").fetchall() == [("after-upgrade",)]


# --- pages and API ----------------------------------------------------------------------


def runtime(history: str = "7d") -> Runtime:
    data = {
        "global": {"history": history, "retention": "15m"},
        "targets": [{"name": "t", "provider": "basiq", "base_url": "https://au-api.basiq.io"}],
    }
    settings = build_settings(data, PROVIDERS)
    rt = Runtime(settings)
    for t in settings.targets:
        rt.tracker.set_target(settings.resolved(t))
    return rt


def test_a_retired_jobs_page_and_document_show_the_failure_from_history() -> None:
    rt = runtime()
    retire(rt.tracker, failed("gone-1"))
    client = TestClient(build_app(rt))
    page = client.get("/jobs/t/gone-1")
    assert page.status_code == 200
    assert "Shown from history" in page.text and "left the live series at retention" in page.text
    assert "gone-1: the bank refused the credentials" in page.text
    assert "invalid-credentials" in page.text and "the end user must act" in page.text
    assert "stuck" not in page.text.split('id="job"')[1].split("</dl>")[0]
    doc = client.get("/api/v1/targets/t/jobs/gone-1")
    assert doc.status_code == 200
    body = doc.json()
    assert body["from_history"] is True and body["dropped_at"] > 0
    assert (body["status"], body["reason"], body["cause"]) == ("failed", "invalid-credentials", "user")
    assert body["message"] == "gone-1: the bank refused the credentials"
    assert client.get("/api/v1/targets/t/jobs/never").status_code == 404


def test_with_history_off_a_retired_job_is_gone() -> None:
    rt = runtime(history="0")
    retire(rt.tracker, failed("gone-1"))
    client = TestClient(build_app(rt))
    assert client.get("/jobs/t/gone-1").status_code == 404
    assert client.get("/api/v1/targets/t/jobs/gone-1").status_code == 404


def test_the_jobs_page_searches_the_history_with_its_filters_and_pages_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("exporter.pages.PAGE_SIZE", 2)
    rt = runtime()
    for n in range(3):
        retire(rt.tracker, failed(f"acc-{n}"), at=1000.0 + n)
    retire(rt.tracker, failed("conn-9", "institution-not-available"), at=2000.0)
    client = TestClient(build_app(rt))

    def history_ids(url: str) -> list[str]:
        text = client.get(url).text
        table = text.split('id="history-jobs"')[1].split("</table>")[0]
        return [i for i in ("acc-0", "acc-1", "acc-2", "conn-9") if f">{i}<" in table]

    assert history_ids("/jobs?cause=provider") == ["conn-9"]
    assert history_ids("/jobs?reason=institution-not-available") == ["conn-9"]
    assert history_ids("/jobs?id=acc") == ["acc-1", "acc-2"]  # newest first, two a page
    assert history_ids("/jobs?id=acc&history_page=2") == ["acc-0"]
    assert "4 job(s), page 1 of 2" in client.get("/jobs").text
    assert history_ids("/jobs?reason=institution-not-available&since=1970-01-01T00:16:40&until=1001") == [
        "conn-9"
    ]
    assert history_ids("/jobs?reason=institution-not-available&since=1970-01-01T00:16:41") == []
    assert history_ids("/jobs?status=succeeded") == []
    assert history_ids("/jobs?stuck=1") == []
    assert client.get("/jobs?since=yesterday").status_code == 400
    assert client.get("/jobs?cause=bank").status_code == 400


def test_the_history_size_is_on_metrics() -> None:
    rt = runtime()
    retire(rt.tracker, failed("gone-1"))
    text = TestClient(build_app(rt)).get("/metrics").text
    assert "asyncjob_history_jobs 1\n" in text
    assert "asyncjob_history_bytes 0\n" not in text and "asyncjob_history_bytes " in text
