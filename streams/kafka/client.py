"""What stepcare's confluent-kafka clients share: their configuration and a few helpers.

The producer of ``stepcare publish`` and of the live bridges (idempotent, ``acks=all``, the Java
client's partitioner), producing with a wait when the local queue is full, the text of a Kafka
error, and librdkafka's own log lines kept quiet. confluent-kafka itself is not imported here:
the CLI loads this module for every command.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.kafka.settings import Settings

# What makes publishing safe and ordered (a producer's settings beside the connection).
SAFE_PRODUCER: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,  # retries keep order and do not duplicate
    "partitioner": "murmur2_random",  # the Java client's and aiokafka's partitioner
    "allow.auto.create.topics": False,  # a typo must not create a topic
    "linger.ms": 20,
}


def connection_config(settings: Settings, bootstrap_servers: str | None) -> dict[str, Any]:
    """Connection settings (broker, TLS, SASL) for any client; ``bootstrap_servers`` (an
    option) wins over the setting."""
    config: dict[str, Any] = settings.confluent_config()
    if bootstrap_servers:
        config["bootstrap.servers"] = bootstrap_servers
    return config


def producer_config(settings: Settings, bootstrap_servers: str | None) -> dict[str, Any]:
    """Connection settings plus what makes publishing safe and ordered."""
    return {**connection_config(settings, bootstrap_servers), **SAFE_PRODUCER}


def produce(producer: Any, topic: str, **kwargs: Any) -> None:
    """Produce one record, waiting for room when the local queue is full."""
    while True:
        try:
            producer.produce(topic, **kwargs)
        except BufferError:
            producer.poll(0.1)  # serve delivery reports; the queue drains meanwhile
            continue
        producer.poll(0)
        return


def error_text(exc: Exception) -> str:
    """The message of a ``KafkaException`` (its ``KafkaError``'s), else of the exception."""
    error: Any = exc.args[0] if exc.args else None  # a KafkaError, if confluent-kafka raised it
    return error.str() if hasattr(error, "str") else str(exc)


def librdkafka_logger(command: str, level: str) -> logging.Logger:
    """The logger of librdkafka's own lines (retries, reconnects) for ``command``: on stderr
    only with STEPCARE_LOG_LEVEL=DEBUG.

    Otherwise they would interleave with a progress or summary line; what matters to the user
    (no broker, no topic, a record not delivered) is reported by the command in one line.
    """
    logger = logging.getLogger(f"stepcare.{command}.librdkafka")
    logger.propagate = False
    if not logger.handlers:
        debug = level.upper() == "DEBUG"
        logger.addHandler(logging.StreamHandler(sys.stderr) if debug else logging.NullHandler())
        logger.setLevel(logging.DEBUG)
    return logger
