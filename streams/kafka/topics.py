"""The topics of DESIGN §2: created with the configured partitions and replication, checked;
and a consumer group's offsets moved to a point in time (backfills, re-deliveries).

The input topic's partition count is fixed for the life of a deployment: the worker's table is
co-partitioned with it (a patient's state lives in the partition their events go to), so a
mismatch is refused with a clear error instead of silently splitting patients' state.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from streams.errors import StepcareError
from streams.kafka.client import error_text
from streams.kafka.settings import WORKER_TABLE, Settings, env_name

log = logging.getLogger("stepcare.kafka.topics")


class TopicError(StepcareError, RuntimeError):
    """The topics cannot be created or do not fit the settings; the message says why."""


# Errors that retrying cannot cure: librdkafka retries them until a request times out and then
# reports only "Broker transport failure"; its error callback names them at once.
_REFUSED = {
    KafkaError._AUTHENTICATION: "check the user name and password",
    KafkaError._SSL: "check the CA file (STEPCARE_SSL_CAFILE) and the client certificate",
}


def check_access(config: Mapping[str, Any], timeout: float = 30.0) -> None:
    """Connect with ``config`` (librdkafka settings) and fail at once, with one line, if Kafka
    refuses the login (SASL authentication) or the TLS handshake; TopicError if it cannot be
    reached within ``timeout`` seconds."""
    refused: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in _REFUSED:
            refused.append(error)

    quiet = logging.getLogger("stepcare.kafka.access")
    quiet.setLevel(logging.CRITICAL)  # librdkafka's retry lines: the error callback tells it
    # confluent-kafka's stubs type every setting as a scalar; the client takes callables too
    admin = AdminClient({**config, "error_cb": on_error, "logger": quiet})  # type: ignore[dict-item]
    where = config.get("bootstrap.servers", "?")
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException as exc:
            admin.poll(0)  # serves the error callback
            if refused:
                error = refused[0]
                # "sasl_ssl://host:port/bootstrap: SASL authentication error: ... (after 312ms
                # in state AUTH_REQ)": the reason without the connection's name and timing.
                detail = re.sub(r"^\S+: ", "", error.str())
                detail = re.sub(r" \(after \d+ms in state \w+\)$", "", detail)
                user = config.get("sasl.username")
                who = f" as {user}" if user else ""
                raise TopicError(
                    f"Kafka at {where} refused the connection{who}: {detail} "
                    f"({_REFUSED[error.code()]})"
                ) from None
            if time.monotonic() >= deadline:
                raise TopicError(f"cannot reach Kafka at {where}: {error_text(exc)}") from None


def topic_names(settings: Settings) -> tuple[str, str, str]:
    return settings.input_topic, settings.escalations_topic, settings.dead_letter_topic


def existing_topics(
    config: Mapping[str, Any], timeout: float = 30.0, *, where: str | None = None
) -> tuple[AdminClient, dict[str, Any]]:
    """An admin client, once the broker has let us in, and the topics it has (name: metadata).

    A refused login or TLS handshake is one line at once (:func:`check_access`), not retries
    until a timeout."""
    check_access(config, timeout)
    admin = AdminClient(dict(config))
    try:
        return admin, admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        at = "" if where is None else f" at {where}"
        raise TopicError(f"cannot reach Kafka{at}: {error_text(exc)}") from None


def changelog_topic(settings: Settings) -> str:
    """The compacted topic faust keeps the worker's table in: ``<app id>-patients-changelog``."""
    return f"{settings.app_id}-{WORKER_TABLE}-changelog"


def ensure_topics(settings: Settings, timeout: float = 30.0, *, worker: bool = False) -> list[str]:
    """Create the missing topics; return the names created. Refuses a mismatched input topic.

    With ``worker``, the table's changelog too, before faust starts: faust makes it while its
    consumer joins the group, and a group leader whose metadata does not have it yet leaves
    it out of the assignment, which crashed the workers (seen on a 3-broker cluster: a
    KeyError in faust's transactional producer). Created topics are waited for until every
    broker that answers lists them, so the group leader's first metadata has them."""
    admin, existing = existing_topics(
        settings.confluent_config(), timeout, where=settings.bootstrap_servers
    )
    wanted = list(topic_names(settings))
    co_partitioned = [settings.input_topic]
    if worker:
        wanted.append(changelog_topic(settings))
        co_partitioned.append(changelog_topic(settings))
    for name in co_partitioned:
        if name in existing:
            count = len(existing[name].partitions)
            if count != settings.partitions:
                raise TopicError(
                    f"topic {name} has {count} partitions but "
                    f"{env_name('partitions')}={settings.partitions}; the worker's table must "
                    f"be co-partitioned with its input: set {env_name('partitions')}={count}"
                )
    missing = [name for name in wanted if name not in existing]
    create_topics(admin, settings, missing, keep=(settings.input_topic, settings.escalations_topic),
                  compacted=(changelog_topic(settings),), timeout=timeout)  # fmt: skip
    if missing:
        wait_until_listed(settings, missing, timeout)
    return missing


def wait_until_listed(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    """Wait until each broker that answers lists ``names`` with a leader for every partition.

    A created topic reaches the brokers' metadata one by one; a client asking a broker that
    lags is told the topic does not exist. Each broker is asked through a client that knows
    only its address (librdkafka asks the broker it is connected to). A broker that does not
    answer within a few seconds is skipped: it is down, and clients are not asking it either.
    TopicError if the topics are not listed within ``timeout`` seconds."""
    config = settings.confluent_config()
    deadline = time.monotonic() + timeout
    admin = AdminClient(dict(config))
    brokers = _listed_brokers(admin, names, deadline)
    for address in brokers:
        one = AdminClient({**config, "bootstrap.servers": address})
        try:
            _listed_brokers(one, names, min(deadline, time.monotonic() + 5.0))
        except TopicError:
            if time.monotonic() >= deadline:
                raise
            log.warning("broker %s did not list %s within 5 s; not waited for", address,
                        ", ".join(names))  # fmt: skip


def _listed_brokers(admin: AdminClient, names: list[str], deadline: float) -> list[str]:
    """Poll ``admin`` until its metadata has every topic of ``names`` with a leader for each
    partition; the brokers' addresses then. TopicError at ``deadline``."""
    while True:
        left = deadline - time.monotonic()
        try:
            metadata = admin.list_topics(timeout=max(0.1, min(left, 5.0)))
        except KafkaException as exc:
            problem = error_text(exc)
        else:
            unlisted = [
                name for name in names
                if name not in metadata.topics
                or metadata.topics[name].error is not None
                or not metadata.topics[name].partitions
                or any(p.leader < 0 for p in metadata.topics[name].partitions.values())
            ]  # fmt: skip
            if not unlisted:
                return sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values())
            problem = f"{', '.join(unlisted)} not listed yet"
        if time.monotonic() >= deadline:
            raise TopicError(f"created topics not ready: {problem}")
        time.sleep(0.1)


def create_topics(
    admin: AdminClient,
    settings: Settings,
    names: list[str],
    *,
    keep: tuple[str, ...] = (),
    compacted: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> None:
    """Create ``names`` with the configured partitions and replication (another creator being
    faster is fine). Topics in ``keep`` hold their records until removed: records carry event
    times, so a time-based retention would delete history (old events, a backfill) unread.
    Topics in ``compacted`` keep the last record of each key (faust's changelog config)."""
    if not names:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication,
                config={
                    "min.insync.replicas": str(min(2, settings.replication)),
                    **({"retention.ms": "-1"} if name in keep else {}),
                    **({"cleanup.policy": "compact"} if name in compacted else {}),
                },
            )
            for name in names
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            error = exc.args[0]
            if error.name() != "TOPIC_ALREADY_EXISTS":  # another worker was faster
                raise TopicError(f"cannot create topic {name}: {error.str()}") from None


@dataclass(frozen=True)
class OffsetMove:
    partition: int
    committed: int | None  # None: the group has no committed offset there
    target: int


def reset_offsets(
    settings: Settings,
    group: str,
    topic: str,
    moment_ms: int,
    *,
    execute: bool,
    timeout: float = 30,
) -> list[OffsetMove]:
    """Move ``group``'s committed offsets on ``topic`` to the first record at or after
    ``moment_ms`` (the end, where no record is that late). Only with ``execute``; the group
    must have no active member (Kafka refuses to move a live group's offsets)."""
    config = settings.confluent_config()
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise TopicError(f"topic {topic} does not exist at {settings.bootstrap_servers}")
        partitions = sorted(metadata.partitions)
        description = admin.describe_consumer_groups([group])[group].result(timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot reach Kafka: {error_text(exc)}") from None
    if description.members:
        raise TopicError(
            f"group {group} has {len(description.members)} active member(s): stop its "
            "consumers first (Kafka moves only an idle group's offsets)"
        )
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        wanted = [TopicPartition(topic, p, moment_ms) for p in partitions]
        found = consumer.offsets_for_times(wanted, timeout=timeout)
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout)
        moves = []
        for at_time, now in zip(found, committed, strict=True):
            target = at_time.offset
            if target < 0:  # no record that late: the end of the partition
                target = consumer.get_watermark_offsets(
                    TopicPartition(topic, at_time.partition), timeout=timeout
                )[1]
            current = now.offset if now.offset >= 0 else None
            moves.append(OffsetMove(at_time.partition, current, target))
    finally:
        consumer.close()
    if execute:
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, m.partition, m.target) for m in moves]
        )
        try:
            admin.alter_consumer_group_offsets([request])[group].result(timeout)
        except KafkaException as exc:
            raise TopicError(f"cannot move the offsets of {group}: {error_text(exc)}") from None
    return moves
