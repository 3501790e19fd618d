"""Command line: parse flags, pick the subcommand, nothing else."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from exporter import __version__

DESCRIPTION = """\
Prometheus exporter for asynchronous jobs run by third-party APIs (Basiq, Oxlin,
WillSuite, AIMS360, or any JSON job API). It polls the providers' jobs and queues on its
own schedule, follows each job's transitions and serves them on /metrics.

Without a subcommand it runs the exporter with --config.file. Every config key can also
be set through ASYNCJOB_* variables (nested keys joined by __, e.g.
ASYNCJOB_GLOBAL__POLL_INTERVAL=1m). Flags read ASYNCJOB_<FLAG> defaults too, e.g.
ASYNCJOB_WEB_LISTEN_ADDRESS. Global flags mean the same before or after a subcommand.
"""

EPILOG = """\
subcommands:
  demo           simulator of every provider + exporter, no config, no network
  simulate       the simulator alone (tests, demos, benchmarks)
  check-config   validate a config file: exit 0, or list every problem and exit 2
  mixin          alert rules, promtool tests and dashboards from your mixin YAML
  state copy     carry a state file's jobs into a cluster's PostgreSQL (docs/ha.md)

examples:
  asyncjob-exporter demo
  asyncjob-exporter demo --web.listen-address=:10110     # reachable from other hosts
  asyncjob-exporter --config.file=asyncjob.yml --web.listen-address=:10110
  asyncjob-exporter check-config asyncjob.yml
  asyncjob-exporter mixin --config mixin.yml --out monitoring/
  asyncjob-exporter state copy --from state.db --to postgresql://asyncjob@db:5432/asyncjob \
      --to-password-file /etc/asyncjob/pg-password
"""

GLOBAL_FLAGS = "global flags (the same before or after the subcommand; ASYNCJOB_<FLAG> sets their defaults)"

SIMULATOR_STEP_SECONDS = 3.0

# Where each command listens unless told otherwise: the exporter on every interface (it is
# scraped), the demo and the simulator on loopback alone (a demo's API has no token).
LISTEN_ADDRESS = {None: ":10110", "demo": "127.0.0.1:10110", "simulate": "127.0.0.1:10111"}


# First segments of the exporter's own paths, which an external URL's path may not start with.
OWN_PATHS = {"jobs", "api", "metrics", "healthz", "readyz", "-"}


def _env(flag: str, default: str | None) -> str | None:
    return os.environ.get("ASYNCJOB_" + flag.upper().replace(".", "_").replace("-", "_"), default)


def _env_bool(flag: str) -> bool:
    return (_env(flag, "") or "").lower() in ("1", "true", "yes")


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


def listen_address(text: str) -> str:
    """`[host]:port`; a bare port (`10140`) reads as `:10140`, as a port alone means to people."""
    from exporter.parsing import is_digits

    address = text.strip()
    if is_digits(address):
        address = ":" + address
    host, sep, port = address.rpartition(":")
    if not sep or not is_digits(port) or int(port) > 65535 or (host.startswith("[") != host.endswith("]")):
        variable = "ASYNCJOB_WEB_LISTEN_ADDRESS"
        where = f" (set in {variable})" if os.environ.get(variable) == text else ""
        raise argparse.ArgumentTypeError(
            f"{text!r}{where} is not [host]:port (e.g. :10110 or 127.0.0.1:10110)"
        )
    return address


def external_url(text: str) -> str:
    """An absolute http(s) URL without credentials; the base of the links the exporter makes."""
    from urllib.parse import urlsplit

    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    variable = "ASYNCJOB_WEB_EXTERNAL_URL"
    where = f" (set in {variable})" if os.environ.get(variable) == text else ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r}{where} is not an absolute http(s) URL, e.g. https://asyncjob.example.com"
        )
    if "@" in parts.netloc:
        raise argparse.ArgumentTypeError(f"must not hold credentials (user:password@host){where}")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"must not hold a query or a fragment{where}")
    first = parts.path.strip("/").split("/")[0]
    if first in OWN_PATHS:
        # The exporter answers under the URL's path too: this one would hide its own /{first}.
        raise argparse.ArgumentTypeError(
            f"its path must not start with /{first}, a path of the exporter{where}"
        )
    return url


def _add_global(p: argparse.ArgumentParser, top: bool) -> None:
    """The global flags. On the main parser they carry the defaults (ASYNCJOB_* variables
    first); on a subcommand they carry none, so one written after the subcommand overrides
    and one left out keeps what was written before it, or its default."""
    g: Any = p if top else p.add_argument_group(GLOBAL_FLAGS)

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    g.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        default=default(_env("config.file", None)),
        help="YAML config file (targets, global defaults, state_file, api)",
    )
    g.add_argument(
        "--web.listen-address",
        dest="listen",
        type=listen_address,
        default=default(_env("web.listen-address", None)),
        metavar="[HOST]:PORT",
        help="address to serve on; a bare port means every interface (default: :10110; "
        "demo 127.0.0.1:10110, simulate 127.0.0.1:10111)",
    )
    g.add_argument(
        "--web.external-url",
        dest="external_url",
        type=external_url,
        default=default(_env("web.external-url", None)),
        metavar="URL",
        help="the URL people reach the exporter at (a proxy, an ingress, a port-forward): the base "
        "of every link it makes; a path in it is served too, beside / (default: links relative "
        "to the host asked)",
    )
    g.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        default=default(_env("web.config.file", None)),
        help="exporter-toolkit web config: tls_server_config, basic_auth_users (bcrypt)",
    )
    g.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default=default(_env("web.telemetry-path", "/metrics")),
        metavar="PATH",
        help="path under which to expose metrics (default: /metrics)",
    )
    g.add_argument(
        "--web.disable-exporter-metrics",
        dest="disable_exporter_metrics",
        action="store_true",
        default=default(_env_bool("web.disable-exporter-metrics")),
        help="leave out the process_* and python_* metrics of the exporter's own process",
    )
    g.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        default=default(_env_bool("web.enable-lifecycle")),
        help="serve POST /-/reload (behind the API token when one is set); SIGHUP always reloads",
    )
    g.add_argument(
        "--web.read-header-timeout",
        dest="read_header_timeout",
        type=_seconds,
        default=default(_env("web.read-header-timeout", "10s")),
        metavar="DURATION",
        help="close a connection whose request headers are not in within this time, or whose "
        "body is not in within this time after them (default: 10s)",
    )
    g.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        default=default(_env("web.max-connections", "512")),
        metavar="N",
        help="open connections at most, TLS handshakes included; past it one that has not "
        "authenticated a request (else does not read its answers, else is idle) is closed "
        "(default: 512)",
    )
    g.add_argument(
        "--shard",
        type=int,
        default=default(_env("shard", "0")),
        help="this replica's shard number, from 0 (default: 0)",
    )
    g.add_argument(
        "--total-shards",
        dest="total_shards",
        type=int,
        default=default(_env("total-shards", "1")),
        help="number of replicas sharing the jobs by a stable hash (default: 1)",
    )
    g.add_argument(
        "--log.level",
        dest="log_level",
        default=default(_env("log.level", "info")),
        choices=["debug", "info", "warn", "warning", "error"],
        help="log level (default: info)",
    )
    g.add_argument(
        "--log.format",
        dest="log_format",
        default=default(_env("log.format", "logfmt")),
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
    _add_global(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the simulator and the exporter together",
        description="Start the built-in simulator of every provider and the exporter "
        "against it, with a steady trickle of new jobs. No config, no network. It listens on "
        "127.0.0.1:10110 unless told otherwise (--web.listen-address=:10110 for every interface).",
    )
    demo.add_argument(
        "--simulator.listen-address",
        dest="sim_listen",
        type=listen_address,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="simulator address (default: a free port on 127.0.0.1)",
    )
    _add_simulator(demo, trickle=2.0)
    _add_global(demo, top=False)

    sim = sub.add_parser(
        "simulate",
        help="run the provider simulator alone",
        description="Serve every provider's API on one port (/basiq/…, /oxlin/…, "
        "/willsuite/…, /aims360/…, /generic/…) with realistic job lifecycles, plus "
        "/_sim/jobs to create jobs, /_sim/faults to inject faults and /_sim/stats. "
        "It listens on --web.listen-address (default: 127.0.0.1:10111).",
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
    _add_global(sim, top=False)

    mixin = sub.add_parser(
        "mixin",
        help="write alert rules, their promtool tests and dashboards for your setup",
        description="Write the alert rules, promtool tests of them and the Grafana dashboards "
        "from a mixin YAML (selector, Grafana URL, the exporter's external URL, runbook base, "
        "thresholds, severity per alert, job objectives; docs/alerts.md and docs/slos.md list the "
        "keys). Unset keys keep the shipped values. With --config.file, its slos must be the "
        "mixin's. Check the output with: promtool test rules DIR/alerts/tests/generated.yml",
    )
    mixin.add_argument("--config", dest="mixin_config", metavar="FILE", default=None, help="mixin YAML")
    mixin.add_argument("--out", dest="out", metavar="DIR", required=True, help="directory to write into")
    _add_global(mixin, top=False)

    check = sub.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate FILE (default: --config.file) and ASYNCJOB_* variables: exit 0, "
        "or print every problem with its key path and exit 2. Warnings (an open API on every "
        "interface, a placeholder secret) go to stderr and leave the exit code at 0.",
    )
    check.add_argument("file", metavar="FILE", nargs="?", default=None)
    _add_global(check, top=False)

    state = sub.add_parser(
        "state",
        help="move the exporter's state between stores",
        description="Work on the exporter's saved state. `state copy` carries a state file into "
        "a cluster's PostgreSQL (docs/ha.md).",
    )
    _add_global(state, top=False)
    state_sub = state.add_subparsers(dest="state_command", metavar="COMMAND", required=True)
    copy = state_sub.add_parser(
        "copy",
        help="carry a state file's jobs, marks, tombstones and cursors into PostgreSQL",
        description="Copy the tracked jobs (each with its counted-once marks), tombstones, cursors "
        "and quarantined jobs of the SQLite state file FILE into the PostgreSQL state database at "
        "URL, creating or migrating its schema, each row under its virtual shard. Stop the exporter "
        "that writes FILE first (the copy reads one snapshot and never writes the file). The copy "
        "is one transaction and adds only rows whose key the database does not hold yet: run "
        "again, it adds nothing twice, and it never replaces a replica's newer row. It refuses "
        "(exit 2) while replicas run against the database: copy, then start them. What was "
        "copied is printed; an error is one line (exit 1: the database could not be reached or "
        "written).",
    )
    copy.add_argument("--from", dest="copy_from", metavar="FILE", required=True, help="the SQLite state file")
    copy.add_argument(
        "--to",
        dest="copy_to",
        metavar="URL",
        default=os.environ.get("ASYNCJOB_STATE_URL"),
        help="the state database, postgresql://USER@HOST:PORT/DB, no password in it "
        "(default: ASYNCJOB_STATE_URL)",
    )
    copy.add_argument(
        "--to-password-file",
        dest="to_password_file",
        metavar="FILE",
        default=os.environ.get("ASYNCJOB_STATE_PASSWORD_FILE"),
        help="file whose first line is the database password (default: ASYNCJOB_STATE_PASSWORD_FILE, "
        "else libpq's PGPASSFILE or ~/.pgpass)",
    )
    _add_global(copy, top=False)
    return p


def _web_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the web flags, in one line; None when nothing is."""
    if args.max_connections < 1:
        return "--web.max-connections must be at least 1"
    if not 0 <= args.shard < args.total_shards:
        return "--shard must be between 0 and --total-shards - 1"
    if not args.telemetry_path.startswith("/") or args.telemetry_path.rstrip("/") in ("", "/api"):
        return "--web.telemetry-path must be a path such as /metrics"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from exporter import commands, logs
    from exporter.httpserver.protocol import ConnectionLimits

    logs.setup("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    listen = args.listen or LISTEN_ADDRESS.get(args.command, LISTEN_ADDRESS[None])
    if args.command == "mixin":
        return commands.write_mixin(args.mixin_config, args.out, args.config_file)
    if args.command == "check-config":
        path = args.file or args.config_file
        if not path:
            print("check-config needs FILE (or --config.file); see check-config --help", file=sys.stderr)
            return 2
        return commands.check_config(path, listen, args.web_config)
    if args.command == "state":
        if not args.copy_to:
            print("state copy needs --to URL (or ASYNCJOB_STATE_URL); see state copy --help", file=sys.stderr)
            return 2
        return commands.copy_state(args.copy_from, args.copy_to, args.to_password_file)
    if args.command == "simulate":
        return commands.run_simulate(listen, args.step_seconds, args.trickle, args.seed)
    problem = _web_problem(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    web = commands.Web(
        listen=listen,
        config_file=args.web_config,
        telemetry_path=args.telemetry_path,
        lifecycle=args.enable_lifecycle,
        exporter_metrics=not args.disable_exporter_metrics,
        external_url=args.external_url or "",
        limits=ConnectionLimits(args.read_header_timeout, args.max_connections),
    )
    if args.command == "demo":
        if args.config_file:
            print(
                "--config.file (ASYNCJOB_CONFIG_FILE) does not apply to demo, which runs its built-in config",
                file=sys.stderr,
            )
            return 2
        return commands.run_demo(
            web, args.sim_listen, args.step_seconds, args.trickle, args.shard, args.total_shards
        )
    if not args.config_file:
        print("--config.file is required (or run `asyncjob-exporter demo`); see --help", file=sys.stderr)
        return 2
    return commands.run_exporter(args.config_file, web, args.shard, args.total_shards)


if __name__ == "__main__":
    sys.exit(main())
