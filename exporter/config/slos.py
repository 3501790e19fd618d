"""The `slos:` block, one schema for the exporter's config and the mixin's: which jobs an objective
covers (a target, or targets by regex, and a job type), how fast they must succeed, how many of
them must, and over how long.

    slos:
      - name: basiq-connections
        target: basiq-prod
        job_type: connection
        objective: 0.99     # 99 % of these jobs succeed within `latency`...
        latency: 5m
        window: 28d         # ...over 28 days
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exporter.config.values import Duration

DEFAULT_WINDOW = 28 * 86400.0


class SLO(BaseModel):
    """One job objective: `objective` of the covered jobs succeed within `latency`, over `window`.
    Failures the end user causes (`cause="user"`) are left out of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A label value, a dashboard uid (asyncjob-slo-<name>, at most 40 characters) and a file name.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,26}$", description="Unique name: the `slo` label.")
    target: str | None = Field(None, description="The target whose jobs count (its `name`).")
    target_regex: str | None = Field(
        None, description="Instead of `target`: a regular expression matching whole target names."
    )
    job_type: str | None = Field(None, description="Only jobs of this type count; unset: every type.")
    objective: float = Field(gt=0, lt=1, description="Share of jobs that must be good, e.g. 0.99.")
    latency: Duration = Field(gt=0, description="A job is good when it succeeded within this, from creation.")
    window: Duration = Field(DEFAULT_WINDOW, gt=0, description="The period the objective holds over.")

    @model_validator(mode="after")
    def _one_target(self) -> SLO:
        if (self.target is None) == (self.target_regex is None):
            raise ValueError("give exactly one of target and target_regex")
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
            except re.error as e:
                raise ValueError(f"target_regex: {e}") from None
        return self

    def covers_target(self, name: str) -> bool:
        if self.target is not None:
            return name == self.target
        assert self.target_regex is not None
        return re.fullmatch(self.target_regex, name) is not None

    def covers(self, job_type: str) -> bool:
        return self.job_type is None or job_type == self.job_type

    @property
    def target_matcher(self) -> str:
        """The `target` label matcher of this SLO's jobs, for PromQL."""
        if self.target is not None:
            return f'target="{_escape(self.target)}"'
        return f'target=~"{_escape(self.target_regex or "")}"'

    @property
    def error_budget(self) -> float:
        return 1 - self.objective


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def unique_names(slos: Iterable[SLO]) -> list[str]:
    """Problems: names given twice."""
    seen: set[str] = set()
    problems = []
    for slo in slos:
        if slo.name in seen:
            problems.append(f"slos: duplicate SLO name {slo.name!r}")
        seen.add(slo.name)
    return problems


def parse_slos(raw: Any, problems: list[str]) -> tuple[SLO, ...]:
    """The `slos:` list of a YAML outside pydantic-settings (the mixin's); every problem is
    appended with its key path (`slos[1].latency: ...`)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append("slos: expected a list of objectives")
        return ()
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(SLO.model_validate(item))
        except ValidationError as e:
            for error in e.errors():
                where = ".".join(str(p) for p in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"slos[{i}]{'.' + where if where else ''}: {message}")
    problems.extend(unique_names(out))
    return tuple(out)


def disagreements(mixin: Iterable[SLO], exporter: Iterable[SLO]) -> list[str]:
    """How the mixin's `slos:` differ from the exporter's: both must hold the same objectives, or
    the rules would read a counter the exporter does not count (or count it differently)."""
    ours = {slo.name: slo for slo in mixin}
    theirs = {slo.name: slo for slo in exporter}
    problems = [f"slos: {name!r} is not in the exporter's config" for name in ours if name not in theirs]
    problems += [f"slos: {name!r} is only in the exporter's config" for name in theirs if name not in ours]
    for name in ours.keys() & theirs.keys():
        a, b = ours[name].model_dump(), theirs[name].model_dump()
        problems += [
            f"slos[{name}].{key}: {_shown(key, a[key])} here, {_shown(key, b[key])} in the exporter's config"
            for key in a
            if a[key] != b[key]
        ]
    return sorted(problems)


def _shown(key: str, value: Any) -> str:
    return duration(value) if key in ("latency", "window") else repr(value)


def duration(seconds: float) -> str:
    """A Prometheus duration for whole seconds, in the largest unit that divides them (`28d`)."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s" if whole == seconds else f"{seconds:g}s"
