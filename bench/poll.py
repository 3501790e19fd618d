"""Poll: client-side CPU per job poll (request, parse, normalise, track, re-render) against a bare
httpx GET + json.loads loop, both at the same concurrency against the same simulator subprocess;
and the first full poll of a large fleet (the scheduler's own cycle, cold: token, connections)
beside a bare client's first pass over the same jobs.

`python -m bench.poll --against REV` instead measures the same poll path with this tree's
transport and with exporter/transport.py (and http11.py) as at git revision REV, rounds alternating,
in one process against one simulator: a change to the transport, before and after."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench import profiles, simulated
from exporter.config import ResolvedTarget, build_settings
from exporter.fetch import TargetHttp
from exporter.model import placeholder
from exporter.providers import PROVIDERS
from exporter.providers.basiq import Basiq
from exporter.render import Exposition
from exporter.scheduler import Scheduler, TargetRunner
from exporter.tracker import Tracker
from exporter.transport import Http11Transport

TARGET = "basiq-bench"
HTTP11 = "exporter.http11"
FULL_POLL_JOBS = 10_000  # the fleet: its first full poll within 6 s


def resolved(url: str, key_file: Path, concurrency: int) -> ResolvedTarget:
    s = build_settings(
        {
            "global": {"concurrency": concurrency, "max_jobs_per_target": 1_000_000},
            "targets": [
                {
                    "name": TARGET,
                    "provider": "basiq",
                    "base_url": f"{url}/basiq",
                    "auth": {"type": "basiq", "api_key_file": str(key_file)},
                }
            ],
        },
        PROVIDERS,
    )
    return s.resolved(s.targets[0])


async def ours(target: ResolvedTarget, http: TargetHttp, ids: list[str]) -> tuple[float, float, float]:
    """(CPU s, wall s, CPU s of tracker.apply alone) of one poll cycle over `ids` with the
    exporter's own pieces; every job is a change (placeholder → first answer), so each one
    is re-rendered."""
    tracker = Tracker()
    Exposition(tracker, lambda: {})
    tracker.set_target(target)
    for jid in ids:
        tracker.track(TARGET, placeholder(jid), "static")
    provider = Basiq(target.config)
    errors_before = sum(http.stats.errors.values())
    cpu, wall = time.process_time(), time.perf_counter()
    result = await provider.poll(http, tracker.pollable(TARGET))
    apply = time.process_time()
    tracker.apply(TARGET, result, time.time())
    apply = time.process_time() - apply
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if len(result.jobs) != len(ids) or sum(http.stats.errors.values()) != errors_before:
        raise RuntimeError(
            f"poll cycle read {len(result.jobs)} of {len(ids)} jobs; errors {http.stats.errors}"
        )
    return cpu, wall, apply


async def bare(client: httpx.AsyncClient, ids: list[str], concurrency: int) -> tuple[float, float]:
    """(CPU s, wall s) of the same GETs with a bare httpx client: get, json.loads, nothing else."""
    limiter = anyio.CapacityLimiter(concurrency)
    bodies: list[Any] = []

    async def one(jid: str) -> None:
        async with limiter:
            r = await client.get(f"/basiq/jobs/{jid}")
            bodies.append(json.loads(r.content))

    cpu, wall = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for jid in ids:
            tg.start_soon(one, jid)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if len(bodies) != len(ids) or not all(b.get("type") == "job" for b in bodies):
        raise RuntimeError("bare client did not read every job")
    return cpu, wall


async def create_jobs(url: str, n: int, batch: int = 5000) -> list[str]:
    """Create n stuck Basiq jobs in the simulator, `batch` at a time."""
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while len(ids) < n:
            spec = {
                "provider": "basiq",
                "scenario": "stuck",
                "fail_step": 1,
                "count": min(batch, n - len(ids)),
            }
            r = await client.post("/_sim/jobs", json=spec)
            r.raise_for_status()
            ids += [str(i) for i in r.json()["ids"]]
    return ids


def process_cpu_seconds(url: str) -> float | None:
    """CPU time (user + system) so far of the simulator process listening at `url`, found by its
    command line; None where /proc cannot say."""
    port = url.rsplit(":", 1)[-1]
    wanted = f"--web.listen-address=127.0.0.1:{port}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or wanted not in (proc / "cmdline").read_bytes().split(b"\0"):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


async def first_full_poll(url: str, n_jobs: int, concurrency: int) -> dict[str, Any]:
    """One cycle of the real scheduler over n_jobs never polled before (placeholders, as static
    ids are at start), from a cold client; then a bare client's first pass over the same ids."""
    ids = await create_jobs(url, n_jobs)
    token = simulated.basiq_token(url)
    with tempfile.TemporaryDirectory() as tmp:
        target = resolved(url, simulated.api_key_file(Path(tmp)), concurrency)
        tracker = Tracker()
        Exposition(tracker, lambda: {})
        tracker.set_target(target)
        for jid in ids:
            tracker.track(TARGET, placeholder(jid), "static")
        runner = TargetRunner(target, Basiq(target.config), TargetHttp(target))
        sim_cpu = process_cpu_seconds(url)
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            await Scheduler(tracker)._cycle(runner)
        finally:
            await runner.http.aclose()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        sim_after = process_cpu_seconds(url)
        state = tracker.targets[TARGET]
        polled = sum(t.polled for t in state.jobs.values())
        if polled != n_jobs or not state.up:
            raise RuntimeError(f"first full poll read {polled} of {n_jobs} jobs: {state.last_error}")
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=30,
    ) as client:
        bare_cpu, bare_wall = await bare(client, ids, concurrency)
    return {
        "jobs": n_jobs,
        "concurrency": concurrency,
        "ours_wall_s": wall,
        "ours_cpu_ms_per_poll": cpu / n_jobs * 1000,
        "bare_wall_s": bare_wall,
        "bare_cpu_ms_per_poll": bare_cpu / n_jobs * 1000,
        # The server's side of the same cycle: what the wall time cannot go below on this machine.
        "simulator_cpu_ms_per_poll": (sim_after - sim_cpu) / n_jobs * 1000
        if sim_cpu is not None and sim_after is not None
        else None,
    }


def sniffio_check() -> dict[str, Any]:
    """httpcore imports sniffio lazily on every request; without it that failed import is paid each time."""
    installed = importlib.util.find_spec("sniffio") is not None
    declared = any(
        r.split(";")[0].strip().lower().startswith("sniffio")
        for r in importlib.metadata.requires("asyncjob-exporter") or []
    )
    return {
        "installed": installed,
        "version": importlib.metadata.version("sniffio") if installed else None,
        "declared_in_pyproject": declared,
    }


async def measure(
    url: str, n_jobs: int, rounds: int, concurrency: int, profile: list[str] | None
) -> dict[str, Any]:
    ids = [str(j["id"]) for j in simulated.create_jobs(url, n_jobs, scenario="stuck", fail_step=1)]
    token = simulated.basiq_token(url)
    with tempfile.TemporaryDirectory() as tmp:
        target = resolved(url, simulated.api_key_file(Path(tmp)), concurrency)
        http = TargetHttp(target)
        client = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=10,
        )
        try:
            warm = ids[: min(len(ids), 100)]
            await bare(client, warm, concurrency)  # connections opened
            await ours(target, http, warm)  # token fetched, connections opened
            base_cpu, our_cpu, base_wall, our_wall, apply_cpu = [], [], [], [], []
            for _ in range(rounds):
                c, w = await bare(client, ids, concurrency)
                base_cpu.append(c / n_jobs)
                base_wall.append(w)
                c, w, a = await ours(target, http, ids)
                our_cpu.append(c / n_jobs)
                apply_cpu.append(a / n_jobs)
                our_wall.append(w)
            if profile is not None:
                with profiles.profiled(profile, top=12):
                    await bare(client, ids, concurrency)
                with profiles.profiled(profile, top=20):
                    await ours(target, http, ids)
                with profiles.profiled(profile, top=15, sort="cumulative", restrict="exporter/"):
                    await ours(target, http, ids)
        finally:
            await client.aclose()
            await http.aclose()
    b, o = statistics.median(base_cpu), statistics.median(our_cpu)
    return {
        "jobs": n_jobs,
        "rounds": rounds,
        "concurrency": concurrency,
        "bare_cpu_ms_per_poll": b * 1000,
        "ours_cpu_ms_per_poll": o * 1000,
        "ratio": o / b,
        "apply_render_cpu_ms_per_job": statistics.median(apply_cpu) * 1000,
        "bare_wall_s": statistics.median(base_wall),
        "ours_wall_s": statistics.median(our_wall),
        "all_rounds_cpu_ms": {"bare": [x * 1000 for x in base_cpu], "ours": [x * 1000 for x in our_cpu]},
    }


def run(
    n_jobs: int = 2000,
    rounds: int = 3,
    concurrency: int = 16,
    profile: list[str] | None = None,
    full_poll_jobs: int | None = None,
) -> dict[str, Any]:
    """CPU rounds over n_jobs, then the first full poll of `full_poll_jobs` (unset: 5 times
    n_jobs, at most FULL_POLL_JOBS: 10,000 for `make bench`, a few hundred in the smoke test)."""
    if full_poll_jobs is None:
        full_poll_jobs = min(FULL_POLL_JOBS, 5 * n_jobs)
    with simulated.simulator(step_seconds=600.0) as url:
        result = anyio.run(measure, url, n_jobs, rounds, concurrency, profile)
    if full_poll_jobs:
        # A simulator of its own: the first pass over jobs it has never been asked about.
        with simulated.simulator(step_seconds=600.0) as url:
            result["first_full_poll"] = anyio.run(first_full_poll, url, full_poll_jobs, concurrency)
    result["sniffio"] = sniffio_check()
    return result


def transport_at(revision: str) -> Callable[[], httpx.AsyncBaseTransport]:
    """A maker of exporter/transport.py's Http11Transport as it was at git `revision`, reading
    answers with the exporter/http11.py of that revision where it has one (before it, the
    transport held its parser)."""
    root = Path(__file__).resolve().parent.parent

    def load(path: str) -> types.ModuleType | None:
        shown = subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=root, capture_output=True, text=True
        )
        if shown.returncode != 0:
            return None
        module = types.ModuleType(f"{Path(path).stem}_at_{revision}")
        sys.modules[module.__name__] = module  # dataclasses look their module up
        exec(compile(shown.stdout, f"{revision}:{path}", "exec"), module.__dict__)
        return module

    ours = sys.modules.get(HTTP11)
    parser = load("exporter/http11.py")
    try:
        if parser is not None:
            sys.modules[HTTP11] = parser  # what that revision's transport imports
        module = load("exporter/transport.py")
    finally:
        if ours is None:
            sys.modules.pop(HTTP11, None)
        else:
            sys.modules[HTTP11] = ours
    if module is None:
        raise SystemExit(f"{revision} has no exporter/transport.py")
    made: Callable[[], httpx.AsyncBaseTransport] = module.Http11Transport
    return made


async def compare_transports(
    url: str,
    makers: dict[str, Callable[[], httpx.AsyncBaseTransport]],
    n_jobs: int,
    rounds: int,
    concurrency: int,
) -> dict[str, Any]:
    """CPU per poll of the exporter's poll path with each transport, rounds alternating."""
    ids = [str(j["id"]) for j in simulated.create_jobs(url, n_jobs, scenario="stuck", fail_step=1)]
    with tempfile.TemporaryDirectory() as tmp:
        target = resolved(url, simulated.api_key_file(Path(tmp)), concurrency)
        https = {name: TargetHttp(target, transport=make()) for name, make in makers.items()}
        cpu: dict[str, list[float]] = {name: [] for name in makers}
        try:
            for http in https.values():
                await ours(target, http, ids[: min(len(ids), 100)])  # token fetched, connections opened
            for _ in range(rounds):
                for name, http in https.items():
                    cpu[name].append((await ours(target, http, ids))[0] / n_jobs * 1000)
        finally:
            for http in https.values():
                await http.aclose()
    return {
        "jobs": n_jobs,
        "rounds": rounds,
        "concurrency": concurrency,
        "cpu_ms_per_poll": {name: statistics.median(values) for name, values in cpu.items()},
        "all_rounds_cpu_ms": cpu,
    }


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.poll", description=__doc__)
    p.add_argument(
        "--against", required=True, help="git revision whose exporter/transport.py to compare with"
    )
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    makers = {"this tree": Http11Transport, args.against: transport_at(args.against)}
    with simulated.simulator(step_seconds=600.0) as url:
        result = anyio.run(compare_transports, url, makers, args.jobs, args.rounds, args.concurrency)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
