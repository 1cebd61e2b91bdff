"""The live bridges' metrics: counted where it happens (published once acknowledged, dead
letters by reason once the broker has them, ignored, MLLP ACKs by code), served on /metrics only,
and a metrics port in use stopping a bridge at once (one line, exit 2)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streams.interfaces.bridge_metrics import BridgeMetrics, MetricsPortError, MetricsServer
from tests.integration.test_bridges import FHIR_DATA, FakeProducer, run_bridge
from tests.unit.interfaces.test_mllp import KafkaError, body, msa
from tests.unit.interfaces.test_mllp import listener as listener  # the fixture

REPO = Path(__file__).resolve().parents[3]


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def outcomes(metrics: BridgeMetrics) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: value
        for labels, value in samples(metrics.registry, "stepcare_bridge_records_total").items()
    }


def reasons(metrics: BridgeMetrics) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value
        for labels, value in samples(metrics.registry, "stepcare_bridge_dead_letters_total").items()
    }


def test_a_live_bridge_counts_each_record_once_the_broker_has_its_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    complete = (FHIR_DATA / "qr-complete.json").read_bytes()
    amended = (FHIR_DATA / "qr-amended.json").read_bytes()
    status, _, bridge = run_bridge([complete, amended, None, b"[1]"], FakeProducer(), monkeypatch)
    assert status == 0
    assert outcomes(bridge.metrics) == {"published": 1, "ignored": 0, "dead_lettered": 3}
    assert reasons(bridge.metrics) == {"fhir-status-amended": 1, "not-json": 1, "fhir-invalid": 1}
    labels = samples(bridge.metrics.registry, "stepcare_bridge_records_total")
    assert {dict(k)["bridge"] for k in labels} == {"fhir-in"}


def test_records_the_broker_refused_are_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    complete = (FHIR_DATA / "qr-complete.json").read_bytes()
    status, _, bridge = run_bridge([complete, b"[1]"], FakeProducer(fail=True), monkeypatch)
    assert status != 0
    assert outcomes(bridge.metrics) == {"published": 0, "ignored": 0, "dead_lettered": 0}
    assert reasons(bridge.metrics) == {}


def test_mllp_in_counts_messages_by_outcome_and_acks_by_code(listener: object) -> None:
    server = listener()  # type: ignore[operator]
    with server.connect() as sock:
        for name in ["adt-a01.hl7", "adt-a08.hl7", "malformed-no-evn.hl7", "adt-a03.hl7"]:
            sock.sendall(b"\x0b" + body(name) + b"\x1c\r")
            msa(sock)
    assert server.stop() == 0
    metrics = server.bridge.metrics
    assert outcomes(metrics) == {"published": 2, "ignored": 1, "dead_lettered": 1}
    assert reasons(metrics) == {"hl7-malformed": 1}
    acks = samples(metrics.registry, "stepcare_mllp_acks_total")
    assert {dict(k)["code"]: v for k, v in acks.items()} == {"AA": 3, "AE": 1, "AR": 0}
    assert samples(metrics.registry, "stepcare_bridge_consumer_lag") == {}  # reads no topic


def test_mllp_in_answers_ar_and_counts_nothing_published_when_kafka_refuses(
    listener: object,
) -> None:
    server = listener(error=KafkaError("Local: Message timed out"))  # type: ignore[operator]
    with server.connect() as sock:
        for name in ["adt-a01.hl7", "malformed-no-evn.hl7"]:
            sock.sendall(b"\x0b" + body(name) + b"\x1c\r")
            assert msa(sock)[1] == "AR"
    assert server.stop() == 0
    metrics = server.bridge.metrics
    assert outcomes(metrics) == {"published": 0, "ignored": 0, "dead_lettered": 0}
    acks = samples(metrics.registry, "stepcare_mllp_acks_total")
    assert {dict(k)["code"]: v for k, v in acks.items()} == {"AA": 0, "AE": 0, "AR": 2}


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_only_metrics_is_served() -> None:
    metrics = BridgeMetrics("fhir-out", kafka_reading=True)
    metrics.handled("published")
    metrics.set_lag({0: 3, 1: 0})
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    try:
        port = server.address[1]
        status, text = get(port, "/metrics")
        assert status == 200
        assert b'stepcare_bridge_records_total{bridge="fhir-out",outcome="published"} 1.0' in text
        assert b'stepcare_bridge_consumer_lag{bridge="fhir-out",partition="0"} 3.0' in text
        assert b"stepcare_bridge_last_record_timestamp_seconds" in text
        for path in ("/", "/health", "/metrics/", "/table/patients"):
            assert get(port, path) == (404, b"")
    finally:
        server.close()


def test_a_metrics_port_in_use_is_refused(busy_port: int) -> None:
    with pytest.raises(MetricsPortError) as raised:
        MetricsServer(CollectorRegistry(), "127.0.0.1", busy_port)
    assert str(raised.value) == (
        f"cannot serve metrics on 127.0.0.1:{busy_port}: Address already in use "
        "(--metrics-port: another port, or 0 for none)"
    )


@pytest.mark.parametrize("bridge", ["fhir-in", "hl7-in", "fhir-out", "mllp-in"])
def test_a_bridge_whose_metrics_port_is_busy_stops_before_kafka(
    busy_port: int, bridge: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPCARE_")}
    env |= {"PYTHONPATH": str(REPO), "STEPCARE_PSEUDONYM_SECRET": "s" * 32}
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "bridge", bridge, "--metrics-port", str(busy_port),
         "--bootstrap-servers", "127.0.0.1:1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"stepcare: cannot serve metrics on 127.0.0.1:{busy_port}: Address already in use "
        "(--metrics-port: another port, or 0 for none)\n"
    )
