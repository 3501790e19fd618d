"""Configuration: pydantic models for the YAML file and ASYNCJOB_* variables; the only reader of both.

Everything past this module receives typed, validated objects. Errors carry the key
path (`targets[1].auth.client_secret_file`) so that a bad config is fixed in one go.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SkipValidation,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from exporter.model import Cause, Status
from exporter.parsing import clean_text

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _without_credentials(url: str) -> str:
    """`url`, refused when it holds user:password@: those would travel in clear and be printed
    wherever the URL is (logs, check-config); the message does not repeat them."""
    authority = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:
        raise ValueError("must not hold credentials (user:password@host); put them in auth")
    return url


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus-style duration (`500ms`, `30s`, `5m`, `1h30m`) or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h") from None
    else:
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[Duration, Field(gt=0)]


# Directory of the config file being validated: relative `*_file` paths are read from there, as
# Prometheus reads the files its config names.
_CONFIG_DIR: ContextVar[Path | None] = ContextVar("asyncjob_config_dir", default=None)


def _readable_file(path: str) -> str:
    base = _CONFIG_DIR.get()
    if base is not None and not Path(path).is_absolute():
        path = str(base / path)
    p = Path(path)
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    return path


def _present_env(name: str) -> str:
    if name not in os.environ:
        raise ValueError(f"environment variable {name} is not set")
    return name


SecretFile = Annotated[str, AfterValidator(_readable_file)]
SecretEnv = Annotated[str, AfterValidator(_present_env)]


class ProviderSpec(Protocol):
    """What validation needs of a provider class: its polling advice and its own key checks.

    The registry (exporter.providers.PROVIDERS) is handed to `build_settings`, so this module
    imports nothing above it.
    """

    @property
    def advised_poll_interval(self) -> float | None: ...

    @property
    def advised_requests_per_second(self) -> float | None: ...

    def check_target(self, target: TargetConfig) -> list[str]: ...


Registry = Mapping[str, ProviderSpec]

# The registry of the validation under way: pydantic gives field validators no arguments of ours.
_REGISTRY: ContextVar[Registry | None] = ContextVar("asyncjob_provider_registry", default=None)


@contextmanager
def _validating_with(providers: Registry) -> Iterator[None]:
    token = _REGISTRY.set(providers)
    try:
        yield
    finally:
        _REGISTRY.reset(token)


def _registry() -> Registry:
    providers = _REGISTRY.get()
    if providers is None:
        raise ValueError("no provider registry: validate through build_settings(data, PROVIDERS)")
    return providers


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`; did you mean X?` when a choice is close to `word`, else ``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


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
        return None if v is None else _without_credentials(v)

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
)


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
    per_job_metrics: bool = Field(True, description="False keeps only aggregates: far fewer series.")
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
        return _without_credentials(v).rstrip("/")

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
    def _provider_keys(self) -> TargetConfig:
        problems = _registry()[self.provider].check_target(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ApiConfig(_Strict):
    token_file: SecretFile | None = Field(None, description="Bearer token required on /api/v1 when set.")
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    def token(self) -> SecretStr | None:
        if not self.token_file:
            return None
        return SecretStr(Path(self.token_file).read_text(encoding="utf-8").strip())


ENV_PREFIX = "ASYNCJOB_"


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
    api: ApiConfig = Field(default_factory=ApiConfig)
    targets: list[TargetConfig] = Field(default_factory=list)

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
        return self

    def resolved(self, target: TargetConfig) -> ResolvedTarget:
        return ResolvedTarget.build(self.global_, target, self._providers[target.provider])

    def resolved_targets(self) -> list[ResolvedTarget]:
        return [self.resolved(t) for t in self.targets]


DEFAULT_POLL_INTERVAL = 30.0


class ResolvedTarget(BaseModel):
    """A target with every inherited setting filled in: what the scheduler runs."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: Annotated[TargetConfig, SkipValidation]  # validated already, with the registry
    poll_interval: float
    timeout: float
    concurrency: int
    stuck_after: float
    max_duration: float
    retention: float
    max_jobs: int
    max_requests_per_second: float | None
    max_response_bytes: int
    poll_interval_below_advice: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def provider(self) -> str:
        return self.config.provider

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
        return cls(
            config=t,
            poll_interval=interval,
            timeout=values["timeout"],
            concurrency=values["concurrency"],
            stuck_after=values["stuck_after"],
            max_duration=values["max_duration"],
            retention=values["retention"],
            max_jobs=values["max_jobs_per_target"],
            max_requests_per_second=rps,
            max_response_bytes=g.max_response_bytes,
            poll_interval_below_advice=bool(advised and interval < advised),
        )


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists `key.path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            if name and out.startswith("targets") and out.count("[") == 1:
                out += f"(name={name})"
            node = item
        else:
            key = part
            out += ("." if out else "") + key
            node = node.get(key) if isinstance(node, dict) else None
    return out or "(top level)"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation (`list[TargetConfig]`, `GenericFields | None`…)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model holding `loc`'s last key accepts: what a misspelt key may have meant."""
    model: type[BaseModel] | None = Settings
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = next(
            (f for name, f in model.model_fields.items() if part in (name, f.alias)),
            None,
        )
        model = _model_of(field.annotation) if field is not None else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _env_paths() -> dict[tuple[str, ...], str]:
    """Key path -> the ASYNCJOB_* variable that sets it (nested keys joined by __)."""
    out = {}
    for var in os.environ:
        if var.upper().startswith(ENV_PREFIX):
            out[tuple(var[len(ENV_PREFIX) :].lower().split("__"))] = var
    return out


def format_validation_error(err: ValidationError, data: Any) -> list[str]:
    problems = []
    env = _env_paths()
    for e in err.errors(include_url=False, include_input=False):
        loc = tuple(part for part in e["loc"] if not str(part).startswith(("function-", "tagged-union")))
        loc = tuple("global" if part == "global_" else part for part in loc)
        where = _loc(loc, data)
        msg = e["msg"].removeprefix("Value error, ")
        keys = tuple(str(part) for part in loc)
        variable = next((env[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in env), None)
        if e["type"] == "extra_forbidden" and loc:
            msg = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), _keys_at(loc), n=1, cutoff=0.6)
            if close and variable is not None and keys in env:
                msg += f"; did you mean {variable[: -len(str(loc[-1]))]}{close[0].upper()}?"
            elif close:
                msg += f"; did you mean {close[0]}?"
        if variable is not None:
            # The value came from the environment: name the variable, not a key of the file.
            where = variable if keys in env else f"{variable} ({where})"
            msg += " (set in the environment)"
        problems.append(f"{where}: {msg}")
    return problems


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"config.file: cannot read {path}: {e.strerror or e}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError([f"config.file:{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the config must be a mapping with global, targets, …"])
    try:
        return dict(clean_text(data, text))  # a "\ud800" escape makes a lone surrogate: replaced
    except ValueError as e:
        raise ConfigError([f"config.file: {e}"]) from None


def build_settings(data: Mapping[str, Any], providers: Registry) -> Settings:
    """Validate config data (plus ASYNCJOB_* variables) into Settings, or raise ConfigError.

    `providers` is the registry of provider classes (exporter.providers.PROVIDERS): each
    target's provider must be one of them, and checks its own keys.
    """
    try:
        with _validating_with(providers):
            settings = Settings(**dict(data))
        settings._providers = providers
        return settings
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, dict(data))) from None
    except TypeError as e:
        raise ConfigError([f"(top level): {e}"]) from None


def load_settings(path: str | os.PathLike[str] | None, providers: Registry) -> Settings:
    """Read and validate a config file; its relative `*_file` paths are read from its directory."""
    data = load_yaml(path) if path else {}
    token = _CONFIG_DIR.set(Path(path).resolve().parent if path else None)
    try:
        return build_settings(data, providers)
    finally:
        _CONFIG_DIR.reset(token)
