"""What the two floods of basic auth share (bench.auth: wrong passwords answered one bcrypt at a
time; bench.lockout: more connections than the cap): the real CLI behind a web config with one
bcrypt user, a flood of raw asyncio connections in a process of its own, and a scraper with the
right credentials paced in a thread beside it.

A bench module `m` hands its flood and its run to `main`: `python -m bench.m flood URL SECONDS
CLIENTS` runs the flood and prints its tally as one JSON line, which `Flood.result` reads back;
`python -m bench.m` runs the whole benchmark; `--help` says so."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import bcrypt
import httpx
import yaml

from bench.scraper import bench_process, result

if TYPE_CHECKING:
    from tests.harness import Exporter

USER, PASSWORD = "prometheus", "right-password"

Tally = TypeVar("Tally")


def basic(user: str, password: str) -> str:
    """An Authorization header's value for basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def wrong_password(host: str, i: int) -> bytes:
    """A GET /metrics as the flood's client `i` sends it: USER with a wrong password of its own."""
    authorization = basic(USER, f"wrong-{i}")
    return f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: {authorization}\r\n\r\n".encode()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


@contextmanager
def exporter_with_one_user(cost: int, prefix: str, extra: list[str] | None = None) -> Iterator[Exporter]:
    """The real CLI, no target, its web config holding USER with PASSWORD hashed by bcrypt at
    `cost` (10 is what `htpasswd -B` makes); yielded once it answers /healthz."""
    from tests.harness import exporter, wait_for

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tmp_path = Path(tmp)
        web = tmp_path / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=cost)).decode()
        web.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
        flags = [f"--web.config.file={web}", *(extra or [])]
        with exporter(tmp_path, {"targets": []}, extra=flags, wait_ready=False) as exp:
            wait_for(lambda: httpx.get(f"{exp.url}/healthz", timeout=1).status_code == 200, what="exporter")
            yield exp


# --- the flood (its own process) ------------------------------------------------------------


async def flood_clients(
    url: str,
    seconds: float,
    clients: int,
    client: Callable[[str, int, float, Tally, int], Awaitable[None]],
    tally: Tally,
) -> Tally:
    """`clients` coroutines `client(host, port, deadline, tally, i)` at once until `seconds`
    have passed, each adding what it saw to `tally`."""
    host, port = host_port(url)
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client(host, port, deadline, tally, i) for i in range(clients)))
    return tally


class Flood:
    """`python -m module flood URL SECONDS CLIENTS` running beside the caller."""

    def __init__(self, module: str, url: str, seconds: float, clients: int) -> None:
        self.seconds = seconds
        self.process = bench_process(module, "flood", url, str(seconds), str(clients))

    def result(self) -> dict[str, Any]:
        """The flood's tally, once it has ended."""
        return result(self.process, timeout=self.seconds + 120)


def main(
    module: str,
    description: str,
    run_flood: Callable[[str, float, int], Coroutine[Any, Any, Any]],
    run: Callable[[], dict[str, Any]],
) -> None:
    """`python -m module`: the whole run, its results as JSON; `python -m module flood URL
    SECONDS CLIENTS`: the flood process alone, its tally as one JSON line."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command")
    flood = commands.add_parser("flood", help="the flood process alone (the run starts it)")
    flood.add_argument("url", help="the exporter's URL, e.g. http://127.0.0.1:9999")
    flood.add_argument("seconds", type=float, help="how long it floods")
    flood.add_argument("clients", type=int, help="how many connections flood at once")
    args = parser.parse_args()
    if args.command == "flood":
        print(json.dumps(asyncio.run(run_flood(args.url, args.seconds, args.clients))))
    else:
        print(json.dumps(run(), indent=2))


# --- the scraper ----------------------------------------------------------------------------


@dataclass
class Scrapes:
    latencies: list[float] = field(default_factory=list)  # seconds, of each scrape answered
    missed: int = 0  # refused or cut


def paced(scrape: Callable[[], bool], seconds: float, every: float) -> Scrapes:
    """`scrape()` every `every` seconds for `seconds`, in a thread of its own (bounded by a
    join), each one timed; `scrape` says whether it was answered."""
    out = Scrapes()

    def loop() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t = time.perf_counter()
            if scrape():
                out.latencies.append(time.perf_counter() - t)
            else:
                out.missed += 1
            time.sleep(max(0.0, every - (time.perf_counter() - t)))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    thread.join(seconds + 60)
    return out
