"""Beside the agent: :class:`LagProbe` measures the consumer lag, :class:`Ticker` appends
wall-clock ticks to the input partitions (clock = "wall")."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from streams.clinical.events import format_time
from streams.formats.avro import encode_event
from streams.kafka.client import error_text
from streams.kafka.settings import Settings

log = logging.getLogger("stepcare.worker")


class LagProbe:
    """Consumer lag as Kafka sees it: end offset minus the group's committed offset."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.input_topic
        self.group = settings.app_id
        self.config = settings.confluent_config()
        self.consumer: Consumer | None = None

    def measure(self, partitions: list[int]) -> dict[int, int]:
        """Lag of each partition (this worker's); {} when the broker cannot be asked."""
        if not partitions:
            return {}
        try:
            if self.consumer is None:
                self.consumer = Consumer(
                    {**self.config, "group.id": self.group, "enable.auto.commit": False}
                )
            tps = [TopicPartition(self.topic, p) for p in partitions]
            committed = self.consumer.committed(tps, timeout=5)
            lags = {}
            for tp in committed:
                end = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
                start = tp.offset if tp.offset >= 0 else 0  # nothing committed yet: all of it
                lags[tp.partition] = max(0, end - start)
            return lags
        except KafkaException as exc:
            log.warning("consumer lag not measured: %s", error_text(exc))
            return {}


class Ticker:
    """Appends a wall-clock ``CLOCK_TICK`` to input partitions (clock = "wall")."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.input_topic
        self.producer = Producer({**settings.confluent_config(), "acks": "all"})

    def tick(self, partitions: list[int]) -> None:
        now = time.time_ns() // 1_000_000
        value = encode_event(
            {"event_id": "", "patient_id": "", "occurred_at": format_time(now),
             "type": "CLOCK_TICK"}
        )  # fmt: skip
        for partition in partitions:
            self.producer.produce(self.topic, key=b"", value=value, partition=partition,
                                  timestamp=now)  # fmt: skip
        self.producer.poll(0)
