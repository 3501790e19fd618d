"""Reading the config: YAML, variables, validation, and errors named by their key path."""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from exporter.config.models import ENV_PREFIX, Settings
from exporter.config.registry import Registry, _validating_with
from exporter.config.values import CONFIG_DIR
from exporter.parsing import clean_text


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
    token = CONFIG_DIR.set(Path(path).resolve().parent if path else None)
    try:
        return build_settings(data, providers)
    finally:
        CONFIG_DIR.reset(token)
