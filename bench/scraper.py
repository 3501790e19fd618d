"""A scraper in its own process, as Prometheus is: `python -m bench.scraper URL SECONDS EVERY`
asks for /metrics (gzip, Prometheus' headers) and /healthz in turn over kept-alive connections
for SECONDS, one pair every EVERY seconds, and prints the latencies (seconds) as one JSON line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent

PROMETHEUS_HEADERS = (
    "User-Agent: Prometheus/2.53.0\r\n"
    "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1\r\n"
    "Accept-Encoding: gzip\r\n"
)


class Connection:
    """One kept-alive HTTP/1.1 connection; reads Content-Length bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buffer = b""

    def get(self, path: str, headers: str = "") -> tuple[dict[str, str], bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{headers}\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if " 200 " not in lines[0] + " ":
            raise RuntimeError(f"{path} answered {lines[0]!r}")
        fields = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
        length = int(fields["content-length"])
        while len(self.buffer) < length:
            self.buffer += self._recv()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return fields, body

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("connection closed")
        return chunk

    def close(self) -> None:
        self.sock.close()


def scrape(url: str, seconds: float, every: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    metrics, health = Connection(host, port), Connection(host, port)
    out: dict[str, Any] = {"metrics": [], "healthz": [], "body_bytes": 0, "content_encoding": ""}
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            fields, body = metrics.get("/metrics", PROMETHEUS_HEADERS)
            out["metrics"].append(time.perf_counter() - t)
            out["body_bytes"], out["content_encoding"] = len(body), fields.get("content-encoding", "")
            t = time.perf_counter()
            health.get("/healthz")
            out["healthz"].append(time.perf_counter() - t)
            time.sleep(max(0.0, every - (time.perf_counter() - t)))
    finally:
        metrics.close()
        health.close()
    return out


def in_own_process(url: str, seconds: float, every: float = 0.1) -> subprocess.Popen[str]:
    """Start the scraper; read its result with `result`."""
    return bench_process("bench.scraper", url, str(seconds), str(every))


def bench_process(module: str, *args: str) -> subprocess.Popen[str]:
    """`python -m module args...` from the checkout's root, its last line of output a JSON
    object that `result` reads."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
    parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return parsed


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max in ms."""
    if not seconds:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    s = sorted(seconds)
    return {
        "n": len(s),
        "p50_ms": s[len(s) // 2] * 1000,
        "p99_ms": s[min(len(s) - 1, int(len(s) * 0.99))] * 1000,
        "max_ms": s[-1] * 1000,
    }


def latency_cell(p: dict[str, float]) -> str:
    """`percentiles` as a table cell: p50 / p99 / max."""
    return f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f} / {p['max_ms']:.0f} ms"


if __name__ == "__main__":
    print(json.dumps(scrape(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))))
