"""Smoke tests of the client libraries stepcare stands on, on every supported Kafka line."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.workers import FaustProcess


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list:
    """Read ``topic`` from the beginning until ``expected`` records arrived (read_committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            records.append(msg)
    finally:
        consumer.close()
    return records


def test_confluent_kafka_round_trip(line_bootstrap: str, topic_name: str) -> None:
    create_topic(line_bootstrap, topic_name, partitions=3)
    producer = Producer({"bootstrap.servers": line_bootstrap, "enable.idempotence": True})
    sent = {f"p-{i:03d}": f"event-{i}".encode() for i in range(30)}
    for key, value in sent.items():
        producer.produce(topic_name, key=key.encode(), value=value)
    assert producer.flush(30) == 0

    received = consume_all(line_bootstrap, topic_name, expected=len(sent))

    assert {m.key().decode(): m.value() for m in received} == sent
    assert len(received) == len(sent)


async def test_aiokafka_consumer_group_joins_consumes_and_commits(
    line_bootstrap: str, topic_name: str
) -> None:
    create_topic(line_bootstrap, topic_name, partitions=2)
    async with AIOKafkaProducer(bootstrap_servers=line_bootstrap) as producer:
        for i in range(10):
            await producer.send_and_wait(topic_name, key=b"k%d" % i, value=b"v%d" % i)

    group = f"smoke-{uuid.uuid4().hex}"
    consumer = AIOKafkaConsumer(
        topic_name,
        bootstrap_servers=line_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        values = []
        async with asyncio.timeout(60):
            while len(values) < 10:
                batch = await consumer.getmany(timeout_ms=500)
                values += [m.value for records in batch.values() for m in records]
        await consumer.commit()
        partitions = {AioTopicPartition(topic_name, p) for p in (0, 1)}
        assert consumer.assignment() == partitions
        committed = {tp.partition: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()

    assert sorted(values) == sorted(b"v%d" % i for i in range(10))
    assert sum(committed.values()) == 10

    # A new member of the same group starts from the committed offsets: nothing is left to read.
    again = AIOKafkaConsumer(
        topic_name, bootstrap_servers=line_bootstrap, group_id=group, enable_auto_commit=False
    )
    await again.start()
    try:
        assert await again.getmany(timeout_ms=3000) == {}
    finally:
        await again.stop()


async def test_aiokafka_transactions_commit_and_abort(line_bootstrap: str, topic_name: str) -> None:
    create_topic(line_bootstrap, topic_name)
    producer = AIOKafkaProducer(
        bootstrap_servers=line_bootstrap, transactional_id=f"smoke-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic_name, key=b"p-1", value=b"committed")
        await producer.begin_transaction()
        await producer.send_and_wait(topic_name, key=b"p-1", value=b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic_name, key=b"p-1", value=b"committed-2")
    finally:
        await producer.stop()

    # A plain record after every transaction: when it is read, anything visible before it has been.
    marker = Producer({"bootstrap.servers": line_bootstrap})
    marker.produce(topic_name, key=b"p-1", value=b"end")
    assert marker.flush(30) == 0

    received = consume_all(line_bootstrap, topic_name, expected=3)

    assert [m.value() for m in received] == [b"committed", b"committed-2", b"end"]


class CounterWorker(FaustProcess):
    """The Faust counter app (tests/integration/apps/counter.py) as a real worker process."""

    def __init__(self, bootstrap: str, app_id: str, topics: tuple[str, str], datadir: Path) -> None:
        env = {
            "COUNTER_APP_ID": app_id,
            "COUNTER_BOOTSTRAP": bootstrap,
            "COUNTER_INPUT": topics[0],
            "COUNTER_OUTPUT": topics[1],
            "COUNTER_PARTITIONS": "2",
        }
        level = os.environ.get("COUNTER_LOGLEVEL", "info")
        super().__init__(
            [sys.executable, "-m", "faust", "-A", "tests.integration.apps.counter",
             "--datadir", str(datadir), "worker", "--without-web", "-l", level],
            env,
            datadir.with_suffix(".log"),
        )  # fmt: skip


def read_to_end(bootstrap: str, topic: str) -> dict[str, list[int]]:
    """Every record of the single-partition ``topic`` up to its end offset, as counts per key."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}"})
    _, end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    consumer.assign([TopicPartition(topic, 0, 0)])
    counts: dict[str, list[int]] = {}
    read = 0
    while read < end:
        msg = consumer.poll(5)
        assert msg is not None and msg.error() is None, f"read {read} of {end} records"
        counts.setdefault(msg.key().decode(), []).append(int(msg.value()))
        read += 1
    consumer.close()
    return counts


class CounterRun:
    """Topics, an app id and a producer for runs of the counter app against one broker."""

    def __init__(self, bootstrap: str, topic_name: str) -> None:
        self.bootstrap = bootstrap
        self.source, self.output = f"{topic_name}.in", f"{topic_name}.out"
        create_topic(bootstrap, self.source, partitions=2)
        create_topic(bootstrap, self.output)
        self.app_id = f"counter-{uuid.uuid4().hex[:8]}"
        self.producer = Producer({"bootstrap.servers": bootstrap})

    def publish(self, keys: str) -> None:
        for key in keys:
            self.producer.produce(self.source, key=key.encode(), value=b"{}")
        assert self.producer.flush(30) == 0

    def worker(self, datadir: Path) -> CounterWorker:
        return CounterWorker(self.bootstrap, self.app_id, (self.source, self.output), datadir)

    def wait_for_outputs(self, count: int, timeout: float = 120) -> None:
        consume_all(self.bootstrap, self.output, expected=count, timeout=timeout)

    def outputs(self) -> dict[str, list[int]]:
        return read_to_end(self.bootstrap, self.output)


def test_faust_rocksdb_table_survives_restart(
    line_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    run = CounterRun(line_bootstrap, topic_name)

    # Events are published once the worker is ready: a backlog waiting while a restarted worker
    # recovers its table can lose an event in faust 0.15.3 (repro_faust_backlog.py, README).
    first = run.worker(tmp_path / "first")
    try:
        first.wait_ready()
        run.publish("aaabb")
        run.wait_for_outputs(5)
    finally:
        assert first.stop() == 0
    assert run.outputs() == {"a": [1, 2, 3], "b": [1, 2]}

    # A fresh data dir: the table can only come back from its changelog topic, and committed
    # offsets keep the first five events from being counted again.
    second = run.worker(tmp_path / "second")
    try:
        second.wait_ready()
        run.publish("ac")
        run.wait_for_outputs(7)
    finally:
        assert second.stop() == 0
    assert run.outputs() == {"a": [1, 2, 3, 4], "b": [1, 2], "c": [1]}
