"""The demo's targets and first jobs: every simulated provider at once, no config, no network."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from exporter.simulator.app import Simulator
from exporter.simulator.lifecycle import SCENARIOS

# WillSuite has no discovery: the demo seeds jobs with these ids and tracks them statically.
WILLSUITE_JOBS = {s: str(uuid.uuid5(uuid.NAMESPACE_URL, f"asyncjob-demo/willsuite/{s}")) for s in SCENARIOS}


def oxlin_auth(sim_url: str, secrets: Path) -> dict[str, Any]:
    """The Oxlin user-token auth a client of the simulator uses, with the demo's secret files."""
    return {
        "type": "oauth2_password",
        "token_url": f"{sim_url}/oxlin/token",
        "token_body": "json",
        "token_params": {"provider": "linxoConnect"},
        "scope": "connections_sync connections_manage",
        "client_id": "demo-client",
        "client_secret_file": str(secrets / "client_secret"),
        "username": "ops@example.com",
        "password_file": str(secrets / "password"),
    }


def willsuite_auth(sim_url: str, secrets: Path) -> dict[str, Any]:
    """The WillSuite client-credentials auth a client of the simulator uses, with the demo's secret files."""
    return {
        "type": "oauth2_client_credentials",
        "token_url": f"{sim_url}/willsuite/oauth/token/",
        "token_body": "json",
        "client_id": "demo-client",
        "client_secret_file": str(secrets / "client_secret"),
    }


# How the simulated export API (exporter.simulator.generic) is read through a generic target's
# field map: what each documented job field is called in its answers.
EXPORT_FIELDS = {
    "id": "id",
    "status": "state",
    "percent": "progress.pct",
    "type": "kind",
    "created": "created_at",
    "started": "started_at",
    "finished": "finished_at",
    "updated": "updated_at",
    "message": "error.message",
    "reason": "error.code",
    "records_total": "progress.rows.total",
    "records_affected": "progress.rows.written",
    "records_failed": "progress.rows.rejected",
}
EXPORT_STATUS_MAP = {"queued": "pending", "working": "running", "done": "succeeded", "error": "failed"}


def exports_target(sim_url: str, secrets: Path, name: str = "exports-demo") -> dict[str, Any]:
    """A generic target reading the simulated export API, finding its jobs in the active list."""
    return {
        "name": name,
        "provider": "generic",
        "base_url": f"{sim_url}/generic",
        "auth": {"type": "bearer", "token_file": str(secrets / "bearer_token")},
        "job_path": "/v1/exports/{id}",
        "list_path": "/v1/exports?state=active",
        "items": "data",
        "fields": EXPORT_FIELDS,
        "status_map": EXPORT_STATUS_MAP,
    }


def demo_targets(sim_url: str, secrets: Path) -> list[dict[str, Any]]:
    return [
        {
            "name": "basiq-demo",
            "provider": "basiq",
            "base_url": f"{sim_url}/basiq",
            "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
            "users": ["ea3a81", "b71f02"],
        },
        {
            "name": "oxlin-demo",
            "provider": "oxlin",
            "base_url": f"{sim_url}/oxlin",
            "auth": oxlin_auth(sim_url, secrets),
            "queues": ["20"],
            "connections": ["4243"],
        },
        {
            "name": "willsuite-demo",
            "provider": "willsuite",
            "base_url": f"{sim_url}/willsuite/engine/api",
            "auth": willsuite_auth(sim_url, secrets),
            # Far below WillSuite's advised 5 minutes so the demo moves; the exporter warns once.
            "poll_interval": "5s",
            "timezone": "Europe/London",
            "jobs": list(WILLSUITE_JOBS.values()),
        },
        {
            "name": "aims360-demo",
            "provider": "aims360",
            "base_url": f"{sim_url}/aims360",
            "auth": {"type": "bearer", "token_file": str(secrets / "bearer_token")},
            "discover_filter": "jobStatus eq 'Queued' or jobStatus eq 'Inprogress'",
            "auto_rerun": True,
        },
        exports_target(sim_url, secrets),
    ]


def seed_jobs(sim: Simulator) -> None:
    """One job of each scenario per provider, so every panel has something at once."""
    for provider in sorted(sim.providers):
        for scenario in SCENARIOS:
            if provider == "willsuite":
                sim.create(provider, scenario=scenario, id=WILLSUITE_JOBS[scenario])
            else:
                sim.create(provider, scenario=scenario)
    # What the providers also do: history in Basiq's 7-day user lists (not news), a statement
    # job, an MFA challenge nobody answers (the user's failure), an Oxlin sync whose final event
    # never reaches the queue (its connection's status ends it).
    sim.create("basiq", scenario="success", age=5 * 86400)
    sim.create("basiq", scenario="fail", error_code="connector-error", age=6 * 86400)
    sim.create("basiq", scenario="success", job_type="statement")
    sim.create("basiq", scenario="mfa", mfa_expiry=30)
    sim.create("oxlin", scenario="success", missed_final=True)
