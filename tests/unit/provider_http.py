"""Provider unit tests' plumbing: a real TargetHttp over httpx.MockTransport, and the fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from exporter.config import build_settings
from exporter.fetch import TargetHttp
from exporter.providers import PROVIDERS, Provider
from tests.conftest import FIXTURES


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def target(**keys: Any) -> dict[str, Any]:
    keys.setdefault("name", "t")
    keys.setdefault("base_url", "https://api.example.com")
    return keys


def provider_and_http(
    handler: Callable[[httpx.Request], httpx.Response], **keys: Any
) -> tuple[Provider, TargetHttp]:
    """The target's provider and an HTTP client answering through `handler` (no network)."""
    settings = build_settings({"targets": [target(**keys)]}, PROVIDERS)
    resolved = settings.resolved(settings.targets[0])
    provider = PROVIDERS[resolved.provider](resolved.config)
    return provider, TargetHttp(resolved, transport=httpx.MockTransport(handler))


def provider_for(**keys: Any) -> Provider:
    settings = build_settings({"targets": [target(**keys)]}, PROVIDERS)
    return PROVIDERS[settings.targets[0].provider](settings.targets[0])


def basiq_http(handler: Callable[[httpx.Request], httpx.Response], tmp_path: Path) -> TargetHttp:
    """A Basiq target's HTTP client, its API key in a file under `tmp_path`, answering through `handler`."""
    key = tmp_path / "key"
    key.write_text("abc==")
    s = build_settings(
        {
            "targets": [
                {
                    "name": "b",
                    "provider": "basiq",
                    "base_url": "https://x",
                    "auth": {"type": "basiq", "api_key_file": str(key)},
                }
            ]
        },
        PROVIDERS,
    )
    return TargetHttp(s.resolved(s.targets[0]), transport=httpx.MockTransport(handler))
