"""Simulated job lifecycles shared by every provider simulator: a job's state is a pure function
of the time since it was created, so the simulator needs no background work and tests can
reason about it.

A job is made with `POST /_sim/jobs` (or `Simulator.create`): `{"provider": …, "scenario": …}`
plus any SimJob field (`step_seconds`, `queue_seconds`, `fail_step`, `error_code`, `owner`, …),
`age` (seconds since it was created: history, e.g. Basiq's week-old jobs) and the provider's
own options, listed in each provider module's docstring; `count: N` makes N such jobs at once and
answers their ids. Scenarios:

- `success`, `slow` (five times longer steps), `partial` (succeeds with failed records or,
  for Oxlin, PARTIAL_SUCCESS), `purged` (vanishes one step after it ends);
- `fail`: step `fail_step` runs, then fails with `error_code` (the provider's failure code:
  Basiq `invalid-credentials` is the end user's, `connector-error` the provider's);
- `stuck`: step `fail_step` never ends;
- `mfa`: the job waits for its end user (Basiq's MFA challenge, Oxlin's lapsed consent).

A labelled fleet is a list of such specs; every one's outcome is known from its scenario.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Literal

Scenario = Literal["success", "fail", "stuck", "slow", "mfa", "partial", "purged"]
SCENARIOS: tuple[str, ...] = ("success", "fail", "stuck", "slow", "mfa", "partial", "purged")

# Phase of a simulated job at a moment.
Phase = Literal["pending", "running", "succeeded", "failed", "awaiting_user"]


@dataclass
class SimJob:
    """One simulated job. Steps last `step_seconds` each (five times longer when `slow`);
    the job waits `queue_seconds` before its first step."""

    id: str
    provider: str
    scenario: str = "success"
    steps: tuple[str, ...] = ("step-1", "step-2", "step-3")
    step_seconds: float = 2.0
    queue_seconds: float = 0.0
    fail_step: int = 1  # index of the step that fails (fail) or hangs (stuck)
    error_code: str = "institution-not-available"
    error_detail: str = "The institution is not available at the moment."
    job_type: str = ""
    total_records: int = 100
    failed_records: int = 0
    created: float = field(default_factory=time.time)
    owner: str = ""  # Basiq user / Oxlin queue the job belongs to
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        return self.step_seconds * (5 if self.scenario == "slow" else 1)

    @property
    def purged(self) -> bool:
        return (
            self.scenario == "purged"
            and time.time() - self.created
            > self.queue_seconds + len(self.steps) * self.seconds_per_step + self.step_seconds
        )

    def state(self, now: float | None = None) -> tuple[Phase, int, float]:
        """(phase, index of the current step, percent 0-100) at `now`.

        The current step index is len(steps) once every step is done.
        """
        now = time.time() if now is None else now
        elapsed = now - self.created - self.queue_seconds
        if elapsed < 0:
            return "pending", 0, 0.0
        n = len(self.steps)
        per = self.seconds_per_step
        index = min(int(elapsed // per), n)
        if self.scenario == "mfa":
            return "awaiting_user", 0, 0.0
        # The failing step runs its full length, then fails; a stuck step never ends.
        if self.scenario == "fail" and index > self.fail_step:
            return "failed", self.fail_step, 100.0 * self.fail_step / n
        if self.scenario == "stuck" and index >= self.fail_step:
            return "running", self.fail_step, 100.0 * self.fail_step / n
        if index >= n:
            return "succeeded", n, 100.0
        within = (elapsed - index * per) / per
        return "running", index, round(100.0 * (index + within) / n, 1)

    def started_at(self) -> float:
        return self.created + self.queue_seconds

    def finished_at(self, now: float | None = None) -> float | None:
        phase, index, _ = self.state(now)
        if phase == "succeeded":
            return self.started_at() + len(self.steps) * self.seconds_per_step
        if phase == "failed":
            return self.started_at() + (index + 1) * self.seconds_per_step
        return None

    def updated_at(self, now: float | None = None) -> float:
        """The last moment the job changed (a step boundary), as a provider's `updated` field."""
        now = time.time() if now is None else now
        finished = self.finished_at(now)
        if finished is not None:
            return finished
        phase, index, _ = self.state(now)
        if phase in ("pending", "awaiting_user"):
            return self.created
        return self.started_at() + index * self.seconds_per_step

    def records(self, now: float | None = None) -> tuple[int, int, int]:
        """(total, affected, failed) records so far."""
        phase, _, percent = self.state(now)
        failed = self.failed_records or (self.total_records // 10 if self.scenario == "partial" else 0)
        if phase == "succeeded" or phase == "failed":
            return self.total_records, self.total_records - failed, failed
        done = int(self.total_records * percent / 100)
        return self.total_records, done, 0


def provider_options(spec: dict[str, Any], options: tuple[str, ...]) -> dict[str, Any]:
    """Move a provider's own options out of a job spec into its `extra`, and answer that `extra`."""
    extra: dict[str, Any] = spec.setdefault("extra", {})
    for key in options:
        if key in spec:
            extra[key] = spec.pop(key)
    return extra


class JobBook:
    """Every simulated job, by provider and id."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, SimJob]] = {}
        self._ids = itertools.count(1000)

    def new_id(self) -> str:
        return str(next(self._ids))

    def add(self, job: SimJob) -> SimJob:
        self.jobs.setdefault(job.provider, {})[job.id] = job
        return job

    def get(self, provider: str, job_id: str) -> SimJob | None:
        job = self.jobs.get(provider, {}).get(job_id)
        if job is None or job.purged:
            return None
        return job

    def of(self, provider: str) -> list[SimJob]:
        return [j for j in self.jobs.get(provider, {}).values() if not j.purged]
