"""The pages for people: targets, the job list and one job, with every outside string escaped."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from exporter.config import build_settings
from exporter.model import Job, Status, Step
from exporter.pages import PAGE_SIZE
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.routes import build_app
from exporter.runtime import Runtime

HOSTILE_ID = "<script>alert(1)</script>\"'&x"
HOSTILE_MESSAGE = "</td><script>alert('pwned')</script><img src=x onerror=alert(2)> \"quoted\" 'single'"


def runtime(tmp_path: object = None, token: str | None = None) -> Runtime:
    data: dict[str, object] = {
        "global": {"stuck_after": "10m"},
        "targets": [
            {"name": "basiq", "provider": "basiq", "base_url": "https://au-api.basiq.io"},
            {
                "name": "exports",
                "provider": "generic",
                "base_url": "https://api.example.com",
                "job_path": "/v1/exports/{id}",
            },
        ],
    }
    settings = build_settings(data, PROVIDERS)
    rt = Runtime(settings)
    for t in settings.targets:
        rt.tracker.set_target(settings.resolved(t))
    return rt


def failed_job(job_id: str, message: str = HOSTILE_MESSAGE) -> Job:
    steps = (Step("verify-credentials", Status.FAILED, reason="invalid-credentials", message=message),)
    return Job(
        job_id,
        Status.FAILED,
        "failed",
        "connection",
        reason="invalid-credentials",
        message=message,
        steps=steps,
    )


def client(rt: Runtime) -> TestClient:
    return TestClient(build_app(rt))


def test_the_landing_page_shows_each_target_with_its_health_and_counts() -> None:
    rt = runtime()
    rt.tracker.track("basiq", Job("ok", Status.RUNNING, job_type="connection"), "discovered", now=1.0)
    rt.tracker.track("basiq", failed_job("f1"), "discovered")
    state = rt.tracker.targets["exports"]
    state.polled_once, state.up, state.last_error = (
        True,
        False,
        "GET https://api.example.com: connect refused",
    )
    page = client(rt).get("/").text
    row = re.search(r'<tr data-target="basiq">(.*?)</tr>', page, re.S)
    assert row is not None
    assert 'href="/jobs?target=basiq&amp;status=failed">1</a>' in row.group(1)
    assert 'href="/jobs?target=basiq&amp;stuck=1">1</a>' in row.group(1)  # running, no progress since 1970
    assert "down" in page and "connect refused" in page


def test_hostile_ids_and_messages_are_escaped_on_every_page() -> None:
    rt = runtime()
    rt.tracker.track("basiq", failed_job(HOSTILE_ID), "registered")
    c = client(rt)
    pages = [c.get("/").text, c.get("/jobs").text, c.get("/jobs?status=failed").text]
    job_page = c.get("/jobs/basiq/" + "%3Cscript%3Ealert(1)%3C%2Fscript%3E%22'%26x")
    assert job_page.status_code == 200
    pages.append(job_page.text)
    for page in pages:
        assert "<script" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
        assert "<img" not in page
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in job_page.text
    assert "&#34;quoted&#34;" in job_page.text


def test_an_id_holding_a_lone_surrogate_renders_and_links_to_its_page() -> None:
    from exporter.parsing import load_json

    rt = runtime()
    # As such an id arrives: escaped in a provider's answer, and replaced as the answer is read.
    answer = load_json(b'{"id": "bad\\ud800id", "steps": [{"title": "x", "status": "failed"}]}')
    job = PROVIDERS["basiq"](rt.settings.targets[0]).parse_job(answer)
    assert job.id == "bad\ufffdid"
    rt.tracker.track("basiq", failed_job(job.id, message="m\udfffm"), "discovered")
    c = client(rt)
    listing = c.get("/jobs")
    assert listing.status_code == 200
    href = re.search(r'href="(/jobs/basiq/[^"]+)"', listing.text)
    assert href is not None
    page = c.get(href.group(1))
    assert page.status_code == 200 and "bad\ufffdid" in page.text and "m\ufffdm" in page.text


def test_the_job_page_shows_status_reason_cause_message_records_and_the_timeline() -> None:
    rt = runtime()
    steps = (Step("export", Status.RUNNING),)
    rt.tracker.track(
        "exports", Job("e/1", Status.RUNNING, "working", "export", steps=steps), "registered", now=100.0
    )
    done = Job(
        "e/1",
        Status.FAILED,
        "error",
        "export",
        reason="quota",
        message="quota exceeded",
        records_total=10,
        records_failed=3,
        steps=(Step("export", Status.FAILED),),
    )
    rt.tracker.apply("exports", PollResult(jobs=[done]), now=160.0)
    page = client(rt).get("/jobs/exports/e/1").text
    assert "quota exceeded" in page and ">quota<" in page
    assert "total 10, affected —, failed 3" in page
    timeline = re.search(r'<table id="timeline">(.*?)</table>', page, re.S)
    assert timeline is not None
    rows = re.findall(r"<tr><td>(.*?)</tr>", timeline.group(1), re.S)
    assert len(rows) == 4  # job running, step running, job failed, step failed
    assert "1m00s" in rows[0]  # running lasted from 100 to 160
    assert 'href="https://api.example.com/v1/exports/e%2F1"' in page  # the provider's own link


def test_the_job_list_filters_and_paginates() -> None:
    rt = runtime()
    for i in range(PAGE_SIZE + 5):
        rt.tracker.track("basiq", Job(f"r{i}", Status.RUNNING), "discovered")
    rt.tracker.track("exports", failed_job("x1", message="boom"), "discovered")
    c = client(rt)
    first = c.get("/jobs").text
    assert f"{PAGE_SIZE + 6} job(s), page 1 of 2" in first
    assert "boom" in first.split("</tr>")[1]  # failures come first, with their error text
    assert 'rel="next"' in first and "r0" in first + c.get("/jobs?page=2").text
    only_failed = c.get("/jobs?status=failed").text
    assert "1 job(s)" in only_failed and "x1" in only_failed
    assert "0 job(s)" in c.get("/jobs?target=exports&status=running").text


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/jobs?status=bogus", 400),
        ("/jobs?target=nope", 404),
        ("/jobs/nope/1", 404),
        ("/jobs/basiq/missing", 404),
    ],
)
def test_bad_filters_and_unknown_jobs_say_so(url: str, status: int) -> None:
    assert client(runtime()).get(url).status_code == status


def test_the_pages_do_not_ask_for_the_api_token(tmp_path: object) -> None:
    import pathlib

    base = pathlib.Path(str(tmp_path))
    (base / "token").write_text("t0ken\n")
    data = {
        "api": {"token_file": str(base / "token")},
        "targets": [{"name": "basiq", "provider": "basiq", "base_url": "https://x"}],
    }
    settings = build_settings(data, PROVIDERS)
    rt = Runtime(settings)
    rt.tracker.set_target(settings.resolved(settings.targets[0]))
    c = client(rt)
    assert c.get("/").status_code == 200 and c.get("/jobs").status_code == 200
    assert c.get("/api/v1/jobs").status_code == 401


def test_a_jobs_page_and_document_work_out_its_step_durations_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Once per step, a job of thousands of steps (its answer has no other bound) cost the square.
    from exporter import step_times
    from exporter.runtime import job_document

    rt = runtime()
    names = [f"step-{i}" for i in range(50)]
    rt.tracker.track(
        "basiq",
        Job("j", Status.RUNNING, created=1.0, steps=tuple(Step(n, Status.RUNNING) for n in names)),
        "static",
        now=1,
    )
    done = Job("j", Status.RUNNING, created=1.0, steps=tuple(Step(n, Status.SUCCEEDED) for n in names))
    rt.tracker.apply("basiq", PollResult(jobs=[done]), now=4)
    calls = []
    real = step_times.durations

    def counted(times: tuple[Any, ...]) -> dict[str, float]:
        calls.append(1)
        return real(times)

    monkeypatch.setattr(step_times, "durations", counted)
    doc = job_document("basiq", rt.tracker.targets["basiq"].jobs["j"])
    assert [s["duration_seconds"] for s in doc["steps"]] == [3.0] + [0.0] * 49 and len(calls) == 1
    page = client(rt).get("/jobs/basiq/j")
    assert page.status_code == 200 and page.text.count("step-") >= 50 and len(calls) == 2


class Unwalkable(dict[str, Any]):
    """A target's jobs that fail any walk over them: only look-ups are allowed."""

    def _walk(self, *args: object) -> Any:
        raise AssertionError("walked every job")

    __iter__ = items = values = keys = _walk


def test_a_page_or_api_read_of_an_unknown_id_is_a_look_up_not_a_walk_over_every_job() -> None:
    rt = runtime()
    rt.tracker.track("basiq", failed_job("known"), "registered")
    state = rt.tracker.targets["basiq"]
    state.jobs = Unwalkable(state.jobs)
    c = client(rt)
    assert c.get("/jobs/basiq/known").status_code == 200
    for unknown in ("unknown", "bad%EF%BF%BDid", "a/b"):
        assert c.get(f"/jobs/basiq/{unknown}").status_code == 404
        # The API's reads and deletes alike.
        assert c.get(f"/api/v1/targets/basiq/jobs/{unknown}").status_code == 404
        assert c.delete(f"/api/v1/targets/basiq/jobs/{unknown}").status_code == 404


def job_page(rt: Runtime, target: str, job_id: str) -> str:
    page: httpx.Response = client(rt).get(f"/jobs/{target}/{job_id}")
    assert page.status_code == 200
    return page.text


def test_a_job_page_links_its_runbook_section_under_the_configured_base() -> None:
    rt = runtime()
    rt.tracker.track("basiq", failed_job("f1", message="bank down"), "discovered")
    page = job_page(rt, "basiq", "f1")
    # failed_job's reason is the end user's (invalid-credentials): the user-failure section.
    assert (
        'id="runbook" href="https://github.com/asyncjob-exporter/asyncjob-exporter/blob/main/docs/'
        'runbooks.md#asyncjobuserfailureratehigh"' in page
    )
    data: dict[str, object] = {
        "runbook_base_url": "https://wiki.example.com/asyncjob/",
        "targets": [
            {"name": "exports", "provider": "generic", "base_url": "https://x.example", "job_path": "/j/{id}"}
        ],
    }
    settings = build_settings(data, PROVIDERS)
    other = Runtime(settings)
    other.tracker.set_target(settings.resolved(settings.targets[0]))
    other.tracker.track("exports", Job("x", Status.FAILED, "error", reason="quota"), "registered")
    page = job_page(other, "exports", "x")
    assert 'id="runbook" href="https://wiki.example.com/asyncjob#asyncjobfailed"' in page
    assert "Next step." in page


def test_the_runbook_base_must_be_a_web_address() -> None:
    from exporter.config import ConfigError
    from exporter.config.models import DEFAULT_RUNBOOK_BASE_URL
    from exporter.mixin.config import CONFIG

    assert CONFIG.runbook_base_url == DEFAULT_RUNBOOK_BASE_URL  # the same runbooks as the alerts'
    with pytest.raises((ConfigError, ValueError), match="runbook_base_url"):
        build_settings({"runbook_base_url": "javascript:alert(1)"}, PROVIDERS)


def test_an_overdue_job_says_so_and_points_to_the_overdue_runbook() -> None:
    import time

    rt = runtime()  # max_duration: the default 6h
    now = time.time()
    started = now - 7 * 3600
    rt.tracker.track(
        "exports", Job("slow", Status.RUNNING, started=started, updated=now), "registered", now=now
    )
    page = job_page(rt, "exports", "slow")
    assert re.search(r'id="overdue">overdue: running for 7h00m, over 6h00m<', page)
    assert "#asyncjoboverdue" in page
    listing = client(rt).get("/jobs").text
    assert '<span class="flag flag-overdue">overdue</span>' in listing
    row = re.search(r'<tr data-target="exports">(.*?)</tr>', client(rt).get("/").text, re.S)
    assert row is not None and 'href="/jobs?target=exports&amp;overdue=1">1</a>' in row.group(1)
    # Within its max duration, a job is not overdue.
    rt.tracker.track(
        "exports", Job("quick", Status.RUNNING, started=now - 60, updated=now), "registered", now=now
    )
    assert 'id="overdue"' not in job_page(rt, "exports", "quick")
    # The list filters on it, as AsyncJobManyStuck's description links it.
    only = client(rt).get("/jobs?target=exports&overdue=1").text
    assert "1 job(s)" in only and ">slow<" in only and ">quick<" not in only


def test_a_job_in_status_unknown_can_be_overdue_and_stuck_as_the_rules_say() -> None:
    rt = runtime()
    rt.tracker.track("exports", Job("u", Status.UNKNOWN, "weird", started=1.0), "registered", now=1.0)
    page = job_page(rt, "exports", "u")
    assert 'id="overdue"' in page and "stuck: no progress" in page
    assert "#asyncjoboverdue" in page  # overdue pages; stuck is held back for the same job


def test_a_finished_job_shows_no_stuck_threshold() -> None:
    rt = runtime()
    rt.tracker.track("exports", Job("done", Status.SUCCEEDED, "done", finished=5.0), "registered", now=5.0)
    page = job_page(rt, "exports", "done")
    assert "stuck after" not in page and 'id="overdue"' not in page and "running for" not in page
    rt.tracker.track("exports", Job("run", Status.RUNNING, "working"), "registered")
    assert "stuck after 10m00s" in job_page(rt, "exports", "run")


def test_a_queued_text_is_a_message_not_an_error() -> None:
    rt = runtime()
    rt.tracker.track("exports", Job("q", Status.PENDING, "Queued", message="Job is queued."), "registered")
    rt.tracker.track("exports", failed_job("f", message="Report failed."), "registered")
    c = client(rt)
    for page in (job_page(rt, "exports", "q"), c.get("/jobs").text):
        assert (
            '<span class="message">Job is queued.</span>' in page
            or '<div class="message">Job is queued.</div>' in page
        )
        assert not re.search(r'class="error">Job is queued', page)
        # A failed job's text is still the error it is.
        assert re.search(r'class="error">Report failed\.', page) or "Report failed" not in page
    assert re.search(r'class="error">Report failed\.', c.get("/jobs").text)


def test_a_sync_that_failed_for_its_end_user_ends_its_timeline_failed_not_awaiting() -> None:
    # As Oxlin reports it: the sync waits for the user's re-authentication, then fails for want of it
    # (AUTH_FAILED), still flagged as the user's to act on.
    rt = runtime()
    waiting = Job(
        "4242:100", Status.RUNNING, "SYNC_STARTED", awaiting_user=True, extra={"connection": "4242"}
    )
    rt.tracker.track("exports", waiting, "registered", now=100.0)
    failed = Job(
        "4242:100", Status.FAILED, "AUTH_FAILED", reason="auth_failed", finished=160.0,
        awaiting_user=True, extra={"connection": "4242"},
    )  # fmt: skip
    rt.tracker.apply("exports", PollResult(jobs=[failed]), now=160.0)
    page = job_page(rt, "exports", "4242:100")
    timeline = re.search(r'<table id="timeline">(.*?)</table>', page, re.S)
    assert timeline is not None
    rows = re.findall(r"<tr><td>(.*?)</tr>", timeline.group(1), re.S)
    assert "awaiting user" in rows[0] and "1m00s" in rows[0]  # waited from 100 to 160
    assert "failed" in rows[-1] and rows[-1].endswith('<td class="num">—</td>')
    assert "awaiting the end user" not in page  # no flag on a finished job


def test_a_finished_jobs_timeline_never_grows_even_from_an_older_history() -> None:
    from exporter.history import from_row

    rt = runtime()
    rt.tracker.track(
        "exports", Job("old", Status.FAILED, "AUTH_FAILED", finished=160.0), "registered", now=160.0
    )
    tracked = rt.tracker.targets["exports"].jobs["old"]
    # Written before a failed job's last state was recorded as failed: it ends "awaiting user".
    tracked.history = from_row([100.0, "", "running", 160.0, "", "awaiting_user", 160.0, "export", "running"])
    rows = re.findall(r"<tr><td>(.*?)</tr>", job_page(rt, "exports", "old"), re.S)
    assert rows[0].endswith('<td class="num">1m00s</td>')
    assert all(row.endswith('<td class="num">—</td>') for row in rows[1:]), rows


def test_a_job_page_names_whom_the_job_concerns_and_labels_the_provider_link_as_an_api() -> None:
    import json
    from pathlib import Path

    rt = runtime()
    answer = json.loads((Path(__file__).parents[1] / "fixtures" / "basiq_job_failed_array.json").read_text())
    job = PROVIDERS["basiq"](rt.settings.targets[0]).parse_job(answer)
    rt.tracker.track("basiq", job, "discovered")
    page = job_page(rt, "basiq", job.id)
    assert re.search(r"<dt>end user</dt><dd[^>]*>b2afc9cd-0f3c-41f0-9e19-d18482abc9fc</dd>", page)
    assert re.search(r"<dt>connection</dt><dd[^>]*>60612323-9c42-478a-8ff2-640445dbe64a</dd>", page)
    assert "<dt>provider API</dt>" in page and "at the provider" not in page
    assert "it asks for the target's credentials" in page


def test_the_landing_page_names_a_configured_source_that_answers_404() -> None:
    rt = runtime()
    rt.tracker.targets["basiq"].missing["user <b>ea3a81</b>"] = 1_700_000_000.0
    page = client(rt).get("/").text
    row = re.search(r'<tr data-target="basiq">(.*?)</tr>', page, re.S)
    assert row is not None
    assert "user &lt;b&gt;ea3a81&lt;/b&gt; answers 404" in row.group(1)
    assert "not_found" in row.group(1)
