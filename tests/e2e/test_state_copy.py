"""Moving from SQLite to PostgreSQL with the real CLI: an exporter polls the simulator with a state
file and is killed with kill -9 (its last commits still in the WAL), `asyncjob-exporter state copy`
carries the file into a real PostgreSQL, and a replica's store reads back every job with its
counted-once mark."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from exporter.cluster.store import PostgresStore
from exporter.config import build_settings
from exporter.providers import PROVIDERS
from exporter.runtime import connect_store
from exporter.state import tracked_from_json
from exporter.tracked import TrackedJob
from exporter.tracker import Tracker
from tests.harness import ROOT, exporter, simulator, wait_for, write_secrets
from tests.postgres import Postgres

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


class NoScheduler:
    store = None


def config(sim_url: str, secrets: Path, state: Path) -> dict[str, Any]:
    return {
        "global": {"poll_interval": "0.2s"},
        "state_file": str(state),
        "targets": [
            {
                "name": "basiq",
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
            }
        ],
    }


def file_jobs(state: Path) -> dict[str, TrackedJob]:
    """The state file's jobs as saved (read the way SQLite reads a WAL left by a killed process)."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        return {i: tracked_from_json(d) for i, d in db.execute("SELECT job_id, data FROM jobs")}


async def restored(dsn: str) -> dict[str, TrackedJob]:
    """The jobs a lone replica restores from the state database, by id."""
    store = PostgresStore(dsn, "r1", None)
    await store.open()
    s = build_settings(
        {"targets": [{"name": "basiq", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    tracker = Tracker()
    connect_store(store, tracker, NoScheduler())  # type: ignore[arg-type]
    tracker.set_target(s.resolved(s.targets[0]))
    await store.close()
    return dict(tracker.targets["basiq"].jobs)


def test_a_killed_exporters_state_file_is_copied_whole_with_its_counted_once_marks(
    tmp_path: Path, dsn: str, postgres_server: Postgres
) -> None:
    state = tmp_path / "state.db"
    with simulator(tmp_path, step_seconds=0.1) as sim, httpx.Client(timeout=5) as client:
        finishing = [
            client.post(f"{sim.url}/_sim/jobs", json={"provider": "basiq", "scenario": "success"}).json()[
                "id"
            ]
            for _ in range(20)
        ]
        stuck = [
            client.post(f"{sim.url}/_sim/jobs", json={"provider": "basiq", "scenario": "stuck"}).json()["id"]
            for _ in range(10)
        ]
        with exporter(tmp_path, config(sim.url, write_secrets(tmp_path), state)) as exp:
            for job_id in finishing + stuck:
                assert exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": job_id}).status_code == 202
            wait_for(
                lambda: (
                    sum(j["status"] == "succeeded" for j in exp.api("GET", "/api/v1/jobs").json()["jobs"])
                    == 20
                ),
                what="the 20 jobs finished",
            )
            # An increment shows only once its job's counted-once mark is committed.
            wait_for(
                lambda: sum(v for n, _, v in exp.samples() if n == "asyncjob_jobs_finished_total") == 20,
                what="the 20 finishes counted",
            )
            exp.stop(signal.SIGKILL)
    assert Path(f"{state}-wal").exists()  # the last commits were never copied into the file

    pgpass = tmp_path / "pgpass"
    pgpass.write_text(
        f"127.0.0.1:{postgres_server.port}:*:asyncjob:{postgres_server.password_file.read_text()}"
    )
    os.chmod(pgpass, 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCJOB_", "PG"))}
    copy = subprocess.run(
        [sys.executable, "-m", "exporter", "state", "copy", "--from", str(state), "--to", dsn.split("?")[0]],
        env={**env, "PGPASSFILE": str(pgpass)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert copy.returncode == 0, copy.stderr
    assert "jobs: 30 added, 0 already there" in copy.stdout
    assert "20 finished and counted once" in copy.stdout

    saved = file_jobs(state)
    arrived = anyio.run(restored, dsn)
    assert set(arrived) == set(finishing) | set(stuck) == set(saved)
    assert arrived == saved  # every field: the marks, the steps, the history
    assert {i for i, t in arrived.items() if t.counted} == set(finishing)


# A state file whose last commits are still in its WAL: a process that wrote them and died.
KILLED_WRITER = """
import os, sys
from exporter.config import build_settings
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.runtime import connect_store
from exporter.state import Store
from exporter.tracker import Tracker

class NoScheduler:
    store = None

store = Store(sys.argv[1])
s = build_settings({"targets": [{"name": "basiq", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS)
tracker = Tracker()
connect_store(store, tracker, NoScheduler())
tracker.set_target(s.resolved(s.targets[0]))
for i in range(12):
    tracker.track("basiq", Job(f"job-{i}", Status.RUNNING), "registered")
store.flush()
os._exit(0)
"""


@contextlib.contextmanager
def read_only_mount(path: Path) -> Iterator[Path]:
    """A tmpfs at `path`, filled by the caller, then remounted read-only (mounts need root)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a tmpfs needs root; CI runs the tests as root")
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_commits_left_in_the_wal_are_copied_from_a_read_only_mount_or_the_copy_refuses(
    tmp_path: Path, dsn: str, postgres_server: Postgres
) -> None:
    state = tmp_path / "state.db"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(state)], cwd=ROOT, check=True, timeout=60)
    assert Path(f"{state}-wal").stat().st_size > 0
    argv = [sys.executable, "-m", "exporter", "state", "copy", "--to", dsn.split("?")[0]]
    argv += ["--to-password-file", str(postgres_server.password_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOB_")}

    def copy_from(directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, "--from", str(directory / "state.db")], env=env, cwd=ROOT, capture_output=True, text=True
        )

    with read_only_mount(tmp_path / "ro") as ro:
        for suffix in ("", "-wal"):  # the -shm lost (copied without it)
            shutil.copy(f"{state}{suffix}", ro / f"state.db{suffix}")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        refused = copy_from(ro)
        # Read without its WAL, the file holds no job: the copy says so instead of copying nothing.
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "state.db-wal" in refused.stderr and "state.db-shm" in refused.stderr
        subprocess.run(["mount", "-o", "remount,rw", str(ro)], check=True)
        shutil.copy(f"{state}-shm", ro / "state.db-shm")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        copied = copy_from(ro)
    assert copied.returncode == 0, copied.stderr
    assert "jobs: 12 added" in copied.stdout
