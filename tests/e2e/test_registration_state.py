"""The job API, durable state across kill -9, live reload and sharding — through the real CLI."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from tests.harness import create_job, exporter, simulator, wait_for, write_secrets

pytestmark = pytest.mark.e2e


def basiq_target(sim_url: str, secrets: Path, name: str = "basiq", **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "basiq",
        "base_url": f"{sim_url}/basiq",
        "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
        **kw,
    }


def config(sim_url: str, secrets: Path, *targets: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "global": {"poll_interval": "0.5s", "max_jobs_per_target": 3},
        **top,
        "targets": list(targets) or [basiq_target(sim_url, secrets)],
    }


def test_the_api_contract_and_every_error_code(tmp_path: Path) -> None:
    token = tmp_path / "api-token"
    token.write_text("api-secret-123\n")
    with simulator(tmp_path, step_seconds=1) as sim:
        secrets = write_secrets(tmp_path)
        cfg = config(sim.url, secrets, api={"token_file": str(token), "max_body_bytes": 2048})
        with exporter(tmp_path, cfg) as exp:
            auth = {"Authorization": "Bearer api-secret-123"}
            assert exp.api("GET", "/api/v1/jobs").status_code == 401
            assert exp.api("GET", "/api/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401

            job = create_job(sim, "basiq", scenario="fail", error_code="connector-error")
            r = exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": job}, headers=auth)
            assert r.status_code == 202 and r.json()["id"] == job and r.json()["target"] == "basiq"

            assert (
                exp.api("POST", "/api/v1/targets/nope/jobs", json={"id": "1"}, headers=auth).status_code
                == 404
            )
            r = exp.api("POST", "/api/v1/targets/basiq/jobs", json={"name": "x"}, headers=auth)
            assert r.status_code == 422 and r.json()["field"] == "id" and "id" in r.json()["error"]
            as_json = {**auth, "Content-Type": "application/json"}
            r = exp.api("POST", "/api/v1/targets/basiq/jobs", content=b"{not json", headers=as_json)
            assert r.status_code == 400
            r = exp.api(
                "POST",
                "/api/v1/targets/basiq/jobs",
                content=b'{"id": "' + b"x" * 4000 + b'"}',
                headers=as_json,
            )
            assert r.status_code == 413
            # A form post (what a browser sends cross-site without asking) registers nothing.
            r = exp.api("POST", "/api/v1/targets/basiq/jobs", data={"id": "form"}, headers=auth)
            assert r.status_code == 415
            # The provider's own job body is accepted as-is and read at once.
            own = create_job(sim, "basiq", scenario="stuck")
            body = {
                "type": "job",
                "id": own,
                "jobType": "connection",
                "steps": [{"title": "verify-credentials", "status": "in-progress", "result": None}],
            }
            r = exp.api("POST", "/api/v1/targets/basiq/jobs", json=body, headers=auth)
            assert (
                r.status_code == 202
                and r.json()["status"] == "running"
                and r.json()["job_type"] == "connection"
            )

            third = create_job(sim, "basiq", scenario="stuck")
            assert (
                exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": third}, headers=auth).status_code
                == 202
            )
            r = exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": "fourth"}, headers=auth)
            assert r.status_code == 409  # max_jobs_per_target: 3

            # The failed job's free text is served by the API, its reason by /metrics.
            wait_for(
                lambda: (
                    exp.api("GET", f"/api/v1/targets/basiq/jobs/{job}", headers=auth).json()["status"]
                    == "failed"
                ),
                what="registered job polled to failure",
            )
            got = exp.api("GET", f"/api/v1/targets/basiq/jobs/{job}", headers=auth).json()
            assert got["reason"] == "connector-error" and got["message"]
            # /metrics serves a body rendered in the background: it may lag the API a moment.
            wait_for(
                lambda: exp.value("asyncjob_job_error_info", job_id=job, reason="connector-error") == 1,
                what="the failed job's reason in /metrics",
            )
            listed = exp.api("GET", "/api/v1/jobs?status=failed&target=basiq", headers=auth).json()
            assert [j["id"] for j in listed["jobs"]] == [job]
            assert exp.api("GET", "/api/v1/jobs?status=bogus", headers=auth).status_code == 422

            assert exp.api("DELETE", f"/api/v1/targets/basiq/jobs/{job}", headers=auth).status_code == 204
            assert exp.api("GET", f"/api/v1/targets/basiq/jobs/{job}", headers=auth).status_code == 404
            assert exp.api("DELETE", f"/api/v1/targets/basiq/jobs/{job}", headers=auth).status_code == 404
            wait_for(
                lambda: exp.value("asyncjob_job_error_info", job_id=job, reason="connector-error") is None,
                what="deleted job gone from /metrics",
            )
            # An id the provider does not know is dropped as gone at its first poll.
            r = exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": "unknown-to-basiq"}, headers=auth)
            assert r.status_code == 202
            wait_for(
                lambda: exp.value("asyncjob_jobs_dropped_total", target="basiq", reason="gone") == 1,
                what="unknown id dropped as gone",
            )

            spec = exp.api("GET", "/api/v1/openapi.json").json()
            validate(spec)
            documented = {
                code
                for op in spec["paths"]["/api/v1/targets/{target}/jobs"].values()
                for code in op["responses"]
            }
            assert {"202", "400", "404", "409", "413", "421", "422"} <= documented
        assert "api-secret-123" not in exp.output()


def test_kill_9_loses_no_tracked_job_resets_no_stuck_clock_and_counts_nothing_twice(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with simulator(tmp_path, step_seconds=0.5) as sim:
        secrets = write_secrets(tmp_path)
        done = create_job(sim, "basiq", scenario="success")
        stuck = create_job(sim, "basiq", scenario="stuck", fail_step=1)
        cfg = config(sim.url, secrets, basiq_target(sim.url, secrets, jobs=[done]), state_file=str(state))
        cfg["global"]["max_jobs_per_target"] = 100
        with exporter(tmp_path, cfg) as exp:
            exp.api("POST", "/api/v1/targets/basiq/jobs", json={"id": stuck})
            wait_for(
                lambda: exp.value("asyncjob_jobs_finished_total", status="succeeded") == 1, what="finished"
            )
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=stuck, status="running") == 1, what="stuck"
            )
            stamp = exp.value("asyncjob_job_last_progress_timestamp_seconds", job_id=stuck)
            time.sleep(1.5)  # past the state store's flush interval, mid-poll
            wait_for(lambda: exp.value("asyncjob_state_pending_writes") == 0, what="state written")
            exp.stop(signal.SIGKILL)
        with exporter(tmp_path, cfg) as exp:
            time.sleep(1.5)  # several polls
            # Per-job series are rendered in the background: on a busy machine the first
            # bodies after the start may not hold the restored jobs yet.
            wait_for(
                lambda: (
                    exp.value("asyncjob_job_status", job_id=stuck, status="running") == 1
                    and exp.value("asyncjob_job_status", job_id=done, status="succeeded") == 1
                ),
                what="the restored jobs in /metrics",
            )
            # The registered job is still tracked and its stuck clock kept its old stamp.
            assert exp.value("asyncjob_job_status", job_id=stuck, status="running") == 1
            assert exp.value("asyncjob_job_last_progress_timestamp_seconds", job_id=stuck) == stamp
            # Counters restart from zero and the job counted before the crash is not counted again.
            assert (
                exp.value("asyncjob_jobs_finished_total", job_type="connection", status="succeeded") or 0
            ) == 0
            assert exp.value("asyncjob_job_status", job_id=done, status="succeeded") == 1


def test_reload_adds_removes_and_refuses_a_bad_config(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=5) as sim:
        secrets = write_secrets(tmp_path)
        a_job = create_job(sim, "basiq", scenario="stuck")
        b_job = create_job(sim, "basiq", scenario="stuck")
        a = basiq_target(sim.url, secrets, name="a", jobs=[a_job])
        b = basiq_target(sim.url, secrets, name="b", jobs=[b_job])
        cfg = config(sim.url, secrets, a)
        with exporter(tmp_path, cfg, extra=["--web.enable-lifecycle"]) as exp:
            wait_for(lambda: exp.value("asyncjob_job_status", job_id=a_job, status="running") == 1, what="a")
            first_seen = exp.api("GET", f"/api/v1/targets/a/jobs/{a_job}").json()["first_seen"]

            # Add b (and change a's interval) by POST /-/reload.
            cfg["targets"] = [{**a, "poll_interval": "0.3s"}, b]
            exp.config.write_text(yaml.safe_dump(cfg))
            assert exp.api("POST", "/-/reload").status_code == 200
            wait_for(lambda: exp.value("asyncjob_job_status", job_id=b_job, status="running") == 1, what="b")
            assert exp.value("asyncjob_target_poll_interval_seconds", target="a") == 0.3
            assert exp.api("GET", f"/api/v1/targets/a/jobs/{a_job}").json()["first_seen"] == first_seen

            # A bad config is refused with the reason; the old one keeps running.
            exp.config.write_text(yaml.safe_dump({"targets": [{"name": "a", "provider": "nope"}]}))
            r = exp.api("POST", "/-/reload")
            assert r.status_code == 400 and any("provider" in p for p in r.json()["problems"])
            assert exp.value("asyncjob_config_last_reload_successful") == 0
            assert exp.value("asyncjob_target_up", target="b") is not None

            # Remove a by SIGHUP.
            cfg["targets"] = [b]
            exp.config.write_text(yaml.safe_dump(cfg))
            exp.popen.send_signal(signal.SIGHUP)
            wait_for(lambda: exp.value("asyncjob_target_up", target="a") is None, what="a removed")
            assert exp.value("asyncjob_config_last_reload_successful") == 1
            assert exp.value("asyncjob_job_status", job_id=b_job, status="running") == 1


def test_every_job_is_tracked_by_exactly_one_of_n_shards(tmp_path: Path) -> None:
    shards = 3
    with simulator(tmp_path, step_seconds=30) as sim:
        secrets = write_secrets(tmp_path)
        static = [create_job(sim, "basiq", owner="nobody") for _ in range(12)]
        discovered = [create_job(sim, "basiq", owner="ea3a81") for _ in range(12)]
        cfg = config(sim.url, secrets, basiq_target(sim.url, secrets, jobs=static, users=["ea3a81"]))
        cfg["global"]["max_jobs_per_target"] = 1000
        from contextlib import ExitStack

        with ExitStack() as stack:
            exps = [
                stack.enter_context(
                    exporter(tmp_path, cfg, extra=[f"--shard={i}", f"--total-shards={shards}"])
                )
                for i in range(shards)
            ]
            registered = [create_job(sim, "basiq", owner="nobody") for _ in range(12)]
            for job_id in registered:
                answers = [e.api("POST", "/api/v1/targets/basiq/jobs", json={"id": job_id}) for e in exps]
                codes = sorted(a.status_code for a in answers)
                assert codes == [202] + [421] * (shards - 1), (job_id, codes)
                owner = next(i for i, a in enumerate(answers) if a.status_code == 202)
                assert all(a.json()["shard"] == owner for a in answers if a.status_code == 421)

            def owners_now() -> dict[str, list[int]]:
                owners: dict[str, list[int]] = {}
                for i, e in enumerate(exps):
                    for j in e.api("GET", "/api/v1/jobs").json()["jobs"]:
                        owners.setdefault(j["id"], []).append(i)
                return owners

            # Discovered jobs come with a discovery poll of each shard, late on a busy machine.
            every = static + discovered + registered
            wait_for(lambda: set(every) <= set(owners_now()), what="every job on some shard")
            owners = owners_now()
            for job_id in every:
                assert len(owners.get(job_id, [])) == 1, (job_id, owners.get(job_id))
            assert len({i for v in owners.values() for i in v}) == shards  # the hash spreads them


def test_openapi_document_is_valid_json_schema() -> None:
    from exporter.openapi import OPENAPI

    validate(json.loads(json.dumps(OPENAPI)))
