"""Publishing a historical event log onto the input topic, as the live feeds would
(``stepcare publish``, ``streams.cli.publish``).

Each event becomes one record keyed by patient id (utf-8), valued with its Avro single-object
encoding, and stamped with its ``occurred_at`` as the record timestamp (DESIGN §2-3, §8). The
producer is idempotent with ``acks=all``, so retries neither duplicate nor reorder records and
each patient's events land in file order. It partitions like the Java client and aiokafka
(murmur2), so a patient's events published here share a partition with the ones the live feeds
send. Invalid lines are reported and skipped (``--strict``: the run stops), never published; so
is an event too large for the broker (its line and size on stderr, counted as rejected). A
damaged Avro container stops the run with one line (exit 2) where the damage is.

``--until T`` then appends a ``CLOCK_TICK`` at T to every partition, so the worker's event-time
clocks reach T and its timers fire as ``stepcare replay --until T`` fires them (DESIGN §5).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.clinical.events import EventError, event_from_json, format_time
from streams.errors import StepcareError
from streams.formats.avro import encode_event
from streams.formats.files import FileError
from streams.formats.logs import LogReader
from streams.kafka.client import error_text, librdkafka_logger, produce
from streams.kafka.topics import TopicError, check_access

METADATA_TIMEOUT = 15.0  # seconds to wait for the broker to describe the topic
MAX_REPORTED_FAILURES = 10  # delivery failures reported one by one; the rest are counted


class PublishError(StepcareError):
    """A problem with the run itself (no topic, no broker, a damaged log): exit status 2."""


@dataclass
class PublishSummary:
    """What a run did; ``failed`` records were produced but not acknowledged by the broker."""

    topic: str
    published: int = 0
    rejected: int = 0
    failed: int = 0
    ticks: int = 0
    outside: int = 0  # valid events outside --from/--to, not published
    seconds: float = 0.0
    stopped_at: str | None = None  # strict mode: the bad record that stopped the run
    failures: Counter[str] = field(default_factory=Counter)

    def text(self) -> str:
        rate = self.published / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"published {self.published} events to {self.topic} in {self.seconds:.1f} s "
            f"({rate:.0f} events/s); {self.rejected} rejected, {self.failed} not delivered"
        )
        if self.outside:
            line += f"; {self.outside} outside the time range"
        if self.ticks:
            line += f"; CLOCK_TICK on {self.ticks} partitions"
        return line


class TokenBucket:
    """At most ``rate`` takes per second, in bursts of at most ``burst`` (a tenth of a second)."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be more than 0")
        self.rate = rate
        self.burst = max(1.0, rate / 10) if burst is None else burst
        self.clock = clock
        self.tokens = self.burst
        self.last = clock()

    def take(self) -> float:
        """Take one token; the seconds to wait before using it (0.0 when one was available)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate) - 1.0
        self.last = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class ProgressLine(Protocol):
    """How far a run got, told as it goes (the CLI's progress line on stderr)."""

    def update(self, count: int, position: int | None = None) -> None:
        """``count`` events published, the log read up to byte ``position``."""

    def clear(self) -> None:
        """Erase what was drawn before a line is written to stderr."""


class _NoProgress:
    def update(self, count: int, position: int | None = None) -> None:
        pass

    def clear(self) -> None:
        pass


# -- reading the log -----------------------------------------------------------------------------


@dataclass
class LogSource:
    """The records of a log: (number, JSON object or reason, bytes read so far)."""

    label: str  # "line" or "record", for messages
    records: Iterator[tuple[int, Any, int]]
    total_bytes: int | None
    close: Callable[[], None]


def open_log(name: str) -> LogSource:
    """A JSONL file, ``-`` (JSONL on stdin), or an Avro container file
    (``streams.formats.files``)."""
    try:
        reader = LogReader(name)
    except FileError as exc:
        raise PublishError(str(exc)) from None
    return LogSource(reader.label, _positions(reader), reader.total_bytes, reader.close)


def _positions(reader: LogReader) -> Iterator[tuple[int, Any, int]]:
    try:
        for number, item in reader:
            yield number, item, reader.position
    except FileError as exc:  # a damaged container: exit 2 (what came before is published)
        raise PublishError(str(exc)) from None


# -- publishing ----------------------------------------------------------------------------------


def partitions_of(producer: Producer, topic: str, where: str) -> list[int]:
    """The partition ids of ``topic``; ``PublishError`` if it does not exist or is unreachable."""
    try:
        metadata = producer.list_topics(topic, timeout=METADATA_TIMEOUT)
    except KafkaException as exc:
        raise PublishError(f"cannot reach Kafka at {where}: {error_text(exc)}") from None
    described = metadata.topics.get(topic)
    error = None if described is None else described.error
    if described is None or (
        error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    ):
        raise PublishError(f"topic {topic} does not exist at {where} (publish does not create it)")
    if error is not None:
        raise PublishError(f"topic {topic}: {error.str()}")
    if not described.partitions:
        raise PublishError(f"topic {topic} has no partitions at {where}")
    return sorted(described.partitions)


def publish_log(
    log: LogSource,
    producer: Producer,
    topic: str,
    *,
    rate: float | None = None,
    until: int | None = None,
    since: int | None = None,
    before: int | None = None,
    strict: bool = False,
    where: str = "the broker",
    err: IO[str] | None = None,
    max_message_bytes: int | None = None,
    progress: ProgressLine | None = None,
    header: bytes | None = None,
) -> PublishSummary:
    """Validate, encode and produce every record of ``log``; see the module docstring.

    ``header``: what starts each record (default: single-object encoding; the registry framing
    of ``topic``'s subject, from ``streams.kafka.registry``)."""
    err = sys.stderr if err is None else err
    config_limit = max_message_bytes
    summary = PublishSummary(topic)
    partitions_of(producer, topic, where)  # fail before reading anything
    started = time.monotonic()
    progress = _NoProgress() if progress is None else progress
    bucket = TokenBucket(rate) if rate else None
    produced = 0

    def delivered(label: str, error: KafkaError | None, msg: Message) -> None:
        if error is None:
            summary.published += 1
            return
        if error.code() == TOO_LARGE:  # the broker's (topic's) limit is below the producer's
            summary.rejected += 1
            progress.clear()
            err.write(f"{label}: {_too_large(len(msg.value() or b''), None)}\n")
            return
        summary.failed += 1
        summary.failures[error.str()] += 1
        if summary.failed <= MAX_REPORTED_FAILURES:
            progress.clear()
            err.write(f"{label}: not delivered: {error.str()}\n")

    try:
        for number, obj, position in log.records:
            try:
                if isinstance(obj, str):
                    raise EventError(obj)
                event = event_from_json(obj)
                value = encode_event(obj, header)
            except EventError as exc:
                summary.rejected += 1
                if strict:
                    summary.stopped_at = f"{log.label} {number}: {exc}"
                    break
                progress.clear()
                err.write(f"{log.label} {number}: {exc}\n")
                continue
            if (since is not None and event.occurred_at < since) or (
                before is not None and event.occurred_at >= before
            ):
                summary.outside += 1
                continue
            if bucket is not None:
                _wait(producer, bucket.take())
            try:
                produce(
                    producer,
                    topic,
                    key=event.patient_id.encode(),
                    value=value,
                    timestamp=event.occurred_at,
                    on_delivery=partial(delivered, f"{log.label} {number}"),
                )
            except KafkaException as exc:  # refused before sending: this event, not the run
                error = exc.args[0] if exc.args else None
                if not isinstance(error, KafkaError) or error.code() != TOO_LARGE:
                    raise
                summary.rejected += 1
                reason = f"{log.label} {number}: {_too_large(len(value), config_limit)}"
                if strict:
                    summary.stopped_at = reason
                    break
                progress.clear()
                err.write(reason + "\n")
                continue
            produced += 1
            progress.update(produced, position)
        if until is not None and summary.stopped_at is None:
            tick = encode_event(
                {"event_id": "", "patient_id": "", "occurred_at": format_time(until),
                 "type": "CLOCK_TICK"}, header
            )  # fmt: skip
            for partition in partitions_of(producer, topic, where):
                produce(
                    producer, topic, key=b"", value=tick, timestamp=until, partition=partition,
                    on_delivery=partial(_tick_delivered, summary, err, partition),
                )  # fmt: skip
    finally:
        producer.flush()
        progress.clear()
        summary.seconds = time.monotonic() - started
        err.flush()
    return summary


TOO_LARGE = KafkaError.MSG_SIZE_TOO_LARGE


def _too_large(size: int, limit: int | None) -> str:
    bound = "" if limit is None else f", the producer's limit is {limit}"
    return f"event too large for the broker ({size} bytes encoded{bound}): not published"


def _tick_delivered(
    summary: PublishSummary, err: IO[str], partition: int, error: KafkaError | None, msg: Message
) -> None:
    if error is None:
        summary.ticks += 1
    else:
        summary.failed += 1
        summary.failures[error.str()] += 1
        err.write(f"CLOCK_TICK on partition {partition}: not delivered: {error.str()}\n")


def _wait(producer: Producer, seconds: float) -> None:
    """Sleep ``seconds`` while serving delivery reports (no busy loop)."""
    if seconds <= 0:
        return
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        producer.poll(left)


def connect(config: dict[str, Any], log_level: str) -> Producer:
    """A producer with ``config`` (:func:`producer_config`), once the broker has let us in."""
    try:  # a refused login or TLS handshake: one line at once, not retries until a timeout
        check_access(config, METADATA_TIMEOUT)
    except TopicError as exc:
        raise PublishError(str(exc)) from None
    try:
        return Producer({**config, "logger": librdkafka_logger("publish", log_level)})
    except KafkaException as exc:
        raise PublishError(f"cannot create a Kafka producer: {error_text(exc)}") from None
