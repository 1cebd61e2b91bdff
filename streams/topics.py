"""The topics of DESIGN §2: created with the configured partitions and replication, checked.

The input topic's partition count is fixed for the life of a deployment: the worker's table is
co-partitioned with it (a patient's state lives in the partition their events go to), so a
mismatch is refused with a clear error instead of silently splitting patients' state.
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import Settings, env_name


class TopicError(RuntimeError):
    """The topics cannot be created or do not fit the settings; the message says why."""


def topic_names(settings: Settings) -> tuple[str, str, str]:
    return settings.input_topic, settings.escalations_topic, settings.dead_letter_topic


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the missing topics; return the names created. Refuses a mismatched input topic."""
    admin = AdminClient(settings.confluent_config())
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise TopicError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc.args[0].str()}"
        ) from None
    wanted = topic_names(settings)
    if settings.input_topic in existing:
        count = len(existing[settings.input_topic].partitions)
        if count != settings.partitions:
            raise TopicError(
                f"topic {settings.input_topic} has {count} partitions but "
                f"{env_name('partitions')}={settings.partitions}; the worker's table must be "
                f"co-partitioned with it: set {env_name('partitions')}={count}"
            )
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication,
                config={"min.insync.replicas": str(min(2, settings.replication))},
            )
            for name in missing
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
    return missing
