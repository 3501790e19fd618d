"""The job pages in a real browser (Debian's chromium driven by Playwright): the real CLI against
the simulator, behind basic auth from --web.config.file, with hostile ids and messages that
must show as text and never run, and what to do next: the runbook section, the overdue mark."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import quote

import bcrypt
import httpx
import pytest

from exporter.simulator.demo import demo_targets
from tests.harness import create_job, exporter, simulator, wait_for, write_secrets
from tests.tools import CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.e2e

HOSTILE_ID = "<img src=x onerror=alert(1)>\"'&amp;"
HOSTILE_MESSAGE = "</td><script>alert('pwned')</script> \"quoted\" <b>bold</b>"
USER, PASSWORD = "oncall", "page-me"


def test_an_on_call_engineer_reads_a_failed_job_in_the_browser(tmp_path: Path) -> None:
    chromium = require_chromium()
    from playwright.sync_api import Dialog, sync_playwright

    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users:\n  {USER}: {hashed}\n")
    with simulator(tmp_path, step_seconds=0.5) as sim:
        targets = [t for t in demo_targets(sim.url, write_secrets(tmp_path)) if t["provider"] == "generic"]
        # max_duration 2s: the job that never ends is overdue within seconds (and never stuck).
        config = {
            "global": {"poll_interval": "0.5s", "stuck_after": "1h", "max_duration": "2s"},
            "runbook_base_url": "https://wiki.example.com/asyncjob",
            "targets": targets,
        }
        target = targets[0]["name"]
        endless = create_job(sim, "generic", scenario="stuck", queue_seconds=0.5)
        with exporter(tmp_path, config, extra=[f"--web.config.file={web}"], wait_ready=False) as exp:
            auth = (USER, PASSWORD)
            wait_for(
                lambda: httpx.get(f"{exp.url}/", auth=auth, timeout=1).status_code == 200, what="exporter"
            )
            # Created once the exporter is up: the target lists active jobs only, so a job that
            # failed before a slow start was never seen, and one seen first failed has no timeline.
            create_job(
                sim, "generic", id=HOSTILE_ID, scenario="fail", error_detail=HOSTILE_MESSAGE, queue_seconds=3
            )
            assert httpx.get(f"{exp.url}/", timeout=5).status_code == 401  # behind the web config
            wait_for(
                lambda: httpx.get(f"{exp.url}/jobs?status=failed", auth=auth, timeout=5).text.count(
                    "1 job(s)"
                ),
                timeout=30,
                what="the failed job on /jobs",
            )
            dialogs: list[str] = []

            def dismissed(dialog: Dialog) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            with tempfile.TemporaryDirectory(prefix="asyncjob-chromium-") as profile, sync_playwright() as pw:
                # A fresh profile directory each run (Chromium's --user-data-dir).
                context = pw.chromium.launch_persistent_context(
                    profile,
                    executable_path=chromium,
                    args=CHROMIUM_ARGS,
                    http_credentials={"username": USER, "password": PASSWORD},
                )
                try:
                    page = context.new_page()
                    page.on("dialog", dismissed)

                    page.goto(f"{exp.url}/")
                    row = page.locator(f'tr[data-target="{target}"]')
                    assert row.locator("td").nth(2).inner_text() == "up"
                    row.locator('a[href*="status=failed"]').click()  # the failed count links to the list
                    page.wait_for_url("**/jobs?**")
                    assert "status=failed" in page.url

                    jobs = page.locator("#jobs tbody tr")
                    assert jobs.count() == 1
                    assert HOSTILE_MESSAGE in jobs.first.inner_text()
                    jobs.first.get_by_role("link", name=HOSTILE_ID).click()
                    page.wait_for_url(f"**/jobs/{target}/**")

                    job = page.locator("#job")
                    assert HOSTILE_ID in page.locator("h1").inner_text()
                    assert HOSTILE_MESSAGE in job.inner_text()
                    assert "quota_exceeded" in job.inner_text()
                    timeline = page.locator("#timeline tbody tr")
                    assert timeline.count() >= 2  # seen pending or running, then failed
                    assert (
                        "failed"
                        in timeline.nth(timeline.count() - 1).inner_text()
                        + page.locator("#timeline").inner_text()
                    )
                    link = job.get_by_role("link", name=sim.url, exact=False)
                    assert (
                        link.get_attribute("href")
                        == f"{sim.url}/generic/v1/exports/{quote(HOSTILE_ID, safe='')}"
                    )
                    # Labelled as the provider's API (it wants the target's credentials), not a console.
                    assert job.locator("dt", has_text="provider API").count() == 1
                    # What to do next, and the runbook section that says more, under the configured base.
                    assert page.locator("#next-step").is_visible()
                    runbook = page.locator("#runbook")
                    assert runbook.get_attribute("href") == "https://wiki.example.com/asyncjob#asyncjobfailed"
                    assert runbook.inner_text() == "Runbook: AsyncJobFailed"
                    # Nothing a provider or a registration sent ran, or became markup.
                    assert (
                        page.locator("script").count() == 0 and page.locator("main img, main b").count() == 0
                    )

                    page.goto(f"{exp.url}/jobs?stuck=1")
                    page.wait_for_load_state()
                    assert page.locator("#jobs tbody tr").count() == 0  # stuck_after is an hour

                    # The job that never ends: overdue, on its page and in the list.
                    page.goto(f"{exp.url}/jobs/{target}/{quote(endless, safe='')}")
                    overdue = page.locator("#overdue")
                    assert overdue.is_visible() and overdue.inner_text().startswith("overdue: running for")
                    runbook_href = page.locator("#runbook").get_attribute("href")
                    assert runbook_href == "https://wiki.example.com/asyncjob#asyncjoboverdue"
                    page.goto(f"{exp.url}/jobs?target={target}&status=running")
                    row = page.locator("#jobs tbody tr", has_text=endless)
                    assert row.locator(".flag-overdue").inner_text() == "overdue"
                finally:
                    context.close()
            assert dialogs == []
