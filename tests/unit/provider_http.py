"""Provider unit tests' plumbing: a real TargetHttp over httpx.MockTransport, and the fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable
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
