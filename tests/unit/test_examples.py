"""examples/: one commented config per provider, each valid with the example secrets beside it,
and the README's config is one of them, word for word."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.providers import PROVIDERS

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yml"))


def test_there_is_an_example_per_provider() -> None:
    providers = {t["provider"] for path in EXAMPLES for t in yaml.safe_load(path.read_text())["targets"]}
    assert providers == set(PROVIDERS)


def check_config(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def secret_files(path: Path) -> set[str]:
    """The `*_file` paths an example names (its own and its targets' auth)."""
    data = yaml.safe_load(path.read_text())
    sections = [data.get("api") or {}, *(t.get("auth") or {} for t in data["targets"])]
    return {str(v) for s in sections for k, v in s.items() if k.endswith("_file")}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_passes_check_config_from_any_directory(path: Path, tmp_path: Path) -> None:
    r = check_config(path, cwd=tmp_path)  # secrets are found beside the file, not in the working directory
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_names_its_placeholder_secrets_and_only_them(path: Path, tmp_path: Path) -> None:
    r = check_config(path, cwd=tmp_path)
    warnings = [line for line in r.stderr.splitlines() if "warning:" in line]
    named = [re.findall(r"_file: (\S+) holds a placeholder, not a secret$", line) for line in warnings]
    assert all(named), r.stderr  # nothing else: each example sets an API token
    assert {Path(n).relative_to(REPO / "examples").as_posix() for (n,) in named} == secret_files(path)


def test_a_real_secret_beside_an_example_silences_its_warning(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    for name in ("api-token", "basiq-api-key"):
        (tmp_path / "secrets" / name).write_text("s3cr3t-0123456789abcdef\n")
    config = tmp_path / "basiq.yml"
    config.write_text((REPO / "examples" / "basiq.yml").read_text())
    r = check_config(config, cwd=tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_the_readme_config_is_one_of_the_examples() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    texts = {path.read_text() for path in EXAMPLES}
    assert [b for b in blocks if "targets:" in b and b in texts], "the README shows an example config"
