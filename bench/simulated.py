"""The simulator as a subprocess (`python -m exporter simulate`) for the benchmarks that poll it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.synthetic import unused_port
from exporter.simulator.serving import CREDENTIALS

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def simulator(step_seconds: float = 2.0) -> Iterator[str]:
    """Start the simulator on a free loopback port; yield its base URL."""
    import time

    port = unused_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "simulate",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--step-seconds={step_seconds}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"{url}/_sim/stats", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"simulator did not start:\n{log.read().decode(errors='replace')}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def create_jobs(url: str, n: int, **spec: Any) -> list[dict[str, Any]]:
    """Create n basiq jobs through /_sim/jobs; returns the simulator's answers (id, created, …)."""
    out = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(n):
            r = client.post("/_sim/jobs", json={"provider": "basiq", **spec})
            r.raise_for_status()
            out.append(r.json())
    return out


def basiq_token(url: str) -> str:
    r = httpx.post(
        f"{url}/basiq/token",
        headers={"Authorization": f"Basic {CREDENTIALS['basiq_api_key']}", "basiq-version": "3.0"},
        data={"scope": "SERVER_ACCESS"},
        timeout=10,
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def api_key_file(directory: Path) -> Path:
    path = directory / "basiq_api_key"
    path.write_text(CREDENTIALS["basiq_api_key"] + "\n")
    return path
