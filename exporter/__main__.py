"""Command line: parse flags, pick the subcommand, nothing else."""

from __future__ import annotations

import argparse
import os
import sys

from exporter import __version__

DESCRIPTION = """\
Prometheus exporter for asynchronous jobs run by third-party APIs (Basiq, Oxlin,
WillSuite, AIMS360, or any JSON job API). It polls the providers' jobs and queues on its
own schedule, follows each job's transitions and serves them on /metrics.

Without a subcommand it runs the exporter with --config.file. Every config key can also
be set through ASYNCJOB_* variables (nested keys joined by __, e.g.
ASYNCJOB_GLOBAL__POLL_INTERVAL=1m). Flags read ASYNCJOB_<FLAG> defaults too, e.g.
ASYNCJOB_WEB_LISTEN_ADDRESS.
"""

EPILOG = """\
subcommands:
  demo           simulator of every provider + exporter, no config, no network
  simulate       the simulator alone (tests, demos, benchmarks)
  check-config   validate a config file: exit 0, or list every problem and exit 2
  mixin          alert rules, promtool tests and dashboards from your mixin YAML

examples:
  asyncjob-exporter demo
  asyncjob-exporter --config.file=asyncjob.yml --web.listen-address=:10110
  asyncjob-exporter check-config asyncjob.yml
  asyncjob-exporter mixin --config mixin.yml --out monitoring/
"""


SIMULATOR_STEP_SECONDS = 3.0


def _env(flag: str, default: str | None) -> str | None:
    return os.environ.get("ASYNCJOB_" + flag.upper().replace(".", "_").replace("-", "_"), default)


def _seconds(text: str) -> float:
    """A positive Prometheus duration (`10s`, `500ms`) for a flag, in seconds."""
    from exporter.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return seconds


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log.level",
        dest="log_level",
        default=_env("log.level", "info"),
        choices=["debug", "info", "warn", "warning", "error"],
        help="log level (default: info)",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        default=_env("log.format", "logfmt"),
        choices=["logfmt", "json"],
        help="log format (default: logfmt)",
    )


def _add_simulator(p: argparse.ArgumentParser, trickle: float) -> None:
    """The simulator's flags, spelt the same by `demo` and `simulate`."""
    p.add_argument(
        "--simulator.step-seconds",
        dest="step_seconds",
        type=float,
        default=SIMULATOR_STEP_SECONDS,
        help=f"how long each simulated job step takes (default: {SIMULATOR_STEP_SECONDS:g})",
    )
    p.add_argument(
        "--simulator.trickle",
        dest="trickle",
        type=float,
        default=trickle,
        help=f"seconds between new simulated jobs; 0 = none (default: {trickle:g})",
    )
    # Earlier spellings of `simulate`, still read.
    p.add_argument(
        "--step-seconds", dest="step_seconds", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    p.add_argument("--trickle", dest="trickle", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncjob-exporter",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"asyncjob-exporter {__version__}")
    p.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        default=_env("config.file", None),
        help="YAML config file (targets, global defaults, state_file, api)",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        default=_env("web.listen-address", ":10110"),
        metavar="[HOST]:PORT",
        help="address to serve /metrics and the API on (default: :10110)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        default=_env("web.config.file", None),
        help="exporter-toolkit web config: tls_server_config, basic_auth_users (bcrypt)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default=_env("web.telemetry-path", "/metrics"),
        metavar="PATH",
        help="path under which to expose metrics (default: /metrics)",
    )
    p.add_argument(
        "--web.disable-exporter-metrics",
        dest="disable_exporter_metrics",
        action="store_true",
        default=(_env("web.disable-exporter-metrics", "") or "").lower() in ("1", "true", "yes"),
        help="leave out the process_* and python_* metrics of the exporter's own process",
    )
    p.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        default=(_env("web.enable-lifecycle", "") or "").lower() in ("1", "true", "yes"),
        help="serve POST /-/reload (behind the API token when one is set); SIGHUP always reloads",
    )
    p.add_argument(
        "--web.read-header-timeout",
        dest="read_header_timeout",
        type=_seconds,
        default=_env("web.read-header-timeout", "10s"),
        metavar="DURATION",
        help="close a connection whose request headers are not in within this time, or whose "
        "body is not in within this time after them (default: 10s)",
    )
    p.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        default=int(_env("web.max-connections", "512") or 512),
        metavar="N",
        help="open connections at most; past it the one waiting longest for its headers is closed "
        "(default: 512)",
    )
    p.add_argument(
        "--shard",
        type=int,
        default=int(_env("shard", "0") or 0),
        help="this replica's shard number, from 0 (default: 0)",
    )
    p.add_argument(
        "--total-shards",
        dest="total_shards",
        type=int,
        default=int(_env("total-shards", "1") or 1),
        help="number of replicas sharing the jobs by a stable hash (default: 1)",
    )
    _add_common(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the simulator and the exporter together",
        description="Start the built-in simulator of every provider and the exporter "
        "against it, with a steady trickle of new jobs. No config, no network.",
    )
    demo.add_argument(
        "--web.listen-address",
        dest="listen",
        default=":10110",
        metavar="[HOST]:PORT",
        help="exporter address (default: :10110)",
    )
    demo.add_argument(
        "--simulator.listen-address",
        dest="sim_listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="simulator address (default: a free port on 127.0.0.1)",
    )
    _add_simulator(demo, trickle=2.0)
    _add_common(demo)

    sim = sub.add_parser(
        "simulate",
        help="run the provider simulator alone",
        description="Serve every provider's API on one port (/basiq/…, /oxlin/…, "
        "/willsuite/…, /aims360/…, /generic/…) with realistic job lifecycles, plus "
        "/_sim/jobs to create jobs, /_sim/faults to inject faults and /_sim/stats.",
    )
    sim.add_argument(
        "--web.listen-address",
        dest="listen",
        default="127.0.0.1:10111",
        metavar="HOST:PORT",
        help="simulator address (default: 127.0.0.1:10111)",
    )
    _add_simulator(sim, trickle=0.0)
    sim.add_argument(
        "--simulator.seed",
        "--seed",
        dest="seed",
        type=int,
        default=None,
        help="random seed for reproducible runs",
    )
    _add_common(sim)

    mixin = sub.add_parser(
        "mixin",
        help="write alert rules, their promtool tests and dashboards for your setup",
        description="Write the alert rules, promtool tests of them and the Grafana dashboards "
        "from a mixin YAML (selector, Grafana URL, job page scheme, runbook base, thresholds, "
        "severity per alert, job objectives; docs/alerts.md and docs/slos.md list the keys). Unset "
        "keys keep the shipped values. With --config.file, its slos must be the mixin's. "
        "Check the output with: promtool test rules DIR/alerts/tests/generated.yml",
    )
    mixin.add_argument("--config", dest="mixin_config", metavar="FILE", default=None, help="mixin YAML")
    mixin.add_argument("--out", dest="out", metavar="DIR", required=True, help="directory to write into")
    mixin.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="the exporter's config: its slos must agree with the mixin's",
    )
    _add_common(mixin)

    check = sub.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate FILE (and ASYNCJOB_* variables): exit 0, or print "
        "every problem with its key path and exit 2.",
    )
    check.add_argument("file", metavar="FILE")
    _add_common(check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from exporter import commands, logs
    from exporter.connections import ConnectionLimits

    logs.setup("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    if args.command == "mixin":
        return commands.write_mixin(args.mixin_config, args.out, args.config_file)
    if args.command == "check-config":
        return commands.check_config(args.file)
    if args.command == "simulate":
        return commands.run_simulate(args.listen, args.step_seconds, args.trickle, args.seed)
    if args.command == "demo":
        return commands.run_demo(args.listen, args.sim_listen, args.step_seconds, args.trickle)
    if args.max_connections < 1:
        print("--web.max-connections must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.shard < args.total_shards:
        print("--shard must be between 0 and --total-shards - 1", file=sys.stderr)
        return 2
    if not args.telemetry_path.startswith("/") or args.telemetry_path.rstrip("/") in ("", "/api"):
        print("--web.telemetry-path must be a path such as /metrics", file=sys.stderr)
        return 2
    if not args.config_file:
        print("--config.file is required (or run `asyncjob-exporter demo`); see --help", file=sys.stderr)
        return 2
    return commands.run_exporter(
        args.config_file,
        args.listen,
        args.web_config,
        args.shard,
        args.total_shards,
        lifecycle=args.enable_lifecycle,
        telemetry_path=args.telemetry_path,
        exporter_metrics=not args.disable_exporter_metrics,
        limits=ConnectionLimits(args.read_header_timeout, args.max_connections),
    )


if __name__ == "__main__":
    sys.exit(main())
