"""Detection: latency from a job failing at the provider to `status="failed"` in /metrics, with the
real CLI against the simulator (both subprocesses, as tests/harness.py starts them); and the
precision, recall and time to page of the shipped alerts over tests/fleet.py's labelled fleet."""

from __future__ import annotations

import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.harness import exporter, simulator, write_secrets

TARGET = "basiq-latency"
USER = "ea3a81"  # a Basiq user of the simulator, for discovery through its job list
MODES = ("discovery", "registration")


def config(sim_url: str, secrets: Path, poll_interval: float, mode: str) -> dict[str, Any]:
    discovery = {"users": [USER]} if mode == "discovery" else {}
    return {
        "global": {"poll_interval": f"{poll_interval:g}s", "retention": "10m"},
        "targets": [
            {
                "name": TARGET,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                **discovery,
            }
        ],
    }


def failed_line(job_id: str) -> re.Pattern[str]:
    return re.compile(
        rf'^asyncjob_job_status\{{target="{TARGET}",job_id="{re.escape(job_id)}",status="failed"\}} 1$', re.M
    )


def run(
    jobs: int = 6,
    mode: str = "discovery",
    poll_interval: float = 2.0,
    step_seconds: float = 1.0,
    fail_step: int = 1,
    scrape_every: float = 0.05,
    seed: int = 7,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Jobs are created at random offsets against the poll schedule and fail at the provider.

    The simulator answers "failed" from created + (fail_step + 1) * step_seconds on (no queue
    time; the failing step runs its full length), the finished time it reports
    (SimJob.finished_at). Latency is measured from that moment.

    `discovery`: the exporter finds them in the user's job list at its own pace.
    `registration`: each is registered through the API as it is created (which wakes the
    target's poll loop: a poll follows about a second later).
    """
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        secrets = write_secrets(tmp)
        with (
            simulator(tmp, step_seconds=step_seconds) as sim,
            exporter(tmp, config(sim.url, secrets, poll_interval, mode)) as exp,
            httpx.Client(timeout=5) as client,
        ):
            failed_at: dict[str, float] = {}
            seen_at: dict[str, float] = {}
            next_create = time.time()
            deadline = time.time() + timeout
            while len(seen_at) < jobs and time.time() < deadline:
                if len(failed_at) < jobs and time.time() >= next_create:
                    r = client.post(
                        f"{sim.url}/_sim/jobs",
                        json={"provider": "basiq", "scenario": "fail", "fail_step": fail_step, "owner": USER},
                    )
                    r.raise_for_status()
                    job = r.json()
                    failed_at[job["id"]] = job["created"] + (fail_step + 1) * step_seconds
                    if mode == "registration":
                        client.post(
                            f"{exp.url}/api/v1/targets/{TARGET}/jobs", json={"id": job["id"]}
                        ).raise_for_status()
                    next_create = time.time() + rng.uniform(0.3, 1.3) * poll_interval
                text = client.get(f"{exp.url}/metrics").text
                now = time.time()
                for jid in failed_at.keys() - seen_at.keys():
                    if failed_line(jid).search(text):
                        seen_at[jid] = now
                time.sleep(scrape_every)
            if len(seen_at) < jobs:
                raise RuntimeError(f"only {len(seen_at)} of {jobs} failures reached /metrics in {timeout}s")
    latencies = sorted(seen_at[j] - failed_at[j] for j in seen_at)
    return {
        "mode": mode,
        "jobs": jobs,
        "poll_interval_s": poll_interval,
        "step_seconds": step_seconds,
        "scrape_every_s": scrape_every,
        "latencies_s": latencies,
        "max_s": max(latencies),
        "median_s": statistics.median(latencies),
        "max_over_poll_interval": max(latencies) / poll_interval,
    }


# --- precision, recall and time to page: the labelled fleet through Prometheus and Alertmanager ---

PRECISION_MIN = RECALL_MIN = 1.0
# Past the rule's own `for`: a poll, a scrape, a rule evaluation, Alertmanager's group_wait (1 s
# each in the fleet's stack) and the notification.
BEYOND_FOR_MAX_S = 6.0


def fleet_in_both_modes(log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The labelled fleet with every job's series, and again with only the exceptions'."""
    out = fleet(log)
    out["exceptions"] = fleet(log, per_job_series="exceptions")
    return out


def fleet(log: Callable[[str], None] = lambda m: None, per_job_series: str = "all") -> dict[str, Any]:
    """tests/fleet.py's labelled fleet, once: which pages fired against which should have, and
    how long after the condition became true at the provider each page reached the receiver."""
    from tests import fleet as labelled
    from tests.realstack import find_binaries

    with tempfile.TemporaryDirectory() as tmp_name:
        seen = labelled.run(
            Path(tmp_name), find_binaries(), budget=120.0, log=log, per_job_series=per_job_series
        )
    fired, wanted = set(seen.pages), seen.expected_pages
    hits = fired & wanted
    to_page: dict[str, list[float]] = {}
    beyond: dict[str, list[float]] = {}
    for key, truth in seen.truths.items():
        if key in seen.pages:
            name = key[0]
            delay = seen.pages[key] - truth
            to_page.setdefault(name, []).append(delay)
            beyond.setdefault(name, []).append(delay - seen.for_seconds.get(name, 0.0))
    labels: dict[str, int] = {}
    for job in seen.fleet:
        labels[job.label] = labels.get(job.label, 0) + 1
    return {
        "jobs": len(seen.fleet),
        "labels": labels,
        "expected_pages": len(wanted),
        "pages": len(fired),
        "true_pages": len(hits),
        "false_pages": sorted(" ".join(k) for k in fired - wanted),
        "missed_pages": sorted(" ".join(k) for k in wanted - fired),
        "precision": len(hits) / len(fired) if fired else 1.0,
        "recall": len(hits) / len(wanted) if wanted else 1.0,
        "infos": len(seen.infos),
        "restart_s": seen.restart_seconds,
        "for_s": {name: seen.for_seconds.get(name, 0.0) for name in to_page},
        "for_scale": labelled.FOR_SCALE,
        "poll_interval_s": labelled.POLL,
        "stuck_after_s": labelled.STUCK_AFTER,
        "time_to_page_s": {
            name: {"median": statistics.median(v), "max": max(v), "n": len(v)} for name, v in to_page.items()
        },
        "beyond_for_s": {name: {"median": statistics.median(v), "max": max(v)} for name, v in beyond.items()},
    }


def fleet_targets(f: dict[str, Any]) -> list[dict[str, Any]]:
    worst = max((b["max"] for b in f["beyond_for_s"].values()), default=0.0)
    return [
        {
            "what": f"precision of pages, labelled fleet of {f['jobs']} jobs across a kill -9",
            "measured": f"{f['precision']:.3f} ({f['true_pages']} of {f['pages']} pages)",
            "baseline": "",
            "ratio": "",
            "target": f">= {PRECISION_MIN:g}",
            "met": f["precision"] >= PRECISION_MIN,
        },
        {
            "what": "recall of pages, the same fleet",
            "measured": f"{f['recall']:.3f} ({f['true_pages']} of {f['expected_pages']} expected)",
            "baseline": "",
            "ratio": "",
            "target": f">= {RECALL_MIN:g}",
            "met": f["recall"] >= RECALL_MIN,
        },
        {
            "what": "time to page past the rule's `for`, per-job pages, max",
            "measured": f"{worst:.1f} s",
            "baseline": f"poll {f['poll_interval_s']:g} s, scrape and evaluation 1 s, group_wait 1 s",
            "ratio": "",
            "target": f"<= {BEYOND_FOR_MAX_S:g} s",
            "met": worst <= BEYOND_FOR_MAX_S,
        },
        *(_exceptions_rows(f, f["exceptions"]) if "exceptions" in f else []),
    ]


def _exceptions_rows(every: dict[str, Any], few: dict[str, Any]) -> list[dict[str, Any]]:
    """per_job_series: exceptions against all: the same pages, each alert's median time to page
    longer by at most one poll interval."""
    later = {
        name: few["time_to_page_s"][name]["median"] - t["median"]
        for name, t in every["time_to_page_s"].items()
        if name in few["time_to_page_s"]
    }
    worst_name = max(later, key=lambda n: later[n], default="")
    worst = later.get(worst_name, 0.0)
    same = few["false_pages"] == every["false_pages"] and few["missed_pages"] == every["missed_pages"]
    return [
        {
            "what": "the same fleet, only the exceptions' per-job series: pages",
            "measured": f"{few['true_pages']} of {few['expected_pages']} expected, {few['pages']} fired",
            "baseline": f"every job's series: {every['true_pages']} of {every['expected_pages']}, {every['pages']} fired",
            "ratio": "",
            "target": "the same pages",
            "met": same and few["recall"] == every["recall"] == 1.0 and few["precision"] == 1.0,
        },
        {
            "what": "the same fleet, only the exceptions' series: median time to page, later by (worst alert)",
            "measured": f"{worst:+.1f} s ({worst_name})",
            "baseline": "every job's series",
            "ratio": "",
            "target": f"<= {every['poll_interval_s']:g} s (a poll)",
            "met": worst <= every["poll_interval_s"],
        },
    ]


def fleet_body(f: dict[str, Any]) -> list[str]:
    labels = "; ".join(f"{label} {n}" for label, n in sorted(f["labels"].items(), key=lambda p: -p[1]))
    rows = [
        [
            name,
            str(t["n"]),
            f"{f['for_s'][name]:g} s",
            f"{t['median']:.1f} / {t['max']:.1f} s",
            f"{f['beyond_for_s'][name]['median']:.1f} / {f['beyond_for_s'][name]['max']:.1f} s",
        ]
        for name, t in sorted(f["time_to_page_s"].items())
    ]
    wrong = "; ".join(f["false_pages"]) or "none"
    missed = "; ".join(f["missed_pages"]) or "none"
    return [
        "## Precision and recall of pages: a labelled fleet",
        "",
        "`tests/fleet.py` (also run by `tests/e2e/test_detection.py`, which asserts the pages and times",
        f"nothing): {f['jobs']} jobs of the simulator on Basiq, AIMS360, WillSuite, Oxlin and a generic export",
        "API, each labelled",
        f"({labels}), through the CLI with a state file, a real Prometheus evaluating",
        "`alerts/asyncjob.rules.yml` and a real Alertmanager sending to a webhook. Halfway the exporter is",
        f"killed with SIGKILL and started again on the same state file ({f['restart_s']:.1f} s without it).",
        "A page is an alert of severity warning or critical, firing; each label says which pages a",
        "job must raise (a provider's failure: AsyncJobFailed; stuck: AsyncJobStuck; the AIMS360 category",
        "failing at the provider, and a mass outage of fifty WillSuite exports: AsyncJobFailureRateHigh",
        "once each, their jobs' own failures held back; a generic export that succeeded with 12 % of its",
        "rows rejected: AsyncJobRecordsFailing) and every other job none (a WillSuite import that",
        "succeeded with a tenth of its records refused, the application's data, raises",
        "AsyncJobUserRecordsFailing, an info alert for the application team).",
        "",
        f"- Pages: {f['pages']} fired, {f['expected_pages']} expected, {f['true_pages']} both:"
        f" precision {f['precision']:.3f}, recall {f['recall']:.3f}.",
        f"- False pages: {wrong}. Missed: {missed}.",
        f"- Info alerts for the application team (never pages): {f['infos']}.",
        "",
        "Time to page, from the moment the condition held at the provider (the failure; for stuck, the",
        f"last change plus `stuck_after` = {f['stuck_after_s']:g} s) to the notification at the receiver.",
        f"The shipped `for:` durations are scaled by {f['for_scale']:.4g} (minutes become two-second spans;",
        "the exporter's own health alerts by 1/10, so the restart pages nobody), so the same path with",
        f"the shipped rules takes the full `for` longer; polls every {f['poll_interval_s']:g} s.",
        "",
        *_table(["alert", "pages", "`for` (scaled)", "median / max", "past `for`: median / max"], rows),
        *(_exceptions_body(f["exceptions"]) if "exceptions" in f else []),
    ]


def _exceptions_body(few: dict[str, Any]) -> list[str]:
    rows = [
        [name, str(t["n"]), f"{t['median']:.1f} / {t['max']:.1f} s"]
        for name, t in sorted(few["time_to_page_s"].items())
    ]
    return [
        "",
        "The same fleet again with `per_job_series: exceptions` (only the jobs that need a person have",
        f"per-job series): {few['pages']} pages fired, {few['expected_pages']} expected, {few['true_pages']} both;",
        f"false pages: {'; '.join(few['false_pages']) or 'none'}; missed: {'; '.join(few['missed_pages']) or 'none'}.",
        "",
        *_table(["alert", "pages", "time to page, median / max"], rows),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]
