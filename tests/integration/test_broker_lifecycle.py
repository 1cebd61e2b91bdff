"""The project's broker script: it starts what it says, and leaves nothing running behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.devtools.cluster import Cluster, broker_pids
from streams.devtools.config import free_nodes
from streams.kafka.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SETTINGS = Settings.from_env()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name
)
def test_killing_the_test_run_leaves_no_broker_running(sig: signal.Signals, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "STEPCARE_TEST_BOOTSTRAP"}
    env["STEPCARE_KILL_REPORT"] = str(report)
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "inner"), "tests/integration/kill_target.py"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: report.exists() or inner.poll() is not None, 120, "the inner broker")
        assert report.exists(), inner.communicate()[0].decode()[-2000:]
        held = json.loads(report.read_text())
        run_dir = Path(held["run_dir"])
        assert len(held["pids"]) == 1
        assert broker_pids(run_dir) == held["pids"]

        inner.send_signal(sig)
        inner.wait(timeout=60)

        wait_until(lambda: broker_pids(run_dir) == [], 30, "the broker JVM to exit")
    finally:
        if inner.poll() is None:
            inner.kill()


def test_three_node_cluster_keeps_accepting_writes_with_one_node_down(tmp_path: Path) -> None:
    cluster = Cluster(
        tmp_path / "kafka",
        SETTINGS.kafka_version,
        free_nodes(3),
        cache_dir=SETTINGS.cache_dir,
        die_with_parent=True,
    )
    cluster.start()
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
        assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
        admin.create_topics([NewTopic("replicated", 1, 3)])["replicated"].result(30)
        producer = Producer({"bootstrap.servers": cluster.bootstrap_servers, "acks": "all"})

        def write(value: bytes) -> None:
            producer.produce("replicated", value=value)
            assert producer.flush(60) == 0

        write(b"three in sync")
        cluster.stop_node(3)
        assert len(cluster.running_pids()) == 2
        write(b"two in sync: min.insync.replicas=2 still met")
        cluster.start_node(3)
        assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
        topic = admin.list_topics("replicated", timeout=10).topics["replicated"]
        assert sorted(topic.partitions[0].replicas) == [1, 2, 3]
    finally:
        cluster.stop()
    assert broker_pids(cluster.run_dir) == []


def stepcare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], cwd=REPO, capture_output=True, text=True
    )


def test_broker_command_starts_reports_and_stops(tmp_path: Path) -> None:
    run_dir = tmp_path / "kafka"
    port = str(free_nodes(1)[0].client_port)

    started = stepcare("broker", "start", "--port", port, "--run-dir", str(run_dir))
    assert started.returncode == 0, started.stderr
    try:
        assert started.stdout.strip() == f"127.0.0.1:{port}"
        status = stepcare("broker", "status", "--run-dir", str(run_dir))
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout

        again = stepcare("broker", "start", "--port", port, "--run-dir", str(run_dir))
        assert again.returncode == 2
        assert again.stderr.count("\n") == 1 and "already running" in again.stderr
    finally:
        stopped = stepcare("broker", "stop", "--run-dir", str(run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert broker_pids(run_dir) == []
    assert stepcare("broker", "status", "--run-dir", str(run_dir)).returncode == 1


def test_broker_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = stepcare("broker", "start", "--port", str(port), "--run-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == (
        f"stepcare: port {port} on 127.0.0.1 is in use (another broker?): "
        "choose others with --port or STEPCARE_BROKER_PORT\n"
    )
