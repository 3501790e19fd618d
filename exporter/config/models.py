"""The config models: the YAML file's keys and ASYNCJOB_* variables, and a target resolved against `global`."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SkipValidation,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from exporter import job_history
from exporter.config.registry import ProviderSpec, Registry, _registry
from exporter.config.slos import SLO, unique_names
from exporter.config.values import (
    Duration,
    PositiveDuration,
    SecretEnv,
    SecretFile,
    TokenFile,
    did_you_mean,
    read_token,
    without_credentials,
)
from exporter.model import Cause, Status
from exporter.parsing import text_id, why_not_id

log = logging.getLogger("asyncjob.config")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


AuthType = Literal["none", "bearer", "basic", "basiq", "oauth2_client_credentials", "oauth2_password"]

# Which secrets each auth type needs; each comes from `<name>_file` or `<name>_env`.
_AUTH_SECRETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "bearer": ("token",),
    "basic": ("password",),
    "basiq": ("api_key",),
    "oauth2_client_credentials": ("client_secret",),
    "oauth2_password": ("password",),
}
_AUTH_FIELDS: dict[str, tuple[str, ...]] = {
    "basic": ("username",),
    "oauth2_client_credentials": ("token_url", "client_id"),
    "oauth2_password": ("token_url", "username"),
}


class AuthConfig(_Strict):
    """How to authenticate to a target. Secrets are read from files or the environment, never YAML.

    Files are read when a token is needed, so a rotated secret is picked up without a restart.
    """

    type: AuthType = "none"
    token_file: SecretFile | None = None
    token_env: SecretEnv | None = None
    api_key_file: SecretFile | None = None
    api_key_env: SecretEnv | None = None
    password_file: SecretFile | None = None
    password_env: SecretEnv | None = None
    client_secret_file: SecretFile | None = None
    client_secret_env: SecretEnv | None = None
    username: str | None = None
    client_id: str | None = None
    token_url: str | None = None
    token_body: Literal["form", "json"] = "form"
    token_params: dict[str, str] = Field(default_factory=dict)
    scope: str | None = None

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, v: str | None) -> str | None:
        return None if v is None else without_credentials(v)

    @model_validator(mode="after")
    def _needs(self) -> AuthConfig:
        problems = []
        for secret in _AUTH_SECRETS[self.type]:
            has_file = getattr(self, f"{secret}_file") is not None
            has_env = getattr(self, f"{secret}_env") is not None
            if self.type == "oauth2_password" and secret == "password" and not (has_file or has_env):
                continue  # a password grant with an empty password is the provider's business
            if not (has_file or has_env):
                problems.append(f"auth type {self.type} needs {secret}_file or {secret}_env")
            elif has_file and has_env:
                problems.append(f"give {secret}_file or {secret}_env, not both")
        if self.type == "oauth2_password" and not (self.client_secret_file or self.client_secret_env):
            pass  # public clients have no secret
        for name in _AUTH_FIELDS.get(self.type, ()):
            if not getattr(self, name):
                problems.append(f"auth type {self.type} needs {name}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def secret(self, name: str) -> SecretStr | None:
        """The current value of secret `name` (`token`, `api_key`, `password`, `client_secret`)."""
        path = getattr(self, f"{name}_file")
        if path:
            return SecretStr(Path(path).read_text(encoding="utf-8").strip())
        env = getattr(self, f"{name}_env")
        if env:
            return SecretStr(os.environ.get(env, "").strip())
        return None


class GenericFields(_Strict):
    """Dotted paths into a generic provider's job object."""

    id: str = "id"
    status: str = "status"
    percent: str | None = None
    type: str | None = None
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    updated: str | None = None
    message: str | None = None
    reason: str | None = None
    records_total: str | None = None
    records_affected: str | None = None
    records_failed: str | None = None
    attempts: str | None = None


class GenericSteps(_Strict):
    """Where a generic job lists its steps, and the fields of each."""

    path: str
    name: str = "name"
    status: str = "status"


def _status_map(value: Any) -> dict[str, Status]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of provider status to pending|running|succeeded|failed|unknown")
    out: dict[str, Status] = {}
    for raw, norm in value.items():
        try:
            out[str(raw).strip().lower()] = Status(str(norm).strip().lower())
        except ValueError:
            raise ValueError(
                f"{raw}: {norm!r} is not one of pending, running, succeeded, failed, unknown"
            ) from None
    return out


StatusMap = Annotated[dict[str, Status], BeforeValidator(_status_map)]

# Per-target overrides of `global`; None means "inherit".
INHERITED_KEYS = (
    "poll_interval",
    "timeout",
    "concurrency",
    "stuck_after",
    "max_duration",
    "retention",
    "max_jobs_per_target",
    "max_requests_per_second",
    "per_job_series",
    "per_job_series_limit",
    "max_step_names",
)

# Which jobs have per-job series: every one, only those that need a person, none, or `auto`
# (every one while the target's tracked jobs stay under per_job_series_limit).
PerJobSeries = Literal["auto", "all", "exceptions", "none"]
DEFAULT_PER_JOB_SERIES_LIMIT = 10000
DEFAULT_MAX_STEP_NAMES = 64


class GlobalConfig(_Strict):
    """Defaults every target inherits unless it sets its own."""

    poll_interval: PositiveDuration | None = Field(
        None,
        description="How often each target is polled. Unset: the provider's advice (willsuite 5m), else 30s.",
    )
    timeout: PositiveDuration = Field(10.0, description="Timeout of one HTTP request to a provider.")
    concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight per target.")
    stuck_after: PositiveDuration = Field(1800.0, description="No observed progress for this long: stuck.")
    max_duration: PositiveDuration = Field(21600.0, description="Running longer than this: overdue.")
    retention: Duration = Field(900.0, description="How long a finished job keeps its series.")
    max_jobs_per_target: int = Field(
        10000, ge=1, description="Tracked jobs per target; the excess is dropped."
    )
    max_requests_per_second: float | None = Field(
        None, gt=0, description="Request budget per target. Unset: the provider's advice, else unlimited."
    )
    max_response_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="A larger provider answer is refused (bad_body)."
    )
    per_job_series: PerJobSeries = Field(
        "auto",
        description="Which jobs have per-job series: `all`; `exceptions` (only jobs that need a "
        "person: failed, stuck, overdue, awaiting the user, failing records, status unknown); "
        "`none`; `auto` (`all` under `per_job_series_limit` tracked jobs, `exceptions` above it, "
        "`all` again under 80 % of it). Aggregates are the same in every mode: see "
        "[cardinality](metrics.md#cardinality).",
    )
    per_job_series_limit: int = Field(
        DEFAULT_PER_JOB_SERIES_LIMIT,
        ge=1,
        description="Tracked jobs of a target above which `auto` exports only the exceptions.",
    )
    max_step_names: int = Field(
        DEFAULT_MAX_STEP_NAMES,
        ge=1,
        description='Step names per target in the step histograms; later names count as `step="other"`.',
    )
    history: Duration = Field(
        job_history.DEFAULT_PERIOD,
        description="How long a finished job's page, timeline, message and cause stay readable (on "
        "/jobs and the API) after `retention` dropped its series. Kept in the state file (in memory "
        "without one); 0 = off.",
    )
    history_max_jobs: int = Field(
        job_history.DEFAULT_MAX_JOBS,
        ge=1,
        description="Jobs the history keeps at most; the oldest dropped go first.",
    )
    history_max_bytes: int = Field(
        job_history.DEFAULT_MAX_BYTES,
        ge=1024,
        description="Bytes of job data the history keeps at most; the oldest dropped go first.",
    )


class TargetConfig(_Strict):
    """One provider account to poll. `name` becomes the `target` label."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    provider: str
    base_url: str
    auth: AuthConfig = Field(default_factory=AuthConfig)
    poll_interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    concurrency: int | None = Field(None, ge=1, le=1024)
    stuck_after: PositiveDuration | None = None
    max_duration: PositiveDuration | None = None
    retention: Duration | None = None
    max_jobs_per_target: int | None = Field(None, ge=1)
    max_requests_per_second: float | None = Field(None, gt=0)
    per_job_series: PerJobSeries | None = None
    per_job_series_limit: int | None = Field(None, ge=1)
    max_step_names: int | None = Field(None, ge=1)
    per_job_metrics: bool | None = Field(
        None, description="Deprecated: `true` reads as `per_job_series: all`, `false` as `none`."
    )
    cause_map: dict[str, Cause] = Field(
        default_factory=dict,
        description="Failure reason -> who must act (user|provider|unknown), over the provider's own map.",
    )
    # Discovery and provider specifics; each provider says which it reads.
    jobs: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    queues: list[str] = Field(default_factory=list)
    connections: list[str] = Field(default_factory=list)
    discover_filter: str | None = None
    job_path: str | None = None
    list_path: str | None = None
    items: str | None = None
    fields: GenericFields | None = None
    steps: GenericSteps | None = None
    status_map: StatusMap | None = None
    timezone: str = "UTC"
    auto_rerun: bool = False
    max_reruns: int = Field(1, ge=0, le=10)

    @field_validator("jobs", "users", "queues", "connections", mode="before")
    @classmethod
    def _ids_as_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(x) for x in v]
        return v

    @field_validator("jobs", "users", "queues", "connections")
    @classmethod
    def _usable_ids(cls, v: list[str]) -> list[str]:
        # As the API refuses such an id (422): one that could never be polled, read or deleted,
        # or that would name another path than its own (`..`).
        for i, text in enumerate(v):
            if text_id(text) is None:
                raise ValueError(f"item {i}: an id {why_not_id(text)}")
        return v

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, v: str) -> str:
        providers = _registry()
        if v not in providers:
            raise ValueError(
                f"unknown provider {v!r}; known: {', '.join(sorted(providers))}{did_you_mean(v, providers)}"
            )
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return without_credentials(v).rstrip("/")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _per_job_metrics(self) -> TargetConfig:
        if self.per_job_metrics is not None:
            series = "all" if self.per_job_metrics else "none"
            if self.per_job_series is not None and self.per_job_series != series:
                raise ValueError(
                    f"per_job_metrics: {str(self.per_job_metrics).lower()} contradicts "
                    f"per_job_series: {self.per_job_series}; keep per_job_series only"
                )
            log.warning(
                "per_job_metrics is deprecated: read as per_job_series",
                extra={"target": self.name, "per_job_series": series},
            )
        return self

    @model_validator(mode="after")
    def _provider_keys(self) -> TargetConfig:
        problems = _registry()[self.provider].check_target(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ApiConfig(_Strict):
    token_file: SecretFile | None = Field(
        None,
        description="Bearer token required on /api/v1 and /-/reload when set. An empty or blank file "
        "is refused. Read at start and reload, and again when the file changes.",
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    _token: TokenFile | None = PrivateAttr(None)

    @field_validator("token_file")
    @classmethod
    def _token_in_file(cls, v: str | None) -> str | None:
        if v is not None:
            read_token(v)  # an empty or blank file: refused naming it (start, check-config, reload)
        return v

    def model_post_init(self, context: Any) -> None:
        if self.token_file:
            self._token = TokenFile(self.token_file)

    def token(self) -> SecretStr | None:
        """The API token (never empty), as last read from `token_file`; None without one."""
        return None if self._token is None else SecretStr(self._token.current())


ENV_PREFIX = "ASYNCJOB_"
# The runbooks shipped in docs/, as the mixin's `runbook_base_url` (exporter/mixin/config.py) links
# them from every alert.
DEFAULT_RUNBOOK_BASE_URL = "https://github.com/asyncjob-exporter/asyncjob-exporter/blob/main/docs/runbooks.md"


class _GlobalEnv(PydanticBaseSettingsSource):
    """ASYNCJOB_GLOBAL__<KEY> for the `global` section (its Python name is `global_`)."""

    PREFIX = "ASYNCJOB_GLOBAL__"

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        section: dict[str, Any] = {}
        for key, value in os.environ.items():
            if key.upper().startswith(self.PREFIX):
                section[key[len(self.PREFIX) :].lower()] = value
        return {"global": section} if section else {}


class ClusterConfig(_Strict):
    """How this replica takes part in the cluster when `state_url` is set (docs/ha.md)."""

    replica: str = Field(
        "",
        max_length=200,
        description='This replica\'s name, unique in the cluster; "" = `<hostname>:<port>` of '
        "--web.listen-address. A replica restarted under the same name renews its own leases at once.",
    )
    lease_ttl: PositiveDuration = Field(
        15.0,
        ge=3.0,
        description="How long a replica's leases on its virtual shards last without a renewal (renewed "
        "every third of it): the longest a dead replica's jobs wait for another replica.",
    )
    advertise_url: str = Field(
        "",
        pattern=r"^(https?://\S+)?$",
        description="This replica's own address, linked from the other members' landing pages.",
    )


def _postgres_url(url: str) -> str:
    """A PostgreSQL URL without a password: the password goes in `state_password_file`."""
    from urllib.parse import urlsplit

    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"not a URL: {e}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must start with postgresql://")
    if parts.password is not None or "password=" in parts.query:
        raise ValueError("holds a password: put it in state_password_file (or libpq's PGPASSFILE) instead")
    return url


class Settings(BaseSettings):
    """The whole configuration: YAML file first, overridden by ASYNCJOB_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="ASYNCJOB_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    _providers: Registry = PrivateAttr(default_factory=dict)

    global_: GlobalConfig = Field(default_factory=GlobalConfig, alias="global")
    state_file: str = Field(
        "",
        description='SQLite file that keeps tracked jobs across restarts; "" = memory. '
        "A 202 to a registration means it is in this file: see [the state file](#the-state-file-state_file).",
    )
    state_url: str = Field(
        "",
        description="PostgreSQL database shared by the replicas of a cluster, instead of `state_file`: "
        "`postgresql://USER@HOST:PORT/DB` (libpq's URL, sslmode and the rest as query parameters). "
        "Every replica with the same `state_url` and config is a member: see docs/ha.md.",
    )
    state_password_file: SecretFile | None = Field(
        None, description="File holding the password of `state_url`'s user (else libpq's PGPASSFILE)."
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig,
        description="This replica's part in the cluster, with `state_url`: see [cluster](#cluster).",
    )
    api: ApiConfig = Field(default_factory=ApiConfig)
    watchdog_timeout: Duration = Field(
        30.0,
        description="The event loop not turning for this long ends the process (exit 70) after logging "
        "the target and job it was busy with, which is then quarantined: skipped for a day. 0 = off.",
    )
    targets: list[TargetConfig] = Field(default_factory=list)
    runbook_base_url: str = Field(
        DEFAULT_RUNBOOK_BASE_URL,
        pattern=r"^https?://\S+$",
        description="Where the job pages link each job's runbook section: `<base>#<alert name in "
        "lower case>`, as the mixin's `runbook_base_url`. Default: the runbooks shipped in docs/.",
    )
    slos: list[SLO] = Field(
        default_factory=list,
        description="Job objectives counted in `asyncjob_slo_jobs_total`: see [slos[]](#slos).",
    )

    @field_validator("state_url")
    @classmethod
    def _state_url(cls, v: str) -> str:
        return _postgres_url(v)

    @field_validator("runbook_base_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, _GlobalEnv(settings_cls), init_settings)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for t in self.targets:
            if t.name in seen:
                raise ValueError(f"targets: duplicate target name {t.name!r}")
            seen.add(t.name)
        problems = unique_names(self.slos)
        if self.state_url and self.state_file:
            problems.append("state_url: give state_url or state_file, not both")
        if self.state_password_file is not None and not self.state_url:
            problems.append("state_password_file: only with state_url")
        for i, slo in enumerate(self.slos):
            if not any(slo.covers_target(t.name) for t in self.targets):
                problems.append(f"slos[{i}]: no target matches {slo.target_matcher}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resolved(self, target: TargetConfig) -> ResolvedTarget:
        resolved = ResolvedTarget.build(self.global_, target, self._providers[target.provider])
        slos = tuple(slo for slo in self.slos if slo.covers_target(target.name))
        return resolved.model_copy(update={"slos": slos}) if slos else resolved

    def resolved_targets(self) -> list[ResolvedTarget]:
        return [self.resolved(t) for t in self.targets]


DEFAULT_POLL_INTERVAL = 30.0


class ResolvedTarget(BaseModel):
    """A target with every inherited setting filled in: what the scheduler runs."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: Annotated[TargetConfig, SkipValidation]  # validated already, with the registry
    # The target's provider class, so that what it knows (causes, reasons) needs no registry.
    provider_class: Annotated[ProviderSpec, SkipValidation, Field(repr=False)]
    poll_interval: float
    timeout: float
    concurrency: int
    stuck_after: float
    max_duration: float
    retention: float
    max_jobs: int
    max_requests_per_second: float | None
    max_response_bytes: int
    per_job_series: PerJobSeries = "auto"
    per_job_series_limit: int = DEFAULT_PER_JOB_SERIES_LIMIT
    max_step_names: int = DEFAULT_MAX_STEP_NAMES
    poll_interval_below_advice: bool = False
    slos: tuple[SLO, ...] = ()  # the objectives covering this target's jobs

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def provider(self) -> str:
        return self.config.provider

    @property
    def causes(self) -> Mapping[str, Cause]:
        """Who must act on each failure reason the provider documents."""
        return self.provider_class.causes

    @property
    def known_reasons(self) -> tuple[str, ...]:
        """The failure reasons the provider documents: their counters exist at 0."""
        return self.provider_class.known_reasons

    @property
    def discovers(self) -> bool:
        """Whether the target finds jobs itself (a list, a queue), which can list a job it dropped."""
        return self.provider_class.discovers(self.config)

    @classmethod
    def build(cls, g: GlobalConfig, t: TargetConfig, pcls: ProviderSpec) -> ResolvedTarget:
        values: dict[str, Any] = {}
        for key in INHERITED_KEYS:
            own = getattr(t, key)
            values[key] = own if own is not None else getattr(g, key)
        advised = pcls.advised_poll_interval
        interval = values["poll_interval"]
        if interval is None:
            interval = advised or DEFAULT_POLL_INTERVAL
        rps = values["max_requests_per_second"] or pcls.advised_requests_per_second
        series = values["per_job_series"]
        if t.per_job_series is None and t.per_job_metrics is not None:
            series = "all" if t.per_job_metrics else "none"  # the deprecated key, over `global`
        return cls(
            config=t,
            provider_class=pcls,
            poll_interval=interval,
            timeout=values["timeout"],
            concurrency=values["concurrency"],
            stuck_after=values["stuck_after"],
            max_duration=values["max_duration"],
            retention=values["retention"],
            max_jobs=values["max_jobs_per_target"],
            max_requests_per_second=rps,
            max_response_bytes=g.max_response_bytes,
            per_job_series=series,
            per_job_series_limit=values["per_job_series_limit"],
            max_step_names=values["max_step_names"],
            poll_interval_below_advice=bool(advised and interval < advised),
        )
