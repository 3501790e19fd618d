"""The on-call engineer who opens the page late: a real Prometheus evaluating the shipped rules and a
real Alertmanager page for a job that failed at its provider; the job then leaves the live series
at `retention` and the alert resolves; the `job_url` in the page still opens, from the history, on
the failure with the provider's message and cause."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import ROOT, create_job, wait_for
from tests.realstack import Webhook, rules_with_short_for, stack_output, watched_exporter

pytestmark = [pytest.mark.realstack, pytest.mark.e2e]

TARGET = "basiq-late"
SCRAPE_JOB = "asyncjob"
RETENTION = 20.0
# The shipped `for:` and `keep_firing_for:` durations are minutes; the test's are as many seconds.
FOR_SCALE = 1 / 60
BUDGET = 150.0  # every wait of the test together
ERROR_CODE = "institution-not-available"
ERROR_DETAIL = "The bank is down for maintenance until 04:00."  # the provider's own words
RULES = ROOT / "alerts" / "asyncjob.rules.yml"


def config(sim_url: str, secrets: Path, state: Path) -> dict[str, Any]:
    return {
        "global": {"poll_interval": "0.5s", "retention": f"{RETENTION:g}s", "history": "1h"},
        "state_file": str(state),
        "targets": [
            {
                "name": TARGET,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                "cause_map": {ERROR_CODE: "provider"},
            }
        ],
    }


def shortened_rules() -> str:
    """The shipped rules with `for:` scaled down, and `keep_firing_for:` too: the test waits for the
    alert to resolve once the job's series are gone, and 2m of it would be most of the test."""
    doc = yaml.safe_load(rules_with_short_for(RULES.read_text(), FOR_SCALE))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = "2s"
    return yaml.safe_dump(doc, sort_keys=False, width=1000)


def alerts_for(hook: Webhook, status: str, job_id: str) -> list[dict[str, Any]]:
    return [
        a
        for a in hook.alerts()
        if a.get("status") == status
        and a["labels"].get("alertname") == "AsyncJobFailed"
        and a["labels"].get("job_id") == job_id
    ]


def test_the_job_url_of_a_page_opened_after_retention_still_shows_the_failure(tmp_path: Path) -> None:
    def with_state(sim_url: str, secrets: Path) -> dict[str, Any]:
        return config(sim_url, secrets, tmp_path / "state.db")

    with watched_exporter(tmp_path, with_state, SCRAPE_JOB, 0.5, BUDGET) as w:
        sim, exp, hook, prom, left = w.sim, w.exp, w.hook, w.prom, w.left
        try:
            prom.load_rules(shortened_rules(), timeout=left())

            job_id = create_job(
                sim, "basiq", scenario="fail", fail_step=0, error_code=ERROR_CODE, error_detail=ERROR_DETAIL
            )
            r = exp.api("POST", f"/api/v1/targets/{TARGET}/jobs", json={"id": job_id})
            assert r.status_code == 202, r.text

            # 1. The page: AsyncJobFailed for the job, with the link to its page.
            fired = wait_for(
                lambda: alerts_for(hook, "firing", job_id),
                timeout=left(),
                what=f"AsyncJobFailed for job {job_id} at the webhook",
            )[0]
            assert {"target": TARGET, "reason": ERROR_CODE, "cause": "provider"}.items() <= fired[
                "labels"
            ].items(), fired
            job_url = fired["annotations"].get("job_url")
            assert job_url, f"the page carries no job_url: {fired}"
            # Without an external_url the mixin builds it from the scraped instance: the exporter.
            assert job_url == f"{exp.url}/jobs/{TARGET}/{job_id}", fired

            # 2. Nobody acts. The job leaves the live series at retention, and the alert resolves.
            wait_for(
                lambda: f'job_id="{job_id}"' not in exp.metrics(),
                timeout=left(),
                what="its per-job series dropped at retention",
            )
            wait_for(
                lambda: not prom.vector(f'{{__name__=~"asyncjob_job_.+", job_id="{job_id}"}}'),
                timeout=left(),
                what="Prometheus seeing the job's series gone",
            )
            wait_for(
                lambda: alerts_for(hook, "resolved", job_id),
                timeout=left(),
                what=f"AsyncJobFailed for job {job_id} resolved at the webhook",
            )

            # 3. The engineer opens the link from the page: the failure, its message and its cause.
            page = httpx.get(job_url, timeout=5)
            assert page.status_code == 200, f"{job_url} answered {page.status_code}:\n{page.text[:2000]}"
            text = html.unescape(page.text)
            assert 'id="from-history"' in page.text and "Shown from history." in text, text
            assert '<span class="status status-failed">failed</span>' in page.text, text
            assert ERROR_DETAIL in text, text
            assert f"<dt>reason</dt><dd>{ERROR_CODE}</dd>" in page.text, text
            assert "<dt>cause</dt><dd>provider" in page.text, text
            doc = exp.api("GET", f"/api/v1/targets/{TARGET}/jobs/{job_id}").json()
            assert doc["from_history"] is True, doc
            assert (doc["status"], doc["reason"], doc["cause"], doc["message"]) == (
                "failed",
                ERROR_CODE,
                "provider",
                ERROR_DETAIL,
            ), doc
        except AssertionError as e:
            raise AssertionError(f"{e}\n{stack_output(tmp_path, hook)}") from None
