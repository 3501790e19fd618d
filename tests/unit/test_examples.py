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


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_passes_check_config_from_any_directory(path: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # secrets are found beside the file, not in the working directory
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "warning" not in r.stderr


def test_the_readme_config_is_one_of_the_examples() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert blocks, "the README shows a config"
    texts = {path.read_text() for path in EXAMPLES}
    assert blocks[0] in texts
