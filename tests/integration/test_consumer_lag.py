"""The worker's ``stepcare_consumer_lag`` against Kafka's own numbers (what
``kafka-consumer-groups.sh --describe`` computes: the group's committed offsets from the group
coordinator, the partitions' log-end offsets as ListOffsets(latest, read_uncommitted) gives
them), once the worker is idle, under both processing guarantees."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from tests.integration.test_worker_metrics import scrape
from tests.integration.workers import REPO, Deployment, read_topic

UNTIL = "2024-09-01T00:00:00Z"


def kafka_lag(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """LAG per partition as Kafka's consumer-groups tool reports it: log-end - committed."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    request = [ConsumerGroupTopicPartitions(group, tps)]
    committed = admin.list_consumer_group_offsets(request)[group].result().topic_partitions
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps})
    end = {tp.partition: future.result().offset for tp, future in ends.items()}
    return {tp.partition: end[tp.partition] - tp.offset for tp in committed}


def kafka_idle_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Kafka's numbers once the worker has caught up (a tick may be in flight when asked)."""
    deadline = time.monotonic() + 60
    while True:
        lag = kafka_lag(bootstrap, group, topic, Deployment.PARTITIONS)
        if not any(lag.values()) or time.monotonic() > deadline:
            return lag
        time.sleep(0.5)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_consumer_lag_equals_kafkas_own_once_idle(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, guarantee: str
) -> None:
    # clock=wall, a tick every 5 s on every partition: the worker is never without input for
    # long, as in production (where the gauge read 1 per partition: it sampled just after the
    # ticks, before the worker had committed them).
    lines = (REPO / "examples/three-patients.jsonl").read_text().splitlines()
    events = [orjson.loads(line) for line in lines if line.strip()]
    deployment = Deployment(
        kafka_bootstrap, topic_name, tmp_path, STEPCARE_PROCESSING_GUARANTEE=guarantee,
        STEPCARE_CLOCK="wall", STEPCARE_TICK_INTERVAL="5", STEPCARE_MAX_EVENT_AGE_DAYS="0",
    )  # fmt: skip
    port = deployment.env["STEPCARE_WEB_PORT"]
    group = deployment.env["STEPCARE_APP_ID"]
    worker = deployment.worker("worker")
    samples = []
    try:
        deployment.publish(events)
        read_topic(kafka_bootstrap, deployment.escalations, expected=1)
        kafka = kafka_idle_lag(kafka_bootstrap, group, deployment.input)
        for _ in range(4):  # every measurement (every 5 s) of an idle worker
            time.sleep(5)
            samples.append({
                int(dict(labels)["partition"]): value
                for (name, labels), value in scrape(port).items()
                if name == "stepcare_consumer_lag"
            })  # fmt: skip
        kafka_after = kafka_idle_lag(kafka_bootstrap, group, deployment.input)
    finally:
        assert worker.stop() == 0
    zero = dict.fromkeys(range(Deployment.PARTITIONS), 0)
    assert kafka == kafka_after == zero
    assert samples == [zero] * 4
