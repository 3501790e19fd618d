"""A user's mixin config (YAML) read into `Config`: any key of `Config`, checked and with a
"did you mean" for a misspelt one. Unset keys keep the shipped defaults.

    exporter_selector: 'job="billing-asyncjob"'
    grafana_url: https://grafana.example.com
    external_url: https://asyncjob.example.com
    runbook_base_url: https://wiki.example.com/asyncjob
    failure_ratio: 0.1
    severity: {AsyncJobStuck: critical}
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from exporter.config.slos import parse_slos

from . import promtest_inputs, rules, slos
from .config import CONFIG, Config, seconds

SEVERITIES = ("critical", "warning", "info")


class MixinConfigError(Exception):
    """A mixin config that cannot be used; `problems` lists `key: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _value(name: str, default: Any, raw: Any, problems: list[str]) -> Any:
    if name == "external_url":
        if not isinstance(raw, str) or not raw.startswith(("http://", "https://")) or raw.endswith("://"):
            problems.append(f"{name}: expected an http(s) URL, e.g. https://asyncjob.example.com")
            return default
        return raw.rstrip("/")
    if isinstance(default, bool) or default is None:
        return raw
    if name == "slos":
        return parse_slos(raw, problems)
    if name == "severity":
        if not isinstance(raw, Mapping):
            problems.append(f"severity: expected a mapping of alert name to {'|'.join(SEVERITIES)}")
            return default
        out = dict(default)
        for alert, level in raw.items():
            if alert not in default:
                problems.append(f"severity.{alert}: no such alert{_suggest(str(alert), default)}")
            elif level not in SEVERITIES:
                problems.append(f"severity.{alert}: {level!r} is not one of {', '.join(SEVERITIES)}")
            else:
                out[alert] = level
        return out
    if isinstance(default, dict):
        if not isinstance(raw, Mapping) or not all(isinstance(v, int | float) for v in raw.values()):
            problems.append(f"{name}: expected a mapping of step name to seconds")
            return default
        return {str(k): float(v) for k, v in raw.items()}
    if isinstance(default, tuple):
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            problems.append(f"{name}: expected a list of label names")
            return default
        return tuple(raw)
    if isinstance(default, float):
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
            problems.append(f"{name}: expected a number")
            return default
        return float(raw)
    if isinstance(default, int):
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            problems.append(f"{name}: expected a whole number")
            return default
        return raw
    if not isinstance(raw, str) or not raw:
        problems.append(f"{name}: expected text")
        return default
    if name.endswith(("_for", "_window")) or name in ("handover_grace", "cluster_lease_ttl"):
        try:
            value = seconds(raw)
        except ValueError as e:
            problems.append(f"{name}: {e}")
            return default
        if name == "cluster_lease_ttl" and value <= 0:
            problems.append(
                f"{name}: expected a duration longer than 0s, as the exporter's cluster.lease_ttl"
            )
            return default
    if name == "job_page_scheme" and raw not in ("http", "https"):
        problems.append(f"{name}: expected http or https")
        return default
    return raw.rstrip("/") if name.endswith("_url") else raw


def config_from(data: Mapping[str, Any] | None) -> Config:
    """`Config` with the user's values over the defaults, or MixinConfigError listing every problem."""
    if data is None:
        return CONFIG
    if not isinstance(data, Mapping):
        raise MixinConfigError(["(top level): expected a mapping of mixin keys"])
    known = {f.name for f in dataclasses.fields(Config)}
    problems: list[str] = []
    values = {}
    for key, raw in data.items():
        if key not in known:
            problems.append(f"{key}: unknown key{_suggest(str(key), known)}")
            continue
        values[key] = _value(key, getattr(CONFIG, key), raw, problems)
    cfg = dataclasses.replace(CONFIG, **values)
    if not problems:
        try:
            selected = promtest_inputs.selector_labels(dataclasses.replace(cfg, target_labels=()))
        except ValueError as e:
            problems.append(str(e))
        else:
            # A label the selector names must survive every aggregation and join, or the alerts
            # reading recorded series would no longer match the selector.
            extra = tuple(name for name in selected if name not in cfg.target_labels)
            cfg = dataclasses.replace(cfg, target_labels=(*cfg.target_labels, *extra))
        problems.extend(slos.problems(cfg))
        if cfg.cluster and not cfg.external_url:
            problems.append(
                "external_url: required with cluster: true (the replicas' Service or ingress address, "
                "which serves every job's page)"
            )
        missing = set(rules.alert_names(cfg)) - set(cfg.severity)
        problems.extend(f"severity.{name}: missing" for name in sorted(missing))
    if problems:
        raise MixinConfigError(problems)
    return cfg


def load(path: str | Path) -> Config:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise MixinConfigError([f"cannot read {path}: {e.strerror or e}"]) from None
    except yaml.YAMLError as e:
        raise MixinConfigError([f"{path}: not YAML: {e}"]) from None
    return config_from(data)
