"""The reference docs: current with their generator, and naming every metric a running exporter serves."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalogue
from exporter.render.jobs import JOB_FAMILIES
from tests.harness import Proc, free_port, start_cli, wait_for
from tests.tools import load_script

REPO = Path(__file__).resolve().parents[2]
CONFIGURATION = REPO / "docs" / "configuration.md"
METRICS = REPO / "docs" / "metrics.md"


def load_generator() -> ModuleType:
    return load_script("asyncjob_docs_generate", "docs/generate.py")


def documented() -> dict[str, str]:
    """Metric family name -> type, from the tables of docs/metrics.md."""
    rows = re.findall(
        r"^\| `([a-z][a-z0-9_]+)` \| (counter|gauge|histogram|summary|info|stateset|unknown) \|",
        METRICS.read_text(),
        flags=re.MULTILINE,
    )
    return dict(rows)


def served_families(text: str) -> dict[str, str]:
    """Family name -> type from the # TYPE lines: a family with no series still has them."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))


def test_configuration_md_is_what_the_generator_writes() -> None:
    assert CONFIGURATION.read_text() == load_generator().configuration_md(), "run: python docs/generate.py"


def test_metrics_md_is_what_the_generator_writes() -> None:
    assert METRICS.read_text() == load_generator().metrics_md(), "run: python docs/generate.py"


def test_every_config_key_has_a_row_in_its_section() -> None:
    gen = load_generator()
    text = CONFIGURATION.read_text()
    for heading, model, _ in gen.SECTIONS:
        section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
        for name, info in model.model_fields.items():
            key = info.alias or name
            assert f"| `{key}` |" in section, f"{heading}: {key} is not documented"


def test_every_per_job_family_is_documented_with_its_type() -> None:
    docs = documented()
    for family in JOB_FAMILIES:
        assert docs.get(family.name) == family.type, family.name


def test_metrics_md_has_no_family_twice() -> None:
    rows = re.findall(r"^\| `(asyncjob_[a-z0-9_]+)` \|", METRICS.read_text(), flags=re.MULTILINE)
    assert len(rows) == len(set(rows))


@pytest.mark.e2e
def test_documented_metrics_are_exactly_those_a_demo_run_serves(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    proc = Proc(
        start_cli(["demo", f"--web.listen-address=127.0.0.1:{port}", "--simulator.step-seconds=0.5"], log),
        log,
        f"http://127.0.0.1:{port}",
    )

    def metrics_with_jobs() -> str:
        # Polled jobs on the page: the run is past start-up, not just an empty exporter.
        text = httpx.get(f"{proc.url}/metrics", timeout=2).text
        return text if "asyncjob_job_info{" in text else ""

    try:
        text = wait_for(metrics_with_jobs, timeout=30, what="demo serving jobs")
    finally:
        code = proc.stop()
    assert code == 0, proc.output()

    # Must parse as the text format; the parser names counters without `_total`.
    parsed = {f.name: f.type for f in text_string_to_metric_families(text)}
    served = served_families(text)
    assert {n.removesuffix("_total") if t == "counter" else n for n, t in served.items()} == set(parsed)

    # Every family is rendered with its HELP/TYPE lines even with no series (no Oxlin target
    # in the demo, no failed request), so a short run serves the whole set and the sets can
    # be compared both ways, prometheus-client's process_*/python_* families included.
    docs = documented()
    assert sorted(set(served) - set(docs)) == [], "served but not in docs/metrics.md: run docs/generate.py"
    # The cluster mode's families are documented before one process serves them.
    waiting = {family.name for family in catalogue.WITH_STATE_URL}
    assert sorted(set(docs) - set(served) - waiting) == [], "documented but not served by the demo"
    assert {n: docs[n] for n in served} == served, "documented types differ from the served ones"


def test_every_command_docs_ha_gives_parses_with_the_cli() -> None:
    """The commands of docs/ha.md (joined across continuations, shell variables as written)
    name subcommands and flags the CLI has."""
    import shlex

    from exporter.__main__ import parser

    text = (REPO / "docs" / "ha.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = [line.strip() for line in lines if re.match(r"\s*(\w+=\S+\s+)*asyncjob-exporter ", line)]
    assert len(commands) >= 3, commands  # state copy, the simulator, the replicas
    for command in commands:
        words = shlex.split(command.split(" > ")[0].split(" 2>")[0].replace("$port", "9701"))
        words = words[[w.startswith("asyncjob-exporter") for w in words].index(True) + 1 :]
        args = parser().parse_args(words)  # exits (SystemExit) on an unknown subcommand or flag
        assert args.command in (None, "simulate", "state"), command
