"""Registry of providers: the `provider:` value of a target → its class."""

from __future__ import annotations

from exporter.providers.base import Provider
from exporter.providers.basiq import Basiq

PROVIDERS: dict[str, type[Provider]] = {cls.name: cls for cls in (Basiq,)}

__all__ = ["PROVIDERS", "Provider"]
