"""Property tests: no config makes the loader trace back, no API body makes the server
answer 500, and no label value breaks the exposition."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from exporter.config import ConfigError, build_settings
from exporter.model import Job, Status, Step
from exporter.providers import PROVIDERS
from exporter.routes import build_app
from exporter.runtime import Runtime

KEYS = [
    "global",
    "targets",
    "state_file",
    "api",
    "name",
    "provider",
    "base_url",
    "auth",
    "type",
    "jobs",
    "poll_interval",
    "timeout",
    "concurrency",
    "retention",
    "fields",
    "status_map",
    "api_key_file",
    "token_file",
    "client_secret_env",
    "users",
    "queues",
    "timezone",
    "max_jobs_per_target",
    "bogus",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["basiq", "30s", "1h", "-1s", "oauth2_password", "https://x"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
configs = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)


@given(configs)
@settings(max_examples=300, deadline=None)
def test_any_config_is_accepted_or_refused_with_key_paths(data: dict[str, Any]) -> None:
    try:
        build_settings(data, PROVIDERS)
    except ConfigError as e:
        assert e.problems
        for problem in e.problems:
            where, sep, message = problem.partition(": ")
            assert sep and where and message, problem


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings_ = build_settings(
        {
            "targets": [{"name": "b", "provider": "basiq", "base_url": "https://x"}],
            "global": {"max_jobs_per_target": 50},
        },
        PROVIDERS,
    )
    runtime = Runtime(settings_)
    runtime.tracker.set_target(settings_.resolved(settings_.targets[0]))
    return TestClient(build_app(runtime), raise_server_exceptions=False)


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["id", "steps", "jobId", "type", "title", "status", "x"]) | st.text(max_size=5),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=15,
)


@given(body=json_values)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_api_body_makes_the_server_fail(client: TestClient, body: Any) -> None:
    r = client.post("/api/v1/targets/b/jobs", json=body)
    allowed = (415,) if body is None else (202, 409, 422)  # json=None sends no body and no type
    assert r.status_code in allowed, (r.status_code, r.text)
    if r.status_code == 422:
        assert r.json()["field"]


@given(raw=st.binary(max_size=200))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_raw_body_makes_the_server_fail(client: TestClient, raw: bytes) -> None:
    r = client.post("/api/v1/targets/b/jobs", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (202, 400, 409, 422), (r.status_code, r.text)


label_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)


@given(st.lists(st.tuples(label_text, label_text, label_text), min_size=1, max_size=8))
@settings(max_examples=40, deadline=None)
def test_any_label_value_stays_valid_exposition(values: list[tuple[str, str, str]]) -> None:
    settings_ = build_settings(
        {"targets": [{"name": "b", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    runtime = Runtime(settings_)
    runtime.tracker.set_target(settings_.resolved(settings_.targets[0]))
    ids = set()
    for i, (job_id, job_type, step) in enumerate(values):
        jid = f"{i}{job_id}"
        ids.add(jid)
        runtime.tracker.track(
            "b",
            Job(jid, Status.FAILED, job_type=job_type, reason=step, steps=(Step(step, Status.FAILED),)),
            "static",
        )
    text = runtime.exposition.render().decode()
    parsed = {s.labels.get("job_id") for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert ids <= parsed
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
    elif os.environ.get("CI"):
        pytest.fail("promtool is missing; .ci/run installs it (Debian package prometheus)")
