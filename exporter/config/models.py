"""The config file's top level and ASYNCJOB_* variables: `Settings` with its `api`, `cluster` and
state keys, and the environment source of the `global` section. A target's keys are
exporter.config.targets's."""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from exporter.config.registry import Registry
from exporter.config.slos import SLO, unique_names
from exporter.config.targets import GlobalConfig, ResolvedTarget, TargetConfig, _Strict
from exporter.config.values import (
    Duration,
    PositiveDuration,
    SecretFile,
    TokenFile,
    read_token,
)

log = logging.getLogger("asyncjob.config")


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
