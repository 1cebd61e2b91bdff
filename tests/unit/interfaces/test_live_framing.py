"""The bridges in the registry framing: -in bridges write it, fhir-out reads it."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from streams.clinical.escalations import Escalation, Kind, Reason
from streams.formats import avro
from streams.formats.wire import registry_header
from streams.interfaces.live import fhir_in_record, fhir_out_record
from streams.interfaces.pseudonym import Pseudonymizer
from streams.kafka.registry import Framing

DATA = Path(__file__).resolve().parents[2] / "data/fhir"
SECRET = b"stepcare-test-secret-0123456789abcdef"


def registry_framing() -> Framing:
    """Writing the registry framing with ids 7 (events) and 8 (escalations), both known."""
    framing = Framing.writing_single_object()
    framing.event_header, framing.escalation_header = registry_header(7), registry_header(8)
    framing.events.learn(7, json.dumps(avro.EVENT_CODEC.current.schema))
    framing.escalations.learn(8, json.dumps(avro.ESCALATION_CODEC.current.schema))
    return framing


def test_fhir_in_writes_the_configured_framing_with_the_same_body() -> None:
    value = (DATA / "qr-complete.json").read_bytes()
    single = fhir_in_record(value, Pseudonymizer(SECRET))
    framed = fhir_in_record(
        value, Pseudonymizer(SECRET), event_value=registry_framing().event_value
    )
    assert framed.value[:5] == registry_header(7)
    assert framed.value[5:] == single.value[10:]
    assert (framed.key, framed.timestamp) == (single.key, single.timestamp)


def test_fhir_out_reads_either_framing_into_the_same_bundle() -> None:
    escalation = Escalation(
        "3bddf662-0000-5000-8000-000000000001", "p-1", Kind.INITIAL_VISIT_DUE, 1,
        1_709_285_400_000, 1_711_704_600_000, "e-1", "step-pc-2024", 1, Reason("Enrolled."),
    )  # fmt: skip
    framing = registry_framing()
    from_single = fhir_out_record(avro.escalation_bytes(escalation), [], framing.decode_escalation)
    from_registry = fhir_out_record(
        framing.escalation_value(escalation), [], framing.decode_escalation
    )
    assert framing.escalation_value(escalation)[:5] == registry_header(8)
    assert orjson.loads(from_registry.value) == orjson.loads(from_single.value)
    assert from_registry.key == b"p-1"
