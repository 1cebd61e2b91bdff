"""The registry framing on a real broker and a real registry (Apicurio, Confluent API), proven
by stock clients rather than stepcare's own decoder: confluent-kafka's ``AvroDeserializer``
reads every escalation of a worker run, and it equals offline replay; events written by
``AvroSerializer`` are applied; an unknown schema id is dead-lettered with its reason."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.analysis.replay import canonical_json, replay
from streams.clinical.events import format_time, parse_time
from streams.clinical.policy import builtin_policy
from streams.devtools.demo import demo_cohort
from streams.formats import avro
from streams.formats.wire import registry_header
from tests.integration.workers import REPO, Deployment, read_topic

END = "2025-06-01T00:00:00Z"
EXAMPLE = REPO / "examples/three-patients.jsonl"
EXAMPLE_UNTIL = "2024-09-01T00:00:00Z"  # the --until of examples/three-patients.escalations.jsonl


def offline(events: list[dict[str, Any]], until: str) -> list[str]:
    output = io.StringIO()
    lines = [orjson.dumps(e).decode() for e in events]
    replay(lines, builtin_policy("step-pc-2024"), output, until=parse_time(until))
    return output.getvalue().splitlines()


def _time(value: datetime | None) -> str | None:
    """AvroDeserializer gives timestamp-millis as datetimes: back to DESIGN §3's text."""
    if value is None:
        return None
    return format_time((value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))


def stock_escalation(record: dict[str, Any]) -> str:
    """An escalation as a stock deserializer gives it, in the canonical JSON of replay."""
    obj = {
        **record,
        "occurred_at": _time(record["occurred_at"]),
        "due_by": _time(record["due_by"]),
        "reason": {k: record["reason"][k] for k in
                   ("instrument", "baseline", "score", "change", "threshold", "text")},
    }  # fmt: skip
    if obj.get("related_request_id") is None:
        obj.pop("related_request_id", None)
    return canonical_json(obj)


def registry_deployment(
    bootstrap: str, topic_name: str, tmp_path: Path, url: str, **extra: str
) -> Deployment:
    return Deployment(
        bootstrap, topic_name, tmp_path, STEPCARE_SCHEMA_REGISTRY_URL=url, **extra
    )  # fmt: skip


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_stock_avro_deserializer_reads_every_escalation_as_offline_replay_writes(
    guarantee: str, kafka_bootstrap: str, topic_name: str, tmp_path: Path, schema_registry_url: str
) -> None:
    cohort = demo_cohort(120, seed=5, end_ms=parse_time(END))
    expected = offline(cohort, END)
    deployment = registry_deployment(
        kafka_bootstrap, topic_name, tmp_path, schema_registry_url,
        STEPCARE_WIRE_FORMAT="registry", STEPCARE_PROCESSING_GUARANTEE=guarantee,
    )  # fmt: skip
    worker = deployment.worker("worker")
    try:
        deployment.publish(cohort, until=END)  # stepcare publish, registry framing too
        records = read_topic(kafka_bootstrap, deployment.escalations, expected=len(expected))
    finally:
        assert worker.stop() == 0

    client = SchemaRegistryClient({"url": schema_registry_url})
    subject = f"{deployment.escalations}-value"
    escalation_id = client.get_latest_version(subject).schema_id
    # Apicurio answers compatibilityLevel (Confluent: compatibility), which ServerConfig drops.
    assert client._rest_client.get(f"config/{subject}") == {"compatibilityLevel": "BACKWARD"}
    assert {r.value()[:5] for r in records} == {registry_header(escalation_id)}
    deserialize = AvroDeserializer(client)  # no reader schema: the writer's, from the registry
    context = SerializationContext(deployment.escalations, MessageField.VALUE)
    received = [stock_escalation(deserialize(r.value(), context)) for r in records]
    assert Counter(received) == Counter(expected)

    events = read_topic(kafka_bootstrap, deployment.input)
    event_id = client.get_latest_version(f"{deployment.input}-value").schema_id
    assert {r.value()[:5] for r in events} == {registry_header(event_id)}


def test_events_of_a_stock_avro_serializer_are_applied_and_unknown_ids_dead_lettered(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, schema_registry_url: str
) -> None:
    """The worker writes single-object (the default) and reads input in both framings: a
    hospital's producer with ``AvroSerializer`` (auto-registering stepcare's schema) and one
    with single-object encoding share the topic."""
    events = [orjson.loads(line) for line in EXAMPLE.read_text().splitlines()]
    deployment = registry_deployment(kafka_bootstrap, topic_name, tmp_path, schema_registry_url)
    worker = deployment.worker("worker")
    client = SchemaRegistryClient({"url": schema_registry_url})
    serialize = AvroSerializer(client, json.dumps(avro.EVENT_CODEC.current.schema))
    context = SerializationContext(deployment.input, MessageField.VALUE)
    escalation_schema = json.dumps(avro.ESCALATION_CODEC.current.schema)
    other_id = client.register_schema(
        f"{topic_name}.other-value", Schema(escalation_schema, "AVRO")
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    body = avro.encode_event(events[0])[10:]
    bad = [
        registry_header(2_000_000_000) + body,  # an id the registry does not have
        registry_header(other_id) + body,  # another record type's schema
    ]
    try:
        for value in bad:
            producer.produce(deployment.input, key=events[0]["patient_id"].encode(), value=value)
        for number, event in enumerate(events):
            if number % 2:
                value = avro.encode_event(event)  # single-object
            else:
                record = avro.event_record(event)
                record["occurred_at"] = datetime.fromtimestamp(
                    record["occurred_at"] / 1000, tz=UTC
                )  # the logical type, as a stock producer gives it
                value = serialize(record, context)
                assert value[:1] == b"\x00"
            producer.produce(deployment.input, key=event["patient_id"].encode(), value=value)
        tick = avro.encode_event(
            {"event_id": "", "patient_id": "", "type": "CLOCK_TICK", "occurred_at": EXAMPLE_UNTIL}
        )
        for partition in range(Deployment.PARTITIONS):  # every clock to the end, as offline
            producer.produce(deployment.input, key=b"", value=tick, partition=partition)
        assert producer.flush(30) == 0
        expected = offline(events, EXAMPLE_UNTIL)
        received = deployment.escalations_read(expected=len(expected))
        dead = read_topic(kafka_bootstrap, deployment.dead_letters, expected=2)
    finally:
        assert worker.stop() == 0
    assert Counter(received) == Counter(expected)
    assert [r.value() for r in dead] == bad  # the original bytes, in order (one key)
    reasons = [dict(r.headers())["error.reason"] for r in dead]
    details = [dict(r.headers())["error.detail"].decode() for r in dead]
    assert reasons == [b"unknown-schema", b"unknown-schema"]
    assert details == [
        "registry schema id 2000000000: the registry has no schema with this id",
        f"registry schema id {other_id}: the writer schema is not a org.stepcare.PatientEvent "
        "record",
    ]


def test_while_the_registry_is_down_records_wait_and_none_is_lost_or_dead_lettered(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """A registry-framed event arrives while the registry is down: the worker neither drops
    nor dead-letters it (nor the event behind it of the same patient), counts the failed
    lookups, and applies both, in order, once the registry answers."""
    from streams.devtools.registry import Registry
    from streams.kafka.settings import Settings
    from tests.integration.test_worker_metrics import scrape
    from tests.integration.workers import free_port

    port = free_port()
    registry = Registry(
        tmp_path / "registry", port, cache_dir=Settings.from_env().cache_dir,
        die_with_parent=True, report=lambda line: None,
    )  # fmt: skip
    deployment = registry_deployment(kafka_bootstrap, topic_name, tmp_path, registry.ccompat_url)
    worker = deployment.worker("worker")
    enrolled = {"event_id": "e-1", "patient_id": "p-1", "occurred_at": "2024-03-01T09:30:00Z",
                "type": "ENROLLED"}  # fmt: skip
    treatment = {**enrolled, "event_id": "e-2", "type": "DISENROLLED",
                 "occurred_at": "2024-03-02T09:30:00Z"}  # fmt: skip
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    try:
        # A fresh registry gives the first schema registered id 1: the event is framed so.
        producer.produce(deployment.input, key=b"p-1",
                         value=avro.encode_event(enrolled, registry_header(1)))  # fmt: skip
        producer.produce(deployment.input, key=b"p-1", value=avro.encode_event(treatment))
        assert producer.flush(30) == 0
        web_port = deployment.env["STEPCARE_WEB_PORT"]
        failures = "stepcare_schema_registry_errors_total", ()
        deadline = time.monotonic() + 60
        while scrape(web_port).get(failures, 0) < 2:  # it asked, and asked again
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.5)
        assert read_topic(kafka_bootstrap, deployment.escalations) == []
        registry.start()
        client = SchemaRegistryClient({"url": registry.ccompat_url})
        schema = Schema(json.dumps(avro.EVENT_CODEC.current.schema), "AVRO")
        assert client.register_schema(f"{deployment.input}-value", schema) == 1
        received = [orjson.loads(line) for line in deployment.escalations_read(expected=2)]
        dead = read_topic(kafka_bootstrap, deployment.dead_letters)
    finally:
        assert worker.stop() == 0
        registry.stop()
    assert [(e["kind"], e["trigger_event_id"]) for e in received] == [
        ("INITIAL_VISIT_DUE", "e-1"),
        ("VISIT_REQUEST_CANCELLED", "e-2"),
    ]
    assert dead == []
