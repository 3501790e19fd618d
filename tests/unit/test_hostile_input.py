"""No input crashes the exporter: JSON from providers and from the API with lone surrogates,
control characters, deep nesting, huge numbers, NaN and infinities. One bad answer is one bad
job; the others are still polled and rendered, and /metrics stays valid exposition."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from exporter.config import build_settings
from exporter.parsing import MAX_JSON_DEPTH, JsonTooDeep, clean_text, load_json, parse_number, text_id
from exporter.providers import PROVIDERS
from exporter.routes import build_app
from exporter.runtime import Runtime, connect_store
from tests.unit.provider_http import fixture, provider_and_http

# --- hostile JSON ---------------------------------------------------------------------------

hostile_text = st.text(
    st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\n", "\r", "\x00", "\x85", "\u2028"])),
    max_size=8,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(),  # NaN and infinities included: Python's JSON reader accepts them
    hostile_text,
)
KEYS = ["id", "status", "steps", "title", "result", "jobID", "jobStatus", "value", "data", "resource"]
hostile = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), hostile_text), inner, max_size=4),
    ),
    max_leaves=10,
)


def nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


hostile_values = st.one_of(hostile, st.tuples(hostile, st.integers(0, 100)).map(lambda p: nest(*p)))
# Hypothesis' explain phase compiles source while a 100-deep value sits on the stack, which
# CPython 3.11 may answer with SystemError (AST recursion depth mismatch): not our code.
NO_EXPLAIN = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)


def dumps(value: Any) -> bytes:
    """JSON as a hostile peer sends it: NaN/Infinity literals, `\\ud800` escapes."""
    return json.dumps(value, allow_nan=True).encode()


def depth(obj: Any) -> int:
    if isinstance(obj, dict):
        return 1 + max((depth(v) for v in obj.values()), default=0)
    if isinstance(obj, list):
        return 1 + max((depth(v) for v in obj), default=0)
    return 0


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, (*prefix, i))


def replaced(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: replaced(obj[head], rest, value)}
    return [replaced(v, rest, value) if i == head else v for i, v in enumerate(obj)]


# --- load_json and text ids ------------------------------------------------------------------


def test_lone_surrogates_in_an_answer_become_replacement_characters() -> None:
    assert load_json(b'{"message": "a\\ud800b", "k\\udfff": 1}') == {"message": "a\ufffdb", "k\ufffd": 1}
    assert load_json(b'"\xed\xa0\x80"') == "\ufffd\ufffd\ufffd"  # a surrogate written as UTF-8


def test_a_surrogate_pair_is_one_character_and_kept() -> None:
    assert load_json(b'"\\ud83d\\ude00"') == "\U0001f600"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1_000, 100_000])
def test_json_deeper_than_the_bound_is_refused(depth: int) -> None:
    with pytest.raises(JsonTooDeep):
        load_json("[" * depth + "]" * depth)


def test_json_as_deep_as_the_bound_is_read() -> None:
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) == nest([], MAX_JSON_DEPTH - 1)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b", "a\ud800b", "\x85"])
def test_an_id_holding_a_control_character_or_a_lone_surrogate_is_no_id(bad: str) -> None:
    assert text_id(bad) is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, "nan", "1e999"])
def test_numbers_that_are_not_finite_are_not_numbers(value: Any) -> None:
    assert parse_number(value) is None


def test_config_and_state_text_is_cleaned_of_lone_surrogates() -> None:
    assert clean_text({"a\ud800": ["x\udfff", 1, None]}) == {"a\ufffd": ["x\ufffd", 1, None]}


# --- every provider's parsing, through the real HTTP client ----------------------------------


@dataclass
class Scenario:
    """A provider target answering two good jobs (or connections) and one hostile answer."""

    keys: dict[str, Any]
    tracked: list[str]
    answers: Callable[[Any], dict[str, Any]]  # hostile object -> {path suffix: answer}
    bad: Any  # the well-formed answer the hostile value is planted in
    # Job ids (connection ids for oxlin) that must come through -> the answer each is in: an
    # answer nested deeper than the bound is refused whole, good jobs in it too.
    good: dict[str, str]
    label: str = "job_id"


def basiq_job(job_id: str) -> dict[str, Any]:
    return {**fixture("basiq_job.json"), "id": job_id}


def willsuite_job(job_id: str) -> dict[str, Any]:
    return {**fixture("willsuite_api_job.json"), "id": job_id}


def aims_row(job_id: str) -> dict[str, Any]:
    return {**fixture("aims360_backgroundjob.json")["value"][0], "jobID": job_id}


def export(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "kind": "csv", "state": "working", "progress": {"pct": 40}, "attempts": 1}


def oxlin_event(event_id: str, conn: str) -> dict[str, Any]:
    event = fixture("oxlin_queue_event.json")
    return {**event, "id": event_id, "resource": {**event["resource"], "id": conn}}


GENERIC = {
    "provider": "generic",
    "job_path": "/v1/exports/{id}",
    "list_path": "/v1/exports",
    "items": "data",
    "fields": {
        "id": "id",
        "status": "state",
        "percent": "progress.pct",
        "type": "kind",
        "attempts": "attempts",
    },
    "status_map": {"working": "running", "done": "succeeded"},
}

SCENARIOS = {
    "basiq": Scenario(
        {"provider": "basiq", "users": ["u"]},
        ["good", "bad"],
        lambda bad: {
            "/jobs/good": basiq_job("good"),
            "/jobs/bad": bad,
            "/users/u/jobs": {"type": "list", "data": [basiq_job("listed"), bad]},
        },
        basiq_job("bad"),
        {"good": "/jobs/good", "listed": "/users/u/jobs"},
    ),
    "willsuite": Scenario(
        {"provider": "willsuite"},
        ["good", "bad"],
        lambda bad: {"/api-jobs/good": willsuite_job("good"), "/api-jobs/bad": bad},
        willsuite_job("bad"),
        {"good": "/api-jobs/good"},
    ),
    "aims360": Scenario(
        {"provider": "aims360"},
        ["good", "bad"],
        lambda bad: {"/backgroundjob": {"value": [aims_row("good"), bad]}},
        aims_row("bad"),
        {"good": "/backgroundjob"},
    ),
    "generic": Scenario(
        GENERIC,
        ["good", "bad"],
        lambda bad: {
            "/v1/exports/good": export("good"),
            "/v1/exports/bad": bad,
            "/v1/exports": {"data": [export("listed"), bad]},
        },
        export("bad"),
        {"good": "/v1/exports/good", "listed": "/v1/exports"},
    ),
    "oxlin": Scenario(
        {"provider": "oxlin", "queues": ["q"], "connections": ["c1"]},
        [],
        lambda bad: {
            "/queues/q": [oxlin_event("1", "c1"), bad],
            "/connections/c1": oxlin_event("1", "c1")["resource"],
            "/connections/c2": bad.get("resource") if isinstance(bad, dict) else bad,
        },
        oxlin_event("2", "c2"),
        {"c1": "/connections/c1"},
        label="connection_id",
    ),
}


def rendered_ids(runtime: Runtime, label: str) -> set[str]:
    text = runtime.exposition.render().decode()
    families = list(text_string_to_metric_families(text))  # raises on invalid exposition
    return {s.labels[label] for f in families for s in f.samples if label in s.labels}


async def poll_and_render(scenario: Scenario, bad: Any) -> None:
    """Poll the scenario's target with `bad` planted in one answer; every good job whose
    answer is not refused whole must be rendered, in exposition the parser accepts."""
    documents = scenario.answers(bad)
    answers = {k: dumps(v) for k, v in documents.items()}
    must = {job_id for job_id, where in scenario.good.items() if depth(documents[where]) <= MAX_JSON_DEPTH}

    def handler(request: httpx.Request) -> httpx.Response:
        for suffix, body in answers.items():
            if request.url.path.endswith(suffix):
                return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        return httpx.Response(404)

    keys = {"name": "t", "base_url": "https://api.example.com", **scenario.keys}
    provider, http = provider_and_http(handler, **keys)
    try:
        result = await provider.poll(http, scenario.tracked)
    finally:
        await http.aclose()
    # The fixtures' jobs finished years ago: a retention longer than that keeps them news
    # (older finished jobs are history, rendered by no series).
    settings_ = build_settings({"global": {"retention": "1000w"}, "targets": [keys]}, PROVIDERS)
    runtime = Runtime(settings_)
    runtime.tracker.set_target(settings_.resolved(settings_.targets[0]))
    runtime.tracker.apply("t", result)
    assert must <= rendered_ids(runtime, scenario.label)


NASTY = ["x\ud800", "\udfff", "a\nb\x00", math.nan, math.inf, -(10**30), nest("deep", 100), {"k\ud800": [1]}]


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_a_nasty_value_in_any_field_of_an_answer_is_one_bad_job(name: str) -> None:
    scenario = SCENARIOS[name]
    for path in paths(scenario.bad):
        for value in NASTY:
            await poll_and_render(scenario, replaced(scenario.bad, path, value))


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(SCENARIOS))
@given(data=st.data())
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=NO_EXPLAIN,
)
async def test_a_hostile_answer_is_one_bad_job_and_the_others_are_polled_and_rendered(
    name: str, data: st.DataObject
) -> None:
    scenario = SCENARIOS[name]
    path = data.draw(st.sampled_from(list(paths(scenario.bad))), label="path")
    await poll_and_render(scenario, replaced(scenario.bad, path, data.draw(hostile_values, label="value")))


# --- the API, through the real app -----------------------------------------------------------


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[TestClient, Runtime]]:
    settings_ = build_settings(
        {
            "targets": [{"name": "b", "provider": "basiq", "base_url": "https://x"}],
            "global": {"max_jobs_per_target": 200},
        },
        PROVIDERS,
    )
    runtime = Runtime(settings_)
    runtime.tracker.set_target(settings_.resolved(settings_.targets[0]))
    with TestClient(build_app(runtime), raise_server_exceptions=False) as client:
        yield client, runtime


def post(client: TestClient, raw: bytes) -> httpx.Response:
    response: httpx.Response = client.post(
        "/api/v1/targets/b/jobs", content=raw, headers={"content-type": "application/json"}
    )
    return response


@pytest.mark.parametrize("job_id", ["a\ud800b", "a\nb", "a\rb", "a\x00b", "\udfff"])
def test_an_id_that_is_not_text_is_refused_naming_the_field(
    api: tuple[TestClient, Runtime], job_id: str
) -> None:
    client, _ = api
    r = post(client, dumps({"id": job_id}))
    assert r.status_code == 422 and r.json()["field"] == "id"


def test_json_nested_1000_deep_is_refused_naming_the_body(api: tuple[TestClient, Runtime]) -> None:
    client, _ = api
    r = post(client, b'{"id": "deep", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}")
    assert r.status_code == 422 and r.json()["field"] == "body"


def test_invalid_utf8_is_not_json(api: tuple[TestClient, Runtime]) -> None:
    client, _ = api
    assert post(client, b'{"id": "a\xffb"}').status_code == 400


def test_a_lone_surrogate_beside_a_good_id_is_replaced_and_rendered(api: tuple[TestClient, Runtime]) -> None:
    client, runtime = api
    body = {**basiq_job("surrogate-beside"), "jobType": "x\ud800", "steps": [{"title": "s\udfff"}]}
    r = post(client, dumps(body))
    assert r.status_code == 202, r.text
    assert "surrogate-beside" in rendered_ids(runtime, "job_id")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "x\ufffd" in metrics.text


registration_bodies = st.one_of(
    hostile_values,
    st.builds(lambda v: {"id": v}, hostile_values),
    st.tuples(st.sampled_from(list(paths(basiq_job("api")))), hostile_values).map(
        lambda p: replaced(basiq_job("api"), p[0], p[1])
    ),
)


@given(body=registration_bodies)
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=NO_EXPLAIN,
)
def test_no_hostile_registration_fails_the_server_or_the_exposition(
    api: tuple[TestClient, Runtime], body: Any
) -> None:
    client, _ = api
    r = post(client, dumps(body))
    assert r.status_code in (202, 400, 409, 422), (r.status_code, r.text)
    if r.status_code == 422:
        assert r.json()["field"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    list(text_string_to_metric_families(metrics.text))


def test_the_exposition_after_hostile_registrations_passes_promtool(api: tuple[TestClient, Runtime]) -> None:
    client, _ = api
    for body in ({"id": "p\ud800"}, {**basiq_job("p2"), "jobType": '\ud800\n\\"', "steps": None}):
        post(client, dumps(body))
    promtool = shutil.which("promtool")
    if promtool is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("promtool is missing; .ci/run installs it (Debian package prometheus)")
        pytest.skip("promtool not installed (CI fails here instead)")
    r = subprocess.run(
        [promtool, "check", "metrics"], input=client.get("/metrics").content, capture_output=True
    )
    assert r.returncode == 0, r.stderr.decode()


# --- config and state rows -------------------------------------------------------------------


def test_a_lone_surrogate_in_the_config_file_is_replaced(tmp_path: Any) -> None:
    from exporter.config import load_settings

    path = tmp_path / "c.yml"
    path.write_text('targets:\n  - {name: t, provider: basiq, base_url: "https://x", jobs: ["j\\ud800"]}\n')
    assert load_settings(path, PROVIDERS).targets[0].jobs == ["j\ufffd"]


def test_a_lone_surrogate_in_a_state_row_is_replaced_and_the_job_rendered(tmp_path: Any) -> None:
    import sqlite3

    from exporter.model import Job, Status
    from exporter.state import Store

    settings_ = build_settings(
        {"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    path = str(tmp_path / "state.db")
    runtime = Runtime(settings_)
    store = Store(path)
    connect_store(store, runtime.tracker, runtime.scheduler, history=store)
    runtime.tracker.set_target(settings_.resolved(settings_.targets[0]))
    runtime.tracker.track("t", Job("row", Status.RUNNING, job_type="connection"), "registered")
    store.close()
    db = sqlite3.connect(path)
    (data,) = db.execute("SELECT data FROM jobs").fetchone()
    db.execute("UPDATE jobs SET data = ?", (data.replace('"connection"', '"conn\\ud800"'),))
    db.commit()
    db.close()

    runtime = Runtime(settings_)
    store = Store(path)
    connect_store(store, runtime.tracker, runtime.scheduler, history=store)
    runtime.tracker.set_target(settings_.resolved(settings_.targets[0]))
    assert runtime.tracker.targets["t"].jobs["row"].job.job_type == "conn\ufffd"
    assert "row" in rendered_ids(runtime, "job_id")
    store.close()


def test_a_surrogate_past_the_boundary_costs_a_character_not_the_exposition() -> None:
    from exporter.model import Job, Status, Step

    settings_ = build_settings(
        {"targets": [{"name": "t", "provider": "basiq", "base_url": "https://x"}]}, PROVIDERS
    )
    runtime = Runtime(settings_)
    runtime.tracker.set_target(settings_.resolved(settings_.targets[0]))
    runtime.tracker.track("t", Job("fine", Status.RUNNING, job_type="connection"), "registered")
    bad = Job(
        "bad", Status.FAILED, job_type="x\ud800", reason="r\udfff", steps=(Step("s\ud800", Status.FAILED),)
    )
    runtime.tracker.track("t", bad, "registered")
    assert {"fine", "bad"} <= rendered_ids(runtime, "job_id")


def test_a_listen_address_or_content_length_of_digit_like_characters_is_refused_not_crashed() -> None:
    """str.isdigit accepts "²", which int() refuses."""
    import pytest

    from exporter.httpserver.server import parse_listen_address

    with pytest.raises(ValueError, match="expected"):
        parse_listen_address(":1²")
