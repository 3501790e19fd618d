"""What each subcommand does: run the exporter, the simulator, the demo, or check a config."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from exporter import __version__
from exporter.cluster.schema import SchemaError
from exporter.config import ConfigError, Settings, build_settings, load_settings, safety
from exporter.config.slos import duration
from exporter.httpserver.protocol import ConnectionLimits
from exporter.httpserver.server import ListenError, Server
from exporter.providers import PROVIDERS
from exporter.routes import build_app
from exporter.runtime import Runtime

log = logging.getLogger("asyncjob")

NO_TARGETS = "no targets configured: the exporter polls nothing (add targets: see examples/)"


@dataclass(frozen=True)
class Web:
    """What the web flags say; the exporter and the demo read them alike."""

    listen: str
    config_file: str | None = None  # --web.config.file
    telemetry_path: str = "/metrics"
    lifecycle: bool = False
    exporter_metrics: bool = True
    # --web.external-url: the base of every link made ("" = links relative to the host asked).
    external_url: str = ""
    limits: ConnectionLimits | None = None


def _refuse(path: str | None, e: ConfigError) -> int:
    """Print every problem of a config with its key path; the exit code of a bad config."""
    print(f"{path}: {len(e.problems)} problem(s)", file=sys.stderr)
    for p in e.problems:
        print(f"  {p}", file=sys.stderr)
    return 2


def check_config(path: str, listen: str = ":10110", web_config: str | None = None) -> int:
    """Exit 0 for a config the exporter can run, with a warning line for each risk it leaves
    (served on `listen`, behind `web_config`'s basic auth when it sets users); 2 otherwise."""
    try:
        settings = load_settings(path, PROVIDERS)
    except ConfigError as e:
        return _refuse(path, e)
    from exporter.webconfig import WebConfigError, load_web_config

    try:
        web = load_web_config(web_config)
    except WebConfigError as e:
        print(f"--web.config.file: {e}", file=sys.stderr)
        return 2
    print(f"{path}: OK ({len(settings.targets)} target(s))")
    for t in settings.resolved_targets():
        print(f"  {t.name}: {t.provider} {t.config.base_url}, every {t.poll_interval:g}s")
    for slo in settings.slos:
        jobs = f"{slo.job_type or 'all'} jobs of {slo.target or slo.target_regex}"
        within, window = duration(slo.latency), duration(slo.window)
        print(f"  slo {slo.name}: {slo.objective:g} of {jobs} within {within}, over {window}")
    if not settings.targets:
        print(f"{path}: warning: {NO_TARGETS}", file=sys.stderr)
    for warning in safety.warnings(settings, listen, basic_auth=bool(web.users)):
        print(f"{path}: warning: {warning}", file=sys.stderr)
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


def _app(runtime: Runtime, web: Web, middleware: Any) -> Any:
    from exporter.external_url import serving

    app = build_app(
        runtime,
        middleware,
        lifecycle=web.lifecycle,
        telemetry_path=web.telemetry_path,
        external_url=web.external_url,
    )
    return serving(app, web.external_url)


async def serve_exporter(
    runtime: Runtime, web: Web, ssl: dict[str, Any] | None = None, middleware: Any = None
) -> None:
    server = Server(_app(runtime, web, middleware), web.listen, ssl, web.limits)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_signals, runtime, [server], tg.cancel_scope)
        tg.start_soon(runtime.run)
        await server.serve()
        tg.cancel_scope.cancel()
    await runtime.close()


def _warn_of_risks(settings: Settings, web: Web, basic_auth: bool) -> None:
    for warning in safety.warnings(settings, web.listen, basic_auth):
        log.warning(warning, extra={"address": web.listen})


def replica_name(listen: str) -> str:
    """A replica's default name in a cluster: this host and the port it listens on."""
    import socket

    return f"{socket.gethostname()}:{listen.rpartition(':')[2]}"


def run_exporter(config_file: str | None, web: Web, shard: int, total_shards: int) -> int:
    try:
        settings = load_settings(config_file, PROVIDERS)
    except ConfigError as e:
        return _refuse(config_file, e)
    if settings.state_url and total_shards > 1:
        print(
            "--total-shards: not with state_url: the replicas of a cluster share the jobs by leases",
            file=sys.stderr,
        )
        return 2
    from exporter.webconfig import WebConfigError
    from exporter.webconfig_reload import LiveWebConfig

    try:
        web_config = LiveWebConfig(web.config_file)
    except WebConfigError as e:
        print(f"--web.config.file: {e}", file=sys.stderr)
        return 2
    # SIGHUP and POST /-/reload read the web config again too, as exporter-toolkit would.
    runtime = Runtime(settings, config_file, shard, total_shards, web_config if web.config_file else None)
    runtime.exposition.exporter_metrics = web.exporter_metrics
    if not settings.targets:
        log.warning(NO_TARGETS, extra={"config_file": config_file})
    _warn_of_risks(settings, web, bool(web_config.users.hashes))
    sharding = (
        {"state": "cluster (state_url)"}
        if settings.state_url
        else {"shard": shard, "total_shards": total_shards}
    )
    log.info(
        "starting asyncjob-exporter",
        extra={"version": __version__, "address": web.listen, "targets": len(settings.targets), **sharding},
    )
    try:
        runtime.open_state(replica_name(web.listen))
    except Exception as e:  # a broken state file must say so, not trace back
        print(f"state_file: {e}", file=sys.stderr)
        return 2
    return _run(serve_exporter, runtime, web, web_config.ssl, web_config.middleware())


def copy_state(state_file: str, url: str, password_file: str | None) -> int:
    """`state copy`: the state file's jobs into the state database; what was copied on stdout."""
    import psycopg

    from exporter.cluster import state_copy
    from exporter.cluster.schema import SchemaError

    password: str | None = None
    try:
        url = state_copy.checked_url(url)
        if password_file:
            password = state_copy.read_password(password_file)
        state = state_copy.read_state_file(state_file)
        copied = anyio.run(state_copy.copy_state, url, password, state)
    except (state_copy.CopyRefused, SchemaError) as e:
        print(f"state copy: {e}", file=sys.stderr)
        return 2
    except (psycopg.Error, OSError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        if password:
            message = message.replace(password, "(password)")
        print(f"state copy: {url}: {message}", file=sys.stderr)
        return 1
    print(f"copied {state_file} into {url} ({copied.shards} virtual shards)")
    counted = sum(t.counted for t in state.jobs.values())
    for kind, added in copied.added.items():
        print(f"  {kind}: {added} added, {copied.present[kind]} already there")
    print(f"  of the file's jobs, {counted} finished and counted once (the mark is in each job's row)")
    if state.skipped:
        print(f"  {state.skipped} row(s) left behind: a NUL in a target, job id or cursor name")
    return 0


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
    from exporter.simulator.demo import demo_targets
    from exporter.simulator.serving import CREDENTIALS

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


def run_demo(
    web: Web, sim_address: str, step_seconds: float, trickle: float, shard: int = 0, total_shards: int = 1
) -> int:
    """The simulator and the exporter against it, served as the web flags say."""
    from exporter.httpserver.server import parse_listen_address
    from exporter.simulator.app import Simulator
    from exporter.simulator.demo import seed_jobs
    from exporter.webconfig import WebConfigError
    from exporter.webconfig_reload import LiveWebConfig

    try:
        web_config = LiveWebConfig(web.config_file)
    except WebConfigError as e:
        print(f"--web.config.file: {e}", file=sys.stderr)
        return 2
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
                live = web_config if web.config_file else None
                runtime = Runtime(settings, None, shard, total_shards, live)
                runtime.exposition.exporter_metrics = web.exporter_metrics
                _warn_of_risks(settings, web, bool(web_config.users.hashes))
                seed_jobs(sim)
                tg.start_soon(_trickle, sim, trickle)
                app = _app(runtime, web, web_config.middleware())
                server = Server(app, web.listen, web_config.ssl, web.limits)
                tg.start_soon(_signals, runtime, [server, sim_server], tg.cancel_scope)
                tg.start_soon(runtime.run)
                tg.start_soon(_announce, server, web, bool(web_config.ssl), sim_url)
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
    except* SchemaError as schema_errors:
        for problem in schema_errors.exceptions:
            print(f"state_url: {problem}", file=sys.stderr)
        code = 2
    return code


def link_base(web: Web, port: int, tls: bool = False) -> str:
    """Where people open the exporter: --web.external-url, else this host at the port bound."""
    if web.external_url:
        return web.external_url
    host = web.listen.rpartition(":")[0].strip("[]")
    if safety.is_loopback(web.listen) or host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


async def _announce(server: Server, web: Web, tls: bool, sim_url: str) -> None:
    while server.port == 0:
        await anyio.sleep(0.01)
    base = link_base(web, server.port, tls)
    print(
        f"\nasyncjob-exporter {__version__} demo is running (Ctrl-C to stop)\n"
        f"  metrics:     {base}{web.telemetry_path}\n"
        f"  targets:     {base}/\n"
        f"  jobs:        {base}/jobs  (failed: {base}/jobs?status=failed, stuck: {base}/jobs?stuck=1)\n"
        f"  jobs (JSON): {base}/api/v1/jobs\n"
        f"  simulator:   {sim_url}/_sim/stats\n",
        flush=True,
    )
