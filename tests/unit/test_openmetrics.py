"""OpenMetrics 1.0.0 for the scrapers that ask for it (Prometheus does), with job_id exemplars on
the duration histograms and `# EOF`; text 0.0.4, unchanged to the byte, for every other one."""

from __future__ import annotations

import gzip
import subprocess
import zlib
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter import __version__
from exporter.config import build_settings
from exporter.httpserver.front_door import WebCounts
from exporter.model import Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.render import Exposition
from exporter.render.formats import EOF, wants_openmetrics
from exporter.routes import ExporterApp, build_app
from exporter.runtime import Runtime
from exporter.tracker import Tracker
from tests.tools import require_tool

# The text body of a_scraped_fleet() as the exporter served it before OpenMetrics was added
# (rendered by the code of the commit before, and reviewed: process metrics left out).
GOLDEN_TEXT = Path(__file__).parent.parent / "fixtures" / "exposition-0.0.4.txt"
LONG_ID = "x" * 120  # job_id + target with their names: past OpenMetrics' 128 characters


def a_scraped_fleet() -> Exposition:
    """Jobs that fill every family, at fixed times: the same bytes at every run."""
    settings = build_settings(
        {"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    tracker = Tracker()
    exposition = Exposition(tracker, lambda: {"t": (3, {"http_5xx": 1})})
    exposition.exporter_metrics = False
    exposition.web_counts = WebCounts()  # not what the tests before it left in the process's own
    tracker.set_target(settings.resolved(settings.targets[0]))
    now = 1_700_000_000.0
    steps = (Step("verify-credentials", Status.RUNNING), Step("retrieve-accounts", Status.PENDING))
    done = tuple(Step(s.name, Status.SUCCEEDED) for s in steps)
    for i, (status, seconds) in enumerate(
        [
            (Status.SUCCEEDED, 40.0),
            (Status.SUCCEEDED, 700.0),
            (Status.FAILED, 3.0),
            (Status.SUCCEEDED, 90000.0),
        ]
    ):
        job_id = LONG_ID if seconds == 90000.0 else f"job-{i}"
        tracker.track(
            "t", Job(job_id, Status.RUNNING, job_type="connection", created=now, steps=steps), "static", now
        )
        final = Job(
            job_id,
            status,
            job_type="connection",
            created=now,
            finished=now + seconds,
            reason="connector-error" if status is Status.FAILED else None,
            steps=done,
            records_total=10,
            records_failed=1,
        )
        tracker.update(tracker.targets["t"], final, now + seconds)
    tracker.track("t", Job("running", Status.RUNNING, job_type="connection", created=now), "static", now)
    return exposition


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        # Prometheus 2.x, as sent on every scrape.
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1", True),
        # Prometheus 3.x, and with native histograms on (protobuf first: not ours to serve).
        (
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
            "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
            "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            True,
        ),
        (
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
            "application/openmetrics-text;version=1.0.0;q=0.6,text/plain;version=0.0.4;q=0.3",
            True,
        ),
        ("application/openmetrics-text; version=0.0.1", True),
        ("", False),
        ("*/*", False),
        ("text/plain", False),
        ("text/plain;version=0.0.4,application/openmetrics-text;version=1.0.0", False),  # as high, later
        ("text/plain;q=0.2,application/openmetrics-text;q=0.9", True),
        ("application/openmetrics-text;version=2.0.0,text/plain;q=0.1", False),  # a version we do not write
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=oops", False),
    ],
)
def test_openmetrics_goes_to_the_scrapers_that_prefer_it(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


def test_the_text_body_is_byte_for_byte_what_it_was() -> None:
    golden = GOLDEN_TEXT.read_bytes().replace(b"{version}", __version__.encode())
    assert a_scraped_fleet().render() == golden
    assert gzip.decompress(a_scraped_fleet().render(gz=True)) == golden


def test_the_openmetrics_body_parses_ends_with_eof_and_has_no_created_series() -> None:
    body = a_scraped_fleet().render(openmetrics=True).decode()
    assert body.endswith("\n# EOF\n") and body.count("# EOF") == 1
    # Strict: raises on any fault (prometheus_client's OpenMetrics parser is unannotated).
    families = list(text_string_to_metric_families(body))  # type: ignore[no-untyped-call]
    names = {s.name for f in families for s in f.samples}
    assert not [n for n in names if n.endswith("_created")]
    finished = next(f for f in families if f.name == "asyncjob_jobs_finished")
    assert finished.type == "counter"
    assert {s.name for s in finished.samples} == {"asyncjob_jobs_finished_total"}


def test_duration_buckets_carry_the_job_that_landed_there_recently() -> None:
    body = a_scraped_fleet().render(openmetrics=True).decode()
    marks = {}
    # prometheus_client's OpenMetrics parser is unannotated.
    for family in text_string_to_metric_families(body):  # type: ignore[no-untyped-call]
        for s in family.samples:
            if s.exemplar is not None:
                marks[(s.name, s.labels.get("status", s.labels.get("step")), s.labels["le"])] = s.exemplar
    job = "asyncjob_job_duration_seconds_bucket"
    assert marks[(job, "succeeded", "60")].labels == {"job_id": "job-0", "target": "t"}
    assert marks[(job, "succeeded", "60")].value == 40
    assert marks[(job, "succeeded", "1200")].labels["job_id"] == "job-1"
    assert marks[(job, "failed", "5")].labels["job_id"] == "job-2"
    # The 90,000 s job landed in +Inf, but its id is too long for an exemplar: left out.
    assert (job, "succeeded", "+Inf") not in marks
    assert f'job_id="{LONG_ID}"' in body  # its own series are there
    # Each bucket holds the last job that fell in it first: verify-credentials of job-1.
    step = marks[("asyncjob_step_duration_seconds_bucket", "verify-credentials", "1800")]
    assert step.labels == {"job_id": "job-1", "target": "t"}
    assert sum(1 for k in marks if k[0] == "asyncjob_poll_duration_seconds_bucket") == 0


def test_both_formats_share_the_job_part_and_are_one_gzip_member() -> None:
    ex = a_scraped_fleet()
    text = ex.render()
    om = ex.render(gz=True, openmetrics=True)
    d = zlib.decompressobj(31)
    plain = d.decompress(om)
    assert d.eof and d.unused_data == b""  # one member, nothing after it
    assert plain == gzip.decompress(om) and plain.endswith(EOF)
    jobs = [line for line in text.split(b"\n") if line.startswith(b"asyncjob_job_") and b"job_id=" in line]
    assert jobs and plain.startswith(text[: text.index(jobs[-1]) + len(jobs[-1])])


def test_promtool_reads_the_text_body() -> None:
    done = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=a_scraped_fleet().render(),
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode()


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (PROMETHEUS_ACCEPT, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        ("*/*", "text/plain; version=0.0.4; charset=utf-8"),
    ],
)
async def test_metrics_answers_the_format_asked_for_on_both_paths(accept: str, media: str) -> None:
    """The app's /metrics and the answer the HTTP protocol gives without it agree."""
    settings = build_settings(
        {"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    rt = Runtime(settings)
    rt.tracker.set_target(settings.resolved(settings.targets[0]))
    app = build_app(rt)
    assert isinstance(app, ExporterApp) and app.fast_path is not None
    headers = {"accept": accept, "accept-encoding": "gzip"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as client:
        via_app = await client.get("/metrics", headers=headers)
    answer = app.fast_path.answer_now(
        b"GET", b"/metrics", [(k.encode(), v.encode()) for k, v in headers.items()]
    )
    assert answer is not None
    status, direct_headers, direct_body = answer
    assert status == via_app.status_code == 200
    assert via_app.headers["content-type"] == dict(direct_headers)[b"content-type"].decode() == media
    for body in (via_app.content, gzip.decompress(direct_body)):
        assert body.endswith(EOF) is media.startswith("application/openmetrics-text")
