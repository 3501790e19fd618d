"""What each subcommand does: run the exporter, the simulator, the demo, or check a config."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from exporter import __version__
from exporter.config import ConfigError, Settings, build_settings, load_settings
from exporter.config.slos import duration
from exporter.connections import ConnectionLimits
from exporter.providers import PROVIDERS
from exporter.runtime import Runtime
from exporter.server import ListenError, Server, build_app

log = logging.getLogger("asyncjob")

NO_TARGETS = "no targets configured: the exporter polls nothing (add targets: see examples/)"


def _refuse(path: str | None, e: ConfigError) -> int:
    """Print every problem of a config with its key path; the exit code of a bad config."""
    print(f"{path}: {len(e.problems)} problem(s)", file=sys.stderr)
    for p in e.problems:
        print(f"  {p}", file=sys.stderr)
    return 2


def check_config(path: str) -> int:
    try:
        settings = load_settings(path, PROVIDERS)
    except ConfigError as e:
        return _refuse(path, e)
    print(f"{path}: OK ({len(settings.targets)} target(s))")
    for t in settings.resolved_targets():
        print(f"  {t.name}: {t.provider} {t.config.base_url}, every {t.poll_interval:g}s")
    for slo in settings.slos:
        jobs = f"{slo.job_type or 'all'} jobs of {slo.target or slo.target_regex}"
        within, window = duration(slo.latency), duration(slo.window)
        print(f"  slo {slo.name}: {slo.objective:g} of {jobs} within {within}, over {window}")
    if not settings.targets:
        print(f"{path}: warning: {NO_TARGETS}", file=sys.stderr)
    return 0


def write_mixin(config_file: str | None, out: str, exporter_config: str | None = None) -> int:
    """Rules, promtool tests and dashboards from a user's mixin YAML (defaults without one). With
    the exporter's config too, the two `slos:` lists must agree."""
    from exporter.config.slos import disagreements
    from exporter.mixin import files, user

    try:
        cfg = user.load(config_file) if config_file else user.config_from(None)
        if exporter_config:
            try:
                settings = load_settings(exporter_config, PROVIDERS)
            except ConfigError as e:
                return _refuse(exporter_config, e)
            problems = disagreements(cfg.slos, settings.slos)
            if problems:
                raise user.MixinConfigError(problems)
    except user.MixinConfigError as e:
        print(f"{config_file}: {len(e.problems)} problem(s)", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    for path in files.write(Path(out), cfg):
        print(path)
    return 0


async def _signals(runtime: Runtime | None, servers: list[Server], scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            if signum == signal.SIGHUP and runtime is not None:
                runtime.reload()
                continue
            log.info("shutting down", extra={"signal": signal.Signals(signum).name})
            for s in servers:
                s.stop()
            scope.cancel()
            return


async def serve_exporter(
    runtime: Runtime,
    address: str,
    ssl: dict[str, Any] | None = None,
    middleware: Any = None,
    lifecycle: bool = False,
    telemetry_path: str = "/metrics",
    limits: ConnectionLimits | None = None,
) -> None:
    app = build_app(runtime, middleware, lifecycle=lifecycle, telemetry_path=telemetry_path)
    server = Server(app, address, ssl, limits)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_signals, runtime, [server], tg.cancel_scope)
        tg.start_soon(runtime.run)
        await server.serve()
        tg.cancel_scope.cancel()
    if runtime.store is not None:
        runtime.store.close()


def run_exporter(
    config_file: str | None,
    address: str,
    web_config: str | None,
    shard: int,
    total_shards: int,
    lifecycle: bool = False,
    telemetry_path: str = "/metrics",
    exporter_metrics: bool = True,
    limits: ConnectionLimits | None = None,
) -> int:
    try:
        settings = load_settings(config_file, PROVIDERS)
    except ConfigError as e:
        return _refuse(config_file, e)
    from exporter.webconfig import WebConfigError, load_web_config

    try:
        web = load_web_config(web_config)
    except WebConfigError as e:
        print(f"--web.config.file: {e}", file=sys.stderr)
        return 2
    runtime = Runtime(settings, config_file, shard, total_shards)
    runtime.exposition.exporter_metrics = exporter_metrics
    if not settings.targets:
        log.warning(NO_TARGETS, extra={"config_file": config_file})
    log.info(
        "starting asyncjob-exporter",
        extra={
            "version": __version__,
            "address": address,
            "targets": len(settings.targets),
            "shard": shard,
            "total_shards": total_shards,
        },
    )
    try:
        runtime.open_state()
    except Exception as e:  # a broken state file must say so, not trace back
        print(f"state_file: {e}", file=sys.stderr)
        return 2
    return _run(
        serve_exporter, runtime, address, web.ssl, web.middleware(), lifecycle, telemetry_path, limits
    )


def run_simulate(address: str, step_seconds: float, trickle: float, seed: int | None) -> int:
    from exporter.simulator.app import Simulator

    sim = Simulator(step_seconds=step_seconds, seed=seed)

    async def main() -> None:
        server = Server(sim.app(), address)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_signals, None, [server], tg.cancel_scope)
            if trickle > 0:
                tg.start_soon(_trickle, sim, trickle)
            await server.serve()
            tg.cancel_scope.cancel()

    log.info("simulator listening", extra={"address": address})
    return _run(main)


async def _trickle(sim: Any, every: float) -> None:
    """A steady trickle of new jobs, so a demo's numbers move."""
    while True:
        job = sim.random_job()
        log.debug(
            "simulated job created", extra={"provider": job.provider, "id": job.id, "scenario": job.scenario}
        )
        await anyio.sleep(every)


def demo_settings(sim_url: str, secrets_dir: Path) -> Settings:
    """The built-in config of the demo: one target per simulated provider."""
    from exporter.simulator.app import CREDENTIALS
    from exporter.simulator.demo import demo_targets

    for key, value in CREDENTIALS.items():
        (secrets_dir / key).write_text(value + "\n", encoding="utf-8")
        os.chmod(secrets_dir / key, 0o600)
    return build_settings(
        {
            "global": {"poll_interval": "2s", "stuck_after": "45s", "max_duration": "5m", "retention": "2m"},
            "targets": demo_targets(sim_url, secrets_dir),
        },
        PROVIDERS,
    )


def run_demo(address: str, sim_address: str, step_seconds: float, trickle: float) -> int:
    from exporter.server import parse_listen_address
    from exporter.simulator.app import Simulator
    from exporter.simulator.demo import seed_jobs

    sim = Simulator(step_seconds=step_seconds)
    sim_server = Server(sim.app(), sim_address)
    sim_host, _ = parse_listen_address(sim_address)

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="asyncjob-demo-") as tmp:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sim_server.serve)
                while sim_server.port == 0:
                    await anyio.sleep(0.01)
                sim_url = (
                    f"http://{'127.0.0.1' if sim_host in ('0.0.0.0', '') else sim_host}:{sim_server.port}"
                )
                settings = demo_settings(sim_url, Path(tmp))
                runtime = Runtime(settings)
                seed_jobs(sim)
                tg.start_soon(_trickle, sim, trickle)
                server = Server(build_app(runtime), address)
                tg.start_soon(_signals, runtime, [server, sim_server], tg.cancel_scope)
                tg.start_soon(runtime.run)
                tg.start_soon(_announce, server, sim_url)
                await server.serve()
                sim_server.stop()
                tg.cancel_scope.cancel()

    return _run(main)


def _run(fn: Any, *args: Any) -> int:
    code = 0
    try:
        anyio.run(fn, *args)
    except* ListenError as group:
        for e in group.exceptions:
            print(f"error: {e}", file=sys.stderr)
        code = 1
    except* KeyboardInterrupt:
        code = 130
    return code


async def _announce(server: Server, sim_url: str) -> None:
    while server.port == 0:
        await anyio.sleep(0.01)
    base = f"http://localhost:{server.port}"
    print(
        f"\nasyncjob-exporter {__version__} demo is running (Ctrl-C to stop)\n"
        f"  metrics:     {base}/metrics\n"
        f"  targets:     {base}/\n"
        f"  jobs:        {base}/jobs  (failed: {base}/jobs?status=failed, stuck: {base}/jobs?stuck=1)\n"
        f"  jobs (JSON): {base}/api/v1/jobs\n"
        f"  simulator:   {sim_url}/_sim/stats\n",
        flush=True,
    )
