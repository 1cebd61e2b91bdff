"""Reproduces a known faust-streaming 0.15.3 defect: an event is lost when it is waiting in the
topic while a restarted worker recovers its table from the changelog.

Not collected by the suite (one attempt in 10 to 16 loses the event here); run it on purpose:

    STEPCARE_CACHE_DIR=$PWD/.cache .venv/bin/pytest tests/integration/repro_faust_backlog.py

Seen on Kafka 3.9.2 and 4.4.0: the worker commits offsets past the event (the group's committed
offset covers it) without the agent ever seeing it. The streaming worker (stepcare worker) must
not lose events this way; its fault-injection tests must include a restart with a backlog.
"""

import os
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.integration.test_broker_smoke import (
    CounterWorker,
    consume_all,
    create_topic,
    read_to_end,
)

ATTEMPTS = int(os.environ.get("REPRO_ATTEMPTS", "10"))


@pytest.mark.parametrize("attempt", range(ATTEMPTS))
def test_restart_with_a_backlog_loses_no_event(
    attempt: int, kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    source, output = f"{topic_name}.in", f"{topic_name}.out"
    create_topic(kafka_bootstrap, source, partitions=2)
    create_topic(kafka_bootstrap, output)
    app_id = f"counter-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def publish(keys: str) -> None:
        for key in keys:
            producer.produce(source, key=key.encode(), value=b"{}")
        assert producer.flush(30) == 0

    first = CounterWorker(kafka_bootstrap, app_id, (source, output), tmp_path / "first")
    try:
        publish("aaabb")
        consume_all(kafka_bootstrap, output, expected=5, timeout=60)
    finally:
        first.stop()

    second = CounterWorker(kafka_bootstrap, app_id, (source, output), tmp_path / "second")
    try:
        publish("ac")  # while the restarted worker joins the group and recovers its table
        consume_all(kafka_bootstrap, output, expected=7, timeout=30)
    finally:
        second.stop()
    assert read_to_end(kafka_bootstrap, output) == {"a": [1, 2, 3, 4], "b": [1, 2], "c": [1]}
