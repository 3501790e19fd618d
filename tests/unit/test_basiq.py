"""Basiq's wire format read into the normalised job model, and its token flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.config import build_settings
from exporter.fetch import PollError
from exporter.model import Status
from exporter.providers import PROVIDERS
from exporter.providers.base import BadPayload
from exporter.providers.basiq import Basiq
from tests.conftest import FIXTURES
from tests.unit.provider_http import basiq_http


def provider(**kw: Any) -> Basiq:
    s = build_settings(
        {"targets": [{"name": "b", "provider": "basiq", "base_url": "https://x", **kw}]}, PROVIDERS
    )
    return Basiq(s.targets[0])


def test_the_documented_job_reads_as_running_in_its_third_step() -> None:
    job = provider().parse_job(json.loads((FIXTURES / "basiq_job.json").read_text()))
    assert job.id == "61723"
    assert job.status is Status.RUNNING
    assert [(s.name, s.status) for s in job.steps] == [
        ("verify-credentials", Status.SUCCEEDED),
        ("retrieve-accounts", Status.SUCCEEDED),
        ("retrieve-transactions", Status.RUNNING),
    ]
    assert job.created == 1465377032.0 and job.updated == 1465377268.0
    assert job.finished is None and job.reason is None and not job.awaiting_user
    assert job.effective_percent() == pytest.approx(200 / 3)


@pytest.mark.parametrize(
    "result",
    [
        {"code": "user-action-required", "title": "t", "detail": "Log in to your bank"},
        {"code": "user-action-required", "title": "t", "details": "Log in to your bank"},
        {
            "type": "list",
            "data": [
                {
                    "type": "error",
                    "code": "user-action-required",
                    "title": "t",
                    "detail": "Log in to your bank",
                }
            ],
        },
    ],
)
def test_a_failed_step_gives_the_bounded_reason_in_every_spelling(result: dict[str, Any]) -> None:
    body = {"id": "1", "steps": [{"title": "verify-credentials", "status": "failed", "result": result}]}
    job = provider().parse_job(body)
    assert job.status is Status.FAILED
    assert job.reason == "user-action-required"
    assert job.message == "Log in to your bank"


def test_an_mfa_challenge_means_the_job_waits_for_its_user() -> None:
    body = {
        "id": "1",
        "steps": [
            {
                "title": "verify-credentials",
                "status": "in-progress",
                "result": {"type": "mfa", "method": "token", "expiryMs": 1000},
            }
        ],
    }
    job = provider().parse_job(body)
    assert job.awaiting_user and job.status is Status.RUNNING


def test_missing_links_source_and_result_are_tolerated() -> None:
    job = provider().parse_job({"id": 7, "steps": [{"title": "create-report", "status": "success"}]})
    assert job.id == "7" and job.status is Status.SUCCEEDED


@pytest.mark.parametrize(
    "body", [[], {"steps": []}, {"id": "1", "steps": "x"}, {"id": "1", "steps": [{"status": "x"}]}]
)
def test_bodies_of_another_shape_are_refused(body: Any) -> None:
    with pytest.raises(BadPayload):
        provider().parse_job(body)


@pytest.mark.anyio
async def test_one_token_serves_many_requests_and_is_renewed_once_when_expired(tmp_path: Path) -> None:
    tokens: list[httpx.Request] = []
    state = {"valid": "t1"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            tokens.append(request)
            state["valid"] = f"t{len(tokens)}"
            return httpx.Response(
                200, json={"access_token": state["valid"], "token_type": "Bearer", "expires_in": 3600}
            )
        if request.headers["authorization"] != f"Bearer {state['valid']}":
            return httpx.Response(
                403, json={"type": "list", "data": [{"type": "error", "detail": "Token has expired"}]}
            )
        return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[1], "steps": []})

    http = basiq_http(handler, tmp_path)
    for i in range(5):
        await http.get_json(f"/jobs/{i}")
    assert len(tokens) == 1
    first = tokens[0]
    assert first.headers["authorization"] == "Basic abc=="  # the key exactly as issued
    assert first.headers["basiq-version"] == "3.0"
    assert first.content == b"scope=SERVER_ACCESS"
    state["valid"] = "rotated-by-provider"  # the provider expires our token
    await http.get_json("/jobs/9")
    assert len(tokens) == 2
    await http.aclose()


@pytest.mark.anyio
async def test_a_real_403_is_an_auth_error_not_a_renewal_loop(tmp_path: Path) -> None:
    calls = {"token": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            calls["token"] += 1
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(403, json={"detail": "Forbidden"})

    http = basiq_http(handler, tmp_path)
    with pytest.raises(PollError) as e:
        await http.get_json("/jobs/1")
    assert e.value.reason == "auth" and calls["token"] == 1
    assert http.stats.errors["auth"] == 1
    await http.aclose()
