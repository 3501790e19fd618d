"""A real Prometheus and Alertmanager beside the exporter under test: their binaries, their configs,
their processes on 127.0.0.1, and an HTTP server in the test standing in for a webhook receiver."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import Exporter, Proc, exporter, free_port, simulator, wait_for, write_secrets

CI_INSTALLS = ".ci/run installs them with apt-get (make test runs scripts/install-test-deps)"


@dataclass(frozen=True)
class Binaries:
    prometheus: str
    alertmanager: str
    promtool: str


class MissingBinaries(RuntimeError):
    """Prometheus, Alertmanager or promtool is not on PATH."""


def find_binaries() -> Binaries:
    """The Prometheus and Alertmanager binaries; MissingBinaries names those not on PATH."""
    found = {
        "prometheus": shutil.which("prometheus"),
        "alertmanager": shutil.which("prometheus-alertmanager") or shutil.which("alertmanager"),
        "promtool": shutil.which("promtool"),
    }
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        raise MissingBinaries(
            f"{', '.join(missing)} not on PATH (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
    return Binaries(**{name: str(path) for name, path in found.items()})


def require_binaries() -> Binaries:
    """The Prometheus and Alertmanager binaries; missing ones fail under CI and skip elsewhere."""
    try:
        return find_binaries()
    except MissingBinaries as missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI is set and {CI_INSTALLS}, so they must be there")
        pytest.skip(f"{missing}; set CI=1 to make this a failure")


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def prometheus_seconds(duration: str) -> float:
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _SECONDS[u] for n, u in parts)


def rules_with_short_for(rules_text: str, scale: float) -> str:
    """The rule file with every `for:` multiplied by `scale` (whole seconds, at least 1s) and
    every expression, label and annotation left exactly as shipped."""
    doc = yaml.safe_load(rules_text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, round(prometheus_seconds(rule['for']) * scale))}s"
    return yaml.safe_dump(doc, sort_keys=False, width=1000)


class Webhook:
    """Alertmanager's webhook receiver: records every notification it is sent (and logs it)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.url = ""

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [alert for n in self.notifications for alert in n.get("alerts", [])]

    def timed_alerts(self) -> list[tuple[dict[str, Any], float]]:
        """Every alert sent, with the time (Unix seconds) its notification arrived."""
        with self._lock:
            return [(alert, n["_received"]) for n in self.notifications for alert in n.get("alerts", [])]

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """Firing alerts named `alertname` whose labels include `labels`."""
        return [
            a
            for a in self.alerts()
            if a.get("status") == "firing"
            and a["labels"].get("alertname") == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def record(self, body: bytes) -> None:
        notification = json.loads(body)
        notification["_received"] = time.time()
        with self._lock:
            self.notifications.append(notification)
            with self.log.open("a") as out:
                out.write(json.dumps(notification, sort_keys=True) + "\n")

    def summary(self) -> str:
        lines = [
            f"{a.get('status')} {json.dumps(a.get('labels', {}), sort_keys=True)}" for a in self.alerts()
        ]
        return "\n".join(lines) or "(no notification)"


@contextmanager
def webhook(tmp: Path) -> Iterator[Webhook]:
    hook = Webhook(tmp / "webhook.jsonl")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            hook.record(self.rfile.read(length))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the notifications themselves are logged by Webhook.record

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)


def _check(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"


@contextmanager
def _running(proc: Proc, ready_path: str, what: str) -> Iterator[Proc]:
    """`proc` once it answers `ready_path`; stopped on the way out, whatever happens."""
    try:
        try:
            wait_for(
                lambda: (
                    proc.popen.poll() is None
                    and httpx.get(f"{proc.url}{ready_path}", timeout=1).status_code == 200
                ),
                timeout=30,
                what=f"{what} ready",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {what} output ---\n{proc.output()[-4000:]}") from None
        yield proc
    finally:
        proc.stop()


@contextmanager
def alertmanager(tmp: Path, binaries: Binaries, receiver_url: str) -> Iterator[Proc]:
    """Alertmanager with clustering off, sending every alert to `receiver_url` within a second."""
    home = tmp / "alertmanager"
    home.mkdir()
    config = {
        "route": {
            "receiver": "test",
            "group_by": ["alertname", "target", "job_id"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "4h",
        },
        "receivers": [{"name": "test", "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}],
    }
    path = home / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    popen = _start(
        [
            binaries.alertmanager,
            f"--config.file={path}",
            f"--storage.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
        tmp / "alertmanager.log",
    )
    with _running(
        Proc(popen, tmp / "alertmanager.log", f"http://127.0.0.1:{port}"), "/-/ready", "alertmanager"
    ) as p:
        yield p


@dataclass
class Prometheus(Proc):
    rules: Path = field(default=Path())
    promtool: str = "promtool"

    def query(self, expr: str) -> dict[str, Any]:
        """The /api/v1/query answer for `expr` now: {status, data: {resultType, result}} or an error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        answer: dict[str, Any] = r.json()
        return answer

    def vector(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def exemplars(self, expr: str, seconds: float = 600.0) -> list[dict[str, Any]]:
        """The /api/v1/query_exemplars answer for `expr` over the last `seconds`: one entry per
        series, {seriesLabels, exemplars: [{labels, value, timestamp}]}."""
        now = time.time()
        r = httpx.get(
            f"{self.url}/api/v1/query_exemplars",
            params={"query": expr, "start": now - seconds, "end": now + 1},
            timeout=10,
        )
        answer = r.json()
        assert answer["status"] == "success", f"exemplars of {expr}: {answer}"
        data: list[dict[str, Any]] = answer["data"]
        return data

    def label_values(self, label: str, selector: str) -> list[str]:
        r = httpx.get(f"{self.url}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10)
        answer = r.json()
        assert answer["status"] == "success", f"label_values({selector}, {label}): {answer}"
        values: list[str] = answer["data"]
        return values

    def alertmanagers(self) -> list[str]:
        answer = httpx.get(f"{self.url}/api/v1/alertmanagers", timeout=10).json()
        return [am["url"] for am in answer["data"]["activeAlertmanagers"]]

    def rule_groups(self) -> list[str]:
        answer = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        return [group["name"] for group in answer["data"]["groups"]]

    def load_rules(self, text: str, timeout: float = 20.0) -> None:
        """Replaces the rule file with `text` and reloads (SIGHUP), as an operator would."""
        self.rules.write_text(text)
        _check([self.promtool, "check", "rules", str(self.rules)])
        wanted = [group["name"] for group in yaml.safe_load(text)["groups"]]
        self.popen.send_signal(signal.SIGHUP)
        wait_for(
            lambda: sorted(self.rule_groups()) == sorted(wanted),
            timeout=timeout,
            what=f"Prometheus loading {wanted}",
        )
        # A reload restarts Alertmanager discovery too (up to 5s after it); an alert firing before
        # that is done would wait for its resend.
        wait_for(self.alertmanagers, timeout=timeout, what="Prometheus finding the Alertmanager again")


@contextmanager
def prometheus(
    tmp: Path, binaries: Binaries, scrape: str | list[str], alertmanager_url: str, job: str = "asyncjob"
) -> Iterator[Prometheus]:
    """Prometheus scraping `scrape` (host:port, or several: the replicas of a cluster) as `job` and
    evaluating rules every second, sending alerts to the Alertmanager at `alertmanager_url`. It
    starts without rules: `load_rules` adds them."""
    home = tmp / "prometheus"
    home.mkdir()
    rules = home / "rules.yml"
    rules.write_text("groups: []\n")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]
        },
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [scrape] if isinstance(scrape, str) else scrape}],
            }
        ],
    }
    path = home / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    _check([binaries.promtool, "check", "config", str(path)])
    port = free_port()
    log = tmp / "prometheus.log"
    popen = _start(
        [
            binaries.prometheus,
            f"--config.file={path}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            # Firing alerts are sent again every second (default 1m): one lost send costs a second.
            "--rules.alert.resend-delay=1s",
            # Keeps the exemplars of OpenMetrics scrapes (/api/v1/query_exemplars).
            "--enable-feature=exemplar-storage",
        ],
        log,
    )
    proc = Prometheus(popen, log, f"http://127.0.0.1:{port}", rules=rules, promtool=binaries.promtool)
    with _running(proc, "/-/ready", "prometheus") as p:
        assert isinstance(p, Prometheus)
        yield p


@dataclass
class Watched:
    """The simulator, the exporter under test, and a real Prometheus scraping it (as `job`), with a
    real Alertmanager sending every notification to a webhook in the test."""

    sim: Proc
    exp: Exporter
    hook: Webhook
    prom: Prometheus
    instance: str  # host:port, as Prometheus labels the exporter
    deadline: float  # time.monotonic() by which the test must be done

    def left(self) -> float:
        """Seconds of the test's budget still to spend (at least one, for a last look)."""
        return max(1.0, self.deadline - time.monotonic())


@contextmanager
def watched_exporter(
    tmp: Path,
    config: Callable[[str, Path], dict[str, Any]],
    job: str,
    step_seconds: float,
    budget: float,
) -> Iterator[Watched]:
    """The whole stack on 127.0.0.1: `config(simulator_url, secrets_dir)` is the exporter's config.
    Returns once Prometheus scrapes the exporter; rules are the test's to load."""
    binaries = require_binaries()
    secrets = write_secrets(tmp)
    deadline = time.monotonic() + budget
    with ExitStack() as stack:
        sim = stack.enter_context(simulator(tmp, step_seconds=step_seconds))
        hook = stack.enter_context(webhook(tmp))
        am = stack.enter_context(alertmanager(tmp, binaries, hook.url))
        exp = stack.enter_context(exporter(tmp, config(sim.url, secrets)))
        instance = exp.url.removeprefix("http://")
        prom = stack.enter_context(prometheus(tmp, binaries, instance, am.url, job))
        watched = Watched(sim, exp, hook, prom, instance, deadline)
        wait_for(
            lambda: prom.vector(f'up{{job="{job}", instance="{instance}"}} == 1'),
            timeout=watched.left(),
            what="Prometheus scraping the exporter",
        )
        yield watched


def stack_output(tmp: Path, hook: Webhook | None) -> str:
    """The tails of the processes' logs under `tmp` and the notifications received, for a failure."""
    parts = [
        f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(tmp.glob("*.log"))
    ]
    if hook is not None:
        parts.append(f"--- notifications ---\n{hook.summary()}")
    return "\n".join(parts)
