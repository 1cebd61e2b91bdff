"""`docker-compose.yml`, `Dockerfile` and `.dockerignore`, checked without a Docker engine.

No engine runs on the development and CI machines, so nothing here builds or starts a container.
Instead: Compose itself validates the file (`docker-compose config -q`, Compose v1 parses locally;
a negative test proves that check can fail), and the asserts below check what Compose cannot:
images are pinned, every bind-mounted path exists in the repository, the worker's environment
holds only real `STEPCARE_*` settings with values `Settings` accepts, and the services agree with
each other (the broker listener the worker uses, the port Prometheus scrapes, the dashboards path
Grafana's provider reads, the paths the Dockerfile copies and what the wheel needs, the schema
registry line `stepcare registry start` runs).
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from streams.devtools.registry import APICURIO_VERSION, DEFAULT_PORT
from streams.formats import avro
from streams.kafka.settings import KAFKA_VERSIONS, Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

SETTING_NAMES = {name for name, _default, _doc in Settings.describe()}
DEFAULTS = Settings()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# -- Compose's own validation -----------------------------------------------------------------


def compose_command() -> list[str] | None:
    """`docker-compose` (v1), else the `docker compose` plugin (v2), else None."""
    if v1 := shutil.which("docker-compose"):
        return [v1]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


COMPOSE = compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="neither docker-compose (apt-get install docker-compose) nor the docker compose "
    "plugin is installed; the YAML asserts below still run",
)


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [*COMPOSE, "-f", str(path), "config", "-q"],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_compose
def test_compose_file_is_valid() -> None:
    result = compose_config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", "config -q prints nothing when the file is valid"


def _unknown_service_key(doc: dict[str, Any]) -> None:
    doc["services"]["worker"]["enviroment"] = {"STEPCARE_PARTITIONS": "4"}


def _unknown_top_level_key(doc: dict[str, Any]) -> None:
    doc["network"] = {"default": {}}


def _bad_depends_on_condition(doc: dict[str, Any]) -> None:
    doc["services"]["worker"]["depends_on"] = {"kafka": {"condition": "service_happy"}}


def _ports_not_a_list(doc: dict[str, Any]) -> None:
    doc["services"]["worker"]["ports"] = {"6066": 6066}


@needs_compose
@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        (_unknown_service_key, "enviroment"),
        (_unknown_top_level_key, "network"),
        (_bad_depends_on_condition, "service_happy"),
        (_ports_not_a_list, "ports"),
    ],
)
def test_compose_validation_can_fail(breakage: Any, named: str, tmp_path: Path) -> None:
    """The same file with one mistake is rejected: `config -q` really validates."""
    doc = copy.deepcopy(yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8")))
    breakage(doc)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    result = compose_config(broken)
    assert result.returncode != 0, f"{breakage.__name__} was accepted"
    assert named in result.stderr, f"the message names the mistake: {result.stderr}"


# -- the compose file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def image_tag(image: str) -> str | None:
    """The tag of ``repo[:port]/name[:tag][@digest]``, or None."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from the short ``"host:container"`` syntax."""
    ports = {}
    for entry in service.get("ports", []):
        *host, container = str(entry).split(":")  # [ip:]host:container
        ports[int(container)] = int(host[-1] if host else container)
    return ports


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath, bool]]:
    """(host path, container path, read-only) of each bind mount (short syntax)."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *mode = str(entry).split(":")
        if source.startswith((".", "/")):
            mounts.append(((REPO / source).resolve(), PurePosixPath(target), mode == ["ro"]))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where ``container_path`` comes from in the repository, through the bind mounts."""
    path = PurePosixPath(container_path)
    for source, target, _ro in bind_mounts(service):
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not under a bind mount")


def test_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "kafka", "schema-registry", "worker", "prometheus", "alertmanager", "grafana"
    }  # fmt: skip


def test_no_compose_v2_only_keys(compose: dict[str, Any]) -> None:
    """Compose v1.29 (the Debian package CI uses) rejects these."""
    assert not {"name", "include", "develop"} & set(compose)


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image (a built service names its image too)"
        tag = image_tag(image)
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest" and not tag.startswith("latest-"), f"{name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image}: a version tag, not a moving name"


def test_broker_image_is_a_supported_kafka_line(services: dict[str, dict[str, Any]]) -> None:
    image = services["kafka"]["image"]
    assert image.startswith("apache/kafka:")
    assert image_tag(image) in KAFKA_VERSIONS, f"{image}: the suite runs on {KAFKA_VERSIONS}"


def test_schema_registry_is_the_one_the_project_runs(
    services: dict[str, dict[str, Any]],
) -> None:
    """The line `stepcare registry start` runs, on its port, BACKWARD on every subject."""
    registry = services["schema-registry"]
    assert registry["image"] == f"apicurio/apicurio-registry:{APICURIO_VERSION}"
    assert published_ports(registry) == {8080: DEFAULT_PORT}, "the container listens on 8080"
    env = environment(registry)
    assert env["APICURIO_RULES_GLOBAL_COMPATIBILITY"] == "BACKWARD"
    assert env["QUARKUS_HTTP_ACCESS_LOG_ENABLED"] == "false"


def test_worker_is_built_from_the_repository(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    build = worker["build"]
    context = REPO / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == DOCKERFILE
    assert image_tag(worker["image"]) == PYPROJECT["project"]["version"]


def test_bind_mounted_paths_exist(services: dict[str, dict[str, Any]]) -> None:
    mounts = [(name, m) for name, service in services.items() for m in bind_mounts(service)]
    assert mounts, "Prometheus and Grafana mount their configuration from deploy/"
    for name, (source, target, read_only) in mounts:
        assert source.exists(), f"{name}: {source.relative_to(REPO)} (mounted at {target})"
        assert REPO in source.parents, f"{name}: {source} is outside the repository"
        assert read_only, f"{name}: {target} is configuration; mount it read-only"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        str(entry).split(":")[0]
        for service in compose["services"].values()
        for entry in service.get("volumes", [])
        if not str(entry).startswith((".", "/"))
    }
    assert used == declared


def test_worker_environment_is_real_settings(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["worker"])
    assert set(env) <= SETTING_NAMES, f"not settings: {sorted(set(env) - SETTING_NAMES)}"
    settings = Settings.from_env(env)  # the values are accepted, too
    assert settings.web_host == "0.0.0.0", "reachable from Prometheus, not only loopback"
    assert settings.partitions == 4


def test_worker_data_dir_is_a_volume(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    data_dir = str(Settings.from_env(environment(worker)).data_dir)
    targets = {str(entry).split(":")[1] for entry in worker.get("volumes", [])}
    assert data_dir in targets
    assert dockerfile_env()["STEPCARE_DATA_DIR"] == data_dir


def test_worker_port_is_the_web_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    port = Settings.from_env(environment(worker)).web_port
    assert port == DEFAULTS.web_port
    assert published_ports(worker) == {port: port}


def test_worker_waits_for_a_healthy_broker(services: dict[str, dict[str, Any]]) -> None:
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "schema-registry": {"condition": "service_started"},
    }
    assert services["kafka"]["healthcheck"]["test"]


def test_the_worker_reads_registry_framed_input_through_the_compose_registry(
    services: dict[str, dict[str, Any]],
) -> None:
    environment = services["worker"]["environment"]
    registry_port = services["schema-registry"]["ports"][0].rsplit(":", 1)[1]  # in the network
    assert environment["STEPCARE_SCHEMA_REGISTRY_URL"] == (
        f"http://schema-registry:{registry_port}/apis/ccompat/v7"
    )
    assert environment["STEPCARE_WIRE_FORMAT"] == "single-object"


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        name, address = item.strip().split("://")
        host, port = address.rsplit(":", 1)
        result[name] = (host, int(port))
    return result


def test_worker_bootstrap_is_an_advertised_listener(services: dict[str, dict[str, Any]]) -> None:
    kafka_env = environment(services["kafka"])
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka_env["KAFKA_LISTENERS"])
    bootstrap = Settings.from_env(environment(services["worker"])).bootstrap_servers
    matches = [name for name, (host, port) in advertised.items() if f"{host}:{port}" == bootstrap]
    assert matches, f"{bootstrap} is not among {kafka_env['KAFKA_ADVERTISED_LISTENERS']}"
    (name,) = matches
    host, port = advertised[name]
    assert host in {"kafka", services["kafka"].get("hostname")}, "the broker's service name"
    assert bound[name][1] == port, f"listener {name} binds {bound[name]}, advertises {port}"
    assert name == kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]


def test_host_listener_is_published(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    kafka_env = environment(kafka)
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    host_side = [(h, p) for h, p in advertised.values() if h in {"localhost", "127.0.0.1"}]
    assert host_side == [("localhost", 9092)]
    assert published_ports(kafka) == {9092: 9092}


def test_kraft_single_node(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node_id, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert node_id == env["KAFKA_NODE_ID"]
    controller = listeners(env["KAFKA_LISTENERS"])[env["KAFKA_CONTROLLER_LISTENER_NAMES"]]
    assert voter == f"kafka:{controller[1]}"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",  # exactly_once needs it on one node
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    cluster_id = env["CLUSTER_ID"]  # a UUID in URL-safe base64, as `kafka-storage random-uuid`
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    volumes = {str(v).split(":")[1] for v in services["kafka"]["volumes"]}
    assert env["KAFKA_LOG_DIRS"] in volumes


def test_prometheus_reads_the_repository_config(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"])
    config = host_path(prometheus, flags["--config.file"])
    assert config == PROMETHEUS_DIR / "prometheus.yml"
    assert config.is_file(), "deploy/prometheus/prometheus.yml"
    assert published_ports(prometheus) == {9090: 9090}


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))


def test_prometheus_scrapes_the_worker(
    prometheus_config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    port = Settings.from_env(environment(services["worker"])).web_port
    scraped = [
        (job.get("metrics_path", "/metrics"), target)
        for job in prometheus_config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    ]
    assert ("/metrics", f"worker:{port}") in scraped, scraped


def test_prometheus_rule_files_are_mounted(
    prometheus_config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    prometheus = services["prometheus"]
    config_dir = PurePosixPath(
        dict(arg.split("=", 1) for arg in prometheus["command"])["--config.file"]
    ).parent
    for pattern in prometheus_config.get("rule_files", []):
        in_container = config_dir / pattern  # relative patterns are relative to the config file
        source = host_path(prometheus, str(in_container))
        assert list(source.parent.glob(source.name)), f"rule_files {pattern}: no file in {source}"


def test_prometheus_alerts_go_to_the_alertmanager_service(
    prometheus_config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    [manager] = prometheus_config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    alertmanager = services["alertmanager"]
    flags = dict(arg.split("=", 1) for arg in alertmanager["command"])
    assert host_path(alertmanager, flags["--config.file"]) == ALERTMANAGER_CONFIG
    assert flags["--storage.path"] == "/alertmanager"
    assert "alertmanager-data:/alertmanager" in alertmanager["volumes"]
    assert published_ports(alertmanager) == {9093: 9093}
    assert alertmanager["ports"] == ["127.0.0.1:9093:9093"]  # this host only
    assert "alertmanager" in services["prometheus"]["depends_on"]


def test_grafana_provisioning(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    env = environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert host_path(grafana, "/etc/grafana/provisioning") == GRAFANA_PROVISIONING
    assert published_ports(grafana) == {3000: 3000}

    providers = [
        provider
        for path in sorted((GRAFANA_PROVISIONING / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text(encoding="utf-8")).get("providers", [])
    ]
    assert providers, "deploy/grafana/provisioning/dashboards/ declares a dashboard provider"
    for provider in providers:
        folder = host_path(grafana, provider["options"]["path"])  # mounted from the repository
        assert folder.is_dir(), folder

    datasources = [
        source
        for path in sorted((GRAFANA_PROVISIONING / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text(encoding="utf-8")).get("datasources", [])
    ]
    urls = {s["url"] for s in datasources if s["type"] == "prometheus"}
    assert urls == {"http://prometheus:9090"}, "the prometheus service, on its port"


# -- the Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def instructions(keyword: str) -> list[str]:
    return [args for key, args in dockerfile_instructions() if key == keyword]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        for pair in args.split():
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def test_base_image_is_pinned_python_311() -> None:
    for base in instructions("FROM"):  # the wheel stage and the image
        image = base.split()[0]
        tag = image_tag(image)
        assert image.startswith("python:") and tag, base
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), f"{image}: pin a 3.11.x slim tag"


def test_runs_as_a_non_root_user() -> None:
    users = instructions("USER")
    assert users, "no USER: the worker would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    keys = [key for key, _ in dockerfile_instructions()]
    assert keys.index("USER") > max(i for i, key in enumerate(keys) if key == "RUN")


def test_exposes_the_web_port() -> None:
    exposed = {int(port.split("/")[0]) for args in instructions("EXPOSE") for port in args.split()}
    assert DEFAULTS.web_port in exposed


def test_healthcheck_probes_health() -> None:
    (check,) = instructions("HEALTHCHECK")
    assert "CMD" in check
    assert "http://127.0.0.1:" in check and "/health" in check
    assert "urllib.request" in check, "python's urllib: the slim image has no curl"


def test_environment_is_real_settings() -> None:
    env = {key: value for key, value in dockerfile_env().items() if key.startswith("STEPCARE_")}
    assert set(env) <= SETTING_NAMES, f"not settings: {sorted(set(env) - SETTING_NAMES)}"
    settings = Settings.from_env(env)
    assert settings.web_host == "0.0.0.0"
    assert str(settings.data_dir) in " ".join(instructions("VOLUME"))


def test_entrypoint_is_the_console_script() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    assert entrypoint == '["stepcare"]'
    assert "stepcare" in PYPROJECT["project"]["scripts"]
    assert instructions("CMD") == ['["worker"]']


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not from a stage)."""
    result = []
    for args in instructions("COPY"):
        if args.startswith("--from"):
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        result.append((parts[:-1], parts[-1]))
    return result


def test_copied_paths_exist_and_are_not_ignored() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for sources, _dest in copies():
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source.rstrip("/") not in ignored, f"COPY {source}, but .dockerignore drops it"
    for heavy in (".git", ".venv", ".cache", ".run"):
        assert heavy in ignored, f".dockerignore should exclude {heavy}"


def test_the_image_installs_the_wheel_with_its_schemas() -> None:
    """A first stage builds the wheel from the tree the schemas link points into; the image
    installs that wheel (package data included), never an editable tree."""
    assert Path(str(avro.SCHEMA_DIR)).resolve() == REPO / "schemas"
    (workdir, _) = instructions("WORKDIR")
    destinations = {
        source.rstrip("/"): PurePosixPath(workdir) / dest
        for sources, dest in copies()
        for source in sources
    }
    # streams/formats/schemas -> ../../schemas must resolve inside the build stage
    assert destinations["streams"] == PurePosixPath(workdir) / "streams"
    assert destinations["schemas"] == PurePosixPath(workdir) / "schemas"
    # pyproject names README.md as the readme: the build needs it
    assert destinations["README.md"].parent == destinations["pyproject.toml"].parent
    build, install = (run for run in instructions("RUN") if "pip " in run)
    assert re.search(r"pip wheel .*--no-deps .*\.$", build)
    assert re.search(r"pip install [^&]*\.whl", install)
    assert "-e" not in install.split() and "--editable" not in install
    (stage,) = (args for args in instructions("COPY") if args.startswith("--from"))
    assert stage.startswith("--from=wheel ")


@pytest.mark.attack(
    "docker compose up on a host with other interfaces",
    "every published port (broker, registry, worker, Prometheus, Alertmanager, Grafana) is bound"
    " to 127.0.0.1 only",
)
def test_every_published_port_is_bound_to_this_host_only(
    services: dict[str, dict[str, Any]],
) -> None:
    published = [str(p) for service in services.values() for p in service.get("ports", [])]
    assert published and all(entry.startswith("127.0.0.1:") for entry in published), published


def test_the_worker_has_time_to_stop_cleanly(services: dict[str, dict[str, Any]]) -> None:
    grace = services["worker"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) > 30  # README: stops within 30 s
