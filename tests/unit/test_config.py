"""Config: YAML + ASYNCJOB_* variables into typed settings; every problem names its key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, build_settings, load_settings, parse_duration, safety
from exporter.providers import PROVIDERS


def target(**kw: object) -> dict[str, object]:
    return {"name": "b", "provider": "basiq", "base_url": "https://au-api.basiq.io", **kw}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("500ms", 0.5),
        (12, 12),
        ("2.5", 2.5),
        ("1d", 86400),
    ],
)
def test_durations_read_like_prometheus(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "m5", "", "-1s", True, "1x"])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_targets_inherit_global_and_override_it() -> None:
    s = build_settings(
        {
            "global": {"poll_interval": "10s", "stuck_after": "5m"},
            "targets": [target(), target(name="c", stuck_after="1m")],
        },
        PROVIDERS,
    )
    b, c = s.resolved_targets()
    assert (b.poll_interval, b.stuck_after, c.stuck_after) == (10, 300, 60)


def test_every_problem_is_listed_with_its_key_path(tmp_path: Path) -> None:
    data = {
        "global": {"poll_interval": "soon", "surprise": 1},
        "targets": [
            target(auth={"type": "basiq", "api_key_file": str(tmp_path / "missing")}),
            target(provider="nope"),
            {"name": "x", "provider": "basiq", "base_url": "ftp://x", "auth": {"type": "magic"}},
        ],
    }
    with pytest.raises(ConfigError) as e:
        build_settings(data, PROVIDERS)
    text = "\n".join(e.value.problems)
    assert "global.poll_interval: 'soon' is not a duration" in text
    assert "global.surprise: unknown key" in text
    assert "targets[0](name=b).auth.api_key_file: cannot read" in text
    assert "unknown provider 'nope'" in text
    assert "targets[2](name=x).base_url" in text
    assert "targets[2](name=x).auth.type" in text


def test_duplicate_target_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate target name 'b'"):
        build_settings({"targets": [target(), target()]}, PROVIDERS)


def test_provider_specific_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="queues: not used by provider basiq"):
        build_settings({"targets": [target(queues=["1"])]}, PROVIDERS)


def test_secrets_come_from_files_and_never_show(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cr3t-value\n")
    s = build_settings({"targets": [target(auth={"type": "basiq", "api_key_file": str(key)})]}, PROVIDERS)
    auth = s.targets[0].auth
    secret = auth.secret("api_key")
    assert secret is not None and secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(s) and "s3cr3t-value" not in str(auth.secret("api_key"))


def test_secrets_cannot_be_written_in_the_yaml() -> None:
    with pytest.raises(ConfigError, match=r"auth.api_key: unknown key"):
        build_settings(
            {"targets": [target(auth={"type": "basiq", "api_key": "inline", "api_key_env": "X"})]}, PROVIDERS
        )


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yml"
    f.write_text("global:\n  poll_interval: 30s\ntargets: []\n")
    monkeypatch.setenv("ASYNCJOB_GLOBAL__POLL_INTERVAL", "2m")
    assert load_settings(f, PROVIDERS).global_.poll_interval == 120


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("global:\n  poll_interval: [\n")
    with pytest.raises(ConfigError, match="line"):
        load_settings(f, PROVIDERS)


def test_check_config_exits_2_with_every_problem_and_no_traceback(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("targets:\n  - name: a\n    provider: basiq\n    base_url: nope\n    bogus: 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "targets[0](name=a).base_url" in r.stderr and "targets[0](name=a).bogus: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text(
        "targets:\n  - name: a\n    provider: basiq\n    base_url: https://au-api.basiq.io\n    jobs: [1]\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "a: basiq" in r.stdout


def test_main_run_exits_2_on_a_bad_config(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("global: {timeout: -3s}\n")
    r = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={f}"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "global.timeout" in r.stderr and "Traceback" not in r.stderr


def test_a_misspelt_environment_variable_is_named_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOB_GLOBAL__POLL_INTERVALL", "1m")
    with pytest.raises(ConfigError) as e:
        build_settings({}, PROVIDERS)
    (problem,) = e.value.problems
    assert problem.startswith("ASYNCJOB_GLOBAL__POLL_INTERVALL: unknown key")
    assert "did you mean ASYNCJOB_GLOBAL__POLL_INTERVAL?" in problem
    assert "environment" in problem


def test_a_bad_value_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOB_GLOBAL__TIMEOUT", "soon")
    with pytest.raises(ConfigError) as e:
        build_settings({"global": {"timeout": "5s"}}, PROVIDERS)
    assert e.value.problems[0].startswith("ASYNCJOB_GLOBAL__TIMEOUT: 'soon' is not a duration")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"global": {"stuck_afer": "5m"}}, "global.stuck_afer: unknown key; did you mean stuck_after?"),
        ({"targets": [target(job=["1"])]}, "targets[0](name=b).job: unknown key; did you mean jobs?"),
        (
            {"targets": [target(auth={"type": "basiq", "api_key_fil": "/x"})]},
            "targets[0](name=b).auth.api_key_fil: unknown key; did you mean api_key_file?",
        ),
        ({"state_fil": "x.db"}, "state_fil: unknown key; did you mean state_file?"),
        ({"targets": [target(provider="basic")]}, "did you mean basiq?"),
    ],
)
def test_unknown_keys_get_a_did_you_mean(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_settings(data, PROVIDERS)
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_an_unknown_key_far_from_any_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as e:
        build_settings({"global": {"zzz": 1}}, PROVIDERS)
    assert e.value.problems == ["global.zzz: unknown key"]


def test_config_imports_no_provider() -> None:
    code = "import sys, exporter.config; print('exporter.providers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_check_config_warns_about_zero_targets(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("global: {poll_interval: 1m}\n")
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "warning: no targets configured" in r.stderr


@pytest.mark.parametrize("bad", ["a\x07b", "line\nbreak", "   ", "nul\x00"])
def test_a_static_id_that_could_never_be_polled_is_refused_naming_its_key(tmp_path: Path, bad: str) -> None:
    # The same ids the API answers 422 to: held in the config they would be tracked, but could
    # never be read or deleted through the API.
    escaped = bad.encode("unicode_escape").decode().replace('"', '\\"')
    f = tmp_path / "c.yml"
    f.write_text(
        "targets:\n  - name: a\n    provider: basiq\n    base_url: https://au-api.basiq.io\n"
        f'    jobs: ["ok-1", "{escaped}"]\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 2, r.stdout
    assert "targets[0](name=a).jobs" in r.stderr and "item 1" in r.stderr
    assert "Traceback" not in r.stderr


# --- what a valid config still leaves unsafe (exporter.config.safety) ---------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:10110", True),
        ("127.1.2.3:10110", True),
        ("[::1]:10110", True),
        ("localhost:10110", True),
        (":10110", False),
        ("0.0.0.0:10110", False),
        ("[::]:10110", False),
        ("10.0.0.5:10110", False),
        ("exporter.internal:10110", False),
    ],
)
def test_only_a_loopback_address_is_reachable_from_this_host_alone(address: str, loopback: bool) -> None:
    assert safety.is_loopback(address) is loopback


def test_an_api_without_a_token_on_every_interface_is_a_named_risk(tmp_path: Path) -> None:
    settings = build_settings({"targets": [target()]}, PROVIDERS)
    risk = safety.open_api(settings, ":10110")
    assert risk is not None and "takes no token" in risk and ":10110" in risk and "api.token_file" in risk
    assert safety.open_api(settings, "127.0.0.1:10110") is None
    assert safety.open_api(settings, ":10110", basic_auth=True) is None
    token = tmp_path / "token"
    token.write_text("s3cr3t\n")
    guarded = build_settings({"api": {"token_file": str(token)}, "targets": [target()]}, PROVIDERS)
    assert safety.open_api(guarded, ":10110") is None


def test_placeholder_secrets_are_named_by_key_path_from_files_and_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key").write_text("example-basiq-api-key-replace-me\n")
    (tmp_path / "token").write_text("example-api-token-replace-me\n")
    monkeypatch.setenv("BEARER", "CHANGEME")
    settings = build_settings(
        {
            "api": {"token_file": str(tmp_path / "token")},
            "targets": [
                target(auth={"type": "basiq", "api_key_file": str(tmp_path / "key")}),
                target(name="g", auth={"type": "bearer", "token_env": "BEARER"}),
            ],
        },
        PROVIDERS,
    )
    assert safety.placeholder_secrets(settings) == [
        f"api.token_file: {tmp_path / 'token'} holds a placeholder, not a secret",
        f"targets[0](name=b).auth.api_key_file: {tmp_path / 'key'} holds a placeholder, not a secret",
        "targets[1](name=g).auth.token_env: BEARER holds a placeholder, not a secret",
    ]
    (tmp_path / "key").write_text("f00dfeed0123456789\n")
    monkeypatch.setenv("BEARER", "0123456789abcdef")
    assert safety.placeholder_secrets(settings) == [
        f"api.token_file: {tmp_path / 'token'} holds a placeholder, not a secret"
    ]


def test_check_config_warns_of_an_open_api_unless_it_listens_on_loopback(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text(f"targets: [{target(jobs=[1])}]\n".replace("'", '"'))
    everywhere = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(f)], capture_output=True, text=True
    )
    assert everywhere.returncode == 0, everywhere.stderr
    assert "warning: the API takes no token and listens on :10110" in everywhere.stderr
    loopback = subprocess.run(
        [sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:10110", "check-config", str(f)],
        capture_output=True,
        text=True,
    )
    assert loopback.returncode == 0 and "warning" not in loopback.stderr, loopback.stderr


def test_check_config_reads_the_config_file_flag_when_no_file_is_given(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("targets:\n  - {name: a, provider: nobody, base_url: https://x}\n")
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", f"--config.file={f}"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "targets[0](name=a).provider" in r.stderr, r.stderr
