"""The two framings on Kafka: registry framing read as the single-object form of its writer."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from streams.formats import avro
from streams.formats.wire import (
    MAX_SCHEMA_TEXT,
    RegistryWriters,
    registry_header,
    registry_schema_id,
)

EVENT = {
    "event_id": "e-1",
    "patient_id": "p-1",
    "occurred_at": "2024-03-01T09:30:00Z",
    "type": "ENROLLED",
    "source": "emr",
}
CURRENT_EVENT_SCHEMA = avro.EVENT_CODEC.current.schema


def test_registry_header_is_magic_zero_and_the_big_endian_id() -> None:
    assert registry_header(1) == b"\x00\x00\x00\x00\x01"
    assert registry_header(0x01020304) == b"\x00\x01\x02\x03\x04"
    with pytest.raises(ValueError):
        registry_header(2**31)


def test_the_first_byte_tells_the_framings_apart() -> None:
    single_object = avro.encode_event(EVENT)
    registry = avro.encode_event(EVENT, registry_header(7))
    assert single_object[:2] == b"\xc3\x01"
    assert registry_schema_id(single_object) is None
    assert registry_schema_id(registry) == 7
    assert registry_schema_id(b"") is None
    assert registry_schema_id(None) is None
    # the same Avro body after either header
    assert registry[5:] == single_object[10:]


def test_a_registry_header_cut_short_is_malformed() -> None:
    with pytest.raises(avro.CodecError) as caught:
        registry_schema_id(b"\x00\x00\x01")
    assert caught.value.reason == "malformed-avro"
    assert str(caught.value) == "registry framing: 3 bytes, shorter than its 5-byte header"


def test_a_learned_id_reads_as_the_single_object_form_of_its_writer() -> None:
    writers = RegistryWriters(avro.EVENT_CODEC)
    writers.learn(42, json.dumps(CURRENT_EVENT_SCHEMA))
    framed = avro.encode_event(EVENT, registry_header(42))
    assert writers.single_object(framed, 42) == avro.encode_event(EVENT)
    assert avro.decode_event(writers.single_object(framed, 42)) == EVENT


def test_a_compatible_newer_writer_schema_is_resolved_to_the_current_one() -> None:
    """A hospital's producer registered v2 with an optional field stepcare does not know."""
    newer = json.loads(json.dumps(CURRENT_EVENT_SCHEMA))
    newer["fields"].append({"name": "site", "type": ["null", "string"], "default": None})
    record = avro.event_record(EVENT) | {"site": "north"}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(newer), record)
    writers = RegistryWriters(avro.EVENT_CODEC)
    writers.learn(9, json.dumps(newer))
    decoded = avro.decode_event(writers.single_object(registry_header(9) + out.getvalue(), 9))
    assert decoded == EVENT


NOT_AN_EVENT = "the writer schema is not a org.stepcare.PatientEvent record"
BAD_TYPE = {
    "type": "record",
    "name": "org.stepcare.PatientEvent",
    "fields": [{"name": "x", "type": "nope"}],
}


@pytest.mark.parametrize(
    ("schema_text", "reason"),
    [
        ("not json", "its schema is not JSON"),
        ("[" * 100_000, "its schema is not JSON"),
        (json.dumps(avro.ESCALATION_CODEC.current.schema), NOT_AN_EVENT),
        ('"string"', NOT_AN_EVENT),
        (json.dumps(BAD_TYPE), "the writer schema cannot be read (UnknownType)"),
        (" " * (MAX_SCHEMA_TEXT + 1), f"its schema is over {MAX_SCHEMA_TEXT} bytes"),
    ],
)
def test_a_schema_that_is_not_a_usable_writer_is_refused_with_its_reason(
    schema_text: str, reason: str
) -> None:
    writers = RegistryWriters(avro.EVENT_CODEC)
    writers.learn(5, schema_text)
    assert writers.known(5)
    with pytest.raises(avro.CodecError) as caught:
        writers.single_object(registry_header(5) + b"\x00", 5)
    assert caught.value.reason == "unknown-schema"
    assert str(caught.value) == f"registry schema id 5: {reason}"


def test_an_id_never_looked_up_is_unknown() -> None:
    with pytest.raises(avro.CodecError) as caught:
        RegistryWriters(avro.EVENT_CODEC).single_object(registry_header(3), 3)
    assert caught.value.reason == "unknown-schema"
    assert str(caught.value) == "registry schema id 3: it was not looked up in the registry"


def test_at_most_limit_ids_are_remembered_oldest_forgotten_first() -> None:
    writers = RegistryWriters(avro.EVENT_CODEC, limit=3)
    for schema_id in range(5):
        writers.refuse(schema_id, "no such id")
    assert [writers.known(i) for i in range(5)] == [False, False, True, True, True]
