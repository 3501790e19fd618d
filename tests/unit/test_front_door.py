"""The front door: lifecycle endpoint, API token, body media types and basic auth, through the
real Starlette app."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from exporter.config import build_settings
from exporter.providers import PROVIDERS
from exporter.runtime import Runtime
from exporter.server import build_app


def runtime(tmp_path: Path, token: str | None = None) -> Runtime:
    data: dict[str, object] = {"targets": [{"name": "b", "provider": "basiq", "base_url": "https://x"}]}
    if token is not None:
        (tmp_path / "token").write_text(token + "\n")
        data["api"] = {"token_file": str(tmp_path / "token")}
    config = tmp_path / "config.yml"
    import yaml

    config.write_text(yaml.safe_dump(data))
    settings = build_settings(data, PROVIDERS)
    rt = Runtime(settings, str(config))
    rt.tracker.set_target(settings.resolved(settings.targets[0]))
    rt.reload = lambda: []  # type: ignore[method-assign]  # the scheduler is not running here
    return rt


def test_reload_over_http_is_refused_without_the_lifecycle_flag(tmp_path: Path) -> None:
    client = TestClient(build_app(runtime(tmp_path)))
    r = client.post("/-/reload")
    assert r.status_code == 403 and "Lifecycle API is not enabled" in r.text


def test_reload_over_http_is_served_with_the_lifecycle_flag(tmp_path: Path) -> None:
    client = TestClient(build_app(runtime(tmp_path), lifecycle=True))
    assert client.post("/-/reload").status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Bearer t0ken"}, 200),
    ],
)
def test_reload_over_http_asks_for_the_api_token_when_one_is_set(
    tmp_path: Path, headers: dict[str, str], status: int
) -> None:
    client = TestClient(build_app(runtime(tmp_path, token="t0ken"), lifecycle=True))
    assert client.post("/-/reload", headers=headers).status_code == status
