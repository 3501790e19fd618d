"""Exporter conventions of the command line: global flags wherever they are written, telemetry
path, exporter metrics, the external URL of links, simulator flags, safe defaults, and logs and
API errors that explain themselves."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from exporter import commands, logs
from exporter.__main__ import SIMULATOR_STEP_SECONDS, main, parser
from exporter.config import build_settings
from exporter.model import Job, Status
from exporter.providers import PROVIDERS
from exporter.providers.base import PollResult
from exporter.routes import build_app
from exporter.runtime import Runtime


def runtime(provider: str = "basiq") -> Runtime:
    settings = build_settings(
        {"targets": [{"name": "t", "provider": provider, "base_url": "https://x", "queues": ["1"]}]}
        if provider == "oxlin"
        else {"targets": [{"name": "t", "provider": provider, "base_url": "https://x"}]},
        PROVIDERS,
    )
    rt = Runtime(settings)
    rt.tracker.set_target(settings.resolved(settings.targets[0]))
    return rt


def test_metrics_are_served_under_the_telemetry_path() -> None:
    client = TestClient(build_app(runtime(), telemetry_path="/probe/metrics"))
    assert "asyncjob_exporter_build_info" in client.get("/probe/metrics").text
    assert client.get("/metrics").status_code == 404


def test_exporter_metrics_can_be_left_out() -> None:
    rt = runtime()
    client = TestClient(build_app(rt))
    assert "python_info" in client.get("/metrics").text
    rt.exposition.exporter_metrics = False
    body = client.get("/metrics").text
    assert "python_" not in body and "\nprocess_" not in body
    assert "asyncjob_exporter_build_info" in body


def test_the_flags_read_as_prometheus_exporters_do() -> None:
    args = parser().parse_args(["--web.telemetry-path=/m", "--web.disable-exporter-metrics"])
    assert (args.telemetry_path, args.disable_exporter_metrics) == ("/m", True)
    assert parser().parse_args([]).telemetry_path == "/metrics"


@pytest.mark.parametrize("command", ["demo", "simulate"])
def test_the_simulator_flags_have_one_spelling_and_one_default(command: str) -> None:
    assert parser().parse_args([command]).step_seconds == SIMULATOR_STEP_SECONDS
    args = parser().parse_args([command, "--simulator.step-seconds=0.5", "--simulator.trickle=4"])
    assert (args.step_seconds, args.trickle) == (0.5, 4)


def test_a_job_the_provider_does_not_know_is_logged_with_target_and_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = runtime()
    rt.tracker.track("t", Job("j-404", Status.RUNNING), "registered", now=1)
    with caplog.at_level(logging.INFO, logger="asyncjob"):
        rt.tracker.apply("t", PollResult(gone=["j-404"]), now=2)
    (record,) = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert (getattr(record, "target", None), getattr(record, "job_id", None)) == ("t", "j-404")


def test_a_registration_error_names_the_field_and_explains_in_error(tmp_path: Path) -> None:
    client = TestClient(build_app(runtime("oxlin")))
    r = client.post("/api/v1/targets/t/jobs", json={"id": "1"})
    assert r.status_code == 422
    assert r.json()["field"] == "id"
    assert "configured queues" in r.json()["error"]


def test_the_exporter_warns_at_start_when_no_target_is_configured(tmp_path: Path) -> None:
    from tests.harness import Proc, free_port, start_cli, wait_for

    config = tmp_path / "empty.yml"
    config.write_text("global: {poll_interval: 1m}\n")
    log = tmp_path / "exporter.log"
    port = free_port()
    proc = Proc(
        start_cli([f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"], log), log, ""
    )
    try:
        line = wait_for(
            lambda: next((x for x in proc.output().splitlines() if "no targets configured" in x), None),
            what="the warning about zero targets",
        )
        assert "level=warning" in line or '"level": "warning"' in line
    finally:
        proc.stop()


# --- global flags: the same before or after a subcommand -----------------------------------

# Every global flag with a value other than its default, as (argument, attribute, parsed value).
GLOBAL_FLAGS = [
    ("--config.file=c.yml", "config_file", "c.yml"),
    ("--web.listen-address=127.0.0.1:9999", "listen", "127.0.0.1:9999"),
    ("--web.external-url=https://jobs.example.com/", "external_url", "https://jobs.example.com"),
    ("--web.config.file=web.yml", "web_config", "web.yml"),
    ("--web.telemetry-path=/m", "telemetry_path", "/m"),
    ("--web.disable-exporter-metrics", "disable_exporter_metrics", True),
    ("--web.enable-lifecycle", "enable_lifecycle", True),
    ("--web.read-header-timeout=3s", "read_header_timeout", 3.0),
    ("--web.max-connections=7", "max_connections", 7),
    ("--shard=1", "shard", 1),
    ("--total-shards=2", "total_shards", 2),
    ("--log.level=debug", "log_level", "debug"),
    ("--log.format=json", "log_format", "json"),
]
COMMANDS = [
    ["demo"],
    ["simulate"],
    ["check-config", "x.yml"],
    ["mixin", "--out", "o"],
    ["state", "copy", "--from", "state.db", "--to", "postgresql://asyncjob@db/asyncjob"],
]


def global_flag_names() -> list[str]:
    return [flag.split("=")[0] for flag, _, _ in GLOBAL_FLAGS]


def test_the_list_of_global_flags_here_is_every_flag_of_the_main_parser() -> None:
    top = {s for a in parser()._actions for s in a.option_strings if s.startswith("--")}
    assert top - {"--help", "--version"} == set(global_flag_names())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(("flag", "attribute", "value"), GLOBAL_FLAGS, ids=lambda x: str(x).split("=")[0])
def test_every_global_flag_means_the_same_before_or_after_each_subcommand(
    command: list[str], flag: str, attribute: str, value: object
) -> None:
    before = parser().parse_args([flag, *command])
    after = parser().parse_args([*command, flag])
    assert getattr(before, attribute) == getattr(after, attribute) == value


@pytest.mark.parametrize(("flag", "attribute", "value"), GLOBAL_FLAGS, ids=lambda x: str(x).split("=")[0])
def test_the_demo_reads_each_global_flag_from_its_asyncjob_variable(
    flag: str, attribute: str, value: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _, text = flag.partition("=")
    variable = "ASYNCJOB_" + name.removeprefix("--").upper().replace(".", "_").replace("-", "_")
    monkeypatch.setenv(variable, text or "true")
    assert getattr(parser().parse_args(["demo"]), attribute) == value


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_global_flag_left_out_after_the_subcommand_keeps_its_value_from_before(command: list[str]) -> None:
    args = parser().parse_args(["--log.level=error", "--web.telemetry-path=/m", *command])
    assert (args.log_level, args.telemetry_path) == ("error", "/m")
    defaults = parser().parse_args(command)
    assert (defaults.log_level, defaults.telemetry_path, defaults.shard) == ("info", "/metrics", 0)


@pytest.mark.parametrize("command", [*(c[0] for c in COMMANDS), "state copy"])
def test_each_subcommand_help_lists_every_global_flag(command: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "exporter", *command.split(), "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "global flags (the same before or after the subcommand" in r.stdout
    missing = [name for name in global_flag_names() if name not in r.stdout]
    assert not missing, f"{command} --help does not list {missing}"


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `main` hands the demo or the exporter for `argv`, without starting either."""
    seen: dict[str, Any] = {}

    def capture(name: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> int:
            seen.update(command=name, args=args, kwargs=kwargs)
            return 0

        return run

    monkeypatch.setattr(commands, "run_demo", capture("demo"))
    monkeypatch.setattr(commands, "run_exporter", capture("exporter"))
    monkeypatch.setattr(logs, "setup", lambda *args: None)  # pytest's log capture stays as it is
    assert main(argv) == 0
    return seen


def test_the_demo_listens_on_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = run_main(["demo"], monkeypatch)
    assert demo["command"] == "demo" and demo["args"][0].listen == "127.0.0.1:10110"
    wide = run_main(["demo", "--web.listen-address=:10110"], monkeypatch)
    assert wide["args"][0].listen == ":10110"
    exporter = run_main(["--config.file=c.yml"], monkeypatch)
    assert exporter["command"] == "exporter" and exporter["args"][1].listen == ":10110"


def test_the_demo_is_handed_every_web_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = run_main(
        [
            "--web.external-url=https://jobs.example.com/asyncjob/",
            "demo",
            "--web.config.file=web.yml",
            "--web.enable-lifecycle",
            "--web.disable-exporter-metrics",
            "--web.max-connections=9",
            "--shard=1",
            "--total-shards=2",
        ],
        monkeypatch,
    )
    web, *_, shard, total_shards = demo["args"]
    assert (web.external_url, web.config_file, web.lifecycle, web.exporter_metrics) == (
        "https://jobs.example.com/asyncjob",
        "web.yml",
        True,
        False,
    )
    assert (web.limits.max_connections, shard, total_shards) == (9, 1, 2)


def test_a_config_file_given_to_the_demo_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "setup", lambda *args: None)
    assert main(["demo", "--config.file=c.yml"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("10140", ":10140"),
        (":10140", ":10140"),
        ("127.0.0.1:10140", "127.0.0.1:10140"),
        ("[::1]:1", "[::1]:1"),
    ],
)
def test_a_bare_port_is_read_as_that_port_on_every_interface(given: str, read: str) -> None:
    assert parser().parse_args([f"--web.listen-address={given}"]).listen == read
    assert parser().parse_args(["demo", f"--web.listen-address={given}"]).listen == read


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.1:", "99999", ":http", "[::1:10110"])
def test_a_listen_address_that_is_none_is_refused_in_one_line_without_a_traceback(bad: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "exporter", f"--web.listen-address={bad}", "demo"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "is not [host]:port" in errors[0], r.stderr


@pytest.mark.parametrize(
    "bad", ["jobs.example.com", "ftp://jobs.example.com", "https://u:p@jobs.example.com", "https://x/?a=1"]
)
def test_an_external_url_must_be_an_absolute_http_url(bad: str) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args([f"--web.external-url={bad}"])


# --- links: --web.external-url --------------------------------------------------------------


def links(html: str) -> list[str]:
    return re.findall(r'(?:href|action)="([^"]*)"', html)


def test_every_link_of_the_pages_starts_with_the_external_url() -> None:
    rt = runtime()
    rt.tracker.track("t", Job("j-1", Status.FAILED), "registered", now=1)
    base = "https://jobs.example.com/asyncjob"
    client = TestClient(build_app(rt, external_url=base, telemetry_path="/m"))
    pages = ["/", "/jobs", "/jobs?target=t", "/jobs/t/j-1", "/jobs/t/unknown"]
    found = [link for page in pages for link in links(client.get(page).text)]
    assert {f"{base}/jobs/t/j-1", f"{base}/m", f"{base}/api/v1/openapi.json", f"{base}/jobs"} <= set(found)
    # Links elsewhere (the provider, runbooks) are absolute; none is left relative to the host asked.
    assert not [link for link in found if not link.startswith(("https://", "http://", "#"))]
    plain = TestClient(build_app(rt))
    assert "/jobs/t/j-1" in {link for page in pages for link in links(plain.get(page).text)}


def test_the_exporter_answers_under_the_external_urls_path_as_well_as_at_the_root() -> None:
    from exporter.external_url import serving

    rt = runtime()
    rt.tracker.track("t", Job("j-1", Status.FAILED), "registered", now=1)
    base = "https://jobs.example.com/asyncjob"
    client = TestClient(serving(build_app(rt, external_url=base), base))
    for path in ("/asyncjob", "/asyncjob/", "/asyncjob/jobs", "/asyncjob/jobs/t/j-1", "/jobs/t/j-1", "/"):
        r = client.get(path)
        assert r.status_code == 200 and f'href="{base}/jobs"' in r.text, path
    assert "asyncjob_exporter_build_info" in client.get("/asyncjob/metrics").text
    assert client.get("/asyncjob/api/v1/targets/t/jobs/j-1").json()["id"] == "j-1"
    registered = client.post("/asyncjob/api/v1/targets/t/jobs", json={"id": "j-2"})
    assert registered.status_code == 202, registered.text
    assert client.get("/asyncjobs/jobs").status_code == 404  # a path that only starts alike


@pytest.mark.parametrize("path", ["/jobs", "/api/v1", "/metrics/x", "/healthz", "/-/reload"])
def test_an_external_url_whose_path_would_hide_the_exporters_own_is_refused(path: str) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args([f"--web.external-url=https://jobs.example.com{path}"])
    assert (
        parser().parse_args(["--web.external-url=https://x/asyncjob-jobs"]).external_url
        == "https://x/asyncjob-jobs"
    )


def test_the_api_description_names_the_external_url_as_its_server() -> None:
    base = "https://jobs.example.com/asyncjob"
    document = TestClient(build_app(runtime(), external_url=base)).get("/api/v1/openapi.json").json()
    assert document["servers"] == [{"url": base}]
    assert "servers" not in TestClient(build_app(runtime())).get("/api/v1/openapi.json").json()


def test_the_demo_prints_its_links_from_the_external_url() -> None:
    web = commands.Web(listen="127.0.0.1:10110", external_url="https://jobs.example.com")
    assert commands.link_base(web, 10110) == "https://jobs.example.com"
    assert commands.link_base(commands.Web(listen=":10110"), 10111) == "http://localhost:10111"
    assert commands.link_base(commands.Web(listen="10.1.2.3:1"), 1, tls=True) == "https://10.1.2.3:1"


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("ASYNCJOB_WEB_LISTEN_ADDRESS", "everywhere", "is not [host]:port"),
        ("ASYNCJOB_WEB_EXTERNAL_URL", "jobs.example.com", "is not an absolute http(s) URL"),
    ],
)
def test_a_bad_web_flag_from_the_environment_names_the_variable(
    variable: str, value: str, problem: str
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "demo"],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            variable: value,
        },
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{value!r} (set in {variable}) {problem}" in r.stderr, r.stderr


def test_static_shards_are_refused_beside_state_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yml"
    config.write_text("state_url: postgresql://asyncjob@127.0.0.1:1/asyncjob\n")
    web = commands.Web(listen="127.0.0.1:0")
    assert commands.run_exporter(str(config), web, 0, 2) == 2
    assert capsys.readouterr().err.strip() == (
        "--total-shards: not with state_url: the replicas of a cluster share the jobs by leases"
    )
