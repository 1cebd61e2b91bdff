"""The subscribers' lag (``STEPCARE_SUBSCRIBER_GROUPS``) a live worker exports, on a real broker:
consumer groups that committed some offsets of the escalations topic, one that committed none,
one that is caught up; the gauges equal log-end - committed exactly (a partition not committed:
its whole length), and the age of the oldest escalation each has not committed."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.kafka.settings import Settings
from streams.worker.probes import SubscriberLagProbe
from tests.integration.test_consumer_lag import kafka_lag
from tests.integration.test_worker_metrics import scrape
from tests.integration.workers import Deployment

# Records per partition of the escalations topic (4 partitions), and what each group commits.
RECORDS = {0: 5, 1: 3, 2: 4, 3: 2}
COMMITS = {
    "scheduler-a": {0: 2, 1: 3, 3: 1},  # partition 2: nothing committed
    "scheduler-b": {},  # never committed
    "scheduler-c": dict(RECORDS),  # caught up
}


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})  # fmt: skip
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                        asynchronous=False)  # fmt: skip
    finally:
        consumer.close()


def test_subscriber_lag_is_end_minus_committed_and_the_oldest_uncommitted_age(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    deployment = Deployment(
        kafka_bootstrap, topic_name, tmp_path,
        STEPCARE_SUBSCRIBER_GROUPS=" scheduler-a, scheduler-b,scheduler-c",
        STEPCARE_SUBSCRIBER_LAG_INTERVAL="1",
    )  # fmt: skip
    topic = deployment.escalations
    worker = deployment.worker("worker")  # creates the escalations topic (4 partitions)
    try:
        start = int(time.time() * 1000) - 600_000  # record (p, i): start + 10 s * p + 1 s * i
        stamps = {(p, i): start + 10_000 * p + 1_000 * i for p, n in RECORDS.items()
                  for i in range(n)}  # fmt: skip
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for (p, _), stamp in stamps.items():
            producer.produce(topic, key=b"k", value=b"v", partition=p, timestamp=stamp)
        assert producer.flush(30) == 0
        for group, offsets in COMMITS.items():
            if offsets:
                commit(kafka_bootstrap, group, topic, offsets)
        expected = {
            group: {p: n - offsets.get(p, 0) for p, n in RECORDS.items()}
            for group, offsets in COMMITS.items()
        }
        # Kafka's own numbers (the consumer-groups tool's computation) where a group committed.
        for group, offsets in COMMITS.items():
            kafka = kafka_lag(kafka_bootstrap, group, topic, len(RECORDS))
            assert {p: kafka[p] for p in offsets} == {p: expected[group][p] for p in offsets}
        oldest = {
            group: min((stamps[p, offsets.get(p, 0)] for p, n in RECORDS.items()
                        if offsets.get(p, 0) < n), default=None)
            for group, offsets in COMMITS.items()
        }  # fmt: skip
        deadline = time.monotonic() + 60
        while True:  # measured every second
            metrics = scrape(deployment.env["STEPCARE_WEB_PORT"])
            scraped = time.time()
            lags = {
                group: {
                    int(dict(labels)["partition"]): value
                    for (name, labels), value in metrics.items()
                    if name == "stepcare_subscriber_lag" and dict(labels)["group"] == group
                }
                for group in COMMITS
            }
            if lags == expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        assert worker.stop() == 0
    assert lags == expected
    assert expected["scheduler-a"] == {0: 3, 1: 0, 2: 4, 3: 1}
    seconds = {
        dict(labels)["group"]: value
        for (name, labels), value in metrics.items()
        if name == "stepcare_subscriber_lag_seconds"
    }
    assert seconds["scheduler-c"] == 0
    for group in ("scheduler-a", "scheduler-b"):
        age = scraped - oldest[group] / 1000  # type: ignore[operator]
        assert age - 5 <= seconds[group] <= age, (group, seconds[group], age)
    # scheduler-a's oldest uncommitted escalation: partition 0 offset 2 (partition 2 starts
    # 20 s later, partition 3's offset 1 30 s later).
    assert oldest["scheduler-a"] == stamps[0, 2]
    assert oldest["scheduler-b"] == stamps[0, 0]


def test_the_probe_reads_a_topic_it_cannot_find_as_nothing_and_creates_none(
    kafka_bootstrap: str, topic_name: str
) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap, escalations_topic=topic_name)
    assert SubscriberLagProbe(settings, ("g",)).measure() == {}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert topic_name not in admin.list_topics(timeout=30).topics
