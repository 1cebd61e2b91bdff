"""The live bridges: Kafka in, Kafka out, until SIGTERM or Ctrl-C (``stepcare bridge fhir-in``,
``hl7-in``, ``fhir-out``).

:class:`LiveBridge` consumes, converts a record with :func:`fhir_in_record`,
:func:`hl7_in_record` or :func:`fhir_out_record`, produces, waits for the acknowledgements and
only then commits (at least once); refused input goes to a dead-letter topic. :func:`run_live`
sets one up on a broker. What they do, their topics and why: docs/integration.md, "Hospital
interfaces".
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import tzinfo
from functools import partial
from typing import IO, TYPE_CHECKING, Any

import orjson

from streams.errors import StepcareError
from streams.interfaces import bridge_metrics
from streams.interfaces.bridge_metrics import DEAD_LETTERED, IGNORED, PUBLISHED, BridgeMetrics
from streams.interfaces.errors import AdapterError, Ignored, breakdown
from streams.kafka.client import (
    SAFE_PRODUCER,
    connection_config,
    error_text,
    librdkafka_logger,
    produce,
)
from streams.kafka.deadletter import DEAD_LETTER_MARGIN, dead_letter_record, error_headers
from streams.kafka.settings import Settings

if TYPE_CHECKING:
    from streams.interfaces.fhir_events import FhirFeed
    from streams.interfaces.pseudonym import Pseudonymizer

# The live bridges' topics. Those the worker shares (its input, its dead letters, its
# escalations) default to the worker's settings, whose defaults are the names of DESIGN §2.
FHIR_RESPONSES_TOPIC = "stepcare.fhir.questionnaire-responses.v1"
HL7_ADT_TOPIC = "stepcare.hl7v2.adt.v1"
PATIENT_EVENTS_TOPIC = "stepcare.patient-events.v1"
PATIENT_EVENTS_DLQ_TOPIC = "stepcare.patient-events.dlq.v1"
ESCALATIONS_TOPIC = "stepcare.escalations.v1"
FHIR_BUNDLES_TOPIC = "stepcare.escalations.fhir.v1"
FHIR_BUNDLES_DLQ_TOPIC = "stepcare.escalations.fhir.dlq.v1"
FHIR_JSON = "application/fhir+json"
REPORT_EVERY = 60.0  # seconds between summary lines of a live bridge
BATCH = 500  # records a live bridge produces before it waits for the acks and commits
PROCESSING_ERROR = "processing-error"  # a defect of an adapter, not of the input
LAG_EVERY = 5.0  # seconds between measurements of a live bridge's consumer lag

Headers = list[tuple[str, bytes]]
# What a bridge does with one record: (value, headers) -> its Output, or Ignored; AdapterError
# refuses the record (a dead letter).
Converter = Callable[[bytes | None, Headers], "Output | Ignored"]


class BridgeError(StepcareError):
    """The bridge cannot go on (a record not delivered, a fatal Kafka error): exit status 1.
    Nothing of the batch in hand was committed: a restart reads it again."""


@dataclass(frozen=True, slots=True)
class Output:
    """One record a bridge writes for one record it read."""

    key: bytes
    value: bytes
    timestamp: int  # ms: the record timestamp
    headers: Headers


def fhir_in_record(
    value: bytes | None,
    pseudonymizer: Pseudonymizer,
    *,
    fhir_base: str = "",
    source: str = "fhir",
    event_value: Callable[[dict[str, Any]], bytes] | None = None,
    feed: FhirFeed | None = None,
) -> Output | Ignored:
    """The PatientEvent record of one FHIR resource record (a QuestionnaireResponse, or a
    resource of ``streams.interfaces.fhir_events.SUPPORTED``), :class:`Ignored` for a valid
    resource that is no event (``AdapterError`` if refused). ``feed``, when given, says how the
    site's feed maps (its ``fhir_base`` and ``source`` win)."""
    from streams.interfaces.fhir_events import FhirFeed, resource_to_event

    if not value:
        raise AdapterError("not-json", "the record has no value")
    try:
        resource = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise AdapterError("not-json", f"{exc.msg} (column {exc.colno})") from None
    if not isinstance(resource, dict):
        raise AdapterError("fhir-invalid", "not a JSON object")
    result = resource_to_event(
        resource, pseudonymizer, feed or FhirFeed(fhir_base=fhir_base, source=source)
    )
    if isinstance(result, Ignored):
        return result
    return _event_output(result, event_value)


def hl7_in_record(
    value: bytes | None,
    pseudonymizer: Pseudonymizer,
    *,
    timezone: str | tzinfo = "UTC",
    inpatient_classes: tuple[str, ...] = ("I",),
    identifier_type: str | None = None,
    source: str = "adt",
    event_value: Callable[[dict[str, Any]], bytes] | None = None,
) -> Output | Ignored:
    """The PatientEvent record of one ADT message record, or :class:`Ignored`."""
    from streams.interfaces import hl7

    if not value:
        raise AdapterError(hl7.MALFORMED, "the record has no value")
    result = hl7.adt_to_event(
        value,
        pseudonymizer,
        timezone=timezone,
        inpatient_classes=inpatient_classes,
        identifier_type=identifier_type,
        source=source,
    )
    if isinstance(result, Ignored):
        return result
    return _event_output(result, event_value)


def _event_output(
    event: dict[str, Any], event_value: Callable[[dict[str, Any]], bytes] | None
) -> Output:
    """A PatientEvent as its record: keyed by ``patient_id``, Avro (``event_value``: in the
    configured framing; default single-object encoding), stamped ``occurred_at``."""
    from streams.clinical.events import parse_time
    from streams.formats.avro import encode_event

    return Output(
        key=event["patient_id"].encode(),
        value=(event_value or encode_event)(event),
        timestamp=parse_time(event["occurred_at"]),
        headers=[],
    )


def fhir_out_record(
    value: bytes | None,
    headers: Headers | None = None,
    decode: Callable[[bytes], dict[str, Any]] | None = None,
) -> Output:
    """The transaction Bundle record of one escalation record: JSON, keyed by ``patient_id``,
    with the escalation's headers (``content-type`` becomes ``application/fhir+json``).
    ``decode``: reads both framings (``streams.kafka.registry.Framing.decode_escalation``);
    default: single-object encoding only."""
    from streams.clinical.events import parse_time
    from streams.formats.avro import CodecError, decode_escalation
    from streams.interfaces import fhir

    try:
        escalation = (decode or decode_escalation)(value)  # type: ignore[arg-type]
    except CodecError as exc:
        raise AdapterError(exc.reason, str(exc)) from None
    bundle = fhir.escalation_to_bundle(escalation)
    kept = [(k, v) for k, v in headers or [] if k != "content-type"]
    return Output(
        key=escalation["patient_id"].encode(),
        value=orjson.dumps(bundle),
        timestamp=parse_time(escalation["occurred_at"]),
        headers=[*kept, ("content-type", FHIR_JSON.encode())],
    )


class LiveBridge:
    """Consume, convert, produce, wait for the acks, commit (docs/integration.md, "Running the
    bridges")."""

    def __init__(
        self,
        name: str,
        convert: Converter,
        *,
        source: str,
        target: str,
        dead_letters: str,
        consumer_config: dict[str, Any],
        producer_config: dict[str, Any],
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        report_every: float = REPORT_EVERY,
        err: IO[str] | None = None,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self.name, self.convert = name, convert
        self.metrics = metrics or BridgeMetrics(name, kafka_reading=True)
        self.source, self.target, self.dead_letters = source, target, dead_letters
        self.consumer_config, self.producer_config = consumer_config, producer_config
        # librdkafka refuses a record above message.max.bytes: a dead letter always fits under it.
        self.dead_letter_limit = (
            int(producer_config.get("message.max.bytes", 1_000_000)) - DEAD_LETTER_MARGIN
        )
        self.max_messages, self.idle_timeout = max_messages, idle_timeout
        self.report_every = report_every
        self.err = sys.stderr if err is None else err
        self.stopping = False
        self.read = self.written = 0
        self.reasons: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.started = time.monotonic()

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        from confluent_kafka import Consumer, KafkaException, Producer

        try:
            consumer = Consumer(self.consumer_config)
            producer = Producer(self.producer_config)
        except KafkaException as exc:
            raise BridgeError(f"cannot create a Kafka client: {error_text(exc)}") from None
        consumer.subscribe([self.source])
        last_record = next_report = next_lag = time.monotonic()
        next_report += self.report_every
        try:
            while not self.stopping:
                if self.max_messages is not None and self.read >= self.max_messages:
                    break
                batch = self._next_batch(consumer)
                now = time.monotonic()
                if batch:
                    last_record = now
                    self._handle(batch, producer, consumer)
                elif self.idle_timeout is not None and now - last_record >= self.idle_timeout:
                    break
                if now >= next_report:
                    self._say(self.summary())
                    next_report = now + self.report_every
                if now >= next_lag:
                    self._measure_lag(consumer)
                    next_lag = time.monotonic() + LAG_EVERY
        finally:
            producer.flush(30)
            consumer.close()  # leaves the group at once: its partitions move without a wait
            self._say(self.summary())
        return 0

    def _measure_lag(self, consumer: Any) -> None:
        """``stepcare_bridge_consumer_lag`` of the partitions assigned: end offset - committed
        (what ``kafka-consumer-groups.sh --describe`` reports); left as it was if Kafka cannot
        be asked now."""
        from confluent_kafka import KafkaException

        try:
            assigned = consumer.assignment()
            if not assigned:
                return
            lags = {}
            for tp in consumer.committed(assigned, timeout=2):
                end = consumer.get_watermark_offsets(tp, timeout=2, cached=False)[1]
                lags[tp.partition] = max(0, end - max(tp.offset, 0))
        except KafkaException:
            return
        self.metrics.set_lag(lags)

    def _next_batch(self, consumer: Any) -> list[Any]:
        from confluent_kafka import KafkaError

        first = consumer.poll(0.5)
        if first is None:
            return []
        room = BATCH if self.max_messages is None else min(BATCH, self.max_messages - self.read)
        records = [first]
        if room > 1:  # what has already been fetched, without waiting for more
            records += consumer.consume(num_messages=room - 1, timeout=0)
        batch = []
        for record in records:
            error = record.error()
            if error is None:
                batch.append(record)
            elif error.fatal():
                raise BridgeError(f"Kafka: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                self._say(f"bridge {self.name}: Kafka: {error.str()}")
        return batch

    def _handle(self, batch: list[Any], producer: Any, consumer: Any) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        failed: list[str] = []

        def delivered(counter: str, error: Any, msg: Any, reason: str | None = None) -> None:
            if error is not None:
                failed.append(error.str())
            elif counter == "written":
                self.written += 1
                self.metrics.handled(PUBLISHED)
            else:
                self.metrics.handled(DEAD_LETTERED, reason)

        positions: dict[tuple[str, int], int] = {}
        for record in batch:
            self.read += 1
            positions[(record.topic(), record.partition())] = record.offset() + 1
            headers = record.headers() or []
            result: Output | Ignored | AdapterError
            try:
                result = self.convert(record.value(), headers)
            except AdapterError as exc:
                result = exc
            except Exception as exc:  # a defect on untrusted input: set the record aside
                result = AdapterError(PROCESSING_ERROR, f"{type(exc).__name__} in the adapter")
            if isinstance(result, Ignored):
                self.ignored[f"{result.reason} {result.detail}"] += 1
                self.metrics.handled(IGNORED)
            elif isinstance(result, AdapterError):
                self.reasons[result.reason] += 1
                self._say(
                    f"bridge {self.name}: dead letter: {result.reason} "
                    f"(partition {record.partition()} offset {record.offset()})"
                )
                own = error_headers(result.reason, result.detail, record.topic(),
                                    record.partition(), record.offset())  # fmt: skip
                key, value, dead_headers = dead_letter_record(
                    record.key(), record.value(), list(headers), own, self.dead_letter_limit
                )
                produce(
                    producer, self.dead_letters, key=key, value=value, headers=dead_headers,
                    on_delivery=partial(delivered, "dead", reason=result.reason),
                )  # fmt: skip
            else:
                produce(
                    producer, self.target, key=result.key, value=result.value,
                    timestamp=result.timestamp, headers=result.headers or None,
                    on_delivery=lambda e, m: delivered("written", e, m),
                )  # fmt: skip
        while producer.flush(5.0):  # every record acknowledged (or failed) before the commit
            if self.stopping and producer.flush(25.0):
                break
        if failed or len(producer):
            self.failures.update(failed or ["not acknowledged in time"])
            reasons = "; ".join(f"{n} x {r}" for r, n in self.failures.most_common())
            raise BridgeError(
                f"bridge {self.name}: records not delivered ({reasons}); nothing of this batch "
                "was committed: it is read again when the bridge restarts"
            )
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. the partitions moved: read again, at least once
            self._say(f"bridge {self.name}: commit failed ({error_text(exc)}); "
                      "these records will be read again")  # fmt: skip

    def summary(self) -> str:
        parts = [f"{self.read} read", f"{self.written} written to {self.target}"]
        parts.append(f"{sum(self.reasons.values())} dead-lettered" + breakdown(self.reasons))
        parts.append(f"{sum(self.ignored.values())} ignored" + breakdown(self.ignored))
        seconds = time.monotonic() - self.started
        return f"bridge {self.name}: {', '.join(parts)} in {seconds:.1f} s"

    def _say(self, line: str) -> None:
        print(line, file=self.err, flush=True)


def run_live(
    name: str,
    convert: Converter,
    settings: Settings,
    *,
    source: str,
    target: str,
    dead_letters: str,
    group: str,
    bootstrap_servers: str | None = None,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
    report_every: float = REPORT_EVERY,
    fingerprint: str | None = None,
    metrics_host: str = bridge_metrics.DEFAULT_HOST,
    metrics_port: int = 0,
) -> int:
    """Run the bridge ``name`` on the broker of ``settings`` (or ``bootstrap_servers``), creating
    its missing topics: 0 after a clean stop (SIGTERM, Ctrl-C, ``max_messages``,
    ``idle_timeout``), 1 if a record could not be delivered. ``fingerprint``: the pseudonym
    secret's, for the start line of an ``-in`` bridge. ``/metrics`` on ``metrics_host:
    metrics_port`` (0: none), bound before anything else (``MetricsPortError`` if it cannot)."""
    metrics = BridgeMetrics(name, kafka_reading=True)
    server = bridge_metrics.serve(metrics, metrics_host, metrics_port)
    try:
        return _run_live(
            name, convert, settings, source=source, target=target, dead_letters=dead_letters,
            group=group, bootstrap_servers=bootstrap_servers, max_messages=max_messages,
            idle_timeout=idle_timeout, report_every=report_every, fingerprint=fingerprint,
            metrics=metrics, metrics_line="" if server is None else
            f", metrics on http://{server.address[0]}:{server.address[1]}/metrics",
        )  # fmt: skip
    finally:
        if server is not None:
            server.close()


def _run_live(
    name: str,
    convert: Converter,
    settings: Settings,
    *,
    source: str,
    target: str,
    dead_letters: str,
    group: str,
    bootstrap_servers: str | None,
    max_messages: int | None,
    idle_timeout: float | None,
    report_every: float,
    fingerprint: str | None,
    metrics: BridgeMetrics,
    metrics_line: str,
) -> int:
    import signal

    connection = connection_config(settings, bootstrap_servers)
    producer = {**connection, **SAFE_PRODUCER, "client.id": f"stepcare-bridge-{name}"}
    created = _ensure_topics(connection, (source, target, dead_letters), settings)
    if created:
        _err(f"created topics {', '.join(created)} ({settings.partitions} partitions)")
    consumer = {
        **connection,
        "group.id": group,
        "client.id": f"stepcare-bridge-{name}",
        "enable.auto.commit": False,  # offsets are committed after the produce is acknowledged
        "auto.offset.reset": "earliest",  # a new group misses nothing already on the topic
        "isolation.level": "read_committed",
        "logger": librdkafka_logger("bridge", settings.log_level),
    }
    producer["logger"] = consumer["logger"]
    bridge = LiveBridge(
        name, convert, source=source, target=target, dead_letters=dead_letters,
        consumer_config=consumer, producer_config=producer, max_messages=max_messages,
        idle_timeout=idle_timeout, report_every=report_every, metrics=metrics,
    )  # fmt: skip
    identity = "" if fingerprint is None else f", pseudonym secret {fingerprint}"
    _err(
        f"bridge {name}: {source} -> {target} (dead letters: {dead_letters}), "
        f"group {group}{identity}{metrics_line}"
    )
    previous = {sig: signal.signal(sig, bridge.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return bridge.run()
    except BridgeError as exc:
        _err(f"stepcare: {exc}")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ensure_topics(config: dict[str, Any], names: tuple[str, ...], settings: Settings) -> list[str]:
    """Create the missing topics of a bridge (source, target, dead letters) as the worker creates
    its own (STEPCARE_PARTITIONS, STEPCARE_REPLICATION); the names created."""
    from streams.kafka.topics import create_topics, existing_topics

    admin, existing = existing_topics(config)
    missing = sorted({n for n in names if n not in existing})
    create_topics(admin, settings, missing, keep=names[:2])  # dead letters: default retention
    return missing


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
