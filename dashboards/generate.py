"""Writes alerts/asyncjob.rules.yml, its generated promtool tests and the Grafana dashboards from
exporter/mixin (the same files `asyncjob-exporter mixin` writes from a user's YAML).

python dashboards/generate.py              # regenerate the committed files in place
python dashboards/generate.py --out DIR    # write them under DIR instead (tests compare)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.mixin import rules
from exporter.mixin.config import CONFIG, Config
from exporter.mixin.files import (
    DASHBOARD_PATHS,
    RULE_TESTS_PATH,
    RULES_PATH,
    dashboards,
    iter_queries,
    render,
    write,
)

REPO = Path(__file__).resolve().parent.parent
__all__ = [
    "CONFIG",
    "DASHBOARD_PATHS",
    "RULES_PATH",
    "RULE_TESTS_PATH",
    "Config",
    "dashboards",
    "iter_queries",
    "render",
    "rules",
    "write",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=REPO, help="root to write under (default: the repository)"
    )
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
