"""Series per 10,000 jobs of a realistic fleet (95 % healthy: running, queued or finished well) in
each `per_job_series` mode, and the scrape Prometheus gets for them (OpenMetrics, gzip) beside
the text body. No network: the jobs go straight into a Tracker, as poll answers would."""

from __future__ import annotations

import gzip
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypedDict

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.config import build_settings
from exporter.model import Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.render import Exposition
from exporter.tracker import Tracker

TARGET = "basiq-prod"
MODES = ("all", "exceptions", "none")
STEPS = ("verify-credentials", "retrieve-accounts", "retrieve-transactions", "retrieve-statements")
# The fleet, per 100 jobs: 95 need nobody, 5 need a person (the shares an operator sees on a
# good day: most jobs queued, running or done; a few failed, stuck or waiting for their user).
MIX: tuple[tuple[str, int], ...] = (
    ("running", 35),
    ("pending", 10),
    ("succeeded", 50),
    ("failed", 2),
    ("stuck", 1),
    ("awaiting the user", 1),
    ("failing records", 1),
)
EXCEPTIONS_SHARE_MAX = 0.1  # exceptions mode: at most a tenth of the series of `all`


class _Common(TypedDict):
    """What every job of `_job` but the stuck ones has."""

    job_type: str
    created: float


def _job(i: int, kind: str, now: float) -> Job:
    """A Basiq connection job of four steps, at the stage its kind says."""
    jid = f"{i:08x}-5b2c-4c8e-9d3e-{i:012x}"
    created = now - 300
    done = tuple(Step(s, Status.SUCCEEDED, "success") for s in STEPS)
    half = (
        Step(STEPS[0], Status.SUCCEEDED, "success"),
        Step(STEPS[1], Status.RUNNING, "in-progress"),
        *(Step(s, Status.PENDING, "pending") for s in STEPS[2:]),
    )
    base: _Common = {"job_type": "connection", "created": created}
    if kind == "running":
        return Job(jid, Status.RUNNING, "in-progress", steps=half, updated=now - 20, **base)
    if kind == "pending":
        steps = tuple(Step(s, Status.PENDING, "pending") for s in STEPS)
        return Job(jid, Status.PENDING, "pending", steps=steps, updated=now - 5, **base)
    if kind == "succeeded":
        return Job(jid, Status.SUCCEEDED, "success", steps=done, updated=now - 60, finished=now - 60, **base)
    if kind == "failed":
        steps = (
            Step(STEPS[0], Status.FAILED, "failed"),
            *(Step(s, Status.PENDING, "pending") for s in STEPS[1:]),
        )
        reason = "invalid-credentials" if i % 2 else "connector-error"
        return Job(
            jid,
            Status.FAILED,
            "failed",
            steps=steps,
            updated=now - 60,
            finished=now - 60,
            reason=reason,
            **base,
        )
    if kind == "stuck":
        return Job(
            jid,
            Status.RUNNING,
            "in-progress",
            steps=half,
            job_type="connection",
            created=now - 7200,
            updated=now - 7200,
        )
    if kind == "awaiting the user":
        return Job(
            jid, Status.RUNNING, "in-progress", steps=half, updated=now - 30, awaiting_user=True, **base
        )
    # Succeeded, with records of which some failed (as a WillSuite import reports them).
    return Job(
        jid, Status.SUCCEEDED, "success", steps=done, updated=now - 60, finished=now - 60,
        records_total=773, records_affected=696, records_failed=77, **base,
    )  # fmt: skip


def kinds(n: int) -> list[str]:
    """`n` kinds in MIX's shares, interleaved (so the jobs needing a person spread over groups)."""
    cycle = [kind for kind, share in MIX for _ in range(share)]
    stride = 37  # coprime with 100: one of each share per 100 consecutive jobs, mixed
    return [cycle[(i * stride) % len(cycle)] for i in range(n)]


def measure(mode: str, n: int) -> dict[str, Any]:
    settings = build_settings(
        {
            "global": {"max_jobs_per_target": n, "per_job_series": mode},
            "targets": [{"name": TARGET, "provider": "basiq", "base_url": "http://127.0.0.1:9"}],
        },
        PROVIDERS,
    )
    tracker = Tracker()
    exposition = Exposition(tracker, lambda: {TARGET: (n, {})})
    tracker.set_target(settings.resolved(settings.targets[0]))
    now = time.time()
    for i, kind in enumerate(kinds(n)):
        tracker.track(TARGET, _job(i, kind, now), "discovered", now)
    openmetrics = exposition.render(gz=True, openmetrics=True)
    text = exposition.render(gz=False)
    series = per_job = 0
    with_series: set[str] = set()
    # prometheus_client's OpenMetrics parser is unannotated.
    for family in text_string_to_metric_families(gzip.decompress(openmetrics).decode()):  # type: ignore[no-untyped-call]
        for s in family.samples:
            series += 1
            if "job_id" in s.labels:
                per_job += 1
                with_series.add(s.labels["job_id"])
    return {
        "series": series,
        "per_job_series": per_job,
        "jobs_with_series": len(with_series),
        "openmetrics_gzip_bytes": len(openmetrics),
        "openmetrics_bytes": len(gzip.decompress(openmetrics)),
        "text_bytes": len(text),
    }


def run(n: int = 10_000, log: Callable[[str], None] = print) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": n, "mix": dict(Counter(kinds(n))), "modes": {}}
    for mode in MODES:
        figures = out["modes"][mode] = measure(mode, n)
        log(
            f"  series: {mode}: {figures['series']:,} series ({figures['jobs_with_series']:,} jobs with series), "
            f"scrape {figures['openmetrics_gzip_bytes']:,} bytes gzip"
        )
    return out


def targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    every, few = s["modes"]["all"], s["modes"]["exceptions"]
    share = few["series"] / every["series"]
    return [
        {
            "what": f"series of a realistic fleet of {s['jobs']:,} jobs (95 % healthy), exceptions against all",
            "measured": f"{few['series']:,} series, {few['openmetrics_gzip_bytes'] / 1024:,.0f} KiB a scrape",
            "baseline": f"all: {every['series']:,} series, {every['openmetrics_gzip_bytes'] / 1024:,.0f} KiB",
            "ratio": f"{share:.3f}",
            "target": f"<= {EXCEPTIONS_SHARE_MAX:g}",
            "met": share <= EXCEPTIONS_SHARE_MAX,
        }
    ]


def body(s: dict[str, Any]) -> list[str]:
    n = s["jobs"]
    mix = ", ".join(f"{count:,} {kind}" for kind, count in s["mix"].items())
    rows = [
        f"| `{mode}` | {f['series']:,} | {f['per_job_series']:,} | {f['jobs_with_series']:,} | "
        f"{f['openmetrics_gzip_bytes']:,} | {f['openmetrics_bytes']:,} | {f['text_bytes']:,} |"
        for mode, f in s["modes"].items()
    ]
    return [
        f"## Series per {n:,} jobs, by `per_job_series`",
        "",
        f"`bench/series.py`: {n:,} Basiq connection jobs of four steps on one target ({mix}), put in a",
        "Tracker as poll answers would be, and the body Prometheus gets (OpenMetrics, gzip) parsed by",
        "prometheus-client's OpenMetrics parser. Aggregates, histograms, counters and process metrics",
        "are in every mode alike.",
        "",
        "| mode | series | per-job series | jobs with series | scrape, OpenMetrics gzip (bytes) "
        "| OpenMetrics plain | text 0.0.4 plain |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
