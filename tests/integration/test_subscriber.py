"""`examples/subscriber.py`, the scheduling-system example, against a real broker.

The escalation topic gets what a subscriber can meet in production: plain and transactional
records, redeliveries (the same escalation_id again) and a transaction that was aborted. The
subscriber runs as a separate process, is stopped in the middle and restarted with the same state
file, and must book every committed escalation exactly once, none of the aborted ones, and leave
its group's offsets at the end of the topic. It must also stop, without committing past it, on a
record of a schema it does not know, and decode it once it is given that schema. In the registry
framing (``00`` + schema id, as stepcare writes with ``STEPCARE_WIRE_FORMAT=registry``) it reads
through a real schema registry, and stops in the same way without one, on an unknown id, or
when the registry cannot be asked.
"""

from __future__ import annotations

import ast
import copy
import datetime as dt
import importlib.util
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.formats.avro import encode_escalation
from streams.formats.wire import registry_header
from streams.kafka.registry import framing_for
from streams.kafka.settings import Settings
from tests.integration.test_broker_smoke import consume_all, create_topic

REPO = Path(__file__).resolve().parents[2]
SUBSCRIBER = REPO / "examples" / "subscriber.py"
SCHEMA = REPO / "schemas" / "org.stepcare.Escalation.avsc"
ESCALATIONS = REPO / "examples" / "three-patients.escalations.jsonl"


def load_escalations() -> list[dict[str, Any]]:
    return [json.loads(line) for line in ESCALATIONS.read_text().splitlines() if line.strip()]


def headers(escalation: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The record headers stepcare sets (DESIGN §2, docs/asyncapi.yaml)."""
    return [
        ("ce_id", escalation["escalation_id"].encode()),
        ("ce_type", f"org.stepcare.escalation.{escalation['kind']}".encode()),
        ("ce_source", f"stepcare/{escalation['policy_id']}".encode()),
        ("ce_time", escalation["occurred_at"].encode()),
        ("ce_specversion", b"1.0"),
        ("content-type", b"application/avro"),
    ]


def send(
    producer: Producer, topic: str, escalations: list[dict[str, Any]], header: bytes | None = None
) -> None:
    """Produce ``escalations`` as stepcare does; ``header``: the registry framing's 5 bytes."""
    for escalation in escalations:
        producer.produce(
            topic,
            key=escalation["patient_id"].encode(),
            value=encode_escalation(escalation, header),
            headers=headers(escalation),
        )


@dataclass
class Run:
    returncode: int
    bookings: list[dict[str, Any]]
    stderr: str


class Subscriber:
    """The example as a hospital team uses it: a copy outside the repo, run as its own process."""

    def __init__(self, bootstrap: str, topic: str, tmp_path: Path) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.workdir = tmp_path / "hospital"
        self.workdir.mkdir()
        self.script = self.workdir / "subscriber.py"
        shutil.copy(SUBSCRIBER, self.script)
        self.schema = self.workdir / "org.stepcare.Escalation.avsc"
        shutil.copy(SCHEMA, self.schema)
        self.state = self.workdir / "state.sqlite"

    def run(self, group: str, *options: str, schemas: tuple[Path, ...] = (), **env: str) -> Run:
        schema_args = [arg for path in (self.schema, *schemas) for arg in ("--schema", str(path))]
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith("STEPCARE_SCHEMA_REGISTRY")
        }
        proc = subprocess.run(
            [sys.executable, str(self.script), "--bootstrap-servers", self.bootstrap,
             "--topic", self.topic, "--group", group, "--state", str(self.state),
             *schema_args, *options],
            cwd=self.workdir, capture_output=True, text=True, timeout=180, env={**environ, **env},
        )  # fmt: skip
        bookings = [json.loads(line) for line in proc.stdout.splitlines()]
        return Run(proc.returncode, bookings, proc.stderr)

    def stored_bookings(self) -> dict[str, tuple[str, str, str | None]]:
        with sqlite3.connect(self.state) as db:
            rows = db.execute("SELECT escalation_id, patient_id, kind, due_by FROM bookings")
            result = {row[0]: tuple(row[1:]) for row in rows}
            handled = {
                row[0] for row in db.execute("SELECT escalation_id FROM handled_escalations")
            }
        db.close()
        assert handled == set(result)
        return result


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found if tp.offset >= 0}


def reads(run: Run) -> int:
    """How many escalations the run read, from its summary line on stderr."""
    summary = [line for line in run.stderr.splitlines() if "escalations read" in line]
    assert len(summary) == 1, run.stderr
    return int(summary[0].split("subscriber: ", 1)[1].split()[0])


def test_subscriber_books_each_committed_escalation_once_across_a_restart(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    escalations = load_escalations()
    assert len({e["escalation_id"] for e in escalations}) == len(escalations) == 17
    aborted = [
        {**e, "escalation_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"aborted/{e['escalation_id']}"))}
        for e in escalations[:4]
    ]
    redelivered = [escalations[2], escalations[4], escalations[8], escalations[14], escalations[0]]

    plain = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    transactional = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"t-{uuid.uuid4().hex}"}
    )
    transactional.init_transactions(30)
    send(plain, topic_name, escalations[:6])
    assert plain.flush(30) == 0
    transactional.begin_transaction()
    send(transactional, topic_name, escalations[6:12] + redelivered[:2])
    transactional.commit_transaction(30)
    transactional.begin_transaction()
    send(transactional, topic_name, aborted)
    assert transactional.flush(30) == 0
    transactional.abort_transaction(30)
    send(plain, topic_name, escalations[12:] + redelivered[2:])
    assert plain.flush(30) == 0
    committed = 17 + len(redelivered)

    # What a read_committed reader sees: the expected input of the subscriber.
    visible = consume_all(kafka_bootstrap, topic_name, expected=committed)
    assert len(visible) == committed
    end = {}
    for msg in visible:
        end[msg.partition()] = max(end.get(msg.partition(), 0), msg.offset() + 1)

    subscriber = Subscriber(kafka_bootstrap, topic_name, tmp_path)
    group = f"scheduling-{uuid.uuid4().hex[:8]}"

    first = subscriber.run(group, "--max-messages", "9", "--batch", "4")
    assert first.returncode == 0, first.stderr
    assert reads(first) == 9
    assert 0 < len(first.bookings) <= 9

    second = subscriber.run(group, "--idle-timeout", "8")
    assert second.returncode == 0, second.stderr
    # Committed offsets after the first run: nothing read twice, nothing skipped, nothing aborted.
    assert reads(second) == committed - 9

    booked = [b["escalation_id"] for b in first.bookings + second.bookings]
    assert len(booked) == len(set(booked)), "an escalation was booked twice"
    assert set(booked) == {e["escalation_id"] for e in escalations}
    assert not set(booked) & {e["escalation_id"] for e in aborted}
    by_id = {e["escalation_id"]: e for e in escalations}
    for booking in first.bookings + second.bookings:
        source = by_id[booking["escalation_id"]]
        assert booking["patient_id"] == source["patient_id"]
        assert booking["kind"] == source["kind"]
        assert booking["due_by"] == source["due_by"]
    assert subscriber.stored_bookings() == {
        e["escalation_id"]: (e["patient_id"], e["kind"], e["due_by"]) for e in escalations
    }
    assert committed_offsets(kafka_bootstrap, group, topic_name, 3) == end

    # Offsets lost (a new group), same state file: everything is read again, nothing rebooked.
    again = subscriber.run(f"{group}-new", "--idle-timeout", "8")
    assert again.returncode == 0, again.stderr
    assert reads(again) == committed
    assert again.bookings == []


def newer_schema(path: Path) -> dict[str, Any]:
    """A compatible future Escalation version: one more field, with a default."""
    schema = json.loads(SCHEMA.read_text())
    schema["fields"].append({"name": "site", "type": "string", "default": ""})
    path.write_text(json.dumps(schema))
    return schema


def millis(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)


def soe(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    out = io.BytesIO()
    out.write(b"\xc3\x01")
    out.write(bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")))
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def test_subscriber_stops_on_an_unknown_schema_without_skipping_it(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name)
    escalations = load_escalations()[:4]
    subscriber = Subscriber(kafka_bootstrap, topic_name, tmp_path)
    newer_path = subscriber.workdir / "org.stepcare.Escalation.v2.avsc"
    newer = newer_schema(newer_path)

    future = {
        **escalations[2],
        "site": "ward-7",
        "occurred_at": millis(escalations[2]["occurred_at"]),
        "due_by": millis(escalations[2]["due_by"]),
    }
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    send(producer, topic_name, escalations[:2])
    producer.produce(topic_name, key=b"p-003", value=soe(newer, future))
    send(producer, topic_name, escalations[3:])
    assert producer.flush(30) == 0

    group = f"scheduling-{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # a restart does not get past it either
        stopped = subscriber.run(group, "--idle-timeout", "8")
        assert stopped.returncode == 3, stopped.stderr
        assert "unknown schema fingerprint" in stopped.stderr
        assert committed_offsets(kafka_bootstrap, group, topic_name, 1) == {0: 2}
    assert set(subscriber.stored_bookings()) == {e["escalation_id"] for e in escalations[:2]}

    # Given the newer schema, it reads the record into the schema it was written against.
    resumed = subscriber.run(group, "--idle-timeout", "8", schemas=(newer_path,))
    assert resumed.returncode == 0, resumed.stderr
    assert [b["escalation_id"] for b in resumed.bookings] == [
        escalations[2]["escalation_id"],
        escalations[3]["escalation_id"],
    ]
    assert resumed.bookings[0]["due_by"] == escalations[2]["due_by"]
    assert committed_offsets(kafka_bootstrap, group, topic_name, 1) == {0: 4}


ACTIONS = {
    "VISIT_OVERDUE": "follow-up",
    "SURVEY_OVERDUE": "follow-up",
    "VISIT_REQUEST_CANCELLED": "cancel-request",
}


def booking_line(escalation: dict[str, Any]) -> dict[str, Any]:
    """The JSON line the subscriber prints when it books ``escalation`` (its docstring)."""
    return {
        "escalation_id": escalation["escalation_id"],
        "patient_id": escalation["patient_id"],
        "kind": escalation["kind"],
        "action": ACTIONS.get(escalation["kind"], "book-visit"),
        "due_by": escalation["due_by"],
    }


def test_subscriber_reads_both_framings_and_stops_on_registry_records_without_a_registry(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, schema_registry_url: str
) -> None:
    """A topic whose writer switched to the registry framing mid-stream (STEPCARE_WIRE_FORMAT
    changed and the worker restarted): single-object records, then registry-framed ones."""
    create_topic(kafka_bootstrap, topic_name)
    escalations = load_escalations()
    settings = Settings(wire_format="registry", schema_registry_url=schema_registry_url)
    framing = framing_for(settings, events_topic=f"{topic_name}.in", escalations_topic=topic_name)
    header = framing.escalation_header  # what stepcare's worker writes: its registered id
    assert header[:1] == b"\x00"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    send(producer, topic_name, escalations[:5])
    send(producer, topic_name, escalations[5:], header)
    assert producer.flush(30) == 0
    subscriber = Subscriber(kafka_bootstrap, topic_name, tmp_path)
    group = f"scheduling-{uuid.uuid4().hex[:8]}"

    # No registry given: a clear one-line report at the first registry-framed record.
    stopped = subscriber.run(group, "--idle-timeout", "8")
    assert stopped.returncode == 3, stopped.stderr
    schema_id = int.from_bytes(header[1:], "big")
    assert (
        f"subscriber: cannot decode the record at {topic_name} [0] @ 5: registry-framed record "
        f"(schema id {schema_id}) but no schema registry is configured: give --registry URL or "
        "set STEPCARE_SCHEMA_REGISTRY_URL"
    ) in stopped.stderr.splitlines()
    assert committed_offsets(kafka_bootstrap, group, topic_name, 1) == {0: 5}
    assert [b["escalation_id"] for b in stopped.bookings] == [
        e["escalation_id"] for e in escalations[:5]
    ]

    # The registry from stepcare's setting: the rest is read by confluent-kafka's deserializer.
    resumed = subscriber.run(
        group, "--idle-timeout", "8", STEPCARE_SCHEMA_REGISTRY_URL=schema_registry_url
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.bookings == [booking_line(e) for e in escalations[5:]]
    assert committed_offsets(kafka_bootstrap, group, topic_name, 1) == {0: 17}
    assert subscriber.stored_bookings() == {
        e["escalation_id"]: (e["patient_id"], e["kind"], e["due_by"]) for e in escalations
    }

    # The same topic from the start with --registry: both framings in one run.
    (tmp_path / "again").mkdir()
    again = Subscriber(kafka_bootstrap, topic_name, tmp_path / "again")
    both = again.run(f"{group}-2", "--idle-timeout", "8", "--registry", schema_registry_url)
    assert both.returncode == 0, both.stderr
    assert both.bookings == [booking_line(e) for e in escalations]


def test_subscriber_stops_on_an_unknown_schema_id_and_on_an_unreachable_registry(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, schema_registry_url: str
) -> None:
    create_topic(kafka_bootstrap, topic_name)
    escalations = load_escalations()[:3]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    send(producer, topic_name, escalations[:1])
    send(producer, topic_name, escalations[1:2], registry_header(2_000_000_000))
    send(producer, topic_name, escalations[2:])
    assert producer.flush(30) == 0
    subscriber = Subscriber(kafka_bootstrap, topic_name, tmp_path)
    group = f"scheduling-{uuid.uuid4().hex[:8]}"

    unknown = subscriber.run(group, "--idle-timeout", "8", "--registry", schema_registry_url)
    assert unknown.returncode == 3, unknown.stderr
    assert (
        f"subscriber: cannot decode the record at {topic_name} [0] @ 1: the schema registry has "
        "no schema id 2000000000"
    ) in unknown.stderr.splitlines()
    assert committed_offsets(kafka_bootstrap, group, topic_name, 1) == {0: 1}

    closed = "http://127.0.0.1:9/apis/ccompat/v7"  # port 9 (discard): nothing listens
    unreachable = subscriber.run(group, "--idle-timeout", "8", "--registry", closed)
    assert unreachable.returncode == 4, unreachable.stderr
    lines = unreachable.stderr.splitlines()
    prefix = (
        f"subscriber: cannot ask the schema registry about the record at {topic_name} [0] @ 1: "
        f"{closed}: schema id 2000000000: "
    )
    assert [line for line in lines if line.startswith(prefix)], unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert committed_offsets(kafka_bootstrap, group, topic_name, 1) == {0: 1}
    assert set(subscriber.stored_bookings()) == {escalations[0]["escalation_id"]}


def test_subscriber_is_standalone() -> None:
    """A hospital team copies the file: it imports nothing of stepcare."""
    tree = ast.parse(SUBSCRIBER.read_text())
    modules = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0] for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }  # fmt: skip
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert modules - stdlib == {"confluent_kafka", "fastavro"}


def test_subscriber_security_settings_come_from_the_environment() -> None:
    spec = importlib.util.spec_from_file_location("example_subscriber", SUBSCRIBER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    environ = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "ward-7",
        "KAFKA_SASL_PASSWORD": "secret",
        "KAFKA_SSL_CA_LOCATION": "/etc/ssl/hospital-ca.pem",
    }
    args = module.parse_args(["--group", "g", "--state", "s.sqlite", "--schema", str(SCHEMA)])
    config = module.consumer_config(args, environ)
    assert config["isolation.level"] == "read_committed"
    assert config["enable.auto.commit"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert {k: config[k] for k in module.security_config(environ)} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ward-7",
        "sasl.password": "secret",
        "ssl.ca.location": "/etc/ssl/hospital-ca.pem",
    }
    assert "security.protocol" not in module.consumer_config(args, {})
    assert module.registry_config(None, environ) is None
    assert module.registry_config(
        "https://registry.hospital.example/apis/ccompat/v7",
        {
            "STEPCARE_SCHEMA_REGISTRY_USERNAME": "ward-7",
            "STEPCARE_SCHEMA_REGISTRY_PASSWORD": "secret",
            "STEPCARE_SCHEMA_REGISTRY_CAFILE": "/etc/ssl/hospital-ca.pem",
        },
    ) == {
        "url": "https://registry.hospital.example/apis/ccompat/v7",
        "basic.auth.user.info": "ward-7:secret",
        "ssl.ca.location": "/etc/ssl/hospital-ca.pem",
    }
