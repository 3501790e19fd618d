"""A job objective on a real stack: the simulator plays Basiq jobs at a steady pace, the exporter
judges them against `slos:`, a real Prometheus evaluates the SLO rules the mixin writes from the
same `slos:` (every window divided by 60: 5m runs as 5s, 1h as 1m) and a real Alertmanager
notifies a webhook.

A burst of failures of the end users (wrong passwords) fires nothing; a burst of the provider's
failures fires AsyncJobSLOBurnFast, which resolves once the jobs succeed again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.__main__ import main
from exporter.mixin import slo_files
from tests.harness import Exporter, Proc, wait_for
from tests.realstack import Prometheus, Webhook, watched_exporter

pytestmark = [pytest.mark.realstack, pytest.mark.e2e]

TARGET = "basiq-slo"
SCRAPE_JOB = "asyncjob"
SLO = {"name": "refresh", "target": TARGET, "objective": 0.99, "latency": "30s", "window": "28d"}
DIVISOR = 60
JOBS_EVERY = 0.25  # a new job this often: each runs one step of STEP seconds
STEP = 0.3
WARM_UP = 10.0  # successes only, so every ratio has jobs under it
BURST = 20.0
BUDGET = 180.0  # every wait of the test together
SLO_ALERTS = 'ALERTS{alertname=~"AsyncJobSLOBurn.*"}'

# What the feeder makes: a Basiq job that succeeds, or fails for its end user or its provider.
PLAYS: dict[str, dict[str, Any]] = {
    "success": {"scenario": "success"},
    "user": {"scenario": "fail", "fail_step": 0, "error_code": "invalid-credentials"},
    "provider": {"scenario": "fail", "fail_step": 0, "error_code": "institution-not-available"},
}


class Feeder:
    """Creates a job in the simulator every JOBS_EVERY and registers it with the exporter."""

    def __init__(self, sim: Proc, exp: Exporter) -> None:
        self.sim, self.exp = sim, exp
        self.play = "success"
        self.errors: list[str] = []
        self._stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(JOBS_EVERY):
                spec = {"provider": "basiq", "steps": ["retrieve-accounts"], "step_seconds": STEP}
                try:
                    r = client.post(f"{self.sim.url}/_sim/jobs", json={**spec, **PLAYS[self.play]})
                    r.raise_for_status()
                    job_id = r.json()["id"]
                    r = client.post(f"{self.exp.url}/api/v1/targets/{TARGET}/jobs", json={"id": job_id})
                    if r.status_code != 202:
                        self.errors.append(r.text)
                except httpx.HTTPError as e:
                    self.errors.append(str(e))

    @contextmanager
    def running(self) -> Iterator[Feeder]:
        thread = threading.Thread(target=self.run, name="feeder", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(10)


def exporter_config(sim_url: str, secrets: Path) -> dict[str, Any]:
    return {
        "global": {"poll_interval": "0.5s", "retention": "10m"},
        "targets": [
            {
                "name": TARGET,
                "provider": "basiq",
                "base_url": f"{sim_url}/basiq",
                "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
                # Stated here, so the test does not lean on Basiq's own map of its codes.
                "cause_map": {"invalid-credentials": "user", "institution-not-available": "provider"},
            }
        ],
        "slos": [SLO],
    }


def slo_rules(tmp: Path, exp: Exporter) -> str:
    """The rule file `asyncjob-exporter mixin` writes from the same slos, checked against the
    exporter's config, with every window divided by DIVISOR."""
    mixin = tmp / "mixin.yml"
    mixin.write_text(yaml.safe_dump({"slos": [SLO], "slo_windows_divisor": DIVISOR}))
    out = tmp / "mixin-out"
    args = ["mixin", "--config", str(mixin), "--out", str(out), "--config.file", str(exp.config)]
    assert main(args) == 0
    return (out / slo_files.RULES_PATH).read_text()


def slo_notifications(hook: Webhook, status: str) -> list[dict[str, Any]]:
    return [
        a
        for a in hook.alerts()
        if a["labels"].get("alertname", "").startswith("AsyncJobSLOBurn") and a.get("status") == status
    ]


def fast_notified(hook: Webhook, status: str) -> list[dict[str, Any]]:
    return [a for a in slo_notifications(hook, status) if a["labels"]["alertname"] == "AsyncJobSLOBurnFast"]


def hold_quiet(prom: Prometheus, hook: Webhook, seconds: float) -> None:
    """For `seconds`, no SLO alert is pending or firing, and none was notified."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert prom.vector(SLO_ALERTS) == [], "an SLO alert for the end users' failures"
        assert slo_notifications(hook, "firing") == []
        time.sleep(0.5)


def check_dashboard(prom: Prometheus, path: Path) -> None:
    """Every query of the objective's dashboard runs; its figures have data, and the failed jobs it
    lists are the provider's, not the end users'."""
    board = json.loads(path.read_text())
    found: dict[str, list[dict[str, Any]]] = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            expr = expr.replace('"$job"', '".+"').replace('"$instance"', '".+"')
            assert "$" not in expr, expr
            found.setdefault(panel["title"], []).extend(prom.vector(expr))
    empty = sorted(title for title, series in found.items() if not series)
    # No job took longer than the latency: those two tables stay empty.
    assert empty == ["Succeeded later than 30s", "Unfinished past 30s"], empty
    reasons = {series["metric"].get("reason") for series in found["Failed, not for the end user"]}
    assert reasons == {"institution-not-available"}, reasons


def judged(prom: Prometheus, result: str) -> float:
    found = prom.vector(f'sum(asyncjob_slo_jobs_total{{slo="refresh", result="{result}"}})')
    return float(found[0]["value"][1]) if found else 0.0


def test_a_provider_burst_pages_and_resolves_and_a_user_burst_pages_nobody(tmp_path: Path) -> None:
    with watched_exporter(tmp_path, exporter_config, SCRAPE_JOB, STEP, BUDGET) as w, ExitStack() as stack:
        sim, exp, hook, prom, left = w.sim, w.exp, w.hook, w.prom, w.left
        try:
            prom.load_rules(slo_rules(tmp_path, exp), timeout=left())
            feeder = stack.enter_context(Feeder(sim, exp).running())

            wait_for(
                lambda: judged(prom, "good") >= WARM_UP / JOBS_EVERY / 2, timeout=left(), what="good jobs"
            )
            hold_quiet(prom, hook, 2.0)

            feeder.play = "user"
            users_before = judged(prom, "user")
            hold_quiet(prom, hook, BURST)
            assert judged(prom, "user") - users_before >= BURST / JOBS_EVERY / 4, "the user burst was counted"
            feeder.play = "success"
            hold_quiet(prom, hook, 5.0)  # the last of the burst judged and scraped
            assert judged(prom, "bad") == 0

            feeder.play = "provider"
            # The slow burn may be notified too (the burst spends a tenth of the budget of its
            # shortened day as well), in a notification of its own: wait for the page itself.
            wait_for(
                lambda: fast_notified(hook, "firing"),
                timeout=min(left(), BURST + 10),
                what="a fast burn page",
            )
            fast = fast_notified(hook, "firing")[0]
            assert fast["labels"]["slo"] == "refresh" and fast["labels"]["severity"] == "critical"
            assert fast["annotations"]["dashboard_url"].endswith(
                "/d/asyncjob-slo-refresh/asyncjob-slo-refresh"
            )

            check_dashboard(prom, tmp_path / "mixin-out" / slo_files.dashboard_path("refresh"))

            feeder.play = "success"
            wait_for(
                lambda: fast_notified(hook, "resolved"),
                timeout=min(left(), 60),
                what="the fast burn page resolving after the burst",
            )
            assert feeder.errors == []
        except AssertionError as e:
            logs = "\n".join(
                f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-3000:]}"
                for log in sorted(tmp_path.glob("*.log"))
            )
            notes = hook.summary() if hook is not None else ""
            raise AssertionError(f"{e}\n{logs}\n--- notifications ---\n{notes}") from None
