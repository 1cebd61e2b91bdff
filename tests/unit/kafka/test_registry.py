"""The registry client's behaviour that needs no server: pacing of lookups, refusals kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.formats import avro
from streams.formats.avro import CodecError
from streams.kafka.registry import (
    LOOKUPS_PER_SECOND,
    Framing,
    RegistryError,
    UnknownSchemaId,
)


class FakeRegistry:
    """Knows schema id 1 (the current PatientEvent); every other id is unknown."""

    def __init__(self, down: bool = False) -> None:
        self.asked: list[int] = []
        self.down = down

    def schema_text(self, schema_id: int) -> str:
        self.asked.append(schema_id)
        if self.down:
            raise RegistryError("schema registry http://127.0.0.1:1: schema: ConnectError")
        if schema_id == 1:
            return json.dumps(avro.EVENT_CODEC.current.schema)
        raise UnknownSchemaId(f"the registry has no schema id {schema_id}")


def framing(registry: Any) -> Framing:
    return Framing.writing_single_object(registry)


EVENT = {"event_id": "e", "patient_id": "p", "occurred_at": "2024-01-01T00:00:00Z",
         "type": "ENROLLED"}  # fmt: skip


def test_an_id_is_looked_up_once_then_remembered() -> None:
    registry = FakeRegistry()
    reader = framing(registry)
    value = avro.encode_event(EVENT, b"\x00\x00\x00\x00\x01")
    assert reader.decode_event(value) == EVENT
    assert reader.decode_event(value) == EVENT
    assert registry.asked == [1]


@pytest.mark.attack(
    "a flood of input records with random registry schema ids",
    f"at most {LOOKUPS_PER_SECOND} registry lookups a second; the others dead-lettered at once "
    "(unknown-schema, not looked up), never waited for",
)
def test_over_the_pace_the_worker_gets_a_dead_letter_not_a_wait() -> None:
    registry = FakeRegistry()
    reader = framing(registry)
    for schema_id in range(100, 100 + LOOKUPS_PER_SECOND):
        reader.look_up(reader.events, schema_id, wait=False)
    with pytest.raises(CodecError) as caught:
        reader.look_up(reader.events, 999, wait=False)
    assert caught.value.reason == "unknown-schema"
    assert str(caught.value) == (
        f"registry schema id 999: not looked up (more than {LOOKUPS_PER_SECOND} new schema "
        "ids a second)"
    )
    assert not reader.events.known(999)  # asked again later
    assert len(registry.asked) == LOOKUPS_PER_SECOND


def test_an_unreachable_registry_remembers_nothing() -> None:
    registry = FakeRegistry(down=True)
    reader = framing(registry)
    with pytest.raises(RegistryError):
        reader.look_up(reader.events, 1)
    assert not reader.events.known(1)
    registry.down = False
    reader.look_up(reader.events, 1)
    assert reader.events.known(1)


def test_without_a_registry_a_registry_framed_record_is_unknown_schema() -> None:
    reader = framing(None)
    with pytest.raises(CodecError) as caught:
        reader.decode_event(avro.encode_event(EVENT, b"\x00\x00\x00\x00\x01"))
    assert caught.value.reason == "unknown-schema"
    assert str(caught.value) == (
        "registry schema id 1: no schema registry is configured (STEPCARE_SCHEMA_REGISTRY_URL)"
    )
    assert reader.decode_event(avro.encode_event(EVENT)) == EVENT  # single-object as ever
