"""Running the real CLI as a user does: the simulator and the exporter as subprocesses on
127.0.0.1, a YAML config, and helpers to read /metrics. Every wait is bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator.serving import CREDENTIALS

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (httpx.HTTPError, OSError, KeyError, ValueError) as e:
            last_error = e
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}; last error: {last_error}"
    )


@dataclass
class Proc:
    """A CLI subprocess; its output is kept in a file so a failing test can show it."""

    popen: subprocess.Popen[bytes]
    log: Path
    url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def start_cli(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOB_")}
    full_env.update(env or {})
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "exporter", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )


@contextmanager
def simulator(tmp: Path, step_seconds: float = 1.0, extra: list[str] | None = None) -> Iterator[Proc]:
    port = free_port()
    log = tmp / f"simulator-{port}.log"
    popen = start_cli(
        [
            "simulate",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--simulator.step-seconds={step_seconds}",
            *(extra or []),
        ],
        log,
    )
    proc = Proc(popen, log, f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: httpx.get(f"{proc.url}/_sim/stats", timeout=1).status_code == 200, what="simulator")
        yield proc
    finally:
        proc.stop()


def write_secrets(tmp: Path) -> Path:
    secrets = tmp / "secrets"
    secrets.mkdir(exist_ok=True)
    for key, value in CREDENTIALS.items():
        (secrets / key).write_text(value + "\n")
    return secrets


@dataclass
class Exporter(Proc):
    config: Path = field(default=Path())

    def metrics(self) -> str:
        r = httpx.get(f"{self.url}/metrics", timeout=5)
        r.raise_for_status()
        return r.text

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        out = []
        for family in text_string_to_metric_families(self.metrics()):
            for s in family.samples:
                out.append((s.name, dict(s.labels), s.value))
        return out

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample named `name` whose labels include `labels`."""
        for sample_name, sample_labels, value in self.samples():
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        return None

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=5, **kw)


@contextmanager
def exporter(
    tmp: Path,
    config: dict[str, Any],
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Iterator[Exporter]:
    port = free_port()
    path = tmp / f"config-{port}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = tmp / f"exporter-{port}.log"
    popen = start_cli(
        [
            f"--config.file={path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=debug",
            *(extra or []),
        ],
        log,
        env,
    )
    proc = Exporter(popen, log, f"http://127.0.0.1:{port}", config=path)
    try:
        if wait_ready:
            wait_for(
                lambda: httpx.get(f"{proc.url}/readyz", timeout=1).status_code == 200,
                what=f"exporter ready; output:\n{proc.output() if popen.poll() is not None else ''}",
            )
        yield proc
    finally:
        code = proc.stop()
        assert code in (0, -signal.SIGTERM, -signal.SIGKILL), f"exporter exited {code}:\n{proc.output()}"


def create_job(sim: Proc, provider: str, **spec: Any) -> str:
    r = httpx.post(f"{sim.url}/_sim/jobs", json={"provider": provider, **spec}, timeout=5)
    r.raise_for_status()
    return str(r.json()["id"])
