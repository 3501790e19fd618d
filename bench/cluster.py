"""The cluster mode as users run it, beside one SQLite process in the same run: the real CLI in
its own processes, the simulator over loopback holding N running Basiq jobs (a static list of
every id, as bench/poll.py's fleet), and Debian's PostgreSQL (tests/postgres.py: fsync and
synchronous_commit on, pg_stat_statements loaded to count the statements).

Each mode in turn, on the same jobs of the same simulator:
- the first full poll: from the processes' start until every job was answered once;
- CPU per poll: the exporter processes' CPU (user + system, /proc) over two poll intervals,
  divided by the poll requests they sent meanwhile (PostgreSQL's own CPU beside it);
- registrations at concurrency 64 (spread over the replicas), each 202 after its commit;
then, in the cluster only: `kill -9` of a replica until every job it worked was polled again by
another (read from the survivors' logs: the first poll cycle that began after the shards were
taken in), and the statements sent to PostgreSQL per poll cycle.

Its section of docs/benchmarks.md is written by bench/cluster_report.py.

    python -m bench --only cluster      # 30,000 jobs, about 5 minutes
    python -m bench.cluster --quick     # 60 jobs, under a minute: the smoke test's size
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from bench import fleet, registration
from bench.machine import load_average
from exporter.cluster.leases import DEFAULT_LEASE_TTL
from tests.harness import free_port, simulator, start_cli, write_secrets
from tests.postgres import Postgres, postgres

TARGET = "polled"
REGISTERED = "registrations"
N_JOBS = 30_000
REPLICAS = 3
POLL_INTERVAL = 30.0
# The default (exporter.cluster.leases): what the replicas run with unless told otherwise.
LEASE_TTL = DEFAULT_LEASE_TTL
CONCURRENCY = 64
REGISTRATION_SECONDS = 10.0
SHARDS = 256  # the schema's default (exporter.cluster.schema)

# Targets (issue 22, point 9), each against the SQLite process of the same run.
CPU_MAX_RATIO = 1.2
REGISTRATIONS_MIN_RATIO, REGISTRATION_P99_MS = 0.5, 100.0

Log = Callable[[str], None]
_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", re.M)


# --- processes ---------------------------------------------------------------------------
@dataclass
class Replica:
    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None


def start(tmp: Path, config: dict[str, Any], name: str) -> Replica:
    port = free_port()
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = tmp / f"{name}.log"
    # Debug: the scheduler's one line a poll cycle (when it began, how many jobs) is what the
    # failover figure is read from; debug adds nothing a job to what info logs.
    args = [f"--config.file={path}", f"--web.listen-address=127.0.0.1:{port}"]
    popen = start_cli([*args, "--log.level=debug", "--log.format=json"], log)
    return Replica(popen, log, port)


@contextlib.contextmanager
def running(replicas: list[Replica]) -> Iterator[list[Replica]]:
    try:
        yield replicas
    finally:
        for r in replicas:
            if r.alive():
                r.popen.terminate()
        for r in replicas:
            try:
                r.popen.wait(20)
            except subprocess.TimeoutExpired:
                r.popen.kill()
                r.popen.wait(5)


def sums(url: str) -> dict[str, float]:
    """The samples the benchmark follows, summed over their series (exceptions' /metrics is small)."""
    out = {"running": 0.0, "polls": 0.0, "shards_held": 0.0, "series": 0.0}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for name, labels, value in _SAMPLE.findall(text):
        out["series"] += 1
        if name == "asyncjob_jobs" and 'status="running"' in labels:
            out["running"] += float(value)
        elif name == "asyncjob_poll_requests_total" and f'target="{TARGET}"' in labels:
            out["polls"] += float(value)
        elif name == "asyncjob_cluster_shards_held":
            out["shards_held"] += float(value)
    return out


def total(replicas: list[Replica], key: str) -> float:
    return sum(sums(r.url)[key] for r in replicas if r.alive())


def cpu_seconds(pid: int) -> float:
    user, system = registration.cpu_seconds(pid)
    return user + system


def postgres_cpu_seconds(pg: Postgres) -> float:
    """CPU of the server: the postmaster with the children it reaped (connections that ended),
    and every live child (backends, walwriter, checkpointer, …), from /proc."""
    assert pg.proc is not None
    root = pg.proc.pid
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{root}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            f = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(f[1]) == root:
                ticks += int(f[11]) + int(f[12])
    return ticks / tick


def rss_bytes(replicas: list[Replica]) -> list[int]:
    return [fleet.rss_bytes(r.popen.pid) for r in replicas if r.alive()]


# --- PostgreSQL's side -------------------------------------------------------------------
def statements(pg: Postgres) -> dict[int, tuple[int, int, str]]:
    """pg_stat_statements of the state database: queryid -> (calls, rows, query); the
    benchmark's own reads left out."""
    with psycopg.connect(pg.dsn) as conn:
        rows = conn.execute(
            "SELECT queryid, calls, rows, query FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
        commits = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    # Another user's statements (the superuser's CREATE EXTENSION) come without an id.
    out = {
        int(q): (int(c), int(n), str(text))
        for q, c, n, text in rows
        if q is not None and "pg_stat" not in text
    }
    out[0] = (int(commits[0]) if commits else 0, 0, "(transactions committed: pg_stat_database)")
    return out


def statements_between(
    before: dict[int, tuple[int, int, str]], after: dict[int, tuple[int, int, str]]
) -> dict[str, Any]:
    """What was sent between two readings: calls and rows of each statement, the most called first."""
    each: list[dict[str, Any]] = []
    for q, (calls, rows, text) in after.items():
        if q == 0:
            continue
        c0, r0, _ = before.get(q, (0, 0, ""))
        if calls > c0:
            each.append({"calls": calls - c0, "rows": rows - r0, "query": " ".join(text.split())[:110]})
    each.sort(key=lambda s: -s["calls"])
    job_writes = [s for s in each if s["query"].startswith("INSERT INTO asyncjob.jobs")]
    return {
        "calls": sum(s["calls"] for s in each),
        "commits": after[0][0] - before.get(0, (0, 0, ""))[0],
        "job_write_calls": sum(s["calls"] for s in job_writes),
        "job_rows_written": sum(s["rows"] for s in job_writes),
        "top": each[:12],
    }


# --- measurements ------------------------------------------------------------------------
def wait_first_full_poll(
    replicas: list[Replica], n: int, started: float, cluster: bool, timeout: float
) -> float:
    """Seconds from `started` until the replicas together export every job as answered (and,
    in the cluster, every shard is held)."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        if not all(r.alive() for r in replicas):
            raise RuntimeError(f"an exporter exited: {replicas[0].log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            s = [sums(r.url) for r in replicas]
            if sum(x["running"] for x in s) >= n and (
                not cluster or sum(x["shards_held"] for x in s) >= SHARDS
            ):
                return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"not every one of {n} jobs was answered within {timeout:.0f} s")


def steady(replicas: list[Replica], seconds: float, pg: Postgres | None) -> dict[str, Any]:
    """CPU per poll over `seconds` of polling, every job already answered once."""
    pids = [r.popen.pid for r in replicas]
    polls, cpu = total(replicas, "polls"), sum(cpu_seconds(p) for p in pids)
    pg_cpu, pg_before = (postgres_cpu_seconds(pg), statements(pg)) if pg else (0.0, {})
    t = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t
    cpu, polls = sum(cpu_seconds(p) for p in pids) - cpu, total(replicas, "polls") - polls
    out: dict[str, Any] = {
        "seconds": elapsed,
        "polls": polls,
        "cpu_s": cpu,
        "cpu_ms_per_poll": cpu / max(polls, 1) * 1000,
        "load_average": load_average(),
    }
    if pg is not None:
        out["postgres_cpu_s"] = postgres_cpu_seconds(pg) - pg_cpu
        out["postgres_cpu_ms_per_poll"] = out["postgres_cpu_s"] / max(polls, 1) * 1000
        out["statements"] = statements_between(pg_before, statements(pg))
    return out


def registrations(
    replicas: list[Replica], seconds: float, concurrency: int, prefix: str, pg: Postgres | None
) -> dict[str, Any]:
    """Registrations for `seconds` over `concurrency` connections spread over the replicas."""
    ports = [r.port for r in replicas]
    asyncio.run(registration.drive(ports, REGISTERED, 500, concurrency, f"warm-{prefix}"))
    pids = [r.popen.pid for r in replicas]
    cpu = sum(cpu_seconds(p) for p in pids)
    pg_cpu, pg_before = (postgres_cpu_seconds(pg), statements(pg)) if pg else (0.0, {})
    out = asyncio.run(registration.drive(ports, REGISTERED, 0, concurrency, prefix, seconds))
    done = max(out["requests"], 1)
    out["cpu_us_per_registration"] = (sum(cpu_seconds(p) for p in pids) - cpu) / done * 1e6
    if pg is not None:
        out["postgres_cpu_us_per_registration"] = (postgres_cpu_seconds(pg) - pg_cpu) / done * 1e6
        out["statements"] = statements_between(pg_before, statements(pg))
    out["load_average"] = load_average()
    return out


def _log_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "ts" in record:
                ts = datetime.datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
                record["at"] = ts.replace(tzinfo=datetime.UTC).timestamp()
                yield record


def taken_in(records: list[dict[str, Any]], since: float) -> list[float]:
    """When shards holding jobs were taken in after `since` (shards without jobs need no poll)."""
    return [
        r["at"]
        for r in records
        if r.get("msg") == "cluster shards taken in" and r["at"] >= since and r.get("jobs")
    ]


def polled_again(replica: Replica, since: float) -> tuple[float, float] | None:
    """(when its last shards after `since` were taken in, when the first poll cycle that began
    after that ended), from the replica's log; None until both happened (or it took nothing)."""
    records = list(_log_lines(replica.log))
    taken = taken_in(records, since)
    if not taken:
        return None
    cycles = [
        r["at"]
        for r in records
        if r.get("msg") == "poll cycle"
        and r.get("target") == TARGET
        and r["at"] - float(r.get("seconds", 0)) >= taken[-1]
    ]
    return (taken[-1], cycles[0]) if cycles else None


def warnings(replicas: list[Replica]) -> dict[str, int]:
    """What the replicas logged as warnings and errors, by message: the run's surprises."""
    seen: dict[str, int] = {}
    for r in replicas:
        for rec in _log_lines(r.log):
            if rec.get("level") in ("warning", "error", "critical"):
                key = f"{rec['level']}: {rec.get('msg')}"
                seen[key] = seen.get(key, 0) + 1
    return dict(sorted(seen.items(), key=lambda kv: -kv[1]))


def kill_one(
    replicas: list[Replica], n: int, lease_ttl: float, poll_interval: float, log: Log
) -> dict[str, Any]:
    """kill -9 of the first replica; until every job it worked is polled again by the others."""
    victim, survivors = replicas[0], replicas[1:]
    its_jobs = sums(victim.url)["running"]
    rss_before = sum(rss_bytes(survivors))
    killed = time.time()
    os.kill(victim.popen.pid, signal.SIGKILL)
    victim.popen.wait(10)
    log(f"  cluster: killed a replica working {its_jobs:,.0f} jobs")
    deadline = time.monotonic() + 3 * lease_ttl + 3 * poll_interval + 120
    taken: dict[int, tuple[float, float]] = {}
    while time.monotonic() < deadline:
        # Every shard held and every job exported again: each take-in is logged by then (the
        # log line follows the jobs' adoption on the event loop, with no await between).
        if total(survivors, "shards_held") >= SHARDS and total(survivors, "running") >= n:
            taken = {i: t for i, r in enumerate(survivors) if (t := polled_again(r, killed)) is not None}
            takers = [r for r in survivors if taken_in(list(_log_lines(r.log)), killed)]
            if taken and len(taken) == len(takers):
                break
        time.sleep(0.5)
    else:
        raise RuntimeError("the dead replica's jobs were not all polled again in time")
    return {
        "lease_ttl_s": lease_ttl,
        "poll_interval_s": poll_interval,
        "victim_jobs": its_jobs,
        "taken_over_s": max(t for t, _ in taken.values()) - killed,
        "polled_again_s": max(p for _, p in taken.values()) - killed,
        "survivors_running": total(survivors, "running"),
        # What the survivors' memory grew by with the jobs they took in: a replica's RSS a job.
        "survivors_rss_growth_bytes": sum(rss_bytes(survivors)) - rss_before,
        "jobs": n,
    }


# --- the run -----------------------------------------------------------------------------
def config(sim_url: str, secrets: Path, ids: list[str], poll_interval: float) -> dict[str, Any]:
    basiq = {
        "provider": "basiq",
        "base_url": f"{sim_url}/basiq",
        "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
    }
    return {
        "global": {
            "poll_interval": f"{poll_interval:g}s",
            "max_jobs_per_target": 1_000_000,
            # What `auto` gives a target past 10,000 jobs, set so that replicas of about 10,000
            # each do not each pick their own mode: every mode serves the same.
            "per_job_series": "exceptions",
        },
        "targets": [{"name": TARGET, **basiq, "jobs": ids}, {"name": REGISTERED, **basiq}],
    }


def mode(
    replicas: list[Replica],
    n: int,
    started: float,
    seconds: float,
    reg_seconds: float,
    concurrency: int,
    pg: Postgres | None,
    log: Log,
    name: str,
    before: tuple[dict[int, tuple[int, int, str]], float] | None = None,
) -> dict[str, Any]:
    """One mode's figures; `before`: PostgreSQL's statements and CPU read before the replicas started."""
    out: dict[str, Any] = {"processes": len(replicas), "load_average_at_start": load_average()}
    out["first_full_poll_s"] = wait_first_full_poll(replicas, n, started, pg is not None, timeout=600)
    # The processes' CPU since they started: the first full poll with the start-up before it.
    out["first_full_poll_cpu_s"] = sum(cpu_seconds(r.popen.pid) for r in replicas)
    if pg is not None and before is not None:
        out["first_full_poll_statements"] = statements_between(before[0], statements(pg))
        out["first_full_poll_postgres_cpu_s"] = postgres_cpu_seconds(pg) - before[1]
    log(f"  cluster: {name}: every job answered after {out['first_full_poll_s']:.1f} s")
    time.sleep(min(5.0, seconds / 4))  # the first cycle's commits
    out["steady"] = steady(replicas, seconds, pg)
    log(f"  cluster: {name}: {out['steady']['cpu_ms_per_poll']:.3f} ms of CPU a poll")
    out["rss_bytes"] = rss_bytes(replicas)
    out["series"] = [sums(r.url)["series"] for r in replicas]
    out["registrations"] = registrations(replicas, reg_seconds, concurrency, name, pg)
    log(f"  cluster: {name}: {out['registrations']['per_second']:,.0f} registrations/s")
    return out


def run(
    n_jobs: int = N_JOBS,
    replicas: int = REPLICAS,
    poll_interval: float = POLL_INTERVAL,
    lease_ttl: float = LEASE_TTL,
    registration_seconds: float = REGISTRATION_SECONDS,
    concurrency: int = CONCURRENCY,
    log: Log = print,
) -> dict[str, Any]:
    window = 2 * poll_interval
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        postgres({"shared_preload_libraries": "pg_stat_statements"}) as pg,
    ):
        tmp = Path(tmp_name)
        pg.psql("CREATE EXTENSION pg_stat_statements")
        with simulator(tmp, step_seconds=fleet.STEP_SECONDS, extra=["--log.level=warn"]) as sim:
            secrets = write_secrets(tmp)
            log(f"  cluster: {n_jobs:,} running jobs in the simulator")
            ids = fleet.create_jobs(sim.url, n_jobs)
            base = config(sim.url, secrets, ids, poll_interval)
            result: dict[str, Any] = {
                "jobs": n_jobs,
                "poll_interval_s": poll_interval,
                "concurrency": concurrency,
            }

            started = time.monotonic()
            with running([start(tmp, {**base, "state_file": str(tmp / "state.db")}, "sqlite")]) as one:
                result["sqlite"] = mode(
                    one, n_jobs, started, window, registration_seconds, concurrency, None, log, "sqlite"
                )

            cluster = {
                **base,
                "state_url": pg.url,
                "state_password_file": str(pg.password_file),
                "cluster": {"lease_ttl": f"{lease_ttl:g}s"},
            }
            before, started = (statements(pg), postgres_cpu_seconds(pg)), time.monotonic()
            with running([start(tmp, cluster, f"replica-{i}") for i in range(replicas)]) as group:
                result["cluster"] = mode(
                    group,
                    n_jobs,
                    started,
                    window,
                    registration_seconds,
                    concurrency,
                    pg,
                    log,
                    f"{replicas} replicas",
                    before,
                )
                # The registered ids are unknown to the simulator: dropped at their first poll.
                time.sleep(min(poll_interval, 5.0))
                result["cluster"]["kill"] = kill_one(group, n_jobs, lease_ttl, poll_interval, log)
                result["cluster"]["log_warnings"] = warnings(group)
                result["cluster"]["postgres_settings"] = pg.psql(
                    "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings "
                    "WHERE name IN ('fsync', 'synchronous_commit', 'server_version')"
                )
    return result


QUICK: dict[str, Any] = {
    "n_jobs": 60,
    "poll_interval": 1.0,
    "lease_ttl": 3.0,
    "registration_seconds": 0.5,
    "concurrency": 6,
}


def main() -> None:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument(
        "--quick", action="store_true", help="60 jobs, 1 s polls, 3 s leases: the smoke test's size"
    )
    args = p.parse_args()
    result = run(**QUICK, log=lambda m: print(m, file=sys.stderr)) if args.quick else run()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
