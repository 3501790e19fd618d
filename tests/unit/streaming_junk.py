"""Run as `python -m tests.unit.streaming_junk`: 16 jobs whose answers stream 100 MB of chunked
junk at once, polled with the default settings; prints the errors counted and the process's
peak RSS as JSON. A process of its own, so that its peak RSS is this case's alone; the junk
server runs in a second one (`python -m tests.unit.streaming_junk serve`), so that neither its
threads nor their share of the interpreter count against the client.

The peak is the kernel's high-water mark of this process's memory map (VmHWM), not
getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a test run
grown to 300 MiB would report 300 MiB before doing anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio

from exporter.config import build_settings
from exporter.fetch import PollError, TargetHttp
from exporter.providers import PROVIDERS
from tests.unit.loopback import Peer, serve

ANSWER_BYTES = 100 * 1000 * 1000
JOBS = 16
CHUNK = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)


def junk(n: int, peer: Peer) -> None:
    if peer.read_request() is not None:
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(ANSWER_BYTES // 65536):
            peer.send(CHUNK)
        peer.send(b"0\r\n\r\n")


async def poll(url: str) -> dict[str, object]:
    s = build_settings({"targets": [{"name": "t", "provider": "basiq", "base_url": url}]}, PROVIDERS)
    http = TargetHttp(s.resolved(s.targets[0]))
    reasons: list[str] = []

    async def one(i: int) -> None:
        try:
            await http.get_json(f"/jobs/{i}")
        except PollError as e:
            reasons.append(e.reason)

    async with anyio.create_task_group() as tg:
        for i in range(JOBS):
            tg.start_soon(one, i)
    await http.aclose()
    return {"reasons": reasons, "errors": http.stats.errors, "bytes_in_flight": http.bytes_in_flight}


def peak_rss_bytes() -> int:
    """This process's peak resident memory since exec (VmHWM of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def serve_junk() -> None:
    """Serve junk, print the URL, stop when stdin closes."""
    with serve(junk) as (url, _):
        print(url, flush=True)
        sys.stdin.read()


def main() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.streaming_junk", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        url = server.stdout.readline().strip()
        result = anyio.run(poll, url)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(10)
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(result))


if __name__ == "__main__":
    serve_junk() if sys.argv[1:] == ["serve"] else main()
