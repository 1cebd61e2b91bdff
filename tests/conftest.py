"""Shared fixtures: a real Kafka broker per supported line, started once per test session.

``kafka_bootstrap`` is the default line's broker (``STEPCARE_KAFKA_VERSION``);
``line_bootstrap`` is parametrized over every supported line, for the smoke tests. Set
``STEPCARE_TEST_BOOTSTRAP=host:port`` to run everything against a broker you started yourself
(then the smoke tests run once, on that broker).

``schema_registry_url`` is the Confluent-compatible URL of a real schema registry (Apicurio
Registry, ``streams.devtools.registry``), started once per session on a free loopback port, and
only if a test asks for it. Set ``STEPCARE_TEST_REGISTRY_URL`` (e.g.
``http://127.0.0.1:8081/apis/ccompat/v7``) to use one you started yourself.

``fhir_validator`` is HAPI FHIR's validator (``streams.devtools.fhir_validator``), fetched and
compiled once; the warnings it gives in the session are listed in the terminal summary.

Brokers and the registry are stopped in the session teardown, which also runs when the run is
interrupted (Ctrl-C, or SIGTERM, turned into KeyboardInterrupt below); if the run is SIGKILLed,
the kernel kills them with it (``die_with_parent``).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.devtools.cluster import Cluster
from streams.devtools.config import free_nodes
from streams.devtools.fhir_validator import FhirValidator
from streams.devtools.registry import Registry, free_port
from streams.kafka.settings import KAFKA_VERSIONS, Settings

EXTERNAL = os.environ.get("STEPCARE_TEST_BOOTSTRAP")
EXTERNAL_REGISTRY = os.environ.get("STEPCARE_TEST_REGISTRY_URL")


def pytest_configure(config: pytest.Config) -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "line_bootstrap" in metafunc.fixturenames:
        versions = ["external"] if EXTERNAL else list(KAFKA_VERSIONS)
        metafunc.parametrize("line_bootstrap", versions, indirect=True, scope="session")


class Brokers:
    """Starts one single-node broker per Kafka version on demand; stops them all at the end."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.settings = Settings.from_env()
        self.tmp_path_factory = tmp_path_factory
        self.clusters: dict[str, Cluster] = {}

    def bootstrap(self, version: str) -> str:
        if EXTERNAL:
            return EXTERNAL
        if version not in self.clusters:
            cluster = Cluster(
                self.tmp_path_factory.mktemp(f"kafka-{version}"),
                version,
                free_nodes(1),
                cache_dir=self.settings.cache_dir,
                heap_mb=self.settings.broker_heap_mb,
                die_with_parent=True,
                report=lambda line: print(f"[broker] {line}", file=sys.__stderr__, flush=True),
            )
            self.clusters[version] = cluster
            cluster.start()
        return self.clusters[version].bootstrap_servers

    def stop_all(self) -> None:
        for cluster in self.clusters.values():
            cluster.stop()


@pytest.fixture(scope="session")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    registry = Brokers(tmp_path_factory)
    try:
        yield registry
    finally:
        registry.stop_all()


@pytest.fixture(scope="session")
def kafka_bootstrap(brokers: Brokers) -> str:
    """Bootstrap servers of the default Kafka line's broker."""
    return brokers.bootstrap(brokers.settings.kafka_version)


@pytest.fixture(scope="session")
def line_bootstrap(request: pytest.FixtureRequest, brokers: Brokers) -> str:
    """Bootstrap servers of a broker of one supported Kafka line (parametrized)."""
    return brokers.bootstrap(request.param)


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Confluent-compatible URL (``.../apis/ccompat/v7``) of a real schema registry.

    Its storage is shared by the whole session: tests use subjects of their own (a topic from
    ``topic_name``, say)."""
    if EXTERNAL_REGISTRY:
        yield EXTERNAL_REGISTRY
        return

    def report(line: str) -> None:
        print(f"[registry] {line}", file=sys.__stderr__, flush=True)
        REGISTRY_LINES.append(line)  # shown again in the summary (pytest captures the above)

    registry = Registry(
        tmp_path_factory.mktemp("registry"),
        free_port(),
        cache_dir=Settings.from_env().cache_dir,
        die_with_parent=True,
        report=report,
    )
    try:
        yield registry.start()
    finally:
        registry.report(f"RSS at the end of the session: {_rss_mb(registry.pid)}")
        registry.stop()


REGISTRY_LINES: list[str] = []  # the session registry's start time and RSS, for the CI log


def _rss_mb(pid: int | None) -> str:
    """A process's resident memory (VmRSS), for the CI log: what the registry costs."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return "unknown"
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return f"{kb / 1024:.0f} MB"


SESSION_VALIDATOR: list[FhirValidator] = []


@pytest.fixture(scope="session")
def fhir_validator() -> FhirValidator:
    """HAPI FHIR's validator: ``fhir_validator.validate([resource or path, ...])`` -> one
    ``Result`` (``.errors``, ``.warnings``) per item. One JVM per call: pass many at once."""
    validator = FhirValidator(Settings.from_env().cache_dir)
    validator.prepare()
    SESSION_VALIDATOR.append(validator)
    return validator


def _fhir_summary(terminalreporter: Any) -> None:
    for validator in SESSION_VALIDATOR:
        terminalreporter.section(f"FHIR validator (HAPI FHIR {validator.version})")
        terminalreporter.write_line(
            f"{validator.validated} resources validated in {validator.seconds:.1f} s (JVM); "
            f"{len(validator.warnings)} distinct warnings"
        )
        for message, count in sorted(validator.warnings.items()):
            terminalreporter.write_line(f"{count:4d} x {message}")


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses (safe on a shared or reused broker)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60]
    return f"test.{readable}.{uuid.uuid4().hex[:8]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


# -- the hostile-input suite (make hostile) -----------------------------------------------------
# A test marked ``@pytest.mark.attack("what the attacker does", "what stepcare does")`` is one
# row of the attack table that ``make hostile`` (pytest -m attack) prints at the end of its run.


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    _fhir_summary(terminalreporter)
    if REGISTRY_LINES:
        terminalreporter.section("schema registry")
        for line in REGISTRY_LINES:
            terminalreporter.write_line(line)
    rows = []
    for status in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(status, []):
            if getattr(report, "when", "call") not in ("call", "setup") or not hasattr(
                report, "attack"
            ):
                continue
            if status == "passed" and report.when != "call":
                continue
            attack, outcome = report.attack
            rows.append((attack, outcome, status.upper()))
    if not rows:
        return
    rows.sort()
    width = min(70, max(len(row[0]) for row in rows))
    terminalreporter.section(f"attacks: {len(rows)}")
    terminalreporter.write_line(f"{'attack':<{width}}  {'result':<7}  outcome")
    for attack, outcome, status in rows:
        terminalreporter.write_line(f"{attack:<{width}}  {status:<7}  {outcome}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    marker = item.get_closest_marker("attack")
    if marker is not None:
        attack = marker.args[0] if marker.args else item.name
        expected = marker.args[1] if len(marker.args) > 1 else ""
        if hasattr(item, "callspec"):
            attack = f"{attack} [{item.callspec.id}]"
        outcome.get_result().attack = (attack, expected)
