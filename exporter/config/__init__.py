"""Configuration: pydantic models for the YAML file and ASYNCJOB_* variables; the only reader of both.

Everything past this package receives typed, validated objects. Errors carry the key
path (`targets[1].auth.client_secret_file`) so that a bad config is fixed in one go.

values: durations, URLs, secrets; registry: the providers a validation checks against;
targets: a target's keys, `global` and the target resolved against it; models: the file's top
level; loading: YAML, variables, validation and its error messages; safety: what a valid config
still leaves unsafe (warnings).
"""

from exporter.config.loading import (
    ConfigError,
    build_settings,
    format_validation_error,
    load_settings,
    load_yaml,
)
from exporter.config.models import ENV_PREFIX, ApiConfig, ClusterConfig, Settings
from exporter.config.registry import ProviderSpec, Registry
from exporter.config.targets import (
    DEFAULT_POLL_INTERVAL,
    INHERITED_KEYS,
    AuthConfig,
    AuthType,
    GenericFields,
    GenericSteps,
    GlobalConfig,
    PerJobSeries,
    ResolvedTarget,
    StatusMap,
    TargetConfig,
)
from exporter.config.values import (
    Duration,
    PositiveDuration,
    SecretEnv,
    SecretFile,
    did_you_mean,
    parse_duration,
)

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "ENV_PREFIX",
    "INHERITED_KEYS",
    "ApiConfig",
    "AuthConfig",
    "AuthType",
    "ClusterConfig",
    "ConfigError",
    "Duration",
    "GenericFields",
    "GenericSteps",
    "GlobalConfig",
    "PerJobSeries",
    "PositiveDuration",
    "ProviderSpec",
    "Registry",
    "ResolvedTarget",
    "SecretEnv",
    "SecretFile",
    "Settings",
    "StatusMap",
    "TargetConfig",
    "build_settings",
    "did_you_mean",
    "format_validation_error",
    "load_settings",
    "load_yaml",
    "parse_duration",
]
