"""Registry of providers: the `provider:` value of a target → its class."""

from __future__ import annotations

from exporter.providers.base import Provider
from exporter.providers.basiq import Basiq
from exporter.providers.willsuite import WillSuite

PROVIDERS: dict[str, type[Provider]] = {cls.name: cls for cls in (Basiq, WillSuite)}

__all__ = ["PROVIDERS", "Provider"]
