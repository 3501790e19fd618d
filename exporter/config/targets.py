"""The keys of one target (its auth, a generic provider's fields and steps), the `global` defaults
it inherits, and the target resolved against them: what the scheduler runs."""

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
    SecretStr,
    SkipValidation,
    field_validator,
    model_validator,
)

from exporter import job_history
from exporter.config.registry import ProviderSpec, _registry
from exporter.config.slos import SLO
from exporter.config.values import (
    Duration,
    PositiveDuration,
    SecretEnv,
    SecretFile,
    did_you_mean,
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
