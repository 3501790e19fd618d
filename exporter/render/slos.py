"""`asyncjob_slo_jobs_total`: the SLI of each configured objective (exporter.slos), per target and
job type, rendered at each scrape. Every result of an objective shows from the start at zero, so
the first bad job is an increase rate() sees, not a series born at 1."""

from __future__ import annotations

from collections.abc import Iterable

from exporter.catalogue import SLO_JOBS
from exporter.render.text import Text, labels
from exporter.slos import RESULTS
from exporter.tracked import TargetState


def render_slos(w: Text, targets: Iterable[TargetState]) -> None:
    w.family(SLO_JOBS)
    for s in targets:
        if not s.config.slos:
            continue
        counted = s.agg.slo
        # The job types each objective covers: its own, else every type the target has seen.
        seen = {job_type for job_type, _ in s.agg.finished} | {job_type for job_type, _, _ in counted}
        for slo in s.config.slos:
            types = {slo.job_type} if slo.job_type is not None else seen
            for job_type in sorted(types):
                for result in RESULTS:
                    lbl = labels(target=s.config.name, job_type=job_type, slo=slo.name, result=str(result))
                    w.sample(SLO_JOBS.name, lbl, counted.get((job_type, slo.name, str(result)), 0))
