#!/usr/bin/env python3
"""An example scheduling-system subscriber to stepcare's escalations. Copy it and adapt it.

What it shows, in the order a hospital integration team needs it:

1. **Reading only committed escalations.** A confluent-kafka ``Consumer`` with
   ``isolation.level=read_committed``: records of a stepcare transaction that was aborted (a
   worker crash under ``exactly_once``) are never seen. ``auto.offset.reset=earliest``, so a new
   consumer group starts at the beginning of the topic's retention and misses nothing.
2. **Decoding both framings, told apart by the first byte** (docs/integration.md, "Wire
   format"). ``C3``: Avro single-object encoding, ``C3 01``, the 8-byte little-endian
   CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro body;
   no schema registry is needed: the decoder loads the ``.avsc`` files you give it and computes
   their fingerprints. ``00``: the registry framing (Confluent wire format), ``00``, a 4-byte
   big-endian schema id, then the Avro body; read with confluent-kafka's own
   ``SchemaRegistryClient`` and ``AvroDeserializer`` when a registry is given (``--registry
   URL`` or ``STEPCARE_SCHEMA_REGISTRY_URL``). Either way it **stops loudly** on a record whose
   writer schema it cannot know (an unknown fingerprint: add the newer ``.avsc`` with a second
   ``--schema``; an unknown schema id; a registry-framed record and no registry), without
   committing past it, so no escalation is skipped silently. Records are read into the first
   ``--schema`` (your code's schema) by Avro schema resolution, in both framings.
3. **Deduplicating on escalation_id.** stepcare publishes at least once and its ids are
   deterministic, so the same escalation can arrive twice (a redelivery, a worker restart, a
   rebalance here). The "booking" and the record "this escalation_id was handled" are written
   in **one SQLite transaction** in the ``--state`` file: after a crash either both exist or
   neither does, and a redelivered escalation finds its id and is skipped. The state survives
   restarts; a new consumer group with an old state file books nothing twice.
4. **Committing offsets after handling, synchronously.** ``enable.auto.commit=False``; after
   each small batch is handled (and its SQLite transactions committed) the next offsets are
   committed with a synchronous commit. A crash between the two only causes redelivery, which
   step 3 absorbs: together, each escalation is booked exactly once.

"Handling" here is a stand-in: a row in the ``bookings`` table and one JSON line on stdout
(``escalation_id``, ``patient_id``, ``kind``, ``action``, ``due_by``; after the SQLite commit).
``action`` is ``book-visit`` for the visit kinds, ``follow-up`` for ``VISIT_OVERDUE`` and
``SURVEY_OVERDUE``, ``cancel-request`` for ``VISIT_REQUEST_CANCELLED`` and ``review`` for a kind
this script does not know yet (new kinds may be added; never fail on one). A real system also
replaces the patient's open request on ``STEP_UP`` and ``MONTHLY_VISIT_DUE``: per patient, the
escalations arrive in order (one partition per patient key).

Run it (the local development broker; Ctrl-C stops it cleanly)::

    python examples/subscriber.py --bootstrap-servers 127.0.0.1:9092 \\
        --group scheduling-ward-7 --state bookings.sqlite \\
        --schema schemas/org.stepcare.Escalation.avsc \\
        --registry http://127.0.0.1:8081/apis/ccompat/v7   # only for the registry framing

On a secured cluster, set ``KAFKA_SECURITY_PROTOCOL=SASL_SSL``, ``KAFKA_SASL_MECHANISM`` (for
example ``SCRAM-SHA-512``), ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD`` and, if the broker's
CA is not in the system trust store, ``KAFKA_SSL_CA_LOCATION``. A registry with basic
authentication or its own CA: ``STEPCARE_SCHEMA_REGISTRY_USERNAME``,
``STEPCARE_SCHEMA_REGISTRY_PASSWORD`` and ``STEPCARE_SCHEMA_REGISTRY_CAFILE`` (stepcare's names).

Exit status: 0 after Ctrl-C/SIGTERM, ``--max-messages`` or ``--idle-timeout``; 1 on a fatal
Kafka error; 2 for bad arguments; 3 when a record cannot be decoded (unknown schema or corrupt
value: see stderr; the offsets before it are committed, it and those after it are not); 4 when
the schema registry cannot be asked about a new schema id (unreachable, refused: restart when
it answers; nothing past the record is committed).

Needs only ``confluent-kafka`` and ``fastavro`` (pip install "confluent-kafka[avro]" fastavro;
the extra brings the schema registry client's dependencies); it does not import stepcare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import fingerprint, to_parsing_canonical_form

DEFAULT_TOPIC = "stepcare.escalations.v1"
DEFAULT_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "org.stepcare.Escalation.avsc"
SOE_MARKER = b"\xc3\x01"
SOE_HEADER_SIZE = 10  # marker (2) + fingerprint (8)
REGISTRY_MAGIC = 0  # the registry framing's first byte; then a 4-byte big-endian schema id
REGISTRY_HEADER_SIZE = 5
NOT_FOUND = 404

VISIT_KINDS = {
    "INITIAL_VISIT_DUE",
    "STEP_UP",
    "TREATMENT_CHANGE_VISIT_DUE",
    "POST_DISCHARGE_VISIT_DUE",
    "MONTHLY_VISIT_DUE",
}
FOLLOW_UP_KINDS = {"VISIT_OVERDUE", "SURVEY_OVERDUE"}


class UndecodableRecord(Exception):
    """A value this subscriber cannot decode: never skip it silently."""


class RegistryUnavailable(Exception):
    """The schema registry could not be asked about a schema id: not the record's fault."""


class EscalationDecoder:
    """Decoder of both framings: single-object encoding for the schemas it was given (by
    fingerprint), the registry framing through a schema registry, if it has one."""

    def __init__(
        self, schema_paths: Sequence[Path], registry: dict[str, Any] | None = None
    ) -> None:
        self.writers: dict[bytes, dict[str, Any]] = {}
        self.reader: dict[str, Any] | None = None
        reader_text = ""
        for path in schema_paths:
            text = path.read_text(encoding="utf-8")
            schema = fastavro.parse_schema(json.loads(text))
            canonical = to_parsing_canonical_form(schema)
            # fastavro gives the CRC-64-AVRO fingerprint as the hex of its little-endian bytes,
            # which is the byte order on the wire.
            self.writers[bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))] = schema
            if self.reader is None:
                self.reader, reader_text = schema, text
        if self.reader is None:
            raise ValueError("at least one schema is needed")
        self.registry_url = registry["url"] if registry else None
        self.registry: SchemaRegistryClient | None = None
        self.deserializer: AvroDeserializer | None = None
        if registry:
            self.registry = SchemaRegistryClient(registry)
            # The reader schema: records are resolved into your code's schema, as above.
            self.deserializer = AvroDeserializer(self.registry, reader_text)

    def known(self) -> list[str]:
        return [fp.hex() for fp in self.writers]

    def decode(self, value: bytes | None, topic: str) -> dict[str, Any]:
        if value and value[0] == REGISTRY_MAGIC:
            return self.decode_registry(value, topic)
        if value is None or len(value) < SOE_HEADER_SIZE or value[:2] != SOE_MARKER:
            raise UndecodableRecord(
                "neither framing: not Avro single-object encoding (C3 01 ...) nor the registry "
                "framing (00 ...)"
            )
        fp = value[2:SOE_HEADER_SIZE]
        writer = self.writers.get(fp)
        if writer is None:
            raise UndecodableRecord(
                f"unknown schema fingerprint {fp.hex()} (known: {', '.join(self.known())}); "
                "add the newer Escalation .avsc with another --schema"
            )
        body = io.BytesIO(value[SOE_HEADER_SIZE:])
        try:
            record = fastavro.schemaless_reader(body, writer, self.reader)
        except Exception as exc:  # fastavro raises several types for a corrupt body
            raise UndecodableRecord(f"malformed Avro body: {exc}") from exc
        if body.tell() != len(value) - SOE_HEADER_SIZE:
            raise UndecodableRecord("malformed Avro body: trailing bytes")
        if not isinstance(record, dict):
            raise UndecodableRecord("the schema is not a record")
        return record

    def decode_registry(self, value: bytes, topic: str) -> dict[str, Any]:
        """A registry-framed value, by confluent-kafka's own deserializer."""
        if len(value) <= REGISTRY_HEADER_SIZE:
            raise UndecodableRecord(f"registry framing: {len(value)} bytes, no Avro body")
        schema_id = int.from_bytes(value[1:REGISTRY_HEADER_SIZE], "big")
        if self.registry is None or self.deserializer is None:
            raise UndecodableRecord(
                f"registry-framed record (schema id {schema_id}) but no schema registry is "
                "configured: give --registry URL or set STEPCARE_SCHEMA_REGISTRY_URL"
            )
        # The writer schema first (the client caches it, the deserializer asks it again):
        # an unknown id is the record's problem, an unreachable registry is not.
        try:
            writer = json.loads(str(self.registry.get_schema(schema_id).schema_str))
        except SchemaRegistryError as exc:
            if exc.http_status_code == NOT_FOUND:
                raise UndecodableRecord(
                    f"the schema registry has no schema id {schema_id}"
                ) from None
            raise RegistryUnavailable(
                f"{self.registry_url}: schema id {schema_id}: HTTP {exc.http_status_code}: "
                f"{exc.error_message}"
            ) from None
        except Exception as exc:  # httpx: refused, timed out, TLS
            raise RegistryUnavailable(
                f"{self.registry_url}: schema id {schema_id}: {type(exc).__name__}: {exc}"
            ) from None
        assert self.reader is not None
        name = writer.get("name") if isinstance(writer, dict) else None
        if name not in (self.reader["name"], self.reader["name"].rsplit(".", 1)[-1]):
            raise UndecodableRecord(
                f"schema id {schema_id} is not an {self.reader['name']} schema ({name!r})"
            )
        try:
            record = self.deserializer(value, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # fastavro and the deserializer raise several types
            raise UndecodableRecord(f"malformed Avro body (schema id {schema_id}): {exc}") from exc
        if not isinstance(record, dict):
            raise UndecodableRecord("the schema is not a record")
        return record


def rfc3339(value: dt.datetime | None) -> str | None:
    """``2024-03-29T09:30:00Z`` (milliseconds only when there are any), or None."""
    if value is None:
        return None
    value = value.astimezone(dt.UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def action_for(kind: str) -> str:
    if kind in VISIT_KINDS:
        return "book-visit"
    if kind in FOLLOW_UP_KINDS:
        return "follow-up"
    if kind == "VISIT_REQUEST_CANCELLED":
        return "cancel-request"
    return "review"


class BookingStore:
    """The subscriber's own state: handled escalation ids and the bookings, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        # isolation_level=None: no implicit transactions; each one is explicit below.
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed booking survives a power cut
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS handled_escalations (
                escalation_id TEXT PRIMARY KEY,
                kafka_topic TEXT NOT NULL,
                kafka_partition INTEGER NOT NULL,
                kafka_offset INTEGER NOT NULL,
                handled_at TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS bookings (
                escalation_id TEXT PRIMARY KEY REFERENCES handled_escalations(escalation_id),
                patient_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                action TEXT NOT NULL,
                due_by TEXT,
                reason TEXT NOT NULL
            );
            """
        )

    def handle(self, escalation: Mapping[str, Any], msg: Message) -> dict[str, Any] | None:
        """Book ``escalation`` unless its id was handled before; the booking line, or None."""
        booking = {
            "escalation_id": escalation["escalation_id"],
            "patient_id": escalation["patient_id"],
            "kind": escalation["kind"],
            "action": action_for(escalation["kind"]),
            "due_by": rfc3339(escalation["due_by"]),
        }
        now = rfc3339(dt.datetime.now(dt.UTC))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            inserted = self.db.execute(
                "INSERT OR IGNORE INTO handled_escalations VALUES (?, ?, ?, ?, ?)",
                (booking["escalation_id"], msg.topic(), msg.partition(), msg.offset(), now),
            ).rowcount
            if inserted:
                self.db.execute(
                    "INSERT INTO bookings VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        booking["escalation_id"],
                        booking["patient_id"],
                        booking["kind"],
                        booking["action"],
                        booking["due_by"],
                        escalation["reason"]["text"],
                    ),
                )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return booking if inserted else None

    def close(self) -> None:
        self.db.close()


# Refusals that retrying cannot cure: stop with exit status 1 instead of retrying forever.
REFUSED = {
    KafkaError._AUTHENTICATION,
    KafkaError._SSL,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
}


def stop_if_refused(error: KafkaError) -> None:
    """librdkafka's error callback: a refused login or TLS handshake ends the run."""
    if error.code() in REFUSED:
        raise KafkaException(error)


def security_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """librdkafka security settings from ``KAFKA_*`` environment variables (unset: omitted);
    ``KAFKA_SASL_PASSWORD_FILE`` names a file holding the password."""
    names = {
        "KAFKA_SECURITY_PROTOCOL": "security.protocol",
        "KAFKA_SASL_MECHANISM": "sasl.mechanism",
        "KAFKA_SASL_USERNAME": "sasl.username",
        "KAFKA_SASL_PASSWORD": "sasl.password",
        "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
    }
    config: dict[str, Any] = {key: environ[var] for var, key in names.items() if environ.get(var)}
    if environ.get("KAFKA_SASL_PASSWORD_FILE"):
        config["sasl.password"] = Path(environ["KAFKA_SASL_PASSWORD_FILE"]).read_text().strip()
    return config


def registry_config(url: str | None, environ: Mapping[str, str]) -> dict[str, Any] | None:
    """confluent-kafka ``SchemaRegistryClient`` settings, or None without a registry URL."""
    if not url:
        return None
    config: dict[str, Any] = {"url": url}
    user = environ.get("STEPCARE_SCHEMA_REGISTRY_USERNAME")
    if user:
        password = environ.get("STEPCARE_SCHEMA_REGISTRY_PASSWORD", "")
        config["basic.auth.user.info"] = f"{user}:{password}"
    if environ.get("STEPCARE_SCHEMA_REGISTRY_CAFILE"):
        config["ssl.ca.location"] = environ["STEPCARE_SCHEMA_REGISTRY_CAFILE"]
    return config


def consumer_config(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        "bootstrap.servers": args.bootstrap_servers,
        "group.id": args.group,
        "client.id": f"stepcare-subscriber-{args.group}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "error_cb": stop_if_refused,
        **security_config(environ),
    }


def log(text: str) -> None:
    print(f"subscriber: {text}", file=sys.stderr, flush=True)


class Stop:
    """Set by SIGINT/SIGTERM: the loop finishes its batch, commits, and leaves the group."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def commit(consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
    """Synchronously commit the next offset of every partition handled in this batch."""
    if not offsets:
        return
    try:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            asynchronous=False,
        )
    except KafkaException as exc:
        # E.g. the partition was reassigned in a rebalance: its new owner gets the records
        # again and the dedupe store skips them. Nothing is lost.
        log(f"offset commit failed ({exc.args[0]}); the records will be redelivered")
    offsets.clear()


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    registry = registry_config(
        args.registry or environ.get("STEPCARE_SCHEMA_REGISTRY_URL"), environ
    )
    decoder = EscalationDecoder(args.schema, registry)
    store = BookingStore(args.state)
    consumer = Consumer(consumer_config(args, environ))
    stop = Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    read = booked = duplicates = 0
    status = 0
    last_record = time.monotonic()
    try:
        consumer.subscribe([args.topic])
        log(
            f"reading {args.topic} as group {args.group}; schemas {', '.join(decoder.known())}; "
            f"schema registry {decoder.registry_url or 'none'}"
        )
        while not stop.requested:
            want = args.batch if args.max_messages is None else args.max_messages - read
            if want <= 0:
                break
            messages = consumer.consume(num_messages=min(want, args.batch), timeout=1.0)
            if not messages:
                idle = time.monotonic() - last_record
                if args.idle_timeout is not None and idle >= args.idle_timeout:
                    log(f"no record for {args.idle_timeout:g} s: stopping")
                    break
                continue
            last_record = time.monotonic()
            offsets: dict[tuple[str, int], int] = {}
            try:
                for msg in messages:
                    error = msg.error()
                    if error is not None:
                        if error.fatal() or error.code() in REFUSED:
                            raise KafkaException(error)
                        log(f"consumer: {error}")
                        continue
                    where = f"{msg.topic()} [{msg.partition()}] @ {msg.offset()}"
                    try:
                        escalation = decoder.decode(msg.value(), msg.topic() or args.topic)
                    except UndecodableRecord as exc:
                        log(f"cannot decode the record at {where}: {exc}")
                        log("stopping without committing past it; fix, then restart")
                        status = 3
                        return status
                    except RegistryUnavailable as exc:
                        log(f"cannot ask the schema registry about the record at {where}: {exc}")
                        log("stopping without committing past it; restart when it answers")
                        status = 4
                        return status
                    booking = store.handle(escalation, msg)
                    read += 1
                    if booking is None:
                        duplicates += 1
                    else:
                        booked += 1
                        print(json.dumps(booking), flush=True)
                    offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            finally:
                commit(consumer, offsets)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        consumer.close()  # leaves the group now, so its partitions move at once
        store.close()
        log(f"{read} escalations read: {booked} booked, {duplicates} duplicates skipped")
    return status


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Book palliative-care visits from stepcare escalations (example subscriber).",
        epilog="Security settings come from KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, "
        "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SSL_CA_LOCATION.",
    )
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default=DEFAULT_TOPIC)
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument(
        "--state", required=True, type=Path, help="SQLite file: handled ids and bookings"
    )
    parser.add_argument(
        "--schema",
        action="append",
        type=Path,
        metavar="AVSC",
        help="an Escalation schema file; repeat it to accept other versions: records are read "
        f"into the first one (default: {DEFAULT_SCHEMA})",
    )
    parser.add_argument(
        "--registry",
        metavar="URL",
        help="Confluent-compatible schema registry, to read registry-framed records (default: "
        "STEPCARE_SCHEMA_REGISTRY_URL; without either, such a record stops the subscriber)",
    )
    parser.add_argument(
        "--max-messages", type=positive_int, metavar="N", help="stop after N records"
    )
    parser.add_argument(
        "--idle-timeout", type=float, metavar="S", help="stop when no record arrived for S seconds"
    )
    parser.add_argument(
        "--batch", type=positive_int, default=100, help="records per offset commit (default 100)"
    )
    args = parser.parse_args(argv)
    args.schema = args.schema or [DEFAULT_SCHEMA]
    for path in args.schema:
        if not path.is_file():
            parser.error(f"--schema {path}: no such file")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args, os.environ)
    except KafkaException as exc:
        log(f"Kafka error: {exc.args[0]}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
