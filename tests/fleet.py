"""A labelled fleet of jobs on every provider of the simulator, run through the exporter (with a state
file, across one `kill -9`), a real Prometheus evaluating the shipped rules and a real Alertmanager.

Every job carries the label a person would give it (healthy, a provider's failure, the end user's
failure, stuck, waiting for the end user, week-old history, a multi-channel sync, a rerun, a missed
final event, a closed or idle connection, a lapsed consent on another channel, a state no one
documented, a success with failing records: the application's data on WillSuite, an export API's own
rows on a generic target) and so the pages it must raise: a page is an alert of severity warning or critical,
firing. Beside the jobs, targets and sources page too: a Basiq user that no longer exists, and two
Basiq targets refused by the token endpoint (a disabled account; its rate limit), and a mass outage
(a WillSuite account failing fifty exports within a minute) that pages once, by its failure rate.
Every expected page is in one place: expected_pages(). tests/e2e/test_detection.py asserts the pages are exactly
those; bench/detection.py reports precision, recall and time to page from the same run.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from exporter.simulator import basiq as sim_basiq
from exporter.simulator.demo import exports_target, oxlin_auth, willsuite_auth
from tests.harness import ROOT, Exporter, free_port, simulator, start_cli, wait_for, write_secrets
from tests.realstack import (
    Binaries,
    Prometheus,
    Webhook,
    alertmanager,
    prometheus,
    rules_with_short_for,
    webhook,
)

RULES = ROOT / "alerts" / "asyncjob.rules.yml"
SCRAPE_JOB = "asyncjob"
STEP = 1.0  # seconds per simulated step
SLOW_STEP = 6.0  # healthy jobs that run across the restart, moving every SLOW_STEP
POLL = 1.0
STUCK_AFTER = 10.0
# The shipped `for:` durations are minutes; here they are as many two-second spans (a 5m `for` is
# 10 s): long enough that a restart's gap of scrapes (a few seconds) pages nobody.
FOR_SCALE = 1 / 30
# The exporter's own health alerts keep a third of their shipped `for` (a 5m `for` is 30 s): the
# restart is part of the run, and a loaded machine may take several seconds to start Python again.
HEALTH_ALERTS = ("AsyncJobExporterDown", "AsyncJobTargetDown", "AsyncJobPollingStale")
HEALTH_FOR_SCALE = 1 / 10
PAGE = ("warning", "critical")
WEEK_OLD = 6 * 86400.0  # inside Basiq's 7-day user lists

BASIQ, AIMS, WILL, OXLIN, GENERIC = "basiq", "aims360", "willsuite", "oxlin", "generic"
# A second WillSuite account, whose exports all fail at once: a mass outage of its own target.
WILL_OUTAGE = "willsuite-exports"
AIMS_REPORT, AIMS_IMPORT = "Reports/Open Orders Report", "Imports/Customer Import"
WILL_EXPORT = "export"
GENERIC_EXPORT = "csv_export"
MASS_OUTAGE = 50  # jobs one provider fails within a minute

PROVIDER_OF = {
    BASIQ: "basiq",
    AIMS: "aims360",
    WILL: "willsuite",
    WILL_OUTAGE: "willsuite",
    OXLIN: "oxlin",
    GENERIC: "generic",
}

# Basiq targets the token endpoint refuses with each of its 403s, and a user that does not exist.
BASIQ_DISABLED, BASIQ_THROTTLED = "basiq-disabled", "basiq-throttled"
GONE_USER = "0d9e7c"

# The pages that are not about one job of the fleet: (alertname, target, job_type or source).
# With the jobs' own `pages`, the whole of what must page (expected_pages): one list, one place.
PAGES_BEYOND_JOBS = {
    # The one job type whose failures are the provider's, and many: the rate pages, once (its
    # failed jobs, held back while it fires, do not).
    ("AsyncJobFailureRateHigh", AIMS, AIMS_IMPORT),
    # The mass outage: fifty failed exports, one page.
    ("AsyncJobFailureRateHigh", WILL_OUTAGE, WILL_EXPORT),
    # Basiq answers 404 "Requested user does not exist" for a configured user.
    ("AsyncJobSourceMissing", BASIQ, f"user {GONE_USER}"),
    # POST /token answers 403 "Your account has been disabled" (auth) / "Invalid request" (its
    # rate limit, backed off from): neither target can poll.
    ("AsyncJobTargetDown", BASIQ_DISABLED, ""),
    ("AsyncJobTargetDown", BASIQ_THROTTLED, ""),
}
# Info alerts (never pages) not about one job: for the application team, or for whoever maps states.
INFOS_BEYOND_JOBS = {
    # Statement jobs fail mostly for wrong passwords; a third of the Oxlin syncs for the user
    # (AUTH_FAILED, a closed connection).
    ("AsyncJobUserFailureRateHigh", BASIQ, "statement"),
    ("AsyncJobUserFailureRateHigh", OXLIN, "synchronisation"),
    # AIMS360 jobs held in a state it does not document.
    ("AsyncJobStateUndocumented", AIMS, AIMS_REPORT),
}
# The poll errors each refused target must count (and the other must not).
REFUSALS = {BASIQ_DISABLED: "auth", BASIQ_THROTTLED: "http_429"}


@dataclass
class Labelled:
    """One job of the fleet: what it is, and what it must raise."""

    target: str
    key: str  # the exporter's job id; for Oxlin the connection (a sync's id is the exporter's own)
    label: str
    job_type: str
    wave: int  # 1: before the restart, 2: after it
    pages: tuple[str, ...] = ()  # alert names that must page for this job
    infos: tuple[str, ...] = ()  # info alerts expected for it (never pages)
    finishes: tuple[str, ...] = ()  # outcomes counted in asyncjob_jobs_finished_total, in order
    after_restart: bool = False  # its outcomes come after the restart (counted by the new process)
    truth: float | None = None  # when a page's condition became true at the provider


@dataclass
class Run:
    """What one run of the fleet saw."""

    fleet: list[Labelled]
    expected_pages: set[tuple[str, str, str]]  # (alertname, target, job key or job_type)
    pages: dict[tuple[str, str, str], float]  # first received at the webhook
    infos: dict[tuple[str, str, str], float]
    pending_pages: set[tuple[str, str, str]]  # pages pending in Prometheus at the end (would fire)
    counted_before: Counter[tuple[str, str]]  # (target, status) finished, by the first process
    counted_after: Counter[tuple[str, str]]  # by the second one
    restart_seconds: float
    truths: dict[tuple[str, str, str], float] = field(default_factory=dict)
    for_seconds: dict[str, float] = field(default_factory=dict)
    poll_errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (target, reason), at the end

    def expected_counts(self, after_restart: bool) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for job in self.fleet:
            if job.after_restart == after_restart:
                for status in job.finishes:
                    out[(job.target, status)] += 1
        return out


def _key(labels: dict[str, str]) -> tuple[str, str, str]:
    target = labels.get("target", "")
    if "job_id" in labels:
        job = labels["job_id"]
        return labels["alertname"], target, job.rpartition(":")[0] if target == OXLIN else job
    rest = labels.get("job_type", labels.get("connection_id", labels.get("source", "")))
    return labels["alertname"], target, rest


def config(sim_url: str, secrets: Path, state: Path, per_job_series: str = "all") -> dict[str, Any]:
    return {
        "global": {
            "poll_interval": f"{POLL:g}s",
            "stuck_after": f"{STUCK_AFTER:g}s",
            "max_duration": "1h",
            "retention": "1h",
            "per_job_series": per_job_series,
        },
        "state_file": str(state),
        "targets": [
            {
                "name": BASIQ,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                # Discovery: a week of each user's jobs; the third user no longer exists.
                "users": ["ea3a81", "b71f02", GONE_USER],
            },
            *(
                {
                    "name": name,
                    "provider": "basiq",
                    "base_url": f"{sim_url}/basiq",
                    "auth": {"type": "basiq", "api_key_file": str(secrets / name)},
                    "users": ["ea3a81"],
                }
                for name in (BASIQ_DISABLED, BASIQ_THROTTLED)
            ),
            {
                "name": AIMS,
                "provider": "aims360",
                "base_url": f"{sim_url}/aims360",
                "auth": {"type": "bearer", "token_file": str(secrets / "bearer_token")},
                "auto_rerun": True,
                "max_reruns": 1,
            },
            {
                "name": WILL,
                "provider": "willsuite",
                "base_url": f"{sim_url}/willsuite/engine/api",
                "auth": willsuite_auth(sim_url, secrets),
                "poll_interval": f"{POLL:g}s",  # below WillSuite's advice: honoured, with a warning
            },
            {
                "name": WILL_OUTAGE,
                "provider": "willsuite",
                "base_url": f"{sim_url}/willsuite/engine/api",
                "auth": willsuite_auth(sim_url, secrets),
                "poll_interval": f"{POLL:g}s",
            },
            {
                "name": OXLIN,
                "provider": "oxlin",
                "base_url": f"{sim_url}/oxlin",
                "auth": oxlin_auth(sim_url, secrets),
                "queues": ["20"],
            },
            # An export API read through a field map (SPEC §4): its rejected rows are its own
            # (no error code, no cause of the end user), so an operator's.
            exports_target(sim_url, secrets, GENERIC),
        ],
    }


class Fleet:
    """Creates the labelled jobs in the simulator (and registers those not discovered)."""

    def __init__(self, sim_url: str, exporter_url: str) -> None:
        self.sim_url = sim_url
        self.exporter_url = exporter_url
        self.jobs: list[Labelled] = []
        self._client = httpx.Client(timeout=10)
        self._connections = iter(range(7100, 7999))

    def close(self) -> None:
        self._client.close()

    def _create(self, provider: str, **spec: Any) -> dict[str, Any]:
        r = self._client.post(f"{self.sim_url}/_sim/jobs", json={"provider": provider, **spec})
        r.raise_for_status()
        created: dict[str, Any] = r.json()
        return created

    def _register(self, target: str, job_id: str) -> None:
        r = self._client.post(f"{self.exporter_url}/api/v1/targets/{target}/jobs", json={"id": job_id})
        assert r.status_code == 202, r.text

    def add(
        self,
        target: str,
        label: str,
        n: int,
        spec: dict[str, Any],
        wave: int,
        pages: tuple[str, ...] = (),
        infos: tuple[str, ...] = (),
        finishes: tuple[str, ...] = (),
        after_restart: bool = False,
        truth: Callable[[float], float] | None = None,
        register: bool = False,
    ) -> None:
        provider = PROVIDER_OF[target]
        for _ in range(n):
            this = dict(spec)
            if target == OXLIN:
                this["connection"] = str(next(self._connections))
            made = self._create(provider, **{"step_seconds": STEP, **this})
            key = this["connection"] if target == OXLIN else str(made["id"])
            if register:
                self._register(target, key)
            self.jobs.append(
                Labelled(
                    target,
                    key,
                    label,
                    str(this.get("job_type", "")),
                    wave,
                    pages,
                    infos,
                    finishes,
                    after_restart or wave == 2,
                    truth(float(made["created"])) if truth else None,
                )
            )

    def wave_one(self) -> None:
        F, S = "failed", "succeeded"
        fails_at = lambda c: c + 2 * STEP  # noqa: E731  (fail_step 1 runs its full length)
        stuck_at = lambda c: c + STEP + STUCK_AFTER  # noqa: E731  (stops moving after one step)
        conn = {"job_type": "connection"}
        # Basiq: discovered through the users' job lists.
        self.add(BASIQ, "healthy", 40, {**conn, "scenario": "success"}, 1, finishes=(S,))
        self.add(
            BASIQ, "healthy, slow", 6, {**conn, "scenario": "success", "step_seconds": SLOW_STEP}, 1,
            finishes=(S,), after_restart=True,
        )  # fmt: skip
        for code in ("connector-error", "institution-not-available", "maintenance"):
            self.add(
                BASIQ, "provider failure", 2, {**conn, "scenario": "fail", "error_code": code}, 1,
                pages=("AsyncJobFailed",), finishes=(F,), truth=fails_at,
            )  # fmt: skip
        for code in ("invalid-credentials", "user-action-required"):
            self.add(
                BASIQ, "user failure", 2, {**conn, "scenario": "fail", "error_code": code}, 1, finishes=(F,)
            )
        self.add(
            BASIQ, "MFA expired", 4, {**conn, "scenario": "mfa", "mfa_expiry": 2 * STEP}, 1, finishes=(F,)
        )
        self.add(
            BASIQ, "awaiting the user", 6, {**conn, "scenario": "mfa"}, 1, infos=("AsyncJobAwaitingUser",)
        )
        self.add(
            BASIQ, "stuck", 6, {**conn, "scenario": "stuck"}, 1, pages=("AsyncJobStuck",), truth=stuck_at
        )
        for scenario, error_code in (("fail", "connector-error"), ("success", None)):
            extra = {"error_code": error_code} if error_code else {}
            self.add(
                BASIQ, "week-old history", 10, {**conn, "scenario": scenario, "age": WEEK_OLD, **extra}, 1
            )
        # Statement jobs: most fail for their end users (a burst of wrong passwords): info only.
        stmt = {"job_type": "statement"}
        self.add(BASIQ, "healthy", 4, {**stmt, "scenario": "success"}, 1, finishes=(S,))
        self.add(
            BASIQ, "user failure", 10, {**stmt, "scenario": "fail", "error_code": "invalid-credentials"}, 1,
            finishes=(F,),
        )  # fmt: skip

        # AIMS360: registered ids; failed jobs are rerun once, answering the same id.
        report = {"job_type": AIMS_REPORT}
        self.add(AIMS, "healthy", 40, {**report, "scenario": "success"}, 1, finishes=(S,), register=True)
        self.add(
            AIMS, "rerun, then succeeded", 4,
            {**report, "scenario": "fail", "rerun_new_id": False, "rerun_scenario": "success"}, 1,
            finishes=(F, S), register=True,
        )  # fmt: skip
        # A job the provider failed pages on its own only while its target's failure rate is low:
        # AIMS360's Imports (below) break at the provider for the whole hour of the rate's window,
        # so its failed jobs, of either type, page once, by AsyncJobFailureRateHigh.
        self.add(
            AIMS, "rerun, failed again", 2,
            {**report, "scenario": "fail", "rerun_new_id": False, "rerun_scenario": "fail"}, 1,
            finishes=(F, F), register=True,
        )  # fmt: skip
        self.add(
            AIMS, "stuck", 3, {**report, "scenario": "stuck"}, 1, pages=("AsyncJobStuck",), truth=stuck_at,
            register=True,
        )  # fmt: skip
        # One category breaks at the provider: most of its jobs fail and cannot be rerun.
        imports = {"job_type": AIMS_IMPORT}
        self.add(AIMS, "healthy", 3, {**imports, "scenario": "success"}, 1, finishes=(S,), register=True)
        self.add(
            AIMS, "provider failure", 6, {**imports, "scenario": "fail", "can_rerun": False}, 1,
            finishes=(F,), register=True,
        )  # fmt: skip

        # WillSuite: registered ids.
        imp = {"job_type": "import"}
        self.add(WILL, "healthy", 15, {**imp, "scenario": "success"}, 1, finishes=(S,), register=True)
        self.add(
            WILL, "provider failure", 3, {**imp, "scenario": "fail"}, 1, pages=("AsyncJobFailed",),
            finishes=(F,), truth=fails_at, register=True,
        )  # fmt: skip
        self.add(
            WILL, "stuck", 2, {**imp, "scenario": "stuck"}, 1, pages=("AsyncJobStuck",), truth=stuck_at,
            register=True,
        )  # fmt: skip

        # Oxlin: syncs found in the user's queue, one connection each.
        sync = {"job_type": "synchronisation"}
        self.add(OXLIN, "multi-channel sync", 6, {**sync, "scenario": "success", "per_channel": True}, 1,
                 finishes=(S,))  # fmt: skip
        self.add(OXLIN, "missed final event", 3, {**sync, "scenario": "success", "missed_final": True}, 1,
                 finishes=(S,))  # fmt: skip
        self.add(OXLIN, "user failure", 4, {**sync, "scenario": "fail"}, 1, finishes=(F,))  # AUTH_FAILED
        self.add(
            OXLIN, "awaiting the user", 2, {**sync, "scenario": "mfa"}, 1, infos=("AsyncJobAwaitingUser",)
        )
        self.add(
            OXLIN, "stuck", 1, {**sync, "scenario": "stuck"}, 1, pages=("AsyncJobStuck",), truth=stuck_at
        )
        # The connection is closed (by its user) or left idle as the sync runs: no final event.
        self.add(OXLIN, "connection closed", 2, {**sync, "scenario": "success", "end_status": "CLOSED"}, 1,
                 finishes=(F,))  # fmt: skip
        self.add(OXLIN, "nothing to synchronise", 2, {**sync, "scenario": "success", "end_status": "NONE"}, 1,
                 finishes=(S,))  # fmt: skip
        # The scraping channel fails on its own while the PSD2 channel's consent lapsed: an operator's.
        self.add(
            OXLIN, "lapsed consent on another channel", 2,
            {**sync, "scenario": "fail", "error_code": "SYNC_FAILED", "channels": ["8700"], "lapsed_channel": "8701"},
            1, pages=("AsyncJobFailed",), finishes=(F,), truth=fails_at,
        )  # fmt: skip
        # AIMS360 jobs held in a state it does not document: stuck all the same.
        self.add(
            AIMS, "undocumented state", 2, {**report, "scenario": "stuck", "undocumented_status": "OnHold"}, 1,
            pages=("AsyncJobStuck",), truth=stuck_at, register=True,
        )  # fmt: skip

    def wave_two(self) -> None:
        F, S = "failed", "succeeded"
        fails_at = lambda c: c + 2 * STEP  # noqa: E731
        stuck_at = lambda c: c + STEP + STUCK_AFTER  # noqa: E731
        conn = {"job_type": "connection"}
        self.add(BASIQ, "healthy", 10, {**conn, "scenario": "success"}, 2, finishes=(S,))
        self.add(
            BASIQ, "provider failure", 3, {**conn, "scenario": "fail", "error_code": "connector-error"}, 2,
            pages=("AsyncJobFailed",), finishes=(F,), truth=fails_at,
        )  # fmt: skip
        self.add(
            BASIQ, "user failure", 3, {**conn, "scenario": "fail", "error_code": "invalid-credentials"}, 2,
            finishes=(F,),
        )  # fmt: skip
        self.add(
            BASIQ, "stuck", 2, {**conn, "scenario": "stuck"}, 2, pages=("AsyncJobStuck",), truth=stuck_at,
            register=True,  # a registered id: its progress is the provider's, not the registration's
        )  # fmt: skip
        self.add(
            BASIQ, "week-old history", 5,
            {**conn, "scenario": "fail", "error_code": "connector-error", "age": WEEK_OLD}, 2,
        )  # fmt: skip
        self.add(AIMS, "healthy", 5, {"job_type": AIMS_REPORT, "scenario": "success"}, 2, finishes=(S,),
                 register=True)  # fmt: skip
        # A mass outage: WillSuite fails every export of a minute for its own reasons. One page, by
        # AsyncJobFailureRateHigh (see PAGES_BEYOND_JOBS); no job of it pages on its own.
        self.add(
            WILL_OUTAGE, "mass outage", MASS_OUTAGE, {"job_type": WILL_EXPORT, "scenario": "fail"}, 2,
            finishes=(F,), register=True,
        )  # fmt: skip
        # Succeeded, but a tenth of its records failed: an alert, though nothing about the job is
        # failed, stuck or waiting (in `exceptions` mode its series stay for their records). The
        # records WillSuite refused are the application's data (cause="user"): its team's info
        # alert, not an operator's page. After the restart: its alert has a `for`, which the
        # restart's gap of scrapes would start again.
        self.add(
            WILL, "succeeded with failing records", 2, {"job_type": "import", "scenario": "partial"}, 2,
            infos=("AsyncJobUserRecordsFailing",), finishes=(S,), register=True,
        )  # fmt: skip
        # The same on an export API whose rejected rows say nothing of the end user: 12 % of its
        # rows failed (above the rule's 5 %), an operator's page. Registered as well as listed:
        # it runs three seconds, and must be seen whether or not a list poll falls inside them.
        self.add(
            GENERIC, "succeeded with failing records", 2,
            {"job_type": GENERIC_EXPORT, "scenario": "partial", "total_records": 5000, "failed_records": 600}, 2,
            pages=("AsyncJobRecordsFailing",), finishes=(S,), register=True, truth=lambda c: c + 3 * STEP,
        )  # fmt: skip


def expected_pages(fleet: list[Labelled]) -> set[tuple[str, str, str]]:
    per_job = {(name, job.target, job.key) for job in fleet for name in job.pages}
    return per_job | PAGES_BEYOND_JOBS


def expected_infos(fleet: list[Labelled]) -> set[tuple[str, str, str]]:
    per_job = {(name, job.target, job.key) for job in fleet for name in job.infos}
    return per_job | INFOS_BEYOND_JOBS


def poll_errors(exp: Exporter) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for name, labels, value in exp.samples():
        if name == "asyncjob_poll_errors_total":
            out[(labels["target"], labels["reason"])] += int(value)
    return +out


def fleet_rules() -> str:
    """The shipped rules, expressions and labels as shipped, `for:` shortened (see FOR_SCALE)."""
    short = yaml.safe_load(rules_with_short_for(RULES.read_text(), FOR_SCALE))
    health = yaml.safe_load(rules_with_short_for(RULES.read_text(), HEALTH_FOR_SCALE))
    for group, slower in zip(short["groups"], health["groups"], strict=True):
        for rule, other in zip(group["rules"], slower["rules"], strict=True):
            if rule.get("alert") in HEALTH_ALERTS:
                rule["for"] = other["for"]
    return yaml.safe_dump(short, sort_keys=False, width=1000)


class Restartable:
    """The exporter CLI on a fixed port, so Prometheus keeps scraping the same target after a restart."""

    def __init__(self, tmp: Path, cfg: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "exporter.yml"
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.tmp = tmp
        self.lives = 0
        self.proc: Exporter | None = None

    def start(self) -> Exporter:
        self.lives += 1
        log = self.tmp / f"exporter-{self.lives}.log"
        args = [
            f"--config.file={self.config}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=debug",
        ]
        popen = start_cli(args, log)
        self.proc = Exporter(popen, log, self.url, config=self.config)
        wait_for(
            lambda: popen.poll() is None and httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200,
            timeout=30,
            what=f"exporter ready (life {self.lives})",
        )
        return self.proc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.popen.send_signal(signal.SIGKILL)
        self.proc.popen.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def finished_counts(exp: Exporter) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for name, labels, value in exp.samples():
        if name == "asyncjob_jobs_finished_total":
            out[(labels["target"], labels["status"])] += int(value)
    return +out


def settle(
    read: Callable[[], Counter[tuple[str, str]]], want: Counter[tuple[str, str]], timeout: float
) -> Counter[tuple[str, str]]:
    """`read()` once it equals `want`, else its last value after `timeout` (the caller compares)."""
    deadline = time.monotonic() + timeout
    value = read()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


def alerts_now(prom: Prometheus, state: str) -> set[tuple[str, str, str]]:
    return {
        _key(a["metric"])
        for a in prom.vector(f'ALERTS{{alertstate="{state}", severity=~"{"|".join(PAGE)}"}}')
    }


def _seen(hook: Webhook, pages: bool) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for alert, received in hook.timed_alerts():
        if alert.get("status") != "firing":
            continue
        is_page = alert["labels"].get("severity") in PAGE
        if is_page == pages:
            key = _key(alert["labels"])
            out[key] = min(out.get(key, received), received)
    return out


@contextmanager
def stack(
    tmp: Path, binaries: Binaries, per_job_series: str = "all"
) -> Iterator[tuple[Any, Webhook, Prometheus, Restartable]]:
    secrets = write_secrets(tmp)
    (secrets / BASIQ_DISABLED).write_text(sim_basiq.DISABLED_KEY + "\n")
    (secrets / BASIQ_THROTTLED).write_text(sim_basiq.THROTTLED_KEY + "\n")
    with ExitStack() as es:
        sim = es.enter_context(simulator(tmp, step_seconds=STEP))
        hook = es.enter_context(webhook(tmp))
        am = es.enter_context(alertmanager(tmp, binaries, hook.url))
        exporter = Restartable(tmp, config(sim.url, secrets, tmp / "state.db", per_job_series))
        es.callback(exporter.stop)
        exporter.start()
        instance = exporter.url.removeprefix("http://")
        prom = es.enter_context(prometheus(tmp, binaries, instance, am.url, SCRAPE_JOB))
        wait_for(
            lambda: prom.vector(f'up{{job="{SCRAPE_JOB}", instance="{instance}"}} == 1'),
            timeout=30,
            what="Prometheus scraping the exporter",
        )
        prom.load_rules(fleet_rules())
        yield sim, hook, prom, exporter


def run(
    tmp: Path,
    binaries: Binaries,
    budget: float = 85.0,
    log: Callable[[str], None] = lambda m: None,
    per_job_series: str = "all",
) -> Run:
    """The fleet, wave one, a `kill -9` and a restart on the same state file, wave two; returns once
    every expected page fired (or the budget is spent) and a grace of evaluations passed.
    `per_job_series` is the exporter's mode (`exceptions`: only the jobs that need a person have
    per-job series; the pages must be the same)."""
    with stack(tmp, binaries, per_job_series) as (sim, hook, prom, exporter):
        deadline = time.monotonic() + budget

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        assert exporter.proc is not None
        fleet = Fleet(sim.url, exporter.url)
        try:
            fleet.wave_one()
            log(f"wave one: {len(fleet.jobs)} jobs")
            probe = Run(fleet.jobs, set(), {}, {}, set(), Counter(), Counter(), 0.0)
            before = probe.expected_counts(after_restart=False)
            # Every outcome of wave one is counted (and history is not) before the process dies.
            counted_before = settle(lambda: finished_counts(exporter.proc), before, min(30.0, left()))  # type: ignore[arg-type]
            killed = time.monotonic()
            exporter.kill9()
            exporter.start()
            restart = time.monotonic() - killed
            log(f"restarted after kill -9 in {restart:.1f} s")
            fleet.wave_two()
            log(f"wave two: {len(fleet.jobs)} jobs in all")
        finally:
            fleet.close()
        want = expected_pages(fleet.jobs)
        after = Run(fleet.jobs, want, {}, {}, set(), Counter(), Counter(), restart).expected_counts(True)
        try:
            wait_for(lambda: want <= set(_seen(hook, pages=True)), timeout=left(), interval=0.5,
                     what="every expected page")  # fmt: skip
            settle(lambda: finished_counts(exporter.proc), after, left())  # type: ignore[arg-type]
            wait_for(lambda: expected_infos(fleet.jobs) <= set(_seen(hook, pages=False)), timeout=left(),
                     interval=0.5, what="the info alerts for the application team")  # fmt: skip
        except AssertionError:
            pass  # the caller compares what was seen with what was expected, and says what is missing
        time.sleep(3.0)  # a few more evaluations: a page about to fire shows as pending
        truths = {
            (name, job.target, job.key): job.truth
            for job in fleet.jobs
            for name in job.pages
            if job.truth is not None
        }
        for_seconds = {
            rule["alert"]: float(rule.get("for", "0s").removesuffix("s"))
            for group in yaml.safe_load(prom.rules.read_text())["groups"]
            for rule in group["rules"]
            if "alert" in rule
        }
        return Run(
            fleet=fleet.jobs,
            expected_pages=want,
            pages=_seen(hook, pages=True),
            infos=_seen(hook, pages=False),
            pending_pages=alerts_now(prom, "pending") - set(_seen(hook, pages=True)),
            counted_before=counted_before,
            counted_after=finished_counts(exporter.proc),
            restart_seconds=restart,
            truths=truths,
            for_seconds=for_seconds,
            poll_errors=poll_errors(exporter.proc),
        )
