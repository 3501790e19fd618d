"""Run as `python -m tests.unit.streaming_junk`: 16 jobs whose answers stream 100 MB of chunked
junk at once, polled with the default settings; prints the errors counted and the process's
peak RSS as JSON. A process of its own, so that its peak RSS is this case's alone."""

from __future__ import annotations

import json
import resource

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


def main() -> None:
    with serve(junk) as (url, _):
        result = anyio.run(poll, url)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
