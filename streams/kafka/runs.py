"""Replay runs on Kafka (``stepcare worker --replay RUN``): what a run made, read back and
deleted by ``stepcare replay-run``.

A run's names come from :meth:`Settings.for_replay`: the consumer group and faust app id
``<app id>-replay-RUN``, the topics ``<escalations topic>.replay.RUN`` and
``<dead-letter topic>.replay.RUN``, faust's own ``<group>-patients-changelog`` and
``<group>-__assignor-__leader``, and the data dir ``<data dir>/replay-RUN``. Nothing else is
ever deleted: the names are exact, never prefixes (run ``a`` is not run ``a-b``), and none can
be a live topic or group.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streams.errors import StepcareError
from streams.kafka.client import error_text, librdkafka_logger
from streams.kafka.settings import WORKER_TABLE, Settings

STALL_SECONDS = 60.0  # reading a topic stops with an error after this long without progress


class RunError(StepcareError):
    """A replay run that cannot be read or deleted (one line for the user)."""


@dataclass(frozen=True)
class Run:
    """What one replay run made: its group, topics and data dir."""

    name: str
    group: str
    escalations_topic: str
    topics: tuple[str, ...]  # every topic it may have made, the escalation topic first
    data_dir: Path

    @classmethod
    def of(cls, settings: Settings, name: str) -> Run:
        """The run ``name`` of the live deployment ``settings`` (SettingsError: a bad name)."""
        run = settings.for_replay(name)
        topics = (
            run.escalations_topic,
            run.dead_letter_topic,
            f"{run.app_id}-{WORKER_TABLE}-changelog",
            f"{run.app_id}-__assignor-__leader",
        )
        live = {settings.input_topic, settings.escalations_topic, settings.dead_letter_topic,
                f"{settings.app_id}-{WORKER_TABLE}-changelog",
                f"{settings.app_id}-__assignor-__leader"}  # fmt: skip
        assert not live & set(topics) and run.app_id != settings.app_id  # by construction
        return cls(name, run.app_id, run.escalations_topic, topics, run.data_dir)


def end_offsets(settings: Settings, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Each partition's end offset now; RunError if the topic does not exist."""
    consumer = _consumer(settings, f"stepcare-replay-run-{uuid.uuid4().hex}")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise RunError(f"no topic {topic} at {settings.bootstrap_servers}: no such replay "
                           "run, or it was deleted")  # fmt: skip
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout, cached=False)[1]
            for p in sorted(metadata.partitions)
        }
    except KafkaException as exc:
        raise RunError(f"cannot reach Kafka: {error_text(exc)}") from None
    finally:
        consumer.close()


def read_values(settings: Settings, topic: str, ends: dict[int, int]) -> Iterator[bytes]:
    """The committed record values of ``topic`` (read_committed), partition by partition in
    offset order, up to ``ends`` (the end offsets when the reading started)."""
    consumer = _consumer(settings, f"stepcare-replay-run-{uuid.uuid4().hex}")
    try:
        for partition, end in sorted(ends.items()):
            if end <= 0:
                continue
            tp = TopicPartition(topic, partition, OFFSET_BEGINNING)  # the earliest kept record
            consumer.assign([tp])
            yield from _partition_values(consumer, tp, end)
            consumer.unassign()
    except KafkaException as exc:
        raise RunError(f"cannot read {topic}: {error_text(exc)}") from None
    finally:
        consumer.close()


def _partition_values(consumer: Consumer, tp: TopicPartition, end: int) -> Iterator[bytes]:
    progress_at = time.monotonic()
    while True:
        message = consumer.poll(1.0)
        now = time.monotonic()
        if message is None:
            if now - progress_at > STALL_SECONDS:
                raise RunError(f"{tp.topic} [{tp.partition}]: no record for "
                               f"{STALL_SECONDS:.0f} s before offset {end}")  # fmt: skip
            continue
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(error)
            position = consumer.position([TopicPartition(tp.topic, tp.partition)])[0].offset
            if position >= end:  # past the last record and any transaction marker before end
                return
            continue
        progress_at = now
        offset = message.offset() or 0
        if offset >= end:
            return
        value = message.value()
        if value is not None:
            yield value
        if offset + 1 >= end:
            return


def delete(settings: Settings, run: Run, timeout: float = 30.0) -> tuple[list[str], bool]:
    """Delete the run's topics that exist and its consumer group: (the topics deleted, whether
    the group existed). RunError if the group still has members (a worker runs it)."""
    admin = AdminClient(_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
        description = admin.describe_consumer_groups([run.group])[run.group].result(timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
            raise RunError(f"cannot reach Kafka: {error_text(exc)}") from None
        description = None
    if description is not None and description.members:
        raise RunError(f"replay run {run.name!r} is running ({len(description.members)} "
                       f"member(s) in group {run.group}): stop its worker first")  # fmt: skip
    topics = [t for t in run.topics if t in existing]
    if topics:
        for topic, future in admin.delete_topics(topics, operation_timeout=timeout).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                raise RunError(f"cannot delete topic {topic}: {error_text(exc)}") from None
    gone = (ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN)
    had_group = description is not None and description.state not in gone
    if had_group:
        try:
            admin.delete_consumer_groups([run.group], request_timeout=timeout)[run.group].result(
                timeout
            )
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                raise RunError(f"cannot delete group {run.group}: {error_text(exc)}") from None
            had_group = False
    return topics, had_group


def _consumer(settings: Settings, group: str) -> Consumer:
    return Consumer(
        {
            **_config(settings),
            "group.id": group,  # never joined, never committed: the group is never made
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )


def _config(settings: Settings) -> dict[str, Any]:
    """Connection settings, librdkafka's own lines kept off stderr (but with DEBUG)."""
    return {
        **settings.confluent_config(),
        "logger": librdkafka_logger("replay-run", settings.log_level),
    }
