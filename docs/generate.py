"""Writes the reference docs from the code they describe: docs/configuration.md from the config
models (exporter/config/models.py, targets.py) and docs/metrics.md from the exposition (exporter/render/).

python docs/generate.py           # regenerate both files
python docs/generate.py --check   # exit 1 when a committed file is stale
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from exporter import catalogue  # noqa: E402
from exporter import config as cfg  # noqa: E402
from exporter.config import targets as target_models  # noqa: E402
from exporter.config.slos import SLO  # noqa: E402
from exporter.model import Channel, Connection, Job, Status, Step  # noqa: E402
from exporter.poll_errors import ERROR_REASONS  # noqa: E402
from exporter.providers import PROVIDERS  # noqa: E402
from exporter.providers.base import COMMON_KEYS, PollResult  # noqa: E402
from exporter.render import Exposition  # noqa: E402
from exporter.runtime import Runtime  # noqa: E402
from exporter.tracker import Tracker  # noqa: E402

CONFIGURATION = REPO / "docs" / "configuration.md"
METRICS = REPO / "docs" / "metrics.md"

# ---------------------------------------------------------------------------------------
# docs/configuration.md
# ---------------------------------------------------------------------------------------

# (YAML key, model, introduction) in the order a reader meets them.
SECTIONS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("(top level)", cfg.Settings, "The file's top-level keys."),
    ("global", cfg.GlobalConfig, ""),
    ("targets[]", cfg.TargetConfig, ""),
    ("targets[].auth", cfg.AuthConfig, ""),
    ("targets[].fields", cfg.GenericFields, ""),
    ("targets[].steps", cfg.GenericSteps, ""),
    ("api", cfg.ApiConfig, "The job registration API under `/api/v1`."),
    (
        "cluster",
        cfg.ClusterConfig,
        "Replicas sharing a PostgreSQL database (`state_url`) split the jobs by leases on virtual "
        "shards: see docs/ha.md.",
    ),
    (
        "slos[]",
        SLO,
        "Job objectives (docs/slos.md): each job they cover is judged once in "
        f"`{catalogue.SLO_JOBS.name}`. The mixin config takes the same list to write the SLO rules, "
        "alerts and dashboards.",
    ),
)

# Descriptions of fields whose models carry none; a `description=` on the Field in
# exporter/config/models.py or targets.py takes precedence over these.
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("Settings", "global_"): "Defaults for every target: see [global](#global).",
    ("Settings", "api"): "The registration API: see [api](#api).",
    ("Settings", "targets"): "The provider accounts to poll: see [targets[]](#targets).",
    ("TargetConfig", "name"): "Unique name of the target; becomes the `target` label.",
    ("TargetConfig", "provider"): "Which provider's API this is.",
    ("TargetConfig", "base_url"): "The provider API's base URL (`http://` or `https://`).",
    ("TargetConfig", "auth"): "How to authenticate: see [targets[].auth](#targetsauth).",
    ("TargetConfig", "jobs"): "Job ids to track from the start (more arrive through discovery or the API).",
    (
        "TargetConfig",
        "users",
    ): "Users whose job lists are read to discover jobs (Basiq: jobs of the last 7 days).",
    ("TargetConfig", "queues"): "Event queues to read; every connection seen in a queue is tracked (Oxlin).",
    ("TargetConfig", "connections"): "Connection ids polled directly (Oxlin).",
    (
        "TargetConfig",
        "discover_filter",
    ): "A filter that lists the jobs to track, e.g. an OData `$filter` (AIMS360).",
    ("TargetConfig", "job_path"): "Path of one job, with `{id}` where its id goes (generic).",
    ("TargetConfig", "list_path"): "Path that lists jobs to discover (generic).",
    ("TargetConfig", "items"): "Dotted path to the jobs inside the list's answer (generic).",
    ("TargetConfig", "fields"): "Where each job field is: see [targets[].fields](#targetsfields) (generic).",
    ("TargetConfig", "steps"): "Where the job's steps are: see [targets[].steps](#targetssteps) (generic).",
    ("TargetConfig", "status_map"): (
        "Provider status → `pending`, `running`, `succeeded`, `failed` or `unknown` (generic); "
        "an unmapped status is `unknown` and its raw value is kept."
    ),
    ("TargetConfig", "timezone"): "Time zone of timestamps the provider writes without one.",
    ("TargetConfig", "auto_rerun"): "Rerun a failed job when the provider allows it (AIMS360 `canReRun`).",
    ("TargetConfig", "max_reruns"): "Reruns per job at most when `auto_rerun` is on.",
    ("AuthConfig", "type"): "The authentication flow.",
    ("AuthConfig", "token_file"): "File holding the bearer token (`bearer`).",
    ("AuthConfig", "token_env"): "Environment variable holding the bearer token (`bearer`).",
    ("AuthConfig", "api_key_file"): "File holding the API key, exactly as issued (`basiq`).",
    ("AuthConfig", "api_key_env"): "Environment variable holding the API key (`basiq`).",
    ("AuthConfig", "password_file"): "File holding the password (`basic`, `oauth2_password`).",
    ("AuthConfig", "password_env"): "Environment variable holding the password (`basic`, `oauth2_password`).",
    ("AuthConfig", "client_secret_file"): "File holding the OAuth2 client secret.",
    ("AuthConfig", "client_secret_env"): "Environment variable holding the OAuth2 client secret.",
    ("AuthConfig", "username"): "User name (`basic`, `oauth2_password`).",
    ("AuthConfig", "client_id"): "OAuth2 client id.",
    ("AuthConfig", "token_url"): "OAuth2 token endpoint.",
    ("AuthConfig", "token_body"): "How the token request's body is encoded.",
    (
        "AuthConfig",
        "token_params",
    ): "Extra fields of the token request's body, e.g. `{provider: linxoConnect}`.",
    ("AuthConfig", "scope"): "OAuth2 scope (`basiq`: default `SERVER_ACCESS`).",
    ("GenericFields", "id"): "The job's id.",
    ("GenericFields", "status"): "The job's status, read through `status_map`.",
    ("GenericFields", "percent"): "Completion, 0-100.",
    ("GenericFields", "type"): "The job's type (the `job_type` label).",
    ("GenericFields", "created"): "When the job was created.",
    ("GenericFields", "started"): "When the job started.",
    ("GenericFields", "finished"): "When the job ended.",
    ("GenericFields", "updated"): "When the provider last changed the job (counts as progress).",
    ("GenericFields", "message"): "Free-text message; served by the API, never a label.",
    ("GenericFields", "reason"): "Bounded error code of a failed job (the `reason` label).",
    ("GenericFields", "records_total"): "Records the job handles.",
    ("GenericFields", "records_affected"): "Records the job changed.",
    ("GenericFields", "records_failed"): "Records that failed.",
    ("GenericFields", "attempts"): "Attempts the provider made.",
    ("GenericSteps", "path"): "Dotted path to the list of steps in the job object.",
    ("GenericSteps", "name"): "The step's name, inside one step (the `step` label).",
    ("GenericSteps", "status"): "The step's status, inside one step, read through `status_map`.",
    ("ApiConfig", "max_body_bytes"): "A larger registration body is refused with 413.",
}

# Validators by what they make of a value, to name the type the user writes.
_VALIDATOR_TYPES = {
    "parse_duration": "duration",
    "_readable_file": "path",
    "_present_env": "variable name",
    "_status_map": "map of status",
}


def _validator_type(meta: list[Any]) -> str | None:
    for m in meta:
        func = getattr(m, "func", None)
        name = getattr(func, "__name__", "")
        if name in _VALIDATOR_TYPES:
            return _VALIDATOR_TYPES[name]
    return None


def _bounds(meta: list[Any]) -> list[str]:
    out = []
    for m in meta:
        if isinstance(m, FieldInfo):
            out += _bounds(list(m.metadata))
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(m, attr, None)
            if value is not None and type(m).__name__.lower() == attr:
                out.append(f"{sign} {value:g}" if isinstance(value, int | float) else f"{sign} {value}")
        pattern = getattr(m, "pattern", None)
        if pattern:
            out.append(f"matches `{pattern}`")
    return out


def type_text(annotation: Any, meta: list[Any]) -> tuple[str, list[str]]:
    """The type as a user writes it in YAML, and its bounds."""
    bounds = _bounds(meta)
    named = _validator_type(meta)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *inner = typing.get_args(annotation)
        text, more = type_text(base, inner)
        return (named or text), bounds + more
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        parts = [type_text(a, []) for a in args]
        return (named or " or ".join(p[0] for p in parts)), bounds + [b for p in parts for b in p[1]]
    if named:
        return named, bounds
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation)), bounds
    if origin is list:
        (item,) = typing.get_args(annotation)
        text, _ = type_text(item, [])
        return f"list of {text}", bounds
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"map of {type_text(key, [])[0]} to {type_text(value, [])[0]}", bounds
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping", bounds
    if isinstance(annotation, type) and issubclass(annotation, Status):
        return "status", bounds
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation))), bounds


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def default_text(info: FieldInfo, kind: str) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        return "`[]`" if value == [] else "`{}`" if value == {} else f"`{value!r}`"
    value = info.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if kind == "duration":
        return f"`{_duration(float(value))}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    return f"`{value}`"


def _providers_using(key: str) -> str:
    if key in COMMON_KEYS:
        return ""
    users = sorted(name for name, p in PROVIDERS.items() if key in p.config_keys)
    return f" Read by: {', '.join(users)}." if users else " Read by no registered provider yet."


def describe(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    text = info.description or DESCRIPTIONS.get((model.__name__, name), "")
    if model is cfg.TargetConfig and name in cfg.GlobalConfig.model_fields and not text:
        text = f"Overrides [`global.{name}`](#global) for this target."
    if not text:
        raise SystemExit(
            f"{model.__name__}.{name} has no description: add description= to its Field in "
            "exporter/config/models.py or targets.py (or an entry in docs/generate.py DESCRIPTIONS)"
        )
    if model is cfg.TargetConfig:
        text += _providers_using(name)
    return text.replace("|", "\\|")


def _model_doc(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    return re.sub(r"\s*\n\s*", " ", doc.split("\n\n")[0]) if doc else ""


def configuration_md() -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/generate.py from exporter/config/models.py and targets.py: edit those, not this file. -->",
        "",
        "The exporter reads one YAML file (`--config.file`). Every key can also be set through an",
        "`ASYNCJOB_*` environment variable, nested keys joined by `__`",
        "(`ASYNCJOB_GLOBAL__POLL_INTERVAL=1m`); the environment wins over the file.",
        "`asyncjob-exporter check-config FILE` validates a file and names every problem by its key path.",
        "SIGHUP (or `POST /-/reload` with `--web.enable-lifecycle`) applies a changed file without losing",
        "tracked jobs.",
        "",
        "Durations are Prometheus-style (`500ms`, `30s`, `5m`, `1h30m`) or a number of seconds.",
        "Secrets are never written in the file: each comes from a file (`*_file`, read again when a",
        "token is needed, so rotation needs no restart) or an environment variable (`*_env`).",
        "A relative `*_file` path is read from the config file's directory. A misspelt key or",
        "`ASYNCJOB_*` variable is named with a suggestion; `asyncjob-exporter check-config FILE`",
        "lists every problem. Commented examples per provider: [examples/](../examples/).",
        "",
        f"Providers: {', '.join(f'`{p}`' for p in sorted(PROVIDERS))}.",
        "",
    ]
    for key, model, intro in SECTIONS:
        lines += [f"## {key}", ""]
        doc = intro or _model_doc(model)
        if doc:
            lines += [doc, ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            yaml_key = info.alias or name
            meta = list(info.metadata)
            kind, bounds = type_text(info.annotation, meta)
            type_cell = kind + (f" ({', '.join(bounds)})" if bounds else "")
            lines.append(
                f"| `{yaml_key}` | {type_cell} | {default_text(info, kind)} | {describe(model, name, info)} |"
            )
        lines.append("")
    lines += [*STATE_FILE, ""]
    lines += [
        "## Auth types",
        "",
        "| `type` | needs |",
        "|---|---|",
    ]
    for auth_type in typing.get_args(cfg.AuthType):
        needs = [f"`{s}_file` or `{s}_env`" for s in target_models._AUTH_SECRETS.get(auth_type, ())]
        needs += [f"`{f}`" for f in target_models._AUTH_FIELDS.get(auth_type, ())]
        lines.append(f"| `{auth_type}` | {', '.join(needs) or 'nothing'} |")
    lines += ["", *FRONT_DOOR, ""]
    return "\n".join(lines)


# Who may reach what, and how it is checked (exporter/webconfig.py, exporter/api.py).
FRONT_DOOR = (
    "## The front door (`--web.config.file`, `api.token_file`)",
    "",
    "- `--web.config.file` is exporter-toolkit's format. Every key is honoured or refused at start",
    "  (exit 2, one line naming the key); none is ignored.",
    "  - `tls_server_config`: `cert_file` and `key_file` (a pair that does not load exits 2);",
    "    `client_ca_file` with `client_auth_type` (any type but `NoClientCert` needs `client_ca_file`,",
    "    and certificates are always verified against it, `RequireAnyClientCert` included);",
    "    `min_version` (default `TLS12`) and `max_version` (`TLS10` … `TLS13`); `cipher_suites`",
    "    (Go's names of TLS 1.2 suites; TLS 1.3 suites are not configurable, as in Go);",
    "    `prefer_server_cipher_suites`. `curve_preferences`, `client_allowed_sans` and inline",
    "    `cert`/`key` are refused.",
    "  - `http_server_config.headers` (`Content-Security-Policy`, `Strict-Transport-Security`,",
    "    `X-Content-Type-Options`, `X-Frame-Options`, `X-XSS-Protection`) are added to every",
    "    response; `http2: true` is refused (HTTP/1.1 is served).",
    "  - `basic_auth_users`: user → bcrypt hash (`$2a$`, `$2b$` or `$2y$`, cost 4 to 31), checked at",
    "    start. Every endpoint but `/healthz` asks for them. bcrypt runs in one worker thread, so a",
    "    flood of wrong passwords never holds the event loop (it queues there: during one, a client's",
    "    first check waits its turn); a successful check is cached (a SHA-256 of the header, 256",
    "    entries), so a scraper pays bcrypt once; an unknown user is checked against a dummy hash of",
    "    the highest configured cost, so it takes as long as a known one.",
    "- `api.token_file`: `/api/v1` and `POST /-/reload` ask for `Authorization: Bearer <token>`.",
    "  With basic auth configured (it takes the `Authorization` header), send the token as",
    "  `X-Asyncjob-Token: <token>` beside the basic credentials. An empty or blank file is refused",
    "  at start (exit 2 naming the file), by `check-config` and at reload (the old token stays). The",
    "  file is read at start and at reload, and again when it changes (its mtime, size or inode,",
    "  looked at once a second at most), never at every request; found empty then (a rotation half",
    "  written), the token read before is kept. An empty header never matches.",
    "- Connections: one whose request headers are not complete within `--web.read-header-timeout`",
    "  (default 10s) of opening or of its previous response, or whose body is not complete within",
    "  as long again after its headers, is closed (on a TLS port, so is one that has not finished",
    "  its handshake by then), and so is one whose client reads none of its answers for 10s. At",
    "  most `--web.max-connections` (default 512) are open, TLS handshakes included; past it the",
    "  exporter closes, in this order, the oldest connection that has not authenticated a request",
    "  (with basic auth: sent credentials already verified; without it: sent any request), the one",
    "  that has left its answers unread longest, the authenticated one idle longest; a new",
    "  connection is refused only when every other one has authenticated and is being answered.",
    "  Reaching the cap is logged at warn once per burst and counted",
    f"  (`{catalogue.WEB_CONNECTIONS_CLOSED.name}`, `{catalogue.WEB_CONNECTIONS_REFUSED.name}`). A",
    "  request still waiting for its answer when a connection that never authenticated goes (a",
    "  wrong password queued for bcrypt) is dropped. A TLS connection the exporter closes gives",
    "  its descriptor back at once (close_notify is sent; the client's is not waited for). Accept",
    "  errors (out of file descriptors) are logged once per burst.",
    "- `POST /-/reload` is served only with `--web.enable-lifecycle` (as Prometheus); SIGHUP always",
    "  reloads. Both read the config file and `--web.config.file` afresh, as exporter-toolkit reads",
    "  its file: users (credentials verified before are checked again), response headers, and the",
    "  TLS files and settings from the next handshake on. A problem in either file changes nothing",
    f"  (`{catalogue.CONFIG_RELOAD_SUCCESSFUL.name} 0`); turning TLS on or off needs a restart.",
    "  `/-/reload` answers 415 to the content types a browser posts cross-site without asking",
    "  (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`) and 403 to a",
    "  request a browser marks `Sec-Fetch-Site: cross-site` or `same-site`; `curl -X POST` reloads.",
    "- The API reads `application/json` and `application/*+json` bodies (any charset parameter; the",
    "  body is read as UTF-8) and answers 415 to anything else, so a cross-site form post registers",
    "  nothing.",
    "- Ids (registered, or listed under a target's `jobs`, `users`, `queues`, `connections`) are data,",
    "  never paths: each travels to the provider as exactly one URL path segment (`/`, `?`, `#`, `%`",
    "  and the dots of `.` and `..` escaped). Empty ids, `.`, `..`, ids holding a control character",
    "  or a lone surrogate, and ids longer than 512 bytes of UTF-8 (`exporter.parsing.MAX_ID_BYTES`)",
    "  are refused: 422 with `field: id` at registration, exit 2 naming the key in the config. An",
    "  answer to a request about one job that is about another id is counted as",
    f'  `{catalogue.POLL_ERRORS.name}{{reason="id_mismatch"}}` and never applied.',
)

# What `state_file` promises; in both documents.
STATE_FILE = (
    "## The state file (`state_file`)",
    "",
    "SQLite in WAL mode keeps tracked jobs, their progress stamps, counted-once marks, tombstones",
    "and Oxlin queue cursors. Changes are committed by one writer, all those made while the",
    "exporter served other requests in one transaction (group commit), timed by",
    f"`{catalogue.STATE_COMMIT_DURATION.name}` (a histogram, served with a state file or `state_url`).",
    "",
    "- **A 202 means committed.** `POST /api/v1/targets/{target}/jobs` answers 202 only once the",
    "  registration is in the file; 503 (with `Retry-After`) when it cannot be made durable.",
    "- **Counted once, even across `kill -9`.** A finished job's increment of",
    f"  `{catalogue.JOBS_FINISHED.name}` (and of the failed, duration and records families, step",
    f"  durations, and `{catalogue.QUEUE_EVENTS.name}` behind a queue cursor) shows on `/metrics` only",
    "  once the mark that stops it being counted again is committed.",
    "- **What it survives.** `synchronous=NORMAL`: a commit has passed through the kernel before",
    "  anyone hears of it, so it survives the process dying in any way (`kill -9`, OOM kill, a",
    "  crash). An operating-system crash or power loss may roll back the last commits (the file",
    "  stays consistent); put the file on storage that outlives the container if restarts of the",
    "  node must keep it.",
    "- **Write failures are loud and lossless.** A failed write (read-only mount, full disk) keeps",
    "  its changes pending and is retried (every 0.25 s, backing off to 2 s); the SQLite error is",
    f"  logged once per change of error; `{catalogue.STATE_WRITE_ERRORS.name}` counts attempts that",
    f"  failed, `{catalogue.STATE_PENDING_WRITES.name}` shows what waits; `/readyz` and registrations",
    "  answer 503 until a write succeeds, and everything pending is then written. A file that",
    "  cannot be written at start is read (when it can be), served, and written once it can be.",
    "- **Tombstones.** A job dropped as gone, retained or deleted is remembered for 8 days, so",
    "  that a provider still listing it does not bring it back; while the provider keeps listing",
    "  it the stamp is renewed once a day and written, so a restart keeps it too. Only a target",
    "  that discovers jobs (Basiq `users`, AIMS360 `discover_filter`, generic `list_path`, Oxlin)",
    "  keeps them in the file, where an id listed again is looked up; memory holds a target's",
    "  newest 4,096 (with state in memory only, an older one is forgotten: a job listed again",
    "  after that is first seen finished longer than `retention` ago, history, not counted).",
    "  Tombstones past their 8 days are deleted from the file every minute, 5,000 at a time.",
    "- **A file that stays its size.** Free pages are reused, and past a quarter of the file",
    "  given back (`auto_vacuum=INCREMENTAL`; a file made by an older release is rebuilt with it",
    "  at start when under 64 MiB). The WAL is copied in every second, and past 4 MiB with the",
    f"  writer held off, so that it starts again from its beginning. `{catalogue.STATE_SIZE.name}`",
    "  is the file and its WAL.",
    "- **A job that freezes the exporter is quarantined.** Should a bug block the event loop, a",
    "  watchdog thread notices it has not turned for `watchdog_timeout` (30 s), logs the target",
    "  and job being polled with the stack, records the job in the file and exits 70. Every",
    "  process that starts on the file skips the job for a day (neither polled nor read; counted",
    f"  by `{catalogue.JOBS_QUARANTINED.name}`, flagged on its page), then polls it again. With state in",
    "  memory only the job is named in the log and nothing is kept: a static or listed job is",
    "  polled again after the restart.",
    "- **History outlives retention.** A finished job that `retention` drops leaves its per-job",
    "  series, but its page, timeline, message and cause stay readable at `/jobs/{target}/{id}`,",
    "  in the API and in the /jobs search (id prefix, status, cause, reason, finished between)",
    "  for `history` (7 days; 0 = off). The row is written in the transaction that drops the job;",
    "  past `history`, `history_max_jobs` (100,000) or `history_max_bytes` (128 MiB of job data)",
    f"  the oldest dropped go first. `{catalogue.HISTORY_JOBS.name}` and `{catalogue.HISTORY_BYTES.name}` show its",
    "  size. With state in memory only, the same bounded table is kept in memory.",
    "- **A bad row is skipped, named.** A row that does not read back as a job (tampered JSON,",
    "  a field of the wrong type, text that is not Unicode) is skipped with its target and key",
    "  in the log; the other rows are restored.",
)

# ---------------------------------------------------------------------------------------
# docs/metrics.md
# ---------------------------------------------------------------------------------------

# What a job costs, with the figures measured (bench/jobrate.py `capacity`, bench/memory.py).
CAPACITY = (
    "## Capacity: what a job costs",
    "",
    "Measured on Basiq jobs (36-character ids, three steps, a full history), Python 3.11:",
    "",
    "| what | memory | state file |",
    "|---|---|---|",
    "| a tracked job (running, or finished within `retention`) | 1.7-1.9 KiB (RSS growth from 1,000 to 50,000 jobs polled, [benchmarks](benchmarks.md)) | ~2.1 KiB a row |",
    "| a job dropped (tombstone), for 8 days | ~130 B, a target's newest 4,096 only: at most ~0.5 MiB a target | ~130 B a row, only for a target that discovers jobs; none otherwise |",
    "",
    "So memory grows with the jobs tracked (those running, and those finished within",
    "`retention`), not with the rate at which jobs finish: at 50 jobs a second, each running ~3 s",
    "with `retention: 20s`, about 1,100 jobs are tracked and RSS grew 0.78 MiB over ten minutes",
    "and 30,000 jobs finished (the soak in [benchmarks](benchmarks.md); the C heap runs with a fixed",
    "mmap threshold and two arenas and gives its free pages back every 30 s, else it ratchets up",
    "with bursts of load). A target that discovers jobs keeps a tombstone row per job",
    "dropped in the last 8 days: 50 jobs a second dropped that way is ~35 million rows, ~4.3 GiB.",
    "Disk figures: `python -c 'from bench import jobrate; print(jobrate.capacity())'` (a Store",
    "written with 20,000 such jobs, then their tombstones; pages in use over jobs).",
)

# Every label the exporter writes, in the user's words; a new label must be added here.
LABELS: dict[str, str] = {
    "target": "the target's `name` in the config",
    "job_id": "the provider's job id",
    "provider": "`basiq`, `oxlin`, `willsuite`, `aims360` or `generic`",
    "job_type": "the provider's job type (Basiq `jobType`, AIMS360 category, …); empty when unknown",
    "status": "a state: the normalised job status, or the Oxlin connection status",
    "step": (
        "the step's name as the provider gives it (e.g. Basiq `verify-credentials`); in the step "
        "histograms, `other` for names past the target's `max_step_names`: see [Step names](#step-names)"
    ),
    "kind": "`total`, `affected` or `failed`",
    "reason": (
        "a bounded reason: the provider's error code or state (failed jobs), the class of a failed "
        f"request ({', '.join(f'`{r}`' for r in ERROR_REASONS)}), why a job stopped being tracked, or why the exporter closed a connection. "
        "`id_mismatch` counts answers to a request about one job (or Oxlin connection) that were "
        "about another id: they are never applied (list and batch answers, and an AIMS360 rerun's "
        "new id, are what they are)"
    ),
    "cause": (
        "who must act on a failed job: `user` (the end user: wrong credentials, an expired MFA, a "
        "lapsed consent), `provider` (institution, connector, maintenance, the provider's own "
        "failure) or `unknown`; see [Who must act](#who-must-act)"
    ),
    "connection_id": "the Oxlin connection id",
    "source": "a configured source of jobs: `user <id>` (Basiq), `queue <id>` or `connection <id>` "
    "(Oxlin), `backgroundjob` (AIMS360), `list <path>` (generic)",
    "raw_status": "the provider's own status text of a state it does not document (the first 20 "
    "a target sees; later ones are `other`)",
    "channel": "the Oxlin channel (`channel_definition_id`)",
    "queue": "the Oxlin queue id",
    "event_type": "the queue event's type (e.g. `SYNC_ALL_SUCCESS`, `AUTH_FAILED`)",
    "version": f"the exporter's version (`{catalogue.BUILD_INFO.name}`), or Python's (`python_info`)",
    "implementation": "the Python implementation (prometheus-client's `python_info`)",
    "major": "Python's major version",
    "minor": "Python's minor version",
    "patchlevel": "Python's patch level",
    "generation": "the garbage collector's generation (prometheus-client's `python_gc_*`)",
    "slo": "the `name` of a job objective in `slos:` (docs/slos.md)",
    "result": "how a job counts for its objective: `good`, `bad` or `user` (outside the SLI)",
}

# Labels that name a thing (never a fixed set of values). The values of the other labels of a
# state set (a gauge with a series for every state) are listed.
IDENTITY_LABELS = {
    "target",
    "job_id",
    "job_type",
    "step",
    "connection_id",
    "channel",
    "queue",
    "provider",
    "slo",
}


@dataclass
class MetricFamily:
    name: str
    type: str
    help: str
    labels: list[str] = field(default_factory=list)
    values: dict[str, list[str]] = field(default_factory=dict)
    enumerates: bool = False  # a state set: a zero-valued series for every state but the current one


_HEADER = re.compile(r"^# (HELP|TYPE) (\S+) ?(.*)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def families_of(text: str) -> dict[str, MetricFamily]:
    """Families of a text exposition in order, named as their HELP/TYPE lines name them."""
    out: dict[str, MetricFamily] = {}
    current: MetricFamily | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            kind, name, rest = header.groups()
            current = out.setdefault(name, MetricFamily(name, "", ""))
            if kind == "HELP":
                current.help = rest
            else:
                current.type = rest
            continue
        sample = _SAMPLE.match(line)
        if sample is None or current is None:
            continue
        if sample.group(3) == "0" and current.type == "gauge":
            current.enumerates = True
        for label, value in _LABEL.findall(sample.group(2) or ""):
            if label == "le" and current.type == "histogram":
                continue
            if label not in current.labels:
                current.labels.append(label)
            seen = current.values.setdefault(label, [])
            if value not in seen:
                seen.append(value)
    return out


def sample_exposition() -> str:
    """A rendered exposition with every family holding samples: one target with jobs in every
    state, steps, records, a connection with channels, queue events and request counts."""
    target = cfg.TargetConfig.model_construct(
        name="example", provider="basiq", base_url="https://api.example.com", auth=cfg.AuthConfig()
    )
    resolved = cfg.ResolvedTarget.build(cfg.GlobalConfig(), target, PROVIDERS["basiq"])
    slo = SLO(name="imports", target="example", job_type="import", objective=0.99, latency=300)
    resolved = resolved.model_copy(update={"slos": (slo,)})
    tracker = Tracker()
    stats = {"example": (3, {"timeout": 1})}
    exposition = Exposition(tracker, lambda: stats)
    tracker.set_target(resolved)
    now = 1_700_000_000.0
    steps = (
        Step("verify-credentials", Status.SUCCEEDED),
        Step("retrieve-accounts", Status.RUNNING),
    )
    tracker.track(
        "example",
        Job("1", Status.RUNNING, "in-progress", "connection", created=now, updated=now, steps=steps),
        "static",
        now,
    )
    tracker.update(
        tracker.targets["example"],
        Job(
            "1",
            Status.RUNNING,
            "in-progress",
            "connection",
            created=now,
            updated=now + 30,
            steps=(steps[0], Step("retrieve-accounts", Status.SUCCEEDED)),
        ),
        now + 30,
    )
    tracker.track(
        "example",
        Job(
            "2",
            Status.RUNNING,
            "processing",
            "import",
            percent=40,
            created=now,
            started=now,
            records_total=10,
            records_affected=4,
            records_failed=1,
            attempts=1,
        ),
        "registered",
        now,
    )
    tracker.update(
        tracker.targets["example"],
        Job(
            "2",
            Status.FAILED,
            "failed",
            "import",
            created=now,
            started=now,
            finished=now + 60,
            records_total=10,
            records_affected=9,
            records_failed=1,
            attempts=1,
            reason="invalid-credentials",
        ),
        now + 60,
    )
    channel = Channel("bank-redirect", "SUCCESS", last_success=now, expires=now + 86400 * 90)
    tracker.apply(
        "example",
        PollResult(
            connections=[Connection("4243", "SUCCESS", last_success=now, channels=(channel,))],
            queue_events=[("20", "SYNC_ALL_SUCCESS")],
            jobs=[Job("3", Status.FAILED, "Failed", "import", reason="connector-error")],
        ),
        now + 90,
    )
    # A rerun the exporter started replaces the failed job.
    tracker.apply(
        "example",
        PollResult(jobs=[Job("4", Status.PENDING, "Queued", "import")], replaced={"3": "4"}),
        now + 120,
    )
    # A job in a state the provider does not document, and a configured source answering 404.
    tracker.track("example", Job("5", Status.UNKNOWN, "ON_HOLD", "connection"), "static", now + 120)
    state = tracker.targets["example"]
    state.missing["user ea3a81"] = now + 60
    state.up, state.polled_once, state.last_success = True, True, now + 90
    state.poll_duration.observe(0.2)
    return exposition.render().decode()


def collect_families() -> list[MetricFamily]:
    # The running exporter's own exposition names every family, including those added beside
    # the renderer (config reload); the sample fills them with labels.
    runtime = Runtime(cfg.build_settings({}, PROVIDERS))
    live = families_of(runtime.exposition.render().decode())
    sample = families_of(sample_exposition())
    for name, family in live.items():
        if name in sample and sample[name].labels:
            family.labels, family.values = sample[name].labels, sample[name].values
            family.enumerates = sample[name].enumerates
    # The cluster mode's families, from the catalogue while one process does not serve them.
    waiting = [
        MetricFamily(f.name, f.type, f.help, list(f.labels))
        for f in catalogue.WITH_STATE_URL
        if f.name not in live
    ]
    return [*live.values(), *waiting]


def section_of(family: MetricFamily) -> str:
    if family.name in {f.name for f in (*catalogue.CLUSTER, *catalogue.WITH_STATE_URL)}:
        return "cluster"
    if family.name in {f.name for f in catalogue.PER_JOB}:
        return "jobs"
    if {"connection_id", "queue"} & set(family.labels):
        return "connections"
    if "job_type" in family.labels:
        return "aggregates"
    return "targets"


SECTION_TITLES = {
    "jobs": (
        "Per job",
        "One set of series per tracked job, labelled `target` and `job_id`. Rendered when the "
        "job changes; dropped `retention` after the job ends. The target's `per_job_series` says "
        "which jobs have them (every one, only those that need a person, or none): see "
        "[Cardinality](#cardinality).",
    ),
    "aggregates": (
        "Aggregates",
        "Per target and job type. Counters restart from 0 with the process, as Prometheus "
        "expects, but a job counted before a restart is never counted again. A job first seen "
        "already finished long ago is history, not counted: see [History is not news]"
        "(#history-is-not-news).",
    ),
    "connections": ("Oxlin connections and queues", "Per target and connection (or queue)."),
    "targets": (
        "Targets and the exporter",
        "Per target, and about the exporter itself. The thresholds are series, so one alert "
        "rule serves every target.",
    ),
    "cluster": (
        "Cluster (`state_url`)",
        "Served by each replica of a cluster sharing PostgreSQL (`state_url`), about itself: a "
        "single process with its state file serves none of them. No labels of their own: the "
        "scrape's `instance` tells the replicas apart. The replicas together hold every virtual "
        f"shard when the sum of `{catalogue.CLUSTER_SHARDS_HELD.name}` over them equals "
        f"`{catalogue.CLUSTER_SHARDS.name}`; AsyncJobClusterShardsUnowned fires when it has not "
        "for two lease TTLs.",
    ),
}


# How the exporter decides what a failure or a finish means: choices a reader of the numbers
# must know, kept beside the tables they explain.
CHOICES = [
    "## Cardinality",
    "",
    "What a Prometheus behind the exporter stores is mostly per-job series. Measured on the demo "
    "(`asyncjob-exporter demo`, every provider of the simulator), one tracked job costs:",
    "",
    "| provider | series per job | what moves it |",
    "|---|---|---|",
    "| `basiq` | 24-35 | 5 per step (a state set), plus the step's duration once it ended: four steps, about 30 |",
    "| `willsuite` | 11-15 | the records (total, affected, failed) once known |",
    "| `aims360` | 11-13 | attempts and percent |",
    "| `oxlin` | 10-12 | one sync of a connection; the connection's and channels' own series are per connection |",
    "| `generic` | 13-16 and more | the fields and steps configured |",
    "",
    "Every mode serves the same aggregates, histograms and counters (per target and job type: a "
    "few hundred series whatever the number of jobs). `per_job_series` (in `global` or per "
    "target) says which jobs also have per-job series:",
    "",
    "- `all`: every tracked job, from its first answer until `retention` after it ended.",
    "- `exceptions`: only the jobs that need a person, while they do: failed (until `retention` "
    "drops them), stuck (no progress for `stuck_after`), overdue (running longer than "
    "`max_duration`), waiting for their end user, with failed records, or in a status no map "
    "knows (`unknown`). The exporter decides stuck and overdue itself, with the thresholds it "
    f"exports (`{catalogue.TARGET_STUCK_THRESHOLD.name}`, `{catalogue.TARGET_MAX_DURATION.name}`), "
    "and a job that goes quiet gets its series a poll interval (at most a tenth of the "
    "threshold) before it becomes stuck or overdue, without waiting for a new answer, so the "
    "rule's first evaluation past the threshold sees it: every shipped alert fires as in `all` (tests/e2e/test_detection.py "
    "runs the labelled fleet in both modes and asserts the same pages), the overview's panels of "
    "stuck, overdue, failed and waiting jobs show the same jobs. What is not there: a healthy "
    "job's series, so the job dashboard shows a job only while it needs a person; the exporter's "
    "own job pages (`/jobs`, `/jobs/{target}/{id}`) and the API show every job in every mode.",
    "- `none`: no per-job series; the aggregates, the job pages and the API remain.",
    "- `auto` (the default): `all` while the target tracks at most `per_job_series_limit` jobs "
    "(10,000), `exceptions` above it, `all` again once it tracks fewer than 80 % of the limit; "
    "each switch is logged (`per-job series: ...`, with the target and its job count).",
    "",
    "`per_job_metrics: true|false`, the key `per_job_series` replaces, is still read as "
    "`all|none`, with a deprecation line in the log.",
    "",
    "On a fleet where 95 % of the jobs need nobody, `exceptions` serves about a twentieth of the "
    "series of `all` (docs/benchmarks.md: 10,000 Basiq jobs, 305,980 series and 1.7 MiB a scrape "
    "in `all`, 15,980 series and 106 KiB in `exceptions`). What to choose:",
    "",
    "| tracked jobs | choose | series (Basiq-sized jobs, 5 % needing a person) |",
    "|---|---|---|",
    "| 1,000 | `all` (what `auto` does) | about 30,000: any Prometheus holds them |",
    "| 50,000 | `exceptions` (what `auto` does above 10,000 a target) | about 75,000 instead of 1.5 million |",
    "| 1,000,000 | `exceptions`, the jobs spread over replicas (`--shard`/`--total-shards` or "
    "`state_url`) | about 1.5 million over all replicas instead of 30 million; `none` where even "
    "the exceptions are too many (a provider-wide outage fails every job at once) |",
    "",
    "## Step names",
    "",
    "Step names come from the providers' answers, and each name a target sees adds a histogram of "
    f"its own per job type (`{catalogue.STEP_DURATION.name}`, about 430 bytes of exposition a name). "
    "A provider that makes names up would grow it for ever, so a target keeps at most "
    '`max_step_names` names (64 unless set): later names are counted as `step="other"`, and '
    "the first such name is logged once (`step names past max_step_names are counted as "
    'step="other"`, with the target and the name). A job\'s own series '
    f"(`{catalogue.JOB_STEP_STATUS.name}`, `{catalogue.JOB_STEP_DURATION.name}`) keep the provider's "
    "names: they go with the job.",
    "",
    "## OpenMetrics and exemplars",
    "",
    "A scraper whose `Accept` header prefers OpenMetrics (Prometheus asks for it first on every "
    "scrape) gets `application/openmetrics-text; version=1.0.0`: counters named by their family "
    f"(`# TYPE {catalogue.JOBS_FINISHED.name.removesuffix('_total')} counter`, samples still `{catalogue.JOBS_FINISHED.name}`), no "
    "`_created` series (Prometheus would store each as a series of its own), `# EOF` at the end, "
    f"and exemplars on the buckets of `{catalogue.JOB_DURATION.name}` and "
    f"`{catalogue.STEP_DURATION.name}`: the `job_id` and `target` of the last job that landed in "
    "the bucket, its value and when it was observed. An exemplar whose labels would pass "
    "OpenMetrics' 128 characters (a very long job id) is left out. Prometheus keeps exemplars "
    "when started with `--enable-feature=exemplar-storage`; the job dashboard's duration panels "
    "show them and link each to `/jobs/{target}/{job_id}` on the exporter (Grafana also takes an "
    "exemplar's link from its Prometheus datasource: deploy/compose provisions "
    "`exemplarTraceIdDestinations` for `job_id`). Every other scraper "
    "(no `Accept`, `*/*`, `text/plain`) gets the text format 0.0.4, as before. The per-job part "
    "is the same bytes in both formats and is compressed once for both.",
    "",
    "## Progress",
    "",
    f"`{catalogue.JOB_LAST_PROGRESS.name}` starts at the provider's own stamp: on the "
    "first answer for a job (discovered, configured or registered) it is the provider's `updated`, "
    "else its `created`, never later than now; only when the provider gives neither is it the "
    "moment the exporter learnt of the job. A job registered an hour after it last moved is an "
    "hour still at once, so AsyncJobStuck does not come a whole `stuck_after` late. After that it "
    "moves whenever the status, a step, the percent, the records or the provider's `updated` do.",
    "",
    "## History is not news",
    "",
    "A job whose first answer says it finished longer than `retention` before the exporter learnt "
    "of it (discovery found it, or its id was configured or registered) is history: Basiq's user "
    "lists hold a week of jobs, and a start without a state file, a new user or a recovered list "
    "call would otherwise count and page every old failure again. The end must be known to be "
    "that old: the provider's finished stamp, else its `updated` (a job does not change after it "
    "ends); a job whose answer has only `created` is news.",
    "",
    "History is tracked like any finished job (the API and the job pages show it until "
    "`retention` has passed, and its id stays remembered so discovery does not bring it back), "
    "but:",
    "",
    f"- it is not counted: not in `{catalogue.JOBS_FINISHED.name}`, `{catalogue.JOBS_FAILED.name}`, "
    f"`{catalogue.JOB_DURATION.name}`, the records counters, nor in `{catalogue.JOBS.name}`;",
    "- it has no per-job series, so no alert fires for it and no panel shows it as current;",
    "- the decision is kept in the state file: after a restart (even a `kill -9`) it is still "
    "history, and a job counted before the restart is not counted again;",
    "- a job that leaves its end again under the same id (an AIMS360 rerun) is news again: its "
    "next outcome is counted and alerts as usual.",
    "",
    "## Who must act",
    "",
    f"Every failed job has a bounded `cause` beside its `reason`, on `{catalogue.JOB_ERROR_INFO.name}` and "
    f"`{catalogue.JOBS_FAILED.name}`. It is, in this order: the target's `cause_map` entry for the "
    "reason; else what the provider's answer itself says (an MFA that expired, a lapsed consent); "
    "else the provider's map of its documented reasons (docs/providers.md); else `unknown`. The "
    "failed counters exist at zero for every documented reason, under its cause.",
    "",
    'No operator alert (severity `warning` or `critical`) fires for `cause="user"`: '
    "AsyncJobFailed and AsyncJobFailureRateHigh count provider and unknown causes only; "
    "AsyncJobUserFailureRateHigh (severity `info`) watches the end users' share, for the "
    'application team (alerts/alertmanager-inhibit.example.yml routes `cause="user"` there).',
    "",
    "## Job objectives",
    "",
    f"`{catalogue.SLO_JOBS.name}{{target, job_type, slo, result}}` is the SLI of each objective in "
    "`slos:` (docs/slos.md). Each job an objective covers is judged once for it: `good` when it "
    "succeeded within the objective's `latency` (from the job's creation), `bad` when it failed "
    "for any cause but its end user, succeeded later, or is still unfinished once the latency has "
    "passed (judged then: a provider that hangs burns budget at once, not when the job ends), "
    '`user` when the end user caused the failure (`cause="user"`) or was still being waited for '
    "when the latency passed. The error ratio is `bad / (good + bad)`; `user` stays out of it and "
    "is shown beside it.",
    "",
    "Why a counter of judgements rather than a duration histogram with the latency as a bucket: "
    "a histogram only learns of a job when it ends, so a hung provider would burn no budget until "
    "its jobs finished; it could not tell the end user's failures from the provider's without a "
    "label that multiplies every bucket; and each objective's latency would have to be a bucket "
    "bound of every job type. One counter with three results a job type stays three series per "
    "objective, has no per-job label, and reads directly as good and bad events in the rules. The "
    "judgement marks are kept in the state file with the job, so a job is counted once per "
    "objective across restarts, as the other counted-once families are.",
    "",
]


def metrics_md(families: list[MetricFamily] | None = None) -> str:
    families = collect_families() if families is None else families
    undocumented = sorted({lbl for f in families for lbl in f.labels} - set(LABELS))
    if undocumented:
        raise SystemExit(f"labels without a description in docs/generate.py LABELS: {undocumented}")
    lines = [
        "# Metrics reference",
        "",
        "<!-- Generated by docs/generate.py from exporter/render/: edit those, not this file. -->",
        "",
        "Every family the exporter serves on `/metrics`, in the order it serves them. The exporter",
        "polls the providers on its own schedule (`poll_interval`), not when Prometheus scrapes, so",
        "a scrape never waits for a provider. Timestamps are Unix seconds. Histograms have the",
        "usual `_bucket` (label `le`), `_sum` and `_count` series.",
        "",
    ]
    for key, (title, intro) in SECTION_TITLES.items():
        members = [f for f in families if section_of(f) == key]
        if not members:
            continue
        lines += [f"## {title}", "", intro, "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for f in members:
            labels = []
            for label in f.labels:
                values = f.values.get(label, [])
                if f.enumerates and label not in IDENTITY_LABELS and len(values) > 1:
                    labels.append(f"`{label}` ({', '.join(values)})")
                else:
                    labels.append(f"`{label}`")
            help_text = f.help.replace("|", "\\|")
            lines.append(f"| `{f.name}` | {f.type} | {', '.join(labels) or '—'} | {help_text} |")
        lines.append("")
    lines += CHOICES
    lines += [*STATE_FILE, "", *CAPACITY, ""]
    lines += ["## Labels", "", "| label | meaning |", "|---|---|"]
    used = {lbl for f in families for lbl in f.labels}
    lines += [f"| `{label}` | {text} |" for label, text in LABELS.items() if label in used]
    lines.append("")
    return "\n".join(lines)


def documented_families(text: str) -> list[str]:
    """Metric family names listed in a metrics.md text (the first cell of each table row)."""
    return re.findall(r"^\| `(asyncjob_[a-z0-9_]+)` \|", text, flags=re.MULTILINE)


def render() -> dict[Path, str]:
    return {CONFIGURATION: configuration_md(), METRICS: metrics_md()}


def iter_stale(files: dict[Path, str]) -> Iterator[Path]:
    for path, text in files.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            yield path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed file is stale")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = list(iter_stale(files))
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run python docs/generate.py")
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
