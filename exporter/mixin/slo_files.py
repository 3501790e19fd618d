"""The files of the job objectives (`slos:`): their rule file, its promtool tests and one dashboard
per objective, beside the other generated files. A config without objectives has none."""

from __future__ import annotations

import json

from . import rules, slo_boards, slo_tests, slos
from .config import Config

RULES_PATH = "alerts/asyncjob-slos.rules.yml"
RULE_TESTS_PATH = "alerts/tests/slos.yml"
HEADER = (
    "# Generated from the slos of a mixin config (exporter/mixin/slos.py) by\n"
    "# `asyncjob-exporter mixin`: edit the config, not this file. docs/slos.md explains the rules.\n"
    "# Recording rules are named level:metric:operations.\n"
)
TESTS_HEADER = (
    "# Generated with the SLO rules from the same config (exporter/mixin/slo_tests.py): each test\n"
    "# starts from six hours at half the budget's pace, then plays an outage, a burn or a burst.\n"
    "# Run: promtool test rules alerts/tests/slos.yml\n"
)


def dashboard_path(name: str) -> str:
    return f"dashboards/asyncjob-slo-{name}.json"


def render(cfg: Config) -> dict[str, str]:
    if not cfg.slos:
        return {}
    files = {
        RULES_PATH: HEADER + rules.dump_yaml(slos.rule_groups(cfg)),
        RULE_TESTS_PATH: TESTS_HEADER + rules.dump_yaml(slo_tests.rule_tests(cfg)),
    }
    for slo in cfg.slos:
        board = slo_boards.dashboard(cfg, slo)
        files[dashboard_path(slo.name)] = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
    return files
