"""Config: YAML + ASYNCJOB_* variables into typed settings; every problem names its key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, build_settings, load_settings, parse_duration
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
    assert auth.secret("api_key").get_secret_value() == "s3cr3t-value"
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
