"""A provider that misbehaves never crashes the exporter, never stalls other targets, and
shows in its own metrics — each fault injected by the simulator over loopback."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.simulator.serving import CREDENTIALS
from tests.harness import Proc, create_job, exporter, simulator, wait_for, write_secrets

pytestmark = pytest.mark.e2e

# target name -> (fault, the bounded reason it must be counted under)
FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "f500": ({"kind": "status", "status": 500}, "http_5xx"),
    "f502": ({"kind": "status", "status": 502}, "http_5xx"),
    "f429": ({"kind": "status", "status": 429, "retry_after": 1}, "http_429"),
    "f400": ({"kind": "status", "status": 400}, "http_4xx"),
    "fhtml": ({"kind": "not_json"}, "bad_body"),
    "ftrunc": ({"kind": "truncated"}, "bad_body"),
    "freset": ({"kind": "reset"}, "connect"),
    "fslow": ({"kind": "timeout", "delay": 5}, "timeout"),
    "ftrickle": ({"kind": "trickle", "delay": 0.05}, "timeout"),
    "fhuge": ({"kind": "oversized"}, "bad_body"),
}


def target(sim: Proc, secrets: Path, name: str, jobs: list[str], **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "basiq",
        "base_url": f"{sim.url}/basiq",
        "jobs": jobs,
        "auth": {"type": "basiq", "api_key_file": str(secrets / "basiq_api_key")},
        **kw,
    }


def inject(sim: Proc, **fault: Any) -> None:
    httpx.post(f"{sim.url}/_sim/faults", json={"provider": "basiq", **fault}, timeout=5).raise_for_status()


def requests_to(sim: Proc, key: str) -> int:
    return int(httpx.get(f"{sim.url}/_sim/stats", timeout=5).json()["requests"].get(key, 0))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_every_fault_is_counted_by_reason_while_healthy_targets_keep_their_cadence(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=60) as sim:
        secrets = write_secrets(tmp_path)
        targets = []
        for name, (fault, _) in FAULTS.items():
            job = create_job(sim, "basiq", owner="nobody")
            inject(sim, route="basiq.job", job_id=job, **fault)
            targets.append(target(sim, secrets, name, [job], timeout="1s"))
        healthy_job = create_job(sim, "basiq", owner="nobody")
        targets.append(target(sim, secrets, "healthy", [healthy_job]))
        # JSON served as text/plain is still JSON: read, not refused.
        mislabelled = create_job(sim, "basiq", owner="nobody")
        inject(sim, route="basiq.job", job_id=mislabelled, kind="wrong_content_type")
        targets.append(target(sim, secrets, "fctype", [mislabelled]))
        cfg = {"global": {"poll_interval": "0.5s", "max_response_bytes": 1048576}, "targets": targets}
        with exporter(tmp_path, cfg, wait_ready=False) as exp:
            wait_for(lambda: exp.value("asyncjob_target_up", target="healthy") == 1, what="healthy target up")
            for name, (_, reason) in FAULTS.items():

                def counted(n: str = name, r: str = reason) -> bool:
                    return (exp.value("asyncjob_poll_errors_total", target=n, reason=r) or 0) >= 1

                wait_for(
                    counted,
                    timeout=30,
                    what=f"{name} counted as {reason}",
                )
                assert exp.value("asyncjob_target_up", target=name) == 0, name
            # The healthy target kept polling every 0.5 s while the others failed or hung.
            before = exp.value("asyncjob_poll_requests_total", target="healthy") or 0
            time.sleep(3)
            after = exp.value("asyncjob_poll_requests_total", target="healthy") or 0
            assert after - before >= 4, (before, after)
            assert exp.value("asyncjob_target_up", target="healthy") == 1
            assert exp.value("asyncjob_target_up", target="fctype") == 1
            # Per-job series are rendered in the background: the body may lag on a busy machine.
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=mislabelled, status="running") == 1,
                what="the mislabelled job running",
            )
            # Oversized answers were refused while reading: memory stays bounded.
            assert rss_kib(exp.popen.pid) < 200 * 1024
            assert exp.api("GET", "/healthz").status_code == 200
        assert "Traceback" not in exp.output()


def test_backoff_and_retry_after_cut_the_request_rate(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=60) as sim:
        secrets = write_secrets(tmp_path)
        failing, limited, fine = (create_job(sim, "basiq", owner="nobody") for _ in range(3))
        inject(sim, route="basiq.job", job_id=failing, kind="status", status=500)
        inject(sim, route="basiq.job", job_id=limited, kind="status", status=503, retry_after=3)
        cfg = {
            "global": {"poll_interval": "0.2s"},
            "targets": [
                target(sim, secrets, "failing", [failing]),
                target(sim, secrets, "limited", [limited]),
                target(sim, secrets, "fine", [fine]),
            ],
        }
        with exporter(tmp_path, cfg, wait_ready=False) as exp:
            wait_for(lambda: exp.value("asyncjob_target_up", target="fine") == 1, what="fine up")
            start = {
                n: exp.value("asyncjob_poll_requests_total", target=n) or 0
                for n in ("failing", "limited", "fine")
            }
            time.sleep(4)
            end = {
                n: exp.value("asyncjob_poll_requests_total", target=n) or 0
                for n in ("failing", "limited", "fine")
            }
        sent = {n: end[n] - start[n] for n in start}
        assert sent["fine"] >= 12, sent  # ~20 at 0.2 s
        assert sent["failing"] <= 6, sent  # exponential backoff with jitter
        assert sent["limited"] <= 3, sent  # Retry-After: 3 honoured


def test_an_expired_token_is_renewed_once_and_no_job_is_lost_or_counted_twice(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=1) as sim:
        secrets = write_secrets(tmp_path)
        job = create_job(sim, "basiq", scenario="success", owner="nobody")
        inject(sim, route="basiq.job", kind="expire_token", remaining=1)
        inject(sim, route="basiq.job", kind="status", status=502, remaining=3)
        cfg = {"global": {"poll_interval": "0.3s"}, "targets": [target(sim, secrets, "b", [job])]}
        with exporter(tmp_path, cfg, wait_ready=False) as exp:
            wait_for(
                lambda: exp.value("asyncjob_jobs_finished_total", target="b", status="succeeded") == 1,
                timeout=30,
                what="job finished despite faults",
            )
            time.sleep(1)
            assert exp.value("asyncjob_jobs_finished_total", target="b", status="succeeded") == 1
            assert exp.value("asyncjob_poll_errors_total", target="b", reason="auth") == 0
            assert (exp.value("asyncjob_poll_errors_total", target="b", reason="http_5xx") or 0) >= 1
        assert requests_to(sim, "basiq.token") == 2  # the first token, and one renewal


def test_the_request_budget_holds_however_many_jobs_are_tracked(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=600) as sim:
        secrets = write_secrets(tmp_path)
        jobs = [create_job(sim, "basiq", owner="nobody") for _ in range(40)]
        cfg = {
            "global": {"poll_interval": "0.5s"},
            "targets": [target(sim, secrets, "b", jobs, max_requests_per_second=5)],
        }
        with exporter(tmp_path, cfg, wait_ready=False) as exp:
            wait_for(lambda: requests_to(sim, "basiq.job") >= 5, what="polling started")
            before = requests_to(sim, "basiq.job")
            time.sleep(4)
            sent = requests_to(sim, "basiq.job") - before
            assert exp.value("asyncjob_target_up", target="b") is not None
        # Without the budget: 40 jobs every 0.5 s = 320 requests in 4 s.
        assert sent <= 5 * 4 + 6, sent
        assert sent >= 5 * 4 * 0.6, sent


def test_secrets_never_reach_logs_metrics_or_the_api(tmp_path: Path) -> None:
    with simulator(tmp_path, step_seconds=1) as sim:
        secrets = write_secrets(tmp_path)
        job = create_job(sim, "basiq", scenario="fail", owner="nobody")
        inject(sim, route="basiq.job", kind="expire_token", remaining=2)
        inject(sim, route="basiq.job", kind="status", status=500, remaining=2)
        inject(sim, route="basiq.token", kind="status", status=503, remaining=1)
        cfg = {"global": {"poll_interval": "0.3s"}, "targets": [target(sim, secrets, "b", [job])]}
        with exporter(tmp_path, cfg, wait_ready=False) as exp:
            wait_for(
                lambda: exp.value("asyncjob_job_status", job_id=job, status="failed") == 1,
                timeout=30,
                what="job failed",
            )
            seen = exp.metrics() + exp.api("GET", "/api/v1/jobs").text + exp.api("GET", "/").text
        seen += exp.output()
        assert "level=debug" in exp.output()
        for name in ("basiq_api_key", "client_secret", "password", "bearer_token"):
            assert CREDENTIALS[name] not in seen, name
        assert "access_token" not in seen and "Bearer " not in seen
