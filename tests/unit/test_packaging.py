"""What ships beside the code: the Dockerfile (read statically: there is no Docker engine in
the tests), the compose stack's configs (checked by promtool and amtool), the Kubernetes
manifests, and the wheel, built, installed into a fresh venv and run."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.__main__ import parser
from exporter.config import ConfigError, build_settings, safety
from exporter.providers import PROVIDERS
from tests.harness import free_port, wait_for
from tests.tools import require_tool

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "compose"
KUBERNETES = REPO / "deploy" / "kubernetes"
RULES = REPO / "alerts" / "asyncjob.rules.yml"
INHIBIT_EXAMPLE = REPO / "alerts" / "alertmanager-inhibit.example.yml"

SECRET_NAME = re.compile(r"password|passwd|secret|token|api_?key|private_?key|credential", re.IGNORECASE)
SECRET_FILE = re.compile(r"(^|/)(\.env|secrets?|.*\.(pem|key|p12|pfx|crt)|id_rsa.*|.*credentials.*)$", re.I)


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Instructions per build stage; the global ARGs before the first FROM are stage 0's prefix."""
    result: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions():
        if ins[0] == "FROM" or not result:
            result.append([])
        result[-1].append(ins)
    return result


def global_args() -> dict[str, str]:
    args = {}
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip('"')
    return args


def final_stage() -> list[tuple[str, str]]:
    return [s for s in stages() if s and s[0][0] == "FROM"][-1]


def exec_form(rest: str) -> list[str]:
    value = yaml.safe_load(rest)
    assert isinstance(value, list), f"use the exec (JSON) form: {rest}"
    return [str(v) for v in value]


def test_final_stage_runs_as_a_non_root_user() -> None:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert user.isdigit(), f"USER {users[-1]} should be a numeric UID"


def test_base_images_are_pinned_to_an_exact_version() -> None:
    args = global_args()
    names = set()
    froms = [rest for word, rest in dockerfile_instructions() if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder stage and a runtime stage"
    for rest in froms:
        parts = rest.split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
        if image in names:  # FROM <earlier stage>
            continue
        if len(parts) >= 3 and parts[1].upper() == "AS":
            names.add(parts[2])
        assert "$" not in image, f"{parts[0]}: an ARG without a default"
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{image}: pin a version tag"
        assert re.match(r"^\d+\.\d+\.\d+(-[a-z0-9.-]+)?$", tag), f"{image}: pin an exact x.y.z version"


def test_exposes_the_exporter_port() -> None:
    exposed = [p for word, rest in final_stage() if word == "EXPOSE" for p in rest.split()]
    assert "10110" in exposed or "10110/tcp" in exposed


def test_health_check_asks_healthz_without_curl() -> None:
    checks = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    assert len(checks) == 1 and "NONE" not in checks[0].upper()
    assert "/healthz" in checks[0]
    assert "curl" not in checks[0] and "wget" not in checks[0], "the slim image has neither"


def test_entrypoint_is_the_cli_and_cmd_the_config_file() -> None:
    stage = final_stage()
    entry = [exec_form(rest) for word, rest in stage if word == "ENTRYPOINT"][-1]
    cmd = [exec_form(rest) for word, rest in stage if word == "CMD"][-1]
    # `docker run IMAGE demo` then runs `asyncjob-exporter demo`.
    assert entry == ["asyncjob-exporter"]
    assert cmd == ["--config.file=/etc/asyncjob-exporter/config.yml"]
    volumes = [v for word, rest in stage if word == "VOLUME" for v in exec_form(rest)]
    assert "/var/lib/asyncjob-exporter" in volumes


def test_no_secret_is_baked_into_env_or_arg() -> None:
    for word, rest in dockerfile_instructions():
        if word not in ("ENV", "ARG"):
            continue
        for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(?:=|\s+)(\S*)", rest):
            if SECRET_NAME.search(key):
                assert not value, f"{word} {key} carries a value: secrets are mounted at run time"


def test_no_secret_file_is_copied_and_the_context_is_an_allow_list() -> None:
    for word, rest in dockerfile_instructions():
        if word in ("COPY", "ADD"):
            sources = [p for p in rest.split()[:-1] if not p.startswith("--")]
            for source in sources:
                assert not SECRET_FILE.search(source.rstrip("/")), f"{word} {rest}"
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is left out of the build context but the files the wheel is built from,
    # so a stray .env, state file or secret never reaches a layer.
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "exporter"}
    copied = {
        source.rstrip("/").removeprefix("./")
        for word, rest in dockerfile_instructions()
        if word == "COPY" and "--from" not in rest
        for source in rest.split()[:-1]
    }
    assert copied <= allowed, f"COPY of files the context leaves out: {copied - allowed}"


# --- docker compose ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return data


def alert_job_selector() -> re.Pattern[str]:
    """The scrape-job regex every alert rule selects, as Prometheus anchors it."""
    selectors = set(re.findall(r'job=~"([^"]+)"', RULES.read_text()))
    assert len(selectors) == 1, selectors
    return re.compile(f"^(?:{selectors.pop()})$")


def test_compose_bind_mounts_point_at_files_in_the_repository() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE / source).exists(), f"{name}: {source} does not exist"


def compose_exporter_args(exporter_args: str | None) -> argparse.Namespace:
    """The exporter's arguments in the compose stack, as its CLI reads them, with EXPORTER_ARGS."""
    command = compose()["services"]["exporter"]["command"]
    assert command.endswith(" ${EXPORTER_ARGS:-demo}"), command
    return parser().parse_args(
        shlex.split(command.replace("${EXPORTER_ARGS:-demo}", exporter_args or "demo"))
    )


def test_compose_exporter_runs_the_demo_unless_told_otherwise() -> None:
    exporter = compose()["services"]["exporter"]
    assert compose_exporter_args(None).command == "demo"
    real = compose_exporter_args("--config.file=/etc/asyncjob-exporter/config.yml")
    assert (real.command, real.config_file) == (None, "/etc/asyncjob-exporter/config.yml")
    assert exporter["build"]["dockerfile"] == "Dockerfile"
    assert (COMPOSE / exporter["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE


@pytest.mark.parametrize("exporter_args", [None, "--config.file=/etc/asyncjob-exporter/config.yml"])
def test_compose_exporter_listens_where_prometheus_reaches_it_and_links_to_the_published_port(
    exporter_args: str | None,
) -> None:
    # Prometheus scrapes it from another container: the demo's default, 127.0.0.1, would not do.
    args = compose_exporter_args(exporter_args)
    assert args.listen == ":10110"
    published = {p.split(":")[1]: p.split(":")[0] for p in compose()["services"]["exporter"]["ports"]}
    assert args.external_url == f"http://localhost:{published['10110']}"


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service.get("image", "")
        tag = image.rpartition(":")[2]
        assert tag and tag != "latest" and ":" in image, f"{name}: {image}"


def mounted_path(service: str, container_path: str) -> Path:
    """The repository path a compose service sees at `container_path`."""
    for volume in compose()["services"][service]["volumes"]:
        parts: list[str] = volume.split(":")
        source, target = parts[:2]
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (COMPOSE / source / container_path[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"{service} does not mount {container_path}")


COMPOSE_MONITORING = COMPOSE / "monitoring"


def mixin_files(mixin: Path) -> dict[str, str]:
    from exporter.mixin import files, user

    return files.render(user.load(mixin))


def job_urls_replaced(groups: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """`groups` with every link to the exporter's pages (job_url, and those in the descriptions:
    a failed job's page, a target's stuck jobs) under `base` instead of the scraped instance (or,
    for alerts that name no replica, the instance exporting the job, looked up at rendering)."""
    out: list[dict[str, Any]] = yaml.safe_load(yaml.safe_dump(groups))
    exporting = re.compile(
        r'http://\{\{ with printf `[^`]*`[^|]*\| query \}\}\{\{ \. \| first \| label "instance" \}\}'
        r"\{\{ end \}\}/jobs"
    )
    for group in out:
        for rule in group["rules"]:
            annotations = rule.get("annotations", {})
            for key, text in annotations.items():
                text = exporting.sub(lambda _: f"{base}/jobs", text)
                annotations[key] = text.replace("http://{{ $labels.instance }}/jobs", f"{base}/jobs")
    return out


def test_compose_monitoring_is_what_the_mixin_command_writes_from_its_mixin_yml() -> None:
    for relative, text in mixin_files(COMPOSE / "mixin.yml").items():
        assert (COMPOSE_MONITORING / relative).read_text() == text, "run: make generate"


def test_compose_rules_are_the_repositorys_with_job_url_at_the_exporters_external_url() -> None:
    ours = yaml.safe_load((COMPOSE_MONITORING / "alerts" / "asyncjob.rules.yml").read_text())["groups"]
    external_url = compose_exporter_args(None).external_url
    assert ours == job_urls_replaced(yaml.safe_load(RULES.read_text())["groups"], external_url)
    job_urls = [
        r["annotations"]["job_url"] for g in ours for r in g["rules"] if "job_url" in r.get("annotations", {})
    ]
    assert job_urls and all(u.startswith(f"{external_url}/jobs/") for u in job_urls)


def test_compose_prometheus_loads_the_repository_rules_and_scrapes_job_asyncjob() -> None:
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert [mounted_path("prometheus", p) for p in prom["rule_files"]] == [
        COMPOSE_MONITORING / "alerts" / "asyncjob.rules.yml"
    ]
    jobs = {sc["job_name"]: sc for sc in prom["scrape_configs"]}
    assert "asyncjob" in jobs and alert_job_selector().match("asyncjob")
    assert jobs["asyncjob"]["static_configs"][0]["targets"] == ["exporter:10110"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    # Inside the stack the rules are mounted; here the same files are read where they are.
    prom["rule_files"] = [str(mounted_path("prometheus", p)) for p in prom["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(prom))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_alertmanager_config_passes_amtool() -> None:
    amtool = require_tool("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(COMPOSE / "alertmanager.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_alertmanager_has_the_example_routes_and_inhibitions() -> None:
    ours = yaml.safe_load((COMPOSE / "alertmanager.yml").read_text())
    example = yaml.safe_load(INHIBIT_EXAMPLE.read_text())
    assert ours["inhibit_rules"] == example["inhibit_rules"]
    assert ours["route"] == example["route"]


def test_compose_grafana_provisions_the_datasource_and_the_dashboards() -> None:
    prov = COMPOSE / "grafana" / "provisioning"
    datasources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["url"], d["isDefault"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090", True)
    ]
    provider = yaml.safe_load((prov / "dashboards" / "asyncjob.yml").read_text())["providers"][0]
    dashboards = mounted_path("grafana", provider["options"]["path"])
    assert dashboards == COMPOSE_MONITORING / "dashboards"
    assert sorted(dashboards.glob("*.json")), "no dashboard to provision"
    assert mounted_path("grafana", "/etc/grafana/provisioning") == prov.resolve()


# --- example exporter configs --------------------------------------------------------------


def example_configs() -> dict[str, str]:
    out = {"deploy/compose/exporter.yml": (COMPOSE / "exporter.yml").read_text()}
    for path in sorted(KUBERNETES.glob("*/configmap.yaml")):
        out[str(path.relative_to(REPO))] = yaml.safe_load(path.read_text())["data"]["config.yml"]
    return out


@pytest.mark.parametrize("name", sorted(example_configs()))
def test_example_exporter_config_is_valid(name: str, tmp_path: Path) -> None:
    text = example_configs()[name]
    # The secret files live in /run/secrets in a container; here, empty stand-ins.
    for secret in set(re.findall(r"/run/secrets/([\w.-]+)", text)):
        (tmp_path / secret).write_text("x\n")
    data = yaml.safe_load(text.replace("/run/secrets/", f"{tmp_path}/"))
    try:
        settings = build_settings(data, PROVIDERS)
    except ConfigError as e:
        pytest.fail(f"{name}:\n" + "\n".join(e.problems))
    # Scraped from other hosts, so listening on every interface: the API needs its token.
    assert safety.open_api(settings, ":10110") is None, name


# --- Kubernetes ----------------------------------------------------------------------------


def load_k8s_generator() -> ModuleType:
    if "asyncjob_k8s_generate" in sys.modules:
        return sys.modules["asyncjob_k8s_generate"]
    spec = importlib.util.spec_from_file_location("asyncjob_k8s_generate", KUBERNETES / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["asyncjob_k8s_generate"] = module
    spec.loader.exec_module(module)
    return module


def manifests(directory: str) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBERNETES / directory / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        path = (KUBERNETES / directory / resource).resolve()
        files = [path / "prometheusrule.yaml"] if path.is_dir() else [path]
        for f in files:
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_prometheusrule_is_what_the_generator_writes() -> None:
    gen = load_k8s_generator()
    assert gen.OUTPUT.read_text() == gen.render(), "run: python deploy/kubernetes/generate.py"


def test_prometheusrule_carries_every_group_of_the_rules_file_with_job_url_at_the_external_url() -> None:
    rule = yaml.safe_load((KUBERNETES / "rules" / "prometheusrule.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    external_url = yaml.safe_load((KUBERNETES / "mixin.yml").read_text())["external_url"]
    assert rule["spec"]["groups"] == job_urls_replaced(
        yaml.safe_load(RULES.read_text())["groups"], external_url
    )


def exporter_container(directory: str) -> dict[str, Any]:
    (workload,) = of_kind(manifests(directory), "Deployment") + of_kind(manifests(directory), "StatefulSet")
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if "asyncjob" in c["image"]]
    return container


@pytest.mark.parametrize("directory", ["sidecar", "central", "ha"])
def test_exporters_in_kubernetes_link_where_the_alerts_link(directory: str) -> None:
    container = exporter_container(directory)
    words = shlex.split(" ".join(container.get("args", [])))
    external_url = yaml.safe_load((KUBERNETES / "mixin.yml").read_text())["external_url"]
    assert f"--web.external-url={external_url}" in words
    # The port-forward the address stands for, documented where people read it.
    port = external_url.rpartition(":")[2]
    assert "kubectl port-forward" in (KUBERNETES / "README.md").read_text()
    assert port == str(container["ports"][0]["containerPort"])


@pytest.mark.parametrize("directory", ["sidecar", "central", "ha"])
def test_exporter_containers_are_locked_down_and_pinned(directory: str) -> None:
    docs = manifests(directory)
    workloads = of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
    assert len(workloads) == 1
    pod = workloads[0]["spec"]["template"]["spec"]
    containers = [c for c in pod["containers"] if "asyncjob-exporter" in c["image"]]
    assert len(containers) == 1
    c = containers[0]
    assert re.search(r":\d+\.\d+\.\d+$", c["image"]), c["image"]
    security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10110
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert [p["containerPort"] for p in c["ports"]] == [10110]
    assert all(len(p["name"]) <= 15 for p in c["ports"]), "port names are at most 15 characters"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    state_file = set() if directory == "ha" else {"/var/lib/asyncjob-exporter"}  # ha: in PostgreSQL
    assert {"/etc/asyncjob-exporter", "/run/secrets", *state_file} <= set(mounts)
    configmaps = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert configmaps[mounts["/etc/asyncjob-exporter"]] in {
        d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")
    }


@pytest.mark.parametrize("directory", ["sidecar", "central", "ha"])
def test_monitors_scrape_the_exporter_port_as_an_asyncjob_job(directory: str) -> None:
    docs = manifests(directory)
    pod = (of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"))[0]["spec"]["template"]
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    monitors = of_kind(docs, "ServiceMonitor") + of_kind(docs, "PodMonitor")
    assert len(monitors) == 1
    monitor = monitors[0]
    endpoints = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    if monitor["kind"] == "ServiceMonitor":
        (service,) = [
            s for s in of_kind(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert ports[endpoints[0]["port"]]["targetPort"] in port_names
    else:
        assert selector.items() <= pod["metadata"]["labels"].items()
        assert endpoints[0]["port"] in port_names
    jobs = [r["replacement"] for r in endpoints[0]["relabelings"] if r.get("targetLabel") == "job"]
    assert len(jobs) == 1 and alert_job_selector().match(jobs[0]), jobs


def statefulset() -> dict[str, Any]:
    (sts,) = of_kind(manifests("central"), "StatefulSet")
    return sts


def test_statefulset_has_as_many_shards_as_replicas_and_a_headless_service() -> None:
    sts = statefulset()
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["TOTAL_SHARDS"]) == sts["spec"]["replicas"]
    services = {s["metadata"]["name"]: s for s in of_kind(manifests("central"), "Service")}
    assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"


def test_each_replica_takes_its_shard_from_its_pod_ordinal(tmp_path: Path) -> None:
    container = statefulset()["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    # A stand-in for the CLI that prints the arguments it was given.
    fake = tmp_path / "asyncjob-exporter"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    for ordinal in range(int(env["TOTAL_SHARDS"])):
        result = subprocess.run(
            [*container["command"], *container["args"]],
            env={**env, "PATH": f"{tmp_path}:/usr/bin:/bin", "HOSTNAME": f"asyncjob-exporter-{ordinal}"},
            capture_output=True,
            text=True,
            check=True,
        )
        args = result.stdout.split("\n")
        assert f"--shard={ordinal}" in args, args
        assert f"--total-shards={env['TOTAL_SHARDS']}" in args, args


def ha_deployment() -> dict[str, Any]:
    (deployment,) = of_kind(manifests("ha"), "Deployment")
    return deployment


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_ha_runs_three_replicas_of_which_a_disruption_leaves_two_and_no_state_volume() -> None:
    docs = manifests("ha")
    deployment = ha_deployment()
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 3 and pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A rollout starts a new replica before it stops an old one.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = deployment["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v or "emptyDir" in v for v in pod["volumes"])
    assert "volumeClaimTemplates" not in deployment["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # No static shards: the replicas split the work by leases.
    assert not any(a.startswith(("--shard", "--total-shards")) for a in container["args"])
    # The config has no state_file (exclusive with state_url); one Service fronts every replica.
    (configmap,) = of_kind(docs, "ConfigMap")
    assert "state_file" not in yaml.safe_load(configmap["data"]["config.yml"])
    (service,) = of_kind(docs, "Service")
    assert (
        service["spec"].get("clusterIP") != "None" and service["spec"]["selector"].items() <= labels.items()
    )


def test_ha_takes_the_state_url_from_a_secret_and_the_password_from_a_secret_file() -> None:
    pod = ha_deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert env["ASYNCJOB_STATE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "asyncjob-exporter-state",
        "key": "url",
    }
    password_file = Path(env["ASYNCJOB_STATE_PASSWORD_FILE"]["value"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (volume,) = [v for v in pod["volumes"] if mounts.get(v["name"]) == str(password_file.parent)]
    items = [
        (source["secret"]["name"], item["key"], item["path"])
        for source in volume["projected"]["sources"]
        for item in source["secret"].get("items", [])
    ]
    assert ("asyncjob-exporter-state", "password", password_file.name) in items


def test_the_state_copy_job_reads_a_central_volume_and_reaches_the_database_as_the_replicas_do() -> None:
    (job,) = yaml.safe_load_all((KUBERNETES / "ha" / "state-copy-job.yaml").read_text())
    assert (
        job["kind"] == "Job"
        and "state-copy-job.yaml" not in (KUBERNETES / "ha" / "kustomization.yaml").read_text()
    )
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parser().parse_args(container["args"])
    assert (args.command, args.state_command) == ("state", "copy")
    # The volume of the first shard of ../central, mounted where its state_file was.
    (sts,) = of_kind(manifests("central"), "StatefulSet")
    claim = f"{sts['spec']['volumeClaimTemplates'][0]['metadata']['name']}-{sts['metadata']['name']}-0"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    state_file = yaml.safe_load(of_kind(manifests("central"), "ConfigMap")[0]["data"]["config.yml"])[
        "state_file"
    ]
    assert args.copy_from == state_file
    assert volumes[mounts[str(Path(state_file).parent)]]["persistentVolumeClaim"]["claimName"] == claim
    # --to and the password file from the replicas' own variables and Secret.
    (replica,) = ha_deployment()["spec"]["template"]["spec"]["containers"]
    env, replica_env = env_of(container), env_of(replica)
    for name in ("ASYNCJOB_STATE_URL", "ASYNCJOB_STATE_PASSWORD_FILE"):
        assert env[name] == replica_env[name], name
    password = Path(env["ASYNCJOB_STATE_PASSWORD_FILE"]["value"])
    (source,) = volumes[mounts[str(password.parent)]]["projected"]["sources"]
    assert source["secret"]["name"] == "asyncjob-exporter-state"
    assert source["secret"]["items"] == [{"key": "password", "path": password.name}]


@pytest.mark.parametrize("directory", ["ha", "ha-cloudnativepg"])
def test_each_env_reference_names_a_variable_set_before_it(directory: str) -> None:
    """Kubernetes expands $(VAR) only from variables listed earlier: a later one stays literal."""
    containers = ha_deployment()["spec"]["template"]["spec"]["containers"]
    container = containers[0] if directory == "ha" else cloudnativepg_container()
    seen: set[str] = set()
    for e in container["env"]:
        for name in re.findall(r"\$\((\w+)\)", e.get("value", "")):
            assert name in seen, f"{e['name']} uses $({name}) before it is set"
        seen.add(e["name"])


def cloudnativepg_container() -> dict[str, Any]:
    """The exporter container of ha-cloudnativepg: ../ha's, with the patch's env and volume."""
    directory = KUBERNETES / "ha-cloudnativepg"
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == "../ha"
    (patch_file,) = [p["path"] for p in kustomization["patches"]]
    patch = yaml.safe_load((directory / patch_file).read_text())
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", ha_deployment()["metadata"]["name"])
    (base,) = ha_deployment()["spec"]["template"]["spec"]["containers"]
    (patched,) = patch["spec"]["template"]["spec"]["containers"]
    assert patched["name"] == base["name"]
    env = env_of(base)
    for e in patched["env"]:  # as a strategic merge: by name, in the base's order
        merged = {**env.get(e["name"], {}), **e}
        env[e["name"]] = {k: v for k, v in merged.items() if v is not None}
    return {**base, "env": list(env.values())}


def test_cloudnativepg_replicas_reach_the_clusters_primary_as_its_owner_over_checked_tls() -> None:
    from urllib.parse import parse_qs, urlsplit

    from exporter.cluster.state_copy import checked_url

    directory = KUBERNETES / "ha-cloudnativepg"
    (cluster,) = [d for d in yaml.safe_load_all((directory / "cluster.yaml").read_text()) if d]
    assert (cluster["apiVersion"], cluster["kind"]) == ("postgresql.cnpg.io/v1", "Cluster")
    name, initdb = cluster["metadata"]["name"], cluster["spec"]["bootstrap"]["initdb"]
    # A commit waits for a standby: the primary's failover loses nothing acknowledged.
    assert cluster["spec"]["postgresql"]["synchronous"]["dataDurability"] == "required"
    url = env_of(cloudnativepg_container())["ASYNCJOB_STATE_URL"]
    assert "valueFrom" not in url
    parts = urlsplit(checked_url(url["value"]))  # no password in it
    assert (parts.username, parts.hostname, parts.path) == (
        initdb["owner"],
        f"{name}-rw",
        f"/{initdb['database']}",
    )
    query = parse_qs(parts.query)
    assert query["sslmode"] == ["verify-full"]
    patch = yaml.safe_load((directory / "deployment-patch.yaml").read_text())
    (volume,) = patch["spec"]["template"]["spec"]["volumes"]
    files = {
        item["path"]: (source["secret"]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for item in source["secret"].get("items", [])
    }
    # The password and the CA are the ones the operator generates for this cluster.
    assert files["state_password"] == (f"{name}-app", "password")
    assert files[Path(query["sslrootcert"][0]).name] == (f"{name}-ca", "ca.crt")
    # The patch's list of sources replaces the base's whole: it must keep the providers' secrets.
    (base,) = [
        v for v in ha_deployment()["spec"]["template"]["spec"]["volumes"] if v["name"] == volume["name"]
    ]

    def secrets(v: dict[str, Any]) -> set[str]:
        return {source["secret"]["name"] for source in v["projected"]["sources"]}

    assert secrets(volume) - {f"{name}-app", f"{name}-ca"} == secrets(base) - {"asyncjob-exporter-state"}


@pytest.mark.parametrize("directory", ["sidecar", "central", "ha", "ha-cloudnativepg"])
def test_kustomization_builds(directory: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifests are still checked as YAML above")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout) if d)
    assert "PrometheusRule" in kinds and "ConfigMap" in kinds


# --- the README's first screen ------------------------------------------------------------

README = REPO / "README.md"


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_the_readme_opens_with_make_demo_and_make_test() -> None:
    text = README.read_text()
    first = readme_blocks("sh")[0]
    assert text.index(first) < 200
    assert [line.split()[:2] for line in first.splitlines()[:2]] == [["make", "demo"], ["make", "test"]]


def test_the_readmes_scrape_config_names_a_job_the_shipped_rules_select() -> None:
    (scrape,) = [yaml.safe_load(b) for b in readme_blocks("yaml") if "scrape_configs:" in b]
    (job,) = scrape["scrape_configs"]
    assert alert_job_selector().match(job["job_name"]), job["job_name"]
    assert job["static_configs"][0]["targets"] == ["localhost:10110"]


def test_the_readmes_container_line_builds_the_image_and_runs_a_demo_that_docker_can_publish() -> None:
    text = README.read_text()
    assert "`docker build -t asyncjob-exporter .`" in text
    (run,) = re.findall(r"`docker run --rm -p 10110:10110 asyncjob-exporter ([^`]*)`", text)
    args = parser().parse_args(shlex.split(run))
    assert (args.command, args.listen) == ("demo", ":10110")  # 127.0.0.1 in a container opens nothing


@pytest.mark.e2e
def test_what_the_readme_says_make_demo_prints_is_what_the_demo_prints(tmp_path: Path) -> None:
    from tests.harness import Proc, start_cli

    (printed,) = [b for b in readme_blocks("text") if "demo is running" in b]
    port = free_port()
    log = tmp_path / "demo.log"
    proc = Proc(
        start_cli(["demo", f"--web.listen-address=127.0.0.1:{port}", "--simulator.trickle=0"], log), log, ""
    )
    try:
        wait_for(lambda: "simulator:" in proc.output(), what="the demo's links")
    finally:
        proc.stop()

    def label(line: str) -> str:
        found = re.match(r"\s*(.+?):\s+http", line)
        return found.group(1) if found else ""

    shown = {label(line): line for line in proc.output().splitlines() if label(line)}
    for line in printed.splitlines()[1:]:
        url = re.search(r"http://\S+", line)
        assert url is not None and label(line) in shown, line
        expected, seen = url.group(0).replace(":10110", f":{port}"), shown[label(line)]
        if "<port>" in expected:
            assert re.search(re.escape(expected).replace("<port>", r"\d+"), seen), seen
        else:
            assert expected in seen, seen
    assert printed.splitlines()[0].replace("0.1.0", __version__) in proc.output()


# --- make demo: the runtime alone ----------------------------------------------------------


def make_dry_run(target: str, tmp_path: Path) -> list[str]:
    make = require_tool("make")
    venv_dir = tmp_path / "venv"  # absent: make shows every step from a clean clone
    r = subprocess.run(
        [make, "-n", target, f"VENV={venv_dir}"], capture_output=True, text=True, cwd=REPO, check=True
    )
    return [line for line in r.stdout.splitlines() if "pip install" in line]


def test_make_demo_installs_the_exporter_without_the_test_toolchain(tmp_path: Path) -> None:
    installs = make_dry_run("demo", tmp_path)
    assert len(installs) == 1 and installs[0].endswith(" -e .") and "[test]" not in installs[0]


def test_make_test_still_installs_the_test_toolchain(tmp_path: Path) -> None:
    installs = make_dry_run("test", tmp_path)
    assert any(line.endswith("-e '.[test]'") for line in installs), installs


# --- the wheel -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_built_wheel_installs_and_its_console_script_runs(tmp_path: Path) -> None:
    # Build from a copy of exactly what the Dockerfile copies, so the repository is not touched.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "exporter", src / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and "Could not find a version that satisfies" in build.stdout + build.stderr:
        # pip builds in an isolated environment that needs the build backend from an index.
        message = "building the wheel needs setuptools from a package index, which is unreachable"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("asyncjob_exporter-*.whl")
    assert wheel.name.startswith(f"asyncjob_exporter-{__version__}-")

    # A fresh venv (its pip comes from ensurepip, offline) installs the wheel alone; the
    # dependencies come from the test environment's site-packages through a .pth line, which
    # puts them after the venv's own packages and does not run their .pth files, so the
    # checkout's editable install stays out.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = sorted({p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()})
    (site / "test-dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    cli = env_dir / "bin" / "asyncjob-exporter"
    assert cli.exists(), "the wheel declares no asyncjob-exporter console script"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCJOB_", "PYTHON"))}
    where = subprocess.run(
        [str(python), "-c", "import exporter; print(exporter.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), "the installed package, not the checkout"

    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"asyncjob-exporter {__version__}"

    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [str(cli), "demo", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    code: int | None
    try:
        text = wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text,
            timeout=30,
            what="the installed demo serving /metrics",
        )
        build_info = [
            s
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "asyncjob_exporter_build_info"
        ]
        assert [(s.labels, s.value) for s in build_info] == [({"version": __version__}, 1.0)]
        # The job pages' templates ship in the wheel.
        assert "<h1>Targets</h1>" in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            code = demo.wait(15)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(5)
            code = None
    assert code == 0, f"exit {code} on SIGTERM:\n{log.read_text(errors='replace')}"

    # So does the mixin: the installed command writes rules, their tests and dashboards.
    mixin = subprocess.run(
        [str(cli), "mixin", "--out", str(tmp_path / "mixin")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert mixin.returncode == 0, mixin.stderr
    for relative in (
        "alerts/asyncjob.rules.yml",
        "alerts/tests/generated.yml",
        "dashboards/asyncjob-job.json",
    ):
        assert (tmp_path / "mixin" / relative).is_file(), relative
