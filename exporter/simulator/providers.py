"""Registry of provider simulators: provider name → module with `new_job` and `routes`.

Each provider's API is served under `/<provider>/…`, so one simulator (one port) plays all.
"""

from __future__ import annotations

from types import ModuleType

from exporter.simulator import aims360, basiq, generic, oxlin, willsuite

MODULES: dict[str, ModuleType] = {m.NAME: m for m in (basiq, oxlin, willsuite, aims360, generic)}
