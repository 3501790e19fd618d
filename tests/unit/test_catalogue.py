"""The catalogue of metric families (exporter/catalogue.py) is the whole truth: every family the
exporter serves is in it, with the type, help and labels it is served with; every one is in
docs/metrics.md; and every metric the shipped rules, dashboards and rule tests read is either in
it or recorded by the rules."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import promql_parser
import pytest
import yaml

from exporter import catalogue
from exporter.config import build_settings
from exporter.mixin import files, user
from exporter.providers import PROVIDERS
from exporter.render.jobs import JOB_FAMILIES
from exporter.render.scrape import PROCESS_REGISTRY
from exporter.runtime import Runtime
from tests.tools import load_script

REPO = Path(__file__).resolve().parents[2]
METRICS_MD = REPO / "docs" / "metrics.md"
# The rule files the project ships (and their copies for the compose stack and Kubernetes).
RULE_FILES = sorted(
    [
        *(REPO / "alerts").glob("*.rules.yml"),
        *(REPO / "deploy" / "compose" / "monitoring" / "alerts").glob("*.rules.yml"),
        *(REPO / "deploy" / "kubernetes" / "rules").glob("prometheusrule.yaml"),
    ]
)
RULE_TESTS = sorted(
    [*(REPO / "alerts" / "tests").glob("*.yml"), *(REPO / "deploy" / "compose").rglob("alerts/tests/*.yml")]
)
SLO_EXAMPLE = REPO / "examples" / "mixin" / "slos.yml"
DASHBOARDS = sorted(
    [*(REPO / "dashboards").glob("*.json"), *(REPO / "deploy" / "compose" / "monitoring").rglob("*.json")]
)
_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
_HELP = re.compile(r"^# HELP (\S+) (.*)$", re.MULTILINE)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} \S+", re.MULTILINE)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')


def docs_generator() -> ModuleType:
    return load_script("asyncjob_docs_generate", "docs/generate.py")


def client_families() -> set[str]:
    """prometheus-client's own families (process_*, python_*): they describe themselves."""
    names = {metric.name for metric in PROCESS_REGISTRY.collect()}
    return names | {f"{name}_total" for name in names}  # a counter's TYPE line in text 0.0.4


def served_by_every_provider() -> str:
    """A running exporter's body with a target of every provider, and the docs' sample: jobs in
    every state with steps and records, an Oxlin connection with channels and queue events."""
    needs: dict[str, dict[str, Any]] = {"generic": {"job_path": "/jobs/{id}"}, "oxlin": {"queues": ["q1"]}}
    targets = [
        {"name": f"t-{name}", "provider": name, "base_url": "https://api.example.com", **needs.get(name, {})}
        for name in sorted(PROVIDERS)
    ]
    settings = build_settings({"targets": targets}, PROVIDERS)
    runtime = Runtime(settings)
    for target in settings.targets:
        runtime.tracker.set_target(settings.resolved(target))
    sample: str = docs_generator().sample_exposition()
    return runtime.exposition.render().decode() + sample


# ---------------------------------------------------------------------------------------------
# What the exporter serves
# ---------------------------------------------------------------------------------------------


def test_every_served_family_is_in_the_catalogue_with_its_type_and_help() -> None:
    text = served_by_every_provider()
    served = dict(_TYPE.findall(text))
    ours = {name: kind for name, kind in served.items() if name not in client_families()}
    listed = {family.name for family in catalogue.CATALOGUE}
    assert sorted(set(ours) - listed) == [], "served but not in exporter/catalogue.py"
    assert ours == {name: catalogue.BY_NAME[name].type for name in ours}
    for name, help_text in _HELP.findall(text):
        if name in catalogue.BY_NAME:
            assert help_text == catalogue.BY_NAME[name].help, name


def test_every_catalogue_family_is_served_even_with_no_series_in_the_catalogues_order() -> None:
    runtime = Runtime(build_settings({}, PROVIDERS))
    served = [name for name, _ in _TYPE.findall(runtime.exposition.render().decode())]
    assert [name for name in served if name not in client_families()] == [f.name for f in catalogue.CATALOGUE]


def test_a_state_file_adds_the_state_stores_families_after_the_state_files_size(tmp_path: Path) -> None:
    runtime = Runtime(build_settings({"state_file": str(tmp_path / "state.db")}, PROVIDERS))
    runtime.open_state()
    served = [name for name, _ in _TYPE.findall(runtime.exposition.render().decode())]
    assert runtime.store is not None
    runtime.store.close()
    expected = [f.name for f in catalogue.CATALOGUE]
    at = expected.index(catalogue.STATE_SIZE.name) + 1
    expected[at:at] = [f.name for f in catalogue.WITH_A_STATE_STORE]
    assert [name for name in served if name not in client_families()] == expected


def test_the_families_of_the_cluster_mode_are_served_only_with_state_url() -> None:
    """One process serves none of them (tests/unit/test_cluster_member.py checks a replica
    serves them); docs/metrics.md lists them in a section of their own."""
    served = {name for name, _ in _TYPE.findall(served_by_every_provider())}
    assert sorted(family.name for family in catalogue.WITH_STATE_URL if family.name in served) == []


def test_every_served_series_carries_its_familys_labels_in_order() -> None:
    seen: set[str] = set()
    for name, labels in _SAMPLE.findall(served_by_every_provider()):
        family = catalogue.family_of(name)
        if family is None:
            assert name.split("_")[0] in {"process", "python"}, name
            continue
        names = tuple(label for label in _LABEL.findall(labels) if label != "le")
        assert names == family.labels, name
        seen.add(family.name)
    # The sample fills every family that has labels, so each label list above was checked.
    assert sorted({f.name for f in catalogue.CATALOGUE if f.labels} - seen) == []


def test_the_per_job_renderer_writes_the_catalogues_per_job_families_in_order() -> None:
    assert tuple(family.family for family in JOB_FAMILIES) == catalogue.PER_JOB


def test_family_of_understands_histogram_series_and_nothing_else() -> None:
    assert catalogue.family_of("asyncjob_job_duration_seconds_bucket") is catalogue.JOB_DURATION
    assert catalogue.family_of("asyncjob_poll_duration_seconds_count") is catalogue.POLL_DURATION
    assert catalogue.family_of("asyncjob_jobs_finished_total") is catalogue.JOBS_FINISHED
    assert catalogue.family_of("asyncjob_jobs_bucket") is None  # a gauge has no buckets
    assert catalogue.family_of("asyncjob_jobs_finished") is None  # samples keep `_total`


# ---------------------------------------------------------------------------------------------
# docs/metrics.md
# ---------------------------------------------------------------------------------------------


def documented_types() -> dict[str, str]:
    return dict(
        re.findall(r"^\| `(asyncjob_[a-z0-9_]+)` \| (\w+) \|", METRICS_MD.read_text(), flags=re.MULTILINE)
    )


def test_every_catalogue_family_is_documented_with_its_type() -> None:
    rows = documented_types()
    assert {f.name: rows.get(f.name) for f in catalogue.CATALOGUE} == {
        f.name: f.type for f in catalogue.CATALOGUE
    }


def test_the_cluster_families_not_yet_served_are_documented_in_the_cluster_section() -> None:
    """A user of the cluster mode reads them there before the runtime serves them."""
    section = METRICS_MD.read_text().split("\n## Cluster (`state_url`)\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(asyncjob_[a-z0-9_]+)` \| (\w+) \| — \| (.*) \|$", section, flags=re.MULTILINE)
    assert catalogue.CLUSTER and set(catalogue.CLUSTER) <= set(catalogue.WITH_STATE_URL)
    assert rows == [(f.name, f.type, f.help) for f in catalogue.WITH_STATE_URL]


# ---------------------------------------------------------------------------------------------
# The mixin: rules, rule tests and dashboards
# ---------------------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, read by a PromQL parser."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus receives it from Grafana."""
    return re.sub(r"\$\{?\w+\}?", ".+", expr.replace("$__rate_interval", "5m"))


def shipped_and_example_slo_files() -> dict[str, str]:
    """The mixin's files as committed (and copied for the compose stack and Kubernetes), and
    those the example objectives (examples/mixin/slos.yml) add."""
    texts = {
        path.relative_to(REPO).as_posix(): path.read_text()
        for path in [*RULE_FILES, *RULE_TESTS, *DASHBOARDS]
    }
    slo_config = user.config_from(yaml.safe_load(SLO_EXAMPLE.read_text()))
    generated = files.render(slo_config)
    texts.update({f"{SLO_EXAMPLE.name} -> {name}": text for name, text in generated.items() if "slo" in name})
    return texts


def rules(texts: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, text in texts.items():
        document = yaml.safe_load(text) if not where.endswith(".json") else {}
        for group in (document.get("spec") or document).get("groups", []):
            for rule in group["rules"]:
                yield where, rule


def expressions(texts: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every rule, every series a rule test feeds, and every dashboard query
    and query variable."""
    for where, rule in rules(texts):
        yield f"{where}: {rule.get('alert') or rule.get('record')}", rule["expr"]
    for where, text in texts.items():
        if where.endswith(".json"):
            continue
        for test in yaml.safe_load(text).get("tests", []):
            for series in test.get("input_series", []):
                yield where, series["series"]
    for where, text in texts.items():
        if not where.endswith(".json"):
            continue
        board = json.loads(text)
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                yield f"{where}: {panel['title']}", grafana_to_promql(target["expr"])
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            if variable["type"] == "query" and isinstance(query, dict):
                match = re.fullmatch(r"label_values\((.*), \w+\)", query["query"])
                assert match, f"{where}: variable {variable['name']}"
                yield f"{where}: variable {variable['name']}", grafana_to_promql(match[1])


def unknown_metrics(expr: str, known_records: set[str]) -> list[str]:
    """The exporter's metrics an expression names that the exporter does not serve. The cluster
    alert and dashboard row read the families a replica serves only with state_url."""
    known = (*catalogue.CATALOGUE, *catalogue.WITH_A_STATE_STORE, *catalogue.WITH_STATE_URL)
    return sorted(
        name
        for name in metric_names(expr)
        if (name.startswith("asyncjob_") or ":" in name)
        and catalogue.family_of(name) not in known
        and name not in known_records
    )


def test_the_mixin_files_are_all_found() -> None:
    texts = shipped_and_example_slo_files()
    assert len(RULE_FILES) >= 3 and RULE_TESTS and len(DASHBOARDS) >= 2
    assert sum(1 for where in texts if "slos.yml ->" in where) >= 4  # rules, tests, two dashboards
    assert sum(1 for _ in expressions(texts)) > 100


def test_every_metric_the_rules_dashboards_and_rule_tests_read_is_served_or_recorded() -> None:
    texts = shipped_and_example_slo_files()
    recorded = {rule["record"] for _, rule in rules(texts) if "record" in rule}
    wrong = {
        where: unknown for where, expr in expressions(texts) if (unknown := unknown_metrics(expr, recorded))
    }
    assert wrong == {}


@pytest.mark.parametrize(
    ("expr", "unknown"),
    [
        ('sum(rate(asyncjob_jobs_finished_total{job="x"}[5m]))', []),
        ('histogram_quantile(0.9, rate(asyncjob_step_duration_seconds_bucket{job="x"}[5m]))', []),
        (
            'time() - asyncjob_job_last_progress_timestamp_secs{job="x"} > 60',
            ["asyncjob_job_last_progress_timestamp_secs"],
        ),
        ('rate(asyncjob_jobs_total{job="x"}[5m])', ["asyncjob_jobs_total"]),
        ('{__name__="asyncjob_job_state"} == 1', ["asyncjob_job_state"]),
        ('target:asyncjob_jobs_finished:rate5m{job="x"} > 0', ["target:asyncjob_jobs_finished:rate5m"]),
        ('up{job="x"} == 0', []),
        ('sum(asyncjob_cluster_shards_held{job="x"})', []),
        ('sum(asyncjob_cluster_shard_held{job="x"})', ["asyncjob_cluster_shard_held"]),
    ],
)
def test_a_query_naming_a_metric_the_exporter_does_not_serve_is_caught(expr: str, unknown: list[str]) -> None:
    assert unknown_metrics(expr, set()) == unknown
