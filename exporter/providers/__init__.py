"""Registry of providers: the `provider:` value of a target → its class."""

from __future__ import annotations

from exporter.providers.aims360 import Aims360
from exporter.providers.base import Provider
from exporter.providers.basiq import Basiq
from exporter.providers.generic import Generic
from exporter.providers.oxlin import Oxlin
from exporter.providers.willsuite import WillSuite

PROVIDERS: dict[str, type[Provider]] = {cls.name: cls for cls in (Basiq, Oxlin, WillSuite, Aims360, Generic)}

__all__ = ["PROVIDERS", "Provider"]
