"""The worker's start after the broker lost its storage (issue 12, "Safe to deploy").

A broker restarted with fresh storage while the worker's data dir keeps its RocksDB tables: the
tables remember changelog offsets the new broker never had, and faust would stop the worker with
a ConsistencyError. The worker says so in one line, drops the stale tables and carries on: the
same events, published again to the new broker, give the same escalations again (stale tables
would have taken them for duplicates and said nothing).
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.devtools.cluster import Cluster
from streams.devtools.config import free_nodes
from streams.kafka.settings import Settings
from tests.integration.workers import REPO, Deployment, WorkerProcess

TICK = "2024-09-01T00:00:00Z"  # the --until of examples/three-patients.escalations.jsonl
STALE = "remember changelog records the broker does not have"


def _cluster(run_dir: Path, nodes: list) -> Cluster:
    settings = Settings.from_env()
    return Cluster(
        run_dir, settings.kafka_version, nodes, cache_dir=settings.cache_dir,
        heap_mb=settings.broker_heap_mb, die_with_parent=True,
        report=lambda line: print(f"[broker] {line}", file=sys.__stderr__, flush=True),
    )  # fmt: skip


@pytest.mark.attack(
    "restart the broker with fresh storage under a worker's data dir",
    "one line; stale tables dropped; the worker runs on and processes new events",
)
def test_a_worker_recovers_when_the_broker_lost_its_storage(tmp_path: Path) -> None:
    events = [orjson.loads(line) for line in (REPO / "examples/three-patients.jsonl").open()]
    expected = (REPO / "examples/three-patients.escalations.jsonl").read_text().splitlines()
    nodes = free_nodes(1)
    run_dir = tmp_path / "kafka"
    broker = _cluster(run_dir, nodes)
    bootstrap = broker.start()
    try:
        deployment = Deployment(bootstrap, "test.fresh-broker", tmp_path)
        worker = deployment.worker("worker")
        try:
            deployment.publish(events, until=TICK)
            assert Counter(deployment.escalations_read(expected=len(expected))) == Counter(expected)
        finally:
            assert worker.stop() == 0
        # On the same broker the tables are not stale: a restart keeps them.
        again = WorkerProcess(deployment.env, tmp_path / "worker", name="worker-same-broker")
        again.wait_ready()
        assert again.stop() == 0
        assert STALE not in again.log.read_text()
    finally:
        broker.stop()

    shutil.rmtree(run_dir)  # the broker's storage is gone; the worker's data dir is not
    assert list((tmp_path / "worker" / "v1" / "tables").glob("patients-*.db"))
    broker = _cluster(run_dir, nodes)  # same ports: the same bootstrap servers
    assert broker.start() == bootstrap
    try:
        # The same data dir; a log of its own (wait_ready reads it).
        worker = WorkerProcess(deployment.env, tmp_path / "worker", name="worker-again")
        worker.wait_ready()
        try:
            deployment.publish(events, until=TICK)
            received = deployment.escalations_read(expected=len(expected))
            assert worker.alive()
        finally:
            assert worker.stop() == 0
        assert Counter(received) == Counter(expected)
        assert Counter(deployment.escalations_read()) == Counter(expected)  # nothing more
    finally:
        broker.stop()
    log = worker.log.read_text()
    assert "ConsistencyError" not in log
    assert log.count(STALE) == 1
    line = next(line for line in log.splitlines() if STALE in line)
    assert "test.fresh-broker" not in line and str(tmp_path / "worker") in line
