"""Beside the agent: :class:`LagProbe` measures the consumer lag, :class:`SubscriberLagProbe`
the lag of the escalations' subscribers, :class:`Ticker` appends wall-clock ticks to the input
partitions (clock = "wall"), :class:`CatchUp` tells when a replay run has processed the input as
it was when the run started. The probes block: the worker calls them in an executor thread."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from streams.clinical.events import format_time
from streams.errors import UsageError
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


ADMIN_TIMEOUT = 10.0  # seconds an admin request of the subscriber probe may take
READ_TIMEOUT = 5.0  # seconds the probe may spend reading the oldest uncommitted escalations


@dataclass(frozen=True)
class SubscriberLag:
    """One group's lag on the escalations topic: records per partition, and the age (seconds)
    of the oldest escalation it has not committed (0 when caught up)."""

    records: dict[int, int]
    seconds: float


class SubscriberLagProbe:
    """The lag of consumer groups that read the escalations topic (the scheduling systems), as
    ``kafka-consumer-groups.sh --describe`` computes it: log-end offset - the group's committed
    offset; a partition the group has not committed: its whole length (end - start)."""

    def __init__(self, settings: Settings, groups: tuple[str, ...]) -> None:
        self.topic = settings.escalations_topic
        self.groups = groups
        self.config = settings.confluent_config()
        self.admin: AdminClient | None = None

    def measure(self, now: float | None = None) -> dict[str, SubscriberLag]:
        """Each group's lag; {} when the broker cannot be asked (logged)."""
        try:
            return self._measure(time.time() if now is None else now)
        except KafkaException as exc:
            log.warning("subscriber lag not measured: %s", error_text(exc))
            return {}

    def _measure(self, now: float) -> dict[str, SubscriberLag]:
        if self.admin is None:
            self.admin = AdminClient(self.config)
        admin = self.admin
        # All topics: a metadata request naming the topic may make the broker create it.
        metadata = admin.list_topics(timeout=ADMIN_TIMEOUT).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            return {}
        tps = [TopicPartition(self.topic, p) for p in sorted(metadata.partitions)]
        ends = self._offsets(admin, tps, OffsetSpec.latest())
        starts = self._offsets(admin, tps, OffsetSpec.earliest())
        result = {}
        for group in self.groups:
            request = [ConsumerGroupTopicPartitions(group, tps)]
            future = admin.list_consumer_group_offsets(request)[group]
            committed = {
                tp.partition: tp.offset
                for tp in future.result(timeout=ADMIN_TIMEOUT).topic_partitions
            }
            # Where the group reads next: its committed offset, or the start of the partition.
            positions = {p: committed[p] if committed.get(p, -1) >= 0 else starts[p] for p in ends}
            records = {p: max(0, ends[p] - positions[p]) for p in ends}
            behind = {p: positions[p] for p, n in records.items() if n > 0}
            oldest = self._oldest_timestamp(behind) if behind else None
            seconds = 0.0 if oldest is None else max(0.0, now - oldest / 1000)
            result[group] = SubscriberLag(records, seconds)
        return result

    def _offsets(
        self, admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec
    ) -> dict[int, int]:
        futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=ADMIN_TIMEOUT)
        return {tp.partition: f.result(timeout=ADMIN_TIMEOUT).offset for tp, f in futures.items()}

    def _oldest_timestamp(self, positions: dict[int, int]) -> int | None:
        """The smallest record timestamp (ms) at ``positions`` (partition -> offset), read with
        a consumer of its own, for at most :data:`READ_TIMEOUT` seconds; None if none read (an
        offset on a transaction marker holds no record)."""
        consumer = Consumer({**self.config, "group.id": f"stepcare-lag-probe-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "isolation.level": "read_uncommitted",
                             "enable.partition.eof": True})  # fmt: skip
        try:
            consumer.assign([TopicPartition(self.topic, p, o) for p, o in positions.items()])
            waiting = set(positions)
            oldest: int | None = None
            deadline = time.monotonic() + READ_TIMEOUT
            while waiting and time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is None:
                    continue
                partition = message.partition()
                if partition not in waiting:
                    continue
                waiting.discard(partition)  # its first record, or its end
                if message.error() is None:
                    stamp = message.timestamp()[1]
                    oldest = stamp if oldest is None else min(oldest, stamp)
            return oldest
        finally:
            consumer.close()


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


class CatchUp:
    """``stepcare worker --replay RUN --until-caught-up``: the input topic's end offsets when the
    run starts, and whether the run's group has committed every partition up to them.

    The worker commits an input offset only once the outputs of the events before it are safe
    (at_least_once: every escalation acknowledged by the broker; exactly_once: in the same
    transaction), so a committed offset at the end offset means every escalation of the records
    before it is on the escalation topic. ``progress`` is told the records done after each
    check, ``finish`` once caught up (``stepcare worker`` draws them on stderr).
    """

    def __init__(
        self,
        settings: Settings,
        progress: Callable[[int], None] | None = None,
        finish: Callable[[], None] | None = None,
    ) -> None:
        self.topic = settings.input_topic
        self.group = settings.app_id
        self.config = settings.confluent_config()
        consumer = self._consumer()
        try:
            metadata = consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
            if metadata is None or metadata.error is not None:
                raise UsageError(f"the input topic {self.topic} cannot be read")
            self.starts: dict[int, int] = {}
            self.ends: dict[int, int] = {}
            for partition in sorted(metadata.partitions):
                tp = TopicPartition(self.topic, partition)
                low, high = consumer.get_watermark_offsets(tp, timeout=30, cached=False)
                self.starts[partition], self.ends[partition] = low, high
        except KafkaException as exc:
            raise UsageError(f"cannot read the end offsets of {self.topic}: "
                             f"{error_text(exc)}") from None  # fmt: skip
        finally:
            consumer.close()
        self.total = sum(self.ends[p] - self.starts[p] for p in self.ends)
        self.processed = 0
        self.done = self.total == 0
        self.started = time.monotonic()
        self.finished: float | None = self.started if self.done else None
        self.consumer: Consumer | None = None
        self.progress = progress or (lambda done: None)
        self.finish = finish or (lambda: None)

    def _consumer(self) -> Consumer:
        return Consumer({**self.config, "group.id": self.group, "enable.auto.commit": False})

    def check(self) -> bool:
        """Ask the broker for the group's committed offsets; True once caught up (blocking)."""
        if self.done:
            return True
        try:
            if self.consumer is None:
                self.consumer = self._consumer()
            tps = [TopicPartition(self.topic, p) for p in self.ends]
            committed = {tp.partition: tp.offset for tp in self.consumer.committed(tps, timeout=5)}
        except KafkaException as exc:
            log.warning("replay progress not measured: %s", error_text(exc))
            return False
        processed = 0
        caught_up = True
        for partition, end in self.ends.items():
            start = self.starts[partition]
            offset = max(committed.get(partition, -1), start)  # none committed: the start
            processed += min(offset, end) - start
            caught_up = caught_up and offset >= end
        self.processed = processed
        if caught_up:
            self.done = True
            self.finished = time.monotonic()
            self.finish()
        else:
            self.progress(processed)
        return caught_up

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def summary(self) -> str:
        seconds = (self.finished or time.monotonic()) - self.started
        rate = self.total / seconds if seconds > 0 else 0.0
        return (f"caught up: {self.total:,} records of {self.topic} processed and committed in "
                f"{seconds:.1f} s ({rate:,.0f} records/s)")  # fmt: skip
