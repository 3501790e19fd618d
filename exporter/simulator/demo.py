"""The demo's targets and first jobs: every simulated provider at once, no config, no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.simulator.app import Simulator
from exporter.simulator.lifecycle import SCENARIOS


def demo_targets(sim_url: str, secrets: Path) -> list[dict[str, Any]]:
    return [
        {
            "name": "basiq-demo",
            "provider": "basiq",
            "base_url": f"{sim_url}/basiq",
            "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
            "users": ["ea3a81", "b71f02"],
        },
    ]


def seed_jobs(sim: Simulator) -> None:
    """One job of each scenario per provider, so every panel has something at once."""
    for provider in sorted(sim.providers):
        for scenario in SCENARIOS:
            sim.create(provider, scenario=scenario)
