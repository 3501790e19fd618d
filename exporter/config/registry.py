"""The provider registry a validation runs with: pydantic gives field validators no arguments of ours."""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

if typing.TYPE_CHECKING:
    from exporter.config.targets import TargetConfig
    from exporter.model import Cause


class ProviderSpec(Protocol):
    """What the config needs of a provider class: its polling advice, its own key checks, and
    what a resolved target carries to the tracker (causes, documented reasons, discovery).

    The registry (exporter.providers.PROVIDERS) is handed to `build_settings`, so this module
    imports nothing above it.
    """

    @property
    def advised_poll_interval(self) -> float | None: ...

    @property
    def advised_requests_per_second(self) -> float | None: ...

    # Who must act on each documented failure reason, and the reasons counted at zero from the
    # start: a resolved target carries them to the tracker.
    @property
    def causes(self) -> Mapping[str, Cause]: ...

    @property
    def known_reasons(self) -> tuple[str, ...]: ...

    def check_target(self, target: TargetConfig) -> list[str]: ...

    def discovers(self, target: TargetConfig) -> bool: ...


Registry = Mapping[str, ProviderSpec]

# The registry of the validation under way: pydantic gives field validators no arguments of ours.
_REGISTRY: ContextVar[Registry | None] = ContextVar("asyncjob_provider_registry", default=None)


@contextmanager
def _validating_with(providers: Registry) -> Iterator[None]:
    token = _REGISTRY.set(providers)
    try:
        yield
    finally:
        _REGISTRY.reset(token)


def _registry() -> Registry:
    providers = _REGISTRY.get()
    if providers is None:
        raise ValueError("no provider registry: validate through build_settings(data, PROVIDERS)")
    return providers
