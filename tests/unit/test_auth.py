"""Token endpoints that refuse for load are rate limits and outages, not bad credentials."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from exporter.config import build_settings
from exporter.fetch import PollError, TargetHttp
from exporter.providers import PROVIDERS


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
