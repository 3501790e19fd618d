"""The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from exporter import __version__
from exporter.model import CAUSES, STATUSES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


_TARGET = {"name": "target", "in": "path", "required": True, "schema": {"type": "string"}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_UNAUTHORIZED = _resp("Missing or wrong API token (Authorization: Bearer, or X-Asyncjob-Token)", _ERROR)

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "asyncjob-exporter job API",
        "version": __version__,
        "description": "Hand jobs to the exporter and read what it knows of them. "
        "When api.token_file is set, every call needs `Authorization: Bearer <token>`, or "
        "`X-Asyncjob-Token: <token>` (beside basic auth credentials from --web.config.file).",
    },
    "paths": {
        "/api/v1/targets/{target}/jobs": {
            "post": {
                "summary": "Start tracking a job",
                "description": 'Body: `{"id": "…"}` or the provider\'s own 202/job answer as-is.',
                "parameters": [_TARGET],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "202": _resp("Tracked; the normalised job", {"$ref": "#/components/schemas/Job"}),
                    "400": _resp("The body is not JSON", _ERROR),
                    "401": _UNAUTHORIZED,
                    "404": _resp("Unknown target", _ERROR),
                    "409": _resp("The target tracks max_jobs_per_target jobs already", _ERROR),
                    "413": _resp("The body is larger than api.max_body_bytes", _ERROR),
                    "415": _resp("The body is not application/json (or application/*+json)", _ERROR),
                    "421": _resp("The job belongs to another shard (named in `shard`)", _ERROR),
                    "422": _resp(
                        "No usable job id (missing, blank, `.` or `..`, longer than 512 bytes of "
                        "UTF-8, or holding a control character or a lone surrogate), or JSON nested "
                        "too deep; `field` names the field",
                        _ERROR,
                    ),
                },
            }
        },
        "/api/v1/jobs": {
            "get": {
                "summary": "List tracked jobs",
                "description": "Ordered by target, then job id (code point by code point). With "
                "`state_url` (cluster mode) every replica lists every job of the cluster: its own as it "
                "holds them, the others' as their owners last committed them, each with its `owner`; "
                "there every answer is a page (1000 jobs unless `limit` says otherwise), and `next` leads to "
                "the following one. When the "
                "other replicas' jobs cannot be read (PostgreSQL out of reach), this replica's are "
                "listed and `incomplete` says why.",
                "parameters": [
                    {"name": "target", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many jobs (without it: every job; 1000 in cluster mode).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The `next` of the previous page (`target/id`): the jobs after it.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _resp(
                        "Tracked jobs",
                        {
                            "type": "object",
                            "required": ["jobs", "count"],
                            "properties": {
                                "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                                "count": {"type": "integer", "description": "The jobs in this answer."},
                                "next": {
                                    "type": ["string", "null"],
                                    "description": "When paged (`limit`, cluster mode): the `after` of "
                                    "the next page; null on the last.",
                                },
                                "incomplete": {
                                    "type": "string",
                                    "description": "Cluster mode: why other replicas' jobs are missing.",
                                },
                            },
                        },
                    ),
                    "401": _UNAUTHORIZED,
                    "404": _resp("Unknown target", _ERROR),
                    "422": _resp("Unknown status, or a bad `limit` or `after`", _ERROR),
                },
            }
        },
        "/api/v1/targets/{target}/jobs/{job_id}": {
            "get": {
                "summary": "One tracked job, or one retention dropped that the history still keeps",
                "parameters": [_TARGET, _JOB_ID],
                "responses": {
                    "200": _resp("The job", {"$ref": "#/components/schemas/Job"}),
                    "401": _UNAUTHORIZED,
                    "404": _resp("Unknown target or job", _ERROR),
                    "503": _resp(
                        "Cluster mode: not tracked by this replica, and the other replicas' jobs cannot "
                        "be read now (PostgreSQL out of reach)",
                        _ERROR,
                    ),
                },
            },
            "delete": {
                "summary": "Stop tracking a job",
                "parameters": [_TARGET, _JOB_ID],
                "responses": {
                    "204": _resp("No longer tracked"),
                    "401": _UNAUTHORIZED,
                    "404": _resp("Unknown target or job", _ERROR),
                    "421": _resp(
                        "Cluster mode: another replica works the job; `owner` names it (`owner_url` "
                        "when it advertises one): send the DELETE there",
                        _ERROR,
                    ),
                    "503": _resp(
                        "Cluster mode: the job's owner cannot be read or the shard is moving: retry", _ERROR
                    ),
                },
            },
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string"},
                    "field": {"type": "string"},
                    "shard": {"type": "integer"},
                    "owner": {"type": "string"},
                    "owner_url": {"type": "string"},
                },
            },
            "Job": {
                "type": "object",
                "required": ["target", "id", "provider", "status", "last_progress", "steps"],
                "properties": {
                    "target": {"type": "string"},
                    "id": {"type": "string"},
                    "provider": {"type": "string"},
                    "job_type": {"type": "string"},
                    "status": {"type": "string", "enum": list(STATUSES)},
                    "raw_status": {"type": "string"},
                    "percent": _NULLABLE_NUMBER,
                    "created": _NULLABLE_NUMBER,
                    "started": _NULLABLE_NUMBER,
                    "finished": _NULLABLE_NUMBER,
                    "updated": _NULLABLE_NUMBER,
                    "last_progress": {"type": "number"},
                    "first_seen": {"type": "number"},
                    "source": {"type": "string", "enum": ["static", "discovered", "registered"]},
                    "awaiting_user": {"type": "boolean"},
                    "reason": {"type": ["string", "null"]},
                    "cause": {
                        "type": ["string", "null"],
                        "enum": [*CAUSES, None],
                        "description": "Who must act on a failed job: user, provider or unknown.",
                    },
                    "is_history": {
                        "type": "boolean",
                        "description": "First seen finished longer than `retention` before the exporter "
                        "knew of it: not counted in the counters, no per-job series, never paged.",
                    },
                    "from_history": {
                        "type": "boolean",
                        "description": "Present (true) on a finished job `retention` dropped, answered "
                        "from the history (config `history`): its per-job series are gone.",
                    },
                    "dropped_at": {
                        "type": "number",
                        "description": "With `from_history`: when retention dropped the job (Unix seconds).",
                    },
                    "owner": {
                        "type": ["string", "null"],
                        "description": "Cluster mode: the replica that works the job (holds its shard's "
                        "lease); null while no replica does. Absent with one process.",
                    },
                    "message": {"type": ["string", "null"]},
                    "records": {"type": "object"},
                    "attempts": {"type": ["integer", "null"]},
                    "reruns": {"type": "integer"},
                    "steps": {"type": "array", "items": {"type": "object"}},
                    "history": {
                        "type": "array",
                        "description": "Transitions the exporter observed, oldest first (bounded per job).",
                        "items": {"$ref": "#/components/schemas/Transition"},
                    },
                },
            },
            "Transition": {
                "type": "object",
                "required": ["at", "step", "status", "duration_seconds"],
                "properties": {
                    "at": {"type": "number", "description": "When the exporter observed it (Unix seconds)."},
                    "step": {"type": ["string", "null"], "description": "The step; null for the job itself."},
                    "status": {"type": "string", "description": "A normalised status, or awaiting_user."},
                    "duration_seconds": {
                        "type": ["number", "null"],
                        "description": "How long this state lasted (until now while current; null once final).",
                    },
                },
            },
        }
    },
}


def openapi_document(external_url: str = "") -> dict[str, Any]:
    """The description as served: its server is --web.external-url when set, so a client
    generated from it calls the address people reach the exporter at."""
    if not external_url:
        return OPENAPI
    return {**OPENAPI, "servers": [{"url": external_url}]}
