"""The files a mixin config gives: the rule file, its generated promtool tests and the Grafana
dashboards, by path relative to the output root. `make generate` writes them into the repository
(dashboards/generate.py); `asyncjob-exporter mixin` into a user's directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import job_board, overview_board, promtests, rules, slo_files
from .config import CONFIG, Config

RULES_PATH = "alerts/asyncjob.rules.yml"
RULE_TESTS_PATH = "alerts/tests/generated.yml"
DASHBOARD_PATHS = {
    "overview": "dashboards/asyncjob-overview.json",
    "job": "dashboards/asyncjob-job.json",
}
HEADER = (
    "# Generated from exporter/mixin/config.py (make generate), or from a mixin YAML by\n"
    "# `asyncjob-exporter mixin`: edit those, not this file.\n"
    "# Recording rules are named level:metric:operations; 'active' means pending or running and\n"
    "# not waiting for the end user.\n"
)
TESTS_HEADER = (
    "# Generated with the rules from the same config (exporter/mixin/promtests.py): each alert\n"
    "# fires past its thresholds and `for`, with its severity; just short of them, not.\n"
    "# Run: promtool test rules alerts/tests/generated.yml\n"
)


def dashboards(cfg: Config = CONFIG) -> dict[str, dict[str, Any]]:
    return {"overview": overview_board.overview(cfg), "job": job_board.job(cfg)}


def render(cfg: Config = CONFIG) -> dict[str, str]:
    """Every generated file: path relative to the output root -> exact text."""
    files = {RULES_PATH: HEADER + rules.dump_yaml(rules.rule_groups(cfg))}
    files[RULE_TESTS_PATH] = TESTS_HEADER + rules.dump_yaml(promtests.rule_tests(cfg))
    for key, board in dashboards(cfg).items():
        files[DASHBOARD_PATHS[key]] = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
    files.update(slo_files.render(cfg))  # none without slos
    return files


def iter_queries(cfg: Config = CONFIG) -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL expr) of every panel target, with Grafana variables left in."""
    for board in dashboards(cfg).values():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield board["uid"], panel["title"], target["expr"]


def write(out: Path, cfg: Config = CONFIG) -> list[Path]:
    written = []
    for relative, text in render(cfg).items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
