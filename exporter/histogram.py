"""A cumulative histogram with an exemplar per bucket: the tracker, the state stores and the
renderer all hold or write one, so it sits below each of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# The job that last landed in a bucket: (job_id, value, when), served as an OpenMetrics exemplar.
Exemplar = tuple[str, float, float]


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0
    # Per bucket (and +Inf last), the last job whose value fell in it first; None: none yet.
    exemplars: list[Exemplar | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, value: float, job_id: str | None = None) -> None:
        self.total += value
        self.count += 1
        own = len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                own = min(own, i)
        if job_id is not None:
            if not self.exemplars:
                self.exemplars = [None] * (len(self.buckets) + 1)
            self.exemplars[own] = (job_id, value, time.time())
