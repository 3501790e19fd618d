"""Acknowledged means durable, through the real CLI: kill -9 at random moments, a read-only
mount and a full disk under the state file. The mounts need root (CI runs as root)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.watchdog import EXIT_CODE, FREEZE_ENV
from tests.harness import (
    Exporter,
    create_job,
    exporter,
    free_port,
    simulator,
    start_cli,
    wait_for,
    write_secrets,
)

pytestmark = pytest.mark.e2e

ROUNDS = 10
REGISTRARS = 4
FINISHED = re.compile(r"^asyncjob_jobs_finished_total\{[^}]*\} (\S+)$", re.MULTILINE)


def state_config(sim_url: str, secrets: Path, state: Path, poll: str = "0.2s") -> dict[str, Any]:
    return {
        "global": {"poll_interval": poll, "max_jobs_per_target": 100_000},
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


def sim_jobs(sim_url: str, n: int, scenario: str) -> list[str]:
    with httpx.Client(timeout=5) as client:
        return [
            str(
                client.post(f"{sim_url}/_sim/jobs", json={"provider": "basiq", "scenario": scenario}).json()[
                    "id"
                ]
            )
            for _ in range(n)
        ]


def counted_marks(state: Path) -> int:
    """Jobs whose counted-once mark is in the state file."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM jobs WHERE json_extract(data, '$.counted')").fetchone()[0]
        )


def finished_total(exp: Exporter) -> float:
    return sum(float(v) for v in FINISHED.findall(exp.metrics()))


def tracked(exp: Exporter) -> dict[str, str]:
    return {j["id"]: j["status"] for j in exp.api("GET", "/api/v1/jobs").json()["jobs"]}


def register(exp: Exporter, job_id: str) -> int:
    return exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": job_id}).status_code


def test_kill_9_at_random_moments_loses_no_acknowledged_registration_and_counts_no_job_twice(
    tmp_path: Path,
) -> None:
    rng = random.Random()
    state = tmp_path / "state.db"
    with simulator(tmp_path, step_seconds=0.1) as sim:
        secrets = write_secrets(tmp_path)
        cfg = state_config(sim.url, secrets, state)
        ids = iter(sim_jobs(sim.url, ROUNDS * 60, "success"))
        acknowledged: set[str] = set()
        seen_per_lifetime: list[float] = []
        marked_per_lifetime: list[int] = []
        lock = threading.Lock()

        for _ in range(ROUNDS):
            with exporter(tmp_path, cfg) as exp:
                stop = threading.Event()
                seen = [0.0]

                def registrar(exp: Exporter = exp, stop: threading.Event = stop) -> None:
                    with httpx.Client(base_url=exp.url, timeout=5) as client:
                        while not stop.is_set():
                            with lock:
                                job_id = next(ids, None)
                            if job_id is None:
                                return
                            try:
                                r = client.post("/api/v1/targets/basiq/jobs", json={"id": job_id})
                            except httpx.HTTPError:
                                return  # killed
                            if r.status_code == 202:
                                with lock:
                                    acknowledged.add(job_id)

                def scraper(
                    exp: Exporter = exp, stop: threading.Event = stop, seen: list[float] = seen
                ) -> None:
                    while not stop.is_set():
                        with contextlib.suppress(httpx.HTTPError):
                            seen[0] = max(seen[0], finished_total(exp))

                threads = [threading.Thread(target=registrar) for _ in range(REGISTRARS)]
                threads.append(threading.Thread(target=scraper))
                for t in threads:
                    t.start()
                time.sleep(rng.uniform(0.3, 1.5))
                exp.stop(signal.SIGKILL)
                stop.set()
                for t in threads:
                    t.join(10)
                seen_per_lifetime.append(seen[0])
            marked_per_lifetime.append(counted_marks(state) - sum(marked_per_lifetime))

        with exporter(tmp_path, cfg) as exp:
            lost = acknowledged - set(tracked(exp))
            assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged registrations lost"
            jobs = wait_for(
                lambda: (j := tracked(exp)) and all(s == "succeeded" for s in j.values()) and j,
                timeout=60,
                what="every tracked job finished",
            )
            uncounted = len(jobs) - sum(marked_per_lifetime)
            wait_for(lambda: finished_total(exp) >= uncounted, what="the last lifetime's finishes counted")
            time.sleep(0.5)  # a few more polls: nothing may count again
            last = finished_total(exp)
    assert acknowledged and len(seen_per_lifetime) == ROUNDS and sum(seen_per_lifetime) > 0
    # A lifetime never shows an increment whose counted-once mark it has not committed: the
    # next lifetime counts exactly the jobs not marked yet, so no job is counted twice.
    over = [
        (seen, marked)
        for seen, marked in zip(seen_per_lifetime, marked_per_lifetime, strict=True)
        if seen > marked
    ]
    assert not over, f"increments seen before their marks were committed: {over}"
    assert last == uncounted
    assert sum(seen_per_lifetime) + last <= len(jobs)


# --- the state file on a read-only mount and on a full disk -------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a tmpfs needs root; CI runs the tests as root")
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def state_errors_logged(exp: Exporter) -> list[str]:
    return re.findall(r'msg="state file cannot be written[^"]*".* error="([^"]*)"', exp.output())


def test_a_read_only_state_file_is_served_unready_and_written_once_writable(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=0.2) as sim, tmpfs(tmp_path / "mnt", "8m") as mnt:
        secrets = write_secrets(tmp_path)
        cfg = state_config(sim.url, secrets, mnt / "state.db", poll="1s")
        first, second, third = sim_jobs(sim.url, 3, "stuck")
        with exporter(tmp_path, cfg) as exp:
            assert register(exp, first) == 202
        remount(mnt, "ro")
        try:
            with exporter(tmp_path, cfg, wait_ready=False) as exp:
                wait_for(lambda: exp.value("asyncjob_state_write_errors_total"), what="a failed write")
                ready = exp.api("GET", "/readyz")
                assert ready.status_code == 503 and "state file cannot be written" in ready.text
                assert first in tracked(exp)  # read from the read-only file, and served
                r = exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": second})
                assert r.status_code == 503 and r.headers["retry-after"]
                time.sleep(1.0)  # several retries
                logged = state_errors_logged(exp)
                assert logged and len(logged) == len(set(logged)), logged  # once per change of error
                assert "SQLITE_" in logged[0]  # SQLite's own error, named

                remount(mnt, "rw")
                wait_for(lambda: exp.api("GET", "/readyz").status_code == 200, what="ready again")
                assert register(exp, third) == 202
                assert exp.value("asyncjob_state_pending_writes") == 0
                exp.stop(signal.SIGKILL)
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                remount(mnt, "rw")
        with exporter(tmp_path, cfg) as exp:
            assert {first, third} <= set(tracked(exp))


def test_a_full_disk_refuses_registrations_loses_none_and_writes_all_when_freed(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=0.2) as sim, tmpfs(tmp_path / "mnt", "1m") as mnt:
        secrets = write_secrets(tmp_path)
        cfg = state_config(sim.url, secrets, mnt / "state.db", poll="1h")
        ids = sim_jobs(sim.url, 1500, "stuck")
        acknowledged: list[str] = []
        with exporter(tmp_path, cfg) as exp:
            assert register(exp, ids[0]) == 202
            acknowledged.append(ids[0])
            filler = mnt / "filler"
            with filler.open("wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            refused = None
            with httpx.Client(base_url=exp.url, timeout=15) as client:
                for job_id in ids[1:]:
                    r = client.post("/api/v1/targets/basiq/jobs", json={"id": job_id})
                    if r.status_code != 202:
                        refused = r
                        break
                    acknowledged.append(job_id)
            assert refused is not None and refused.status_code == 503, "the disk never filled"
            assert "disk is full" in refused.json()["error"]
            assert exp.api("GET", "/readyz").status_code == 503
            assert (exp.value("asyncjob_state_write_errors_total") or 0) > 0
            assert (exp.value("asyncjob_state_pending_writes") or 0) > 0  # the refused one, kept
            assert any("SQLITE_FULL" in e for e in state_errors_logged(exp))

            filler.unlink()
            wait_for(lambda: exp.api("GET", "/readyz").status_code == 200, what="ready once freed")
            assert exp.value("asyncjob_state_pending_writes") == 0
            exp.stop(signal.SIGKILL)
        with exporter(tmp_path, cfg) as exp:
            lost = set(acknowledged) - set(tracked(exp))
            assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged registrations lost"


# --- counted once after a restart, tombstones, and a job that freezes the event loop -------


def test_a_finished_dropped_job_listed_again_after_a_restart_is_not_tracked_or_counted(
    tmp_path: Path,
) -> None:
    with simulator(tmp_path, step_seconds=0.5) as sim:
        secrets = write_secrets(tmp_path)
        cfg = state_config(sim.url, secrets, tmp_path / "state.db")
        cfg["global"]["retention"] = "1s"
        cfg["targets"][0]["users"] = ["lister"]  # its job list shows the job for days
        with exporter(tmp_path, cfg) as exp:
            job_id = create_job(sim, "basiq", scenario="success", owner="lister")  # seen running
            wait_for(lambda: finished_total(exp) == 1, what="the job finished and counted")
            wait_for(lambda: job_id not in tracked(exp), what="the job dropped after its retention")
            assert (exp.value("asyncjob_state_size_bytes") or 0) > 0
        with exporter(tmp_path, cfg) as exp:
            polls = exp.value("asyncjob_poll_requests_total", target="basiq") or 0
            wait_for(
                lambda: (exp.value("asyncjob_poll_requests_total", target="basiq") or 0) > polls + 3,
                what="the job list read a few times",
            )
            assert job_id not in tracked(exp)
            assert finished_total(exp) == 0


def test_a_job_that_freezes_the_event_loop_ends_the_process_and_is_quarantined_at_the_next_start(
    tmp_path: Path,
) -> None:
    with simulator(tmp_path, step_seconds=0.1) as sim:
        secrets = write_secrets(tmp_path)
        cfg = state_config(sim.url, secrets, tmp_path / "state.db")
        poisoned, healthy = sim_jobs(sim.url, 2, "success")
        # The test hook blocks the loop on this job's answer, in every lifetime of the exporter.
        env = {FREEZE_ENV: poisoned, "ASYNCJOB_WATCHDOG_TIMEOUT": "2s"}
        config = tmp_path / "config.yml"
        config.write_text(yaml.safe_dump(cfg))
        port = free_port()
        log = tmp_path / "frozen.log"
        popen = start_cli([f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"], log, env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, what="ready")
            assert httpx.post(f"{url}/api/v1/targets/basiq/jobs", json={"id": poisoned}).status_code == 202
            code = popen.wait(60)  # the watchdog's 2 s after the first poll
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait(5)
        output = log.read_text()
        assert code == EXIT_CODE, output
        (line,) = [x for x in output.splitlines() if "event loop frozen" in x]
        assert f"job_id={poisoned}" in line and "target=basiq" in line and "freeze()" in line  # the stack

        with exporter(tmp_path, cfg, env=env) as exp:
            assert exp.value("asyncjob_jobs_quarantined", target="basiq") == 1
            assert "quarantined" in exp.api("GET", f"/jobs/basiq/{poisoned}").text
            assert register(exp, healthy) == 202
            wait_for(lambda: tracked(exp).get(healthy) == "succeeded", what="the other job polled")
            time.sleep(3)  # past the watchdog's timeout: the loop still turns
            assert exp.popen.poll() is None and exp.value("asyncjob_jobs_quarantined", target="basiq") == 1
            assert tracked(exp)[poisoned] == "pending"  # never polled
