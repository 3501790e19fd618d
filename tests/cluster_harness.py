"""Replicas of the real CLI sharing one PostgreSQL, as an operator runs them: one YAML with
`state_url` and `state_password_file`, the same file for every replica, each on its own port, all
polling the simulator. What a test asks of them: which replica exports which job, how many shards
each holds, what each counted, who polled a job (the simulator's request log) and what the state
database holds. Every wait is bounded; everything started is stopped on the way out."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from tests.harness import Exporter, Proc, free_port, simulator, start_cli, wait_for, write_secrets
from tests.postgres import Postgres, new_database

TARGET = "basiq-cluster"
SHARDS = 256  # exporter.cluster.schema.DEFAULT_SHARDS: the cluster's virtual shards


@dataclass(frozen=True)
class Timing:
    """The cluster's clocks, short so that a takeover happens within seconds."""

    lease_ttl: float = 4.0
    poll: float = 1.0

    @property
    def renewal(self) -> float:
        return self.lease_ttl / 3  # exporter.cluster.leases.RENEWALS_PER_TTL


def replica_config(
    sim_url: str, secrets: Path, url: str, password_file: Path, timing: Timing
) -> dict[str, Any]:
    return {
        "state_url": url,
        "state_password_file": str(password_file),
        "cluster": {"lease_ttl": f"{timing.lease_ttl:g}s"},
        "global": {"poll_interval": f"{timing.poll:g}s", "retention": "10m"},
        "targets": [
            {
                "name": TARGET,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                # Each replica takes its own token from the token endpoint: the simulator tells the
                # replicas' requests apart by it (GET /_sim/requests).
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                "per_job_series": "all",  # every job's series, whatever their number
                # Stated here, so the test does not lean on Basiq's own map of its codes.
                "cause_map": {"invalid-credentials": "user", "institution-not-available": "provider"},
            }
        ],
    }


@dataclass
class Replica(Exporter):
    name: str = ""  # as the cluster knows it: host:port of --web.listen-address, by default

    def job_ids(self) -> set[str]:
        """The jobs whose per-job series this replica exports now."""
        return {labels["job_id"] for name, labels, _ in self.samples() if name == "asyncjob_job_info"}

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample named `name` whose labels include `labels`."""
        return sum(
            value
            for sample, have, value in self.samples()
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def register(self, job_id: str) -> int:
        """POST /api/v1/targets/{target}/jobs; the answer's status (0: no answer)."""
        try:
            return self.api("POST", f"/api/v1/targets/{TARGET}/jobs", json={"id": job_id}).status_code
        except httpx.HTTPError:
            return 0

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Cluster:
    pg: Postgres
    url: str  # state_url: the cluster's database on `pg`, with no password
    sim: Proc
    config: Path  # the one YAML every replica reads
    timing: Timing
    tmp: Path
    replicas: list[Replica] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack)

    # --- replicas -------------------------------------------------------------------------
    def start(self) -> Replica:
        port = free_port()
        log = self.tmp / f"replica-{port}.log"
        popen = start_cli(
            [f"--config.file={self.config}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=debug"],
            log,
        )
        replica = Replica(popen, log, f"http://127.0.0.1:{port}", config=self.config)
        self.stack.callback(replica.stop)
        self.replicas.append(replica)
        return replica

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def wait_ready(self, replicas: list[Replica], timeout: float = 30.0) -> None:
        def ready(r: Replica) -> bool:
            return r.alive and httpx.get(f"{r.url}/readyz", timeout=1).status_code == 200

        for r in replicas:
            wait_for(partial(ready, r), timeout=timeout, what=f"replica {r.url} ready")
            assert r.alive, r.output()[-2000:]
        for r in replicas:
            r.name = self.member_name(r)

    def member_name(self, replica: Replica) -> str:
        """The replica's name in the cluster (its row in asyncjob.members)."""
        port = replica.url.rsplit(":", 1)[1]

        def named() -> str:
            for name in self.sql("SELECT replica FROM asyncjob.members").splitlines():
                if name.endswith(f":{port}"):
                    return name
            return ""

        found: str = wait_for(named, timeout=20, what=f"{replica.url} in asyncjob.members")
        return found

    def kill(self, replica: Replica) -> None:
        replica.popen.send_signal(signal.SIGKILL)
        replica.popen.wait(10)

    # --- what the replicas show -------------------------------------------------------------
    def shards_held(self, replicas: list[Replica] | None = None) -> list[int]:
        return [int(r.total("asyncjob_cluster_shards_held")) for r in (replicas or self.live())]

    def settled(self, replicas: list[Replica] | None = None) -> bool:
        """Every replica sees them all, every shard is held, each holds about its share."""
        replicas = replicas or self.live()
        held = self.shards_held(replicas)
        fair = SHARDS / len(replicas)
        return (
            all(r.total("asyncjob_cluster_replicas") == len(replicas) for r in replicas)
            and sum(held) == SHARDS
            and all(0.6 * fair <= h <= 1.4 * fair for h in held)
            and self.sql("SELECT count(*) FROM asyncjob.leases WHERE expires_at > now()") == str(SHARDS)
        )

    def wait_settled(self, replicas: list[Replica] | None = None, timeout: float = 40.0) -> None:
        wait_for(
            lambda: self.settled(replicas),
            timeout=timeout,
            interval=0.3,
            what=f"the shards shared out: {self.describe()}",
        )

    def exporters(self, replicas: list[Replica] | None = None) -> dict[str, list[Replica]]:
        """Each job exported now, with the replicas exporting it."""
        out: dict[str, list[Replica]] = {}
        for r in replicas or self.live():
            for job_id in r.job_ids():
                out.setdefault(job_id, []).append(r)
        return out

    def exported_once(self, job_ids: set[str], replicas: list[Replica] | None = None) -> bool:
        """Every job of `job_ids` exported, each by exactly one replica."""
        by_job = self.exporters(replicas)
        return all(len(by_job.get(job_id, [])) == 1 for job_id in job_ids)

    def finished(self, replicas: list[Replica] | None = None) -> float:
        """Jobs counted as finished, summed over the replicas (asyncjob_jobs_finished_total)."""
        return sum(r.total("asyncjob_jobs_finished_total", target=TARGET) for r in replicas or self.live())

    def describe(self) -> str:
        parts = []
        for r in self.replicas:
            if not r.alive:
                parts.append(f"{r.name or r.url}: exited {r.popen.returncode}")
                continue
            try:
                parts.append(
                    f"{r.name or r.url}: shards {int(r.total('asyncjob_cluster_shards_held'))}, "
                    f"replicas {int(r.total('asyncjob_cluster_replicas'))}, jobs {len(r.job_ids())}, "
                    f"reachable {int(r.total('asyncjob_cluster_state_reachable'))}"
                )
            except (httpx.HTTPError, OSError) as e:
                parts.append(f"{r.name or r.url}: {e}")
        return "; ".join(parts)

    def output(self) -> str:
        """What a failing test shows: each replica's state and the tail of its log."""
        logs = [f"--- {r.name or r.url} ---\n{quiet(r.output())[-4000:]}" for r in self.replicas]
        return f"{self.describe()}\n" + "\n".join(logs)

    # --- the simulator and the database ------------------------------------------------------
    def create(self, count: int, **spec: Any) -> list[str]:
        """`count` Basiq jobs in the simulator; their ids."""
        r = httpx.post(
            f"{self.sim.url}/_sim/jobs", json={"provider": "basiq", "count": count, **spec}, timeout=10
        )
        r.raise_for_status()
        return [str(i) for i in r.json()["ids"]]

    def polls(self) -> list[tuple[float, str, str]]:
        """Every poll of a job the simulator answered, oldest first: (at, job id, client)."""
        answer = httpx.get(f"{self.sim.url}/_sim/requests", timeout=10).json()
        return [(r["at"], r["job_id"], r["client"]) for r in answer["requests"] if r["key"] == "basiq.job"]

    def sql(self, query: str) -> str:
        return self.pg.psql(query, database=self.url.rsplit("/", 1)[1])

    def rows(self, job_ids: set[str]) -> dict[str, tuple[str, str]]:
        """The jobs' rows in the state database: job id -> (written_by, status)."""
        listed = ",".join(f"'{job_id}'" for job_id in sorted(job_ids))
        out = self.sql(
            "SELECT job_id, written_by, data::json->'job'->>'status' FROM asyncjob.jobs "
            f"WHERE target = '{TARGET}' AND job_id IN ({listed})"
        )
        rows = {}
        for line in out.splitlines():
            job_id, written_by, status = line.split("|")
            rows[job_id] = (written_by, status)
        return rows

    @contextmanager
    def writes_held(self) -> Iterator[None]:
        """Every replica's job writes wait while the block runs (a lock on the jobs' table): a
        replica's write transaction is caught in its middle, after its fencing took its leases."""
        with psycopg.connect(self.url, password=self.pg.password_file.read_text().strip()) as conn:
            conn.execute("LOCK TABLE asyncjob.jobs IN SHARE MODE")
            yield
            conn.rollback()

    def writing(self, replica: Replica) -> bool:
        """Whether `replica` is inside a write transaction, waiting for the jobs' table."""
        count = self.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            f"AND application_name = 'asyncjob-exporter {replica.name}'"
        )
        return count != "0"

    def owners(self) -> dict[int, str]:
        """Each virtual shard's lease holder now (shards with no valid lease left out)."""
        out = self.sql(
            "SELECT shard, owner FROM asyncjob.leases WHERE expires_at > now() AND owner IS NOT NULL"
        )
        return {int(s): owner for s, owner in (line.split("|") for line in out.splitlines())}


@contextmanager
def cluster(tmp: Path, pg: Postgres, replicas: int = 3, timing: Timing | None = None) -> Iterator[Cluster]:
    """The simulator and `replicas` replicas sharing a new database of `pg`, every shard held
    and shared out once it returns. Everything is stopped on the way out."""
    timing = timing or Timing()
    dsn = new_database(pg)
    url, _, query = dsn.partition("?")
    password_file = tmp / "pg-password"
    password_file.write_text(query.removeprefix("password=") + "\n")
    secrets = write_secrets(tmp)
    with ExitStack() as stack:
        sim = stack.enter_context(simulator(tmp, step_seconds=1.0))
        config = tmp / "asyncjob.yml"
        config.write_text(
            yaml.safe_dump(replica_config(sim.url, secrets, url, password_file, timing), sort_keys=False)
        )
        c = Cluster(pg, url, sim, config, timing, tmp)
        stack.enter_context(c.stack)
        started = [c.start() for _ in range(replicas)]
        try:
            c.wait_ready(started)
            c.wait_settled(started)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{c.output()}") from None
        yield c


def settle_time(timing: Timing) -> float:
    """How long the shards may take to move after a change of membership: a dead replica's
    heartbeat and leases lapse (one TTL), the next renewal round claims them (a third of it),
    and the load and first poll follow; doubled for a busy machine."""
    return 2 * (timing.lease_ttl + timing.renewal + 2 * timing.poll) + 5


def quiet(log: str) -> str:
    """A replica's log without its poll cycles (a line every poll)."""
    return "\n".join(line for line in log.splitlines() if 'msg="poll cycle"' not in line)
