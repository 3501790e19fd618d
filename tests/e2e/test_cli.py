"""The command line as people run it: the demo serving where the global flags and ASYNCJOB_*
variables say, links from the external URL, and the warnings said at start."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.harness import Proc, exporter, free_port, start_cli, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--web.listen-address=127.0.0.1:{port}", "--web.telemetry-path=/m", "demo"], {}),
        (["demo", "--web.listen-address=127.0.0.1:{port}", "--web.telemetry-path=/m"], {}),
        (
            ["demo"],
            {"ASYNCJOB_WEB_LISTEN_ADDRESS": "127.0.0.1:{port}", "ASYNCJOB_WEB_TELEMETRY_PATH": "/m"},
        ),
    ],
    ids=["flags-before", "flags-after", "environment"],
)
def test_the_demo_serves_where_the_global_flags_or_variables_say(
    argv: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    url = f"http://127.0.0.1:{port}"
    args = [a.format(port=port) for a in argv] + ["--simulator.trickle=0"]
    proc = Proc(start_cli(args, log, {k: v.format(port=port) for k, v in env.items()}), log, url)
    try:
        wait_for(lambda: httpx.get(f"{url}/m", timeout=1).status_code == 200, what=f"demo on {url}/m")
        assert "asyncjob_exporter_build_info" in httpx.get(f"{url}/m", timeout=5).text
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 404
        wait_for(lambda: f"metrics:     http://localhost:{port}/m" in proc.output(), what="the demo's links")
    finally:
        proc.stop()


def test_the_exporter_warns_at_start_of_an_open_api_and_of_a_placeholder_secret(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("example-basiq-api-key-replace-me\n")
    config = tmp_path / "c.yml"
    config.write_text(
        "targets:\n  - {name: b, provider: basiq, base_url: https://au-api.basiq.io,\n"
        "     auth: {type: basiq, api_key_file: key}}\n"
    )
    log = tmp_path / "exporter.log"
    # TEST-NET-1 is no address of this host: the exporter says its warnings, then cannot bind and
    # stops by itself, so no socket is ever opened.
    popen = start_cli([f"--config.file={config}", "--web.listen-address=192.0.2.1:10110"], log)
    assert popen.wait(30) == 1
    lines = log.read_text().splitlines()
    (open_api,) = [x for x in lines if "takes no token" in x]
    (placeholder,) = [x for x in lines if "holds a placeholder" in x]
    assert "level=warning" in open_api and "192.0.2.1:10110" in open_api
    assert "level=warning" in placeholder and "targets[0](name=b).auth.api_key_file" in placeholder
    assert "cannot listen on 192.0.2.1:10110" in lines[-1]


def test_the_running_exporter_links_from_the_external_url_in_its_variable(tmp_path: Path) -> None:
    base = "https://jobs.example.com/asyncjob"
    env = {"ASYNCJOB_WEB_EXTERNAL_URL": base + "/"}
    with exporter(tmp_path, {"targets": []}, env=env) as exp:
        page = exp.api("GET", "/").text
        assert f'href="{base}/jobs"' in page and f'href="{base}/metrics"' in page
        assert exp.api("GET", "/api/v1/openapi.json").json()["servers"] == [{"url": base}]
        # A proxy that forwards the path as is reaches the same pages and metrics.
        assert f'href="{base}/jobs"' in exp.api("GET", "/asyncjob/").text
        assert "asyncjob_exporter_build_info" in exp.api("GET", "/asyncjob/metrics").text
        assert "asyncjob_exporter_build_info" in exp.metrics()
