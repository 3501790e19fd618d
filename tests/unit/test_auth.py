"""Token endpoints that refuse for load are rate limits and outages, not bad credentials; what
the token flows read is bounded as job answers are."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from exporter.auth import DEFAULT_TOKEN_LIFETIME, _lifetime
from exporter.config import build_settings
from exporter.fetch import PollError, TargetHttp
from exporter.providers import PROVIDERS
from tests.hostile import ANSWERS, Answer, Hostile, PeakRss, Request, json_answer, watchdog


def oauth_http(tmp_path: Path, token_answer: httpx.Response) -> TargetHttp:
    secret = tmp_path / "secret"
    secret.write_text("s")
    s = build_settings(
        {
            "targets": [
                {
                    "name": "w",
                    "provider": "willsuite",
                    "base_url": "https://api.example.com",
                    "auth": {
                        "type": "oauth2_client_credentials",
                        "token_url": "https://api.example.com/oauth/token/",
                        "client_id": "c",
                        "client_secret_file": str(secret),
                    },
                }
            ]
        },
        PROVIDERS,
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/oauth/token/"
        return token_answer

    return TargetHttp(s.resolved(s.targets[0]), transport=httpx.MockTransport(handler))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "reason", "retry_after"),
    [
        (httpx.Response(429, headers={"Retry-After": "30"}), "http_429", 30.0),
        (httpx.Response(403, json={"error": "Rate limit exceeded"}), "http_429", None),
        (httpx.Response(503), "http_5xx", None),
        (httpx.Response(401, json={"error": "invalid_client"}), "auth", None),
        (httpx.Response(403, json={"error": "forbidden"}), "auth", None),
    ],
)
async def test_a_token_refusal_counts_as_what_it_says(
    tmp_path: Path, answer: httpx.Response, reason: str, retry_after: float | None
) -> None:
    http = oauth_http(tmp_path, answer)
    with pytest.raises(PollError) as e:
        await http.get_json("/api-jobs/1")
    await http.aclose()
    assert (e.value.reason, e.value.retry_after) == (reason, retry_after)
    assert http.stats.errors[reason] == 1


CAP = 1 << 20
TOKEN = b'{"access_token": "t", "expires_in": 3600}'


def basiq_http(url: str, tmp_path: Path) -> TargetHttp:
    key = tmp_path / "key"
    key.write_text("k")
    s = build_settings(
        {
            "global": {"max_response_bytes": CAP, "timeout": "20s"},
            "targets": [
                {
                    "name": "b",
                    "provider": "basiq",
                    "base_url": url,
                    "auth": {"type": "basiq", "api_key_file": str(key)},
                }
            ],
        },
        PROVIDERS,
    )
    return TargetHttp(s.resolved(s.targets[0]))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answers",
    [
        {"/token": ANSWERS["gzip bomb"]},  # 300 MB inflated from 300 KB
        {"/token": ANSWERS["gzip bomb 403"]},
        {"/token": ANSWERS["endless 401"]},
        {"/token": json_answer(TOKEN), "/jobs/1": ANSWERS["endless 401"]},
        {"/token": json_answer(TOKEN), "/jobs/1": ANSWERS["endless 403"]},
        {"/token": json_answer(TOKEN), "/jobs/1": ANSWERS["gzip bomb 401"]},
        {"/token": json_answer(TOKEN), "/jobs/1": ANSWERS["gzip bomb 403"]},
    ],
    ids=[
        "token gzip bomb",
        "token 403 gzip bomb",
        "token endless 401",
        "endless 401",
        "endless 403",
        "401 gzip bomb",
        "403 gzip bomb",
    ],
)
async def test_token_flows_read_no_further_than_the_cap(tmp_path: Path, answers: dict[str, Answer]) -> None:
    """Bodies the auth flow looks into (the token answer, a 401 or 403) are read as job answers
    are: refused at max_response_bytes, inflated no further; memory grows by what the cap
    allows, not by what the server sends."""
    with Hostile(answers) as server:
        http = basiq_http(server.url, tmp_path)
        with PeakRss() as rss, watchdog(30), pytest.raises(PollError) as e:
            await http.get_json("/jobs/1")
        await http.aclose()
    assert e.value.reason == "bad_body" and f"exceeds {CAP} bytes" in str(e.value)
    assert http.bytes_in_flight == 0
    # The byte budget (two answers of the cap) and the compressed bomb, with room for the allocator.
    assert rss.growth < 8 * http.byte_budget + (16 << 20), f"RSS grew {rss.growth >> 20} MiB"


@pytest.mark.anyio
async def test_a_renewed_token_after_a_401_is_used_and_the_401_body_read_within_the_cap(
    tmp_path: Path,
) -> None:
    tokens = iter([b'{"access_token": "old"}', b'{"access_token": "new"}'])

    def token(request: Request) -> list[bytes]:
        return [json_answer(next(tokens))]

    def job(request: Request) -> list[bytes]:
        if b"Bearer new" in request.head:
            return [json_answer(b'{"id": "1"}')]
        return [json_answer(b'{"error": "expired"}', "401 Unauthorized")]

    with Hostile({"/token": token, "/jobs/1": job}) as server:
        http = basiq_http(server.url, tmp_path)
        assert await http.get_json("/jobs/1") == {"id": "1"}
        await http.aclose()
    assert [r.path for r in server.requests] == ["/token", "/jobs/1", "/token", "/jobs/1"]
    assert server.connections == 1  # the 401, read whole, left its connection for the retry


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (600, 600.0),
        ("nan", DEFAULT_TOKEN_LIFETIME),
        (-5, DEFAULT_TOKEN_LIFETIME),
        (10**400, DEFAULT_TOKEN_LIFETIME),
        ("1e999", DEFAULT_TOKEN_LIFETIME),
        (None, DEFAULT_TOKEN_LIFETIME),
    ],
)
def test_a_token_lifetime_is_a_finite_positive_number_or_the_default(
    expires_in: object, lifetime: float
) -> None:
    """A NaN or negative lifetime would ask for a token at every request; 10**400 raised
    OverflowError out of the flow."""
    assert _lifetime(expires_in) == lifetime
