"""Avro single-object encoding of PatientEvents and Escalations (formats/avro.py, DESIGN §3)."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.analysis.replay import canonical_json
from streams.clinical.escalations import Escalation, Kind, Reason
from streams.clinical.events import EventError, EventType, event_from_json, event_to_json
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import resolve_policy
from streams.formats import avro as codec
from streams.formats.avro import (
    CodecError,
    decode_escalation,
    decode_event,
    encode_escalation,
    encode_event,
    escalation_bytes,
    read_avro_log,
    write_avro_log,
)

REPO = Path(__file__).resolve().parents[3]
EVENTS = [orjson.loads(line) for line in (REPO / "examples/three-patients.jsonl").open()]
ESCALATIONS = [
    orjson.loads(line) for line in (REPO / "examples/three-patients.escalations.jsonl").open()
]
EVENT_HEADER = bytes.fromhex("c3010ab1e41abb00a9c3")
ESCALATION_HEADER = bytes.fromhex("c301dd77e6d04f83826b")
TICK = {
    "event_id": "",
    "patient_id": "",
    "occurred_at": "2024-09-01T00:00:00Z",
    "type": "CLOCK_TICK",
}


def _schema(name: str) -> dict[str, Any]:
    return json.loads((REPO / "schemas" / f"{name}.avsc").read_text())


def _reason(data: bytes, decode: Any = decode_event) -> tuple[str, str]:
    with pytest.raises(CodecError) as caught:
        decode(data)
    return caught.value.reason, str(caught.value)


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", EVENTS, ids=[f"line-{n}" for n in range(1, len(EVENTS) + 1)])
def test_every_example_event_round_trips_to_identical_canonical_json(obj: dict[str, Any]) -> None:
    decoded = decode_event(encode_event(obj))

    assert canonical_json(decoded) == canonical_json(obj)
    assert canonical_json(decoded) == canonical_json(event_to_json(event_from_json(obj)))


def test_the_examples_cover_every_patient_event_type() -> None:
    types = {obj["type"] for obj in EVENTS}
    assert types == {t.value for t in EventType} - {"CLOCK_TICK"}


def test_a_clock_tick_and_the_optional_parts_round_trip() -> None:
    with_all = {
        "event_id": "e-9",
        "patient_id": "p-9",
        "occurred_at": "2024-03-01T09:30:00.125Z",
        "type": "ENROLLED",
        "source": "ehr",
        "attributes": {"site": "boston", "arm": "stepped"},
    }
    for obj in (TICK, with_all):
        decoded = decode_event(encode_event(obj))
        assert decoded == obj
        assert list(decoded) == list(obj)
        event_from_json(decoded)


def test_null_and_empty_optional_parts_are_left_out_when_decoding() -> None:
    obj = {**TICK, "source": None, "survey": None, "attributes": {}}
    assert decode_event(encode_event(obj)) == TICK
    assert decode_event(encode_event({**TICK, "attributes": None})) == TICK


def test_times_are_normalised_to_utc_and_milliseconds_are_kept() -> None:
    obj = {**TICK, "occurred_at": "2024-03-01T10:30:00.250+01:00"}
    assert decode_event(encode_event(obj))["occurred_at"] == "2024-03-01T09:30:00.250Z"
    obj = {**TICK, "occurred_at": "1969-12-31T23:59:59.999Z"}  # before the epoch: negative ms
    assert decode_event(encode_event(obj))["occurred_at"] == "1969-12-31T23:59:59.999Z"


def test_a_survey_keeps_its_responses_in_order_with_nulls() -> None:
    survey = {
        "instrument": "FACT-L",
        "version": "4",
        "responses": {"GP2": 0, "GE2": None, "GP1": 4},
    }
    obj = {**EVENTS[1], "type": "SURVEY_SUBMITTED", "survey": survey}
    decoded = decode_event(encode_event(obj))
    assert decoded["survey"] == survey
    assert list(decoded["survey"]["responses"]) == ["GP2", "GE2", "GP1"]


def test_a_survey_without_version_gets_the_schema_default() -> None:
    obj = {**EVENTS[0], "survey": {"instrument": "FACT-L", "responses": {"GP1": 1}}}
    assert decode_event(encode_event(obj))["survey"]["version"] == "4"


def test_an_encodable_but_invalid_event_round_trips_so_the_worker_can_dead_letter_it() -> None:
    bad = {**EVENTS[0], "type": "SOMETHING_NEW"}
    out_of_range = {**EVENTS[0], "survey": {**EVENTS[0]["survey"], "responses": {"GP1": 7}}}
    for obj in (bad, out_of_range):
        decoded = decode_event(encode_event(obj))
        assert decoded == obj
        with pytest.raises(EventError):
            event_from_json(decoded)


@pytest.mark.parametrize("obj", ESCALATIONS, ids=lambda e: e["kind"])
def test_every_example_escalation_round_trips_exactly(obj: dict[str, Any]) -> None:
    decoded = decode_escalation(encode_escalation(obj))

    assert decoded == obj
    assert json.dumps(decoded) == json.dumps(obj)  # same key order, floats and nulls
    assert canonical_json(decoded) == canonical_json(obj)


def test_escalations_from_the_engine_round_trip_to_their_to_json() -> None:
    engine = PartitionEngine(resolve_policy(None))
    escalations = []
    for obj in EVENTS:
        escalations += engine.process(event_from_json(obj)).escalations
    escalations += engine.advance_to(event_from_json({**TICK}).occurred_at)

    assert {e.kind for e in escalations} == set(Kind)
    for escalation in escalations:
        rendered = escalation.to_json()
        assert json.dumps(decode_escalation(encode_escalation(rendered))) == json.dumps(rendered)


def test_an_integer_reason_number_is_encoded_as_a_double() -> None:
    obj = {**ESCALATIONS[0], "reason": {**ESCALATIONS[0]["reason"], "threshold": 12}}
    assert decode_escalation(encode_escalation(obj))["reason"]["threshold"] == 12.0


# -- golden bytes ---------------------------------------------------------------------------------


def test_the_header_is_the_marker_and_the_little_endian_fingerprint() -> None:
    assert encode_event(EVENTS[0])[:10] == EVENT_HEADER
    assert encode_event(TICK)[:10] == EVENT_HEADER
    assert encode_escalation(ESCALATIONS[0])[:10] == ESCALATION_HEADER


@pytest.mark.parametrize(
    ("name", "header"),
    [("org.stepcare.PatientEvent", EVENT_HEADER), ("org.stepcare.Escalation", ESCALATION_HEADER)],
)
def test_the_fingerprint_matches_an_independent_implementation(name: str, header: bytes) -> None:
    """Apache Avro's Python fingerprint, on the schema without logical types.

    avro 1.12.2 canonicalises ``{"type": "long", "logicalType": ...}`` to ``{"type":"long"}``
    instead of ``"long"`` (the spec, Java and fastavro), so on the schema as written it gives
    another fingerprint; that one is asserted too, so an upstream fix is noticed.
    """
    schema = _schema(name)
    plain = codec._without_logical_types(schema)

    assert avro.schema.parse(json.dumps(plain)).fingerprint("CRC-64-AVRO") == header[2:]
    assert avro.schema.parse(json.dumps(schema)).fingerprint("CRC-64-AVRO") != header[2:]
    assert codec.fingerprint(schema) == header[2:]


def test_fingerprints_match_the_avro_specification_test_vectors() -> None:
    """share/test/data/schema-tests.txt of Apache Avro: Java's signed 64-bit values."""
    vectors = {"null": 7195948357588979594, "int": 8247732601305521295,
               "long": -3434872931120570953}  # fmt: skip
    for schema, value in vectors.items():
        assert codec.fingerprint(schema) == value.to_bytes(8, "little", signed=True)


def test_golden_bytes_of_a_clock_tick() -> None:
    obj = {**TICK, "occurred_at": "1970-01-01T00:00:00.001Z"}
    body = (
        b"\x00"  # event_id ""
        b"\x00"  # patient_id ""
        b"\x02"  # occurred_at 1 ms (zigzag)
        b"\x14CLOCK_TICK"  # type, 10 bytes
        b"\x00"  # source: null branch
        b"\x00"  # survey: null branch
        b"\x00"  # attributes: empty map
    )
    assert encode_event(obj) == EVENT_HEADER + body
    assert decode_event(EVENT_HEADER + body) == obj


def test_the_fast_path_is_in_use_and_writes_exactly_what_fastavro_writes() -> None:
    assert codec._FAST_EVENT, "the current PatientEvent is not v1: extend the fast path"
    for obj in [*EVENTS, TICK]:
        record = codec.event_record(obj)
        assert codec._write_event_v1(record, codec._EVENT_V1_HEADER) == codec._EVENT.write(record)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"\xc3", b"\xc3\x01", b"\xc3\x01\x0a\xb1\xe4\x1a\xbb\x00\xa9"]
)
def test_input_shorter_than_the_header_is_not_single_object_encoding(data: bytes) -> None:
    reason, message = _reason(data)
    assert reason == "not-single-object-encoding"
    assert message == f"not Avro single-object encoding: {len(data)} bytes" + (
        "" if len(data) < 2 else ", expected c301 first (or 00: the registry framing)"
    )


def test_random_bytes_or_json_are_not_single_object_encoding() -> None:
    assert _reason(b'{"event_id": "e-1"}') == (
        "not-single-object-encoding",
        "not Avro single-object encoding: 19 bytes, expected c301 first (or 00: the registry "
        "framing)",
    )
    assert _reason(bytes(range(40)))[0] == "not-single-object-encoding"
    assert _reason(b"\x00\x00\x00\x00\x01" + encode_event(TICK))[0] == "not-single-object-encoding"


def test_an_unknown_fingerprint_is_reported_without_its_bytes() -> None:
    # The fingerprint is input: the record in the dead-letter topic holds it, the detail not.
    data = b"\xc3\x01" + bytes.fromhex("1122334455667788") + encode_event(TICK)[10:]
    assert _reason(data) == ("unknown-schema", "unknown schema fingerprint (bytes 3-10)")


def test_an_escalation_is_not_an_event_and_an_event_is_not_an_escalation() -> None:
    assert _reason(encode_escalation(ESCALATIONS[0])) == (
        "unknown-schema",
        "unknown schema fingerprint (bytes 3-10)",
    )
    assert _reason(encode_event(TICK), decode_escalation)[0] == "unknown-schema"


@pytest.mark.parametrize("obj", [EVENTS[0], EVENTS[1], TICK], ids=["survey", "enrolled", "tick"])
def test_every_truncation_of_a_body_is_malformed(obj: dict[str, Any]) -> None:
    data = encode_event(obj)
    for end in range(10, len(data)):
        assert _reason(data[:end]) == ("malformed-avro", "the record body is truncated")


def test_trailing_bytes_are_malformed() -> None:
    assert _reason(encode_event(TICK) + b"\x00") == (
        "malformed-avro",
        "1 byte after the end of the record",
    )
    assert _reason(encode_event(EVENTS[0]) + b"junk")[1] == "4 bytes after the end of the record"
    assert _reason(encode_escalation(ESCALATIONS[0]) + b"\x00\x00", decode_escalation) == (
        "malformed-avro",
        "2 bytes after the end of the record",
    )


def test_a_truncated_escalation_is_malformed() -> None:
    data = encode_escalation(ESCALATIONS[0])
    assert _reason(data[:-3], decode_escalation) == (
        "malformed-avro",
        "the record body is truncated",
    )


def test_bad_utf8_and_bad_union_branches_are_malformed_without_echoing_the_data() -> None:
    data = bytearray(encode_event({**TICK, "type": "ENROLLED", "patient_id": "p-\u00e9"}))
    at = data.index("\u00e9".encode())
    data[at] = 0xFF
    reason, message = _reason(bytes(data))
    assert reason == "malformed-avro"
    assert message == "a string is not UTF-8 (byte 2 of the string)"

    data = bytearray(encode_event(TICK))
    data[-3] = 4  # the source union has branches 0 and 1 only
    assert _reason(bytes(data)) == ("malformed-avro", "source: bad union branch")


def test_codec_error_is_a_value_error_with_a_reason() -> None:
    error = CodecError("unknown-schema", "detail")
    assert isinstance(error, ValueError)
    assert (error.reason, str(error)) == ("unknown-schema", "detail")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "an event is a JSON object, not list"),
        ({**TICK, "extra": 1}, "unknown field at position 5 (not a PatientEvent field: "),
        ({**TICK, "occurred_at": "yesterday"}, "timestamp is not RFC 3339"),
        ({**TICK, "type": None}, "type must be a string"),
        ({**TICK, "event_id": 5}, "event_id must be a string"),
        ({**TICK, "source": 5}, "source must be a string or null"),
        ({**TICK, "attributes": {"a": 1}}, "attributes must map strings to strings"),
        ({**TICK, "survey": []}, "survey must be an object"),
        ({**TICK, "survey": {"responses": {}}}, "survey instrument must be a string"),
        ({**TICK, "survey": {"instrument": "FACT-L"}}, "survey responses must be an object"),
        ({**TICK, "survey": {"instrument": "FACT-L", "responses": {"GP1": "4"}}},
         "survey response 1 must be an integer or null"),
        ({**TICK, "survey": {"instrument": "FACT-L", "responses": {"GP1": True}}},
         "survey response 1 must be an integer or null"),
        ({**TICK, "survey": {"instrument": "FACT-L", "responses": {"GP1": 2**31}}},
         "survey response 1 must be an integer or null"),
        ({**TICK, "survey": {"instrument": "FACT-L", "version": 4, "responses": {}}},
         "survey version must be a string"),
        ({**TICK, "survey": {"instrument": "FACT-L", "responses": {}, "text": "x"}},
         "unknown survey field at position 3 (not a survey field: instrument, responses"),
    ],
)  # fmt: skip
def test_events_that_cannot_be_encoded_raise_event_error(obj: Any, message: str) -> None:
    with pytest.raises(EventError) as caught:
        encode_event(obj)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"care_step": "2"}, "care_step must be a 32-bit integer"),
        ({"care_step": 2**31}, "care_step must be a 32-bit integer"),
        ({"due_by": "soon"}, "timestamp is not RFC 3339"),
        ({"trigger_event_id": 7}, "trigger_event_id must be a string or null"),
        ({"extra": 1}, "unknown field 'extra'"),
        ({"reason": {"text": "x"}}, "reason must be an object with instrument, numbers and text"),
    ],
)
def test_escalations_that_cannot_be_encoded_raise_event_error(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(EventError) as caught:
        encode_escalation({**ESCALATIONS[0], **change})
    assert str(caught.value).startswith(message)
    missing = {k: v for k, v in ESCALATIONS[0].items() if k != "policy_id"}
    with pytest.raises(EventError, match="missing field 'policy_id'"):
        encode_escalation(missing)


# -- released and older writer versions -----------------------------------------------------------


def test_a_record_written_with_the_released_v1_schema_decodes() -> None:
    released = json.loads((REPO / "schemas/released/org.stepcare.PatientEvent.v1.avsc").read_text())
    out = io.BytesIO()
    out.write(b"\xc3\x01" + codec.fingerprint(released))
    record = codec.event_record(EVENTS[0])
    fastavro.schemaless_writer(out, fastavro.parse_schema(released), record)

    assert decode_event(out.getvalue()) == EVENTS[0]


def _older_event_schema() -> dict[str, Any]:
    """A PatientEvent as it could have been before ``source`` and ``attributes`` were added."""
    schema = _schema("org.stepcare.PatientEvent")
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in {"source", "attributes"}]
    return schema


def test_an_older_writer_version_decodes_into_the_current_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "released").mkdir()
    shutil.copy(REPO / "schemas/org.stepcare.PatientEvent.avsc", tmp_path)
    older = _older_event_schema()
    (tmp_path / "released/org.stepcare.PatientEvent.v0.avsc").write_text(json.dumps(older))
    monkeypatch.setattr(
        codec, "_EVENT", codec.RecordCodec.load("org.stepcare.PatientEvent", tmp_path)
    )

    out = io.BytesIO()
    out.write(b"\xc3\x01" + codec.fingerprint(older))
    record = {k: v for k, v in codec.event_record(EVENTS[0]).items() if k not in {"source"}}
    fastavro.schemaless_writer(out, fastavro.parse_schema(older), record)

    decoded = decode_event(out.getvalue())
    assert decoded == {k: v for k, v in EVENTS[0].items() if k != "source"}
    assert list(decoded) == ["event_id", "patient_id", "occurred_at", "type", "survey"]
    assert decode_event(encode_event(EVENTS[0])) == EVENTS[0]  # the current one still decodes


def test_every_released_version_is_known_to_the_decoder() -> None:
    for path in sorted((REPO / "schemas/released").glob("org.stepcare.PatientEvent.v*.avsc")):
        assert codec.fingerprint(json.loads(path.read_text())) in codec._EVENT.writers
    for path in sorted((REPO / "schemas/released").glob("org.stepcare.Escalation.v*.avsc")):
        assert codec.fingerprint(json.loads(path.read_text())) in codec._ESCALATION.writers


# -- Avro container logs --------------------------------------------------------------------------


def test_a_container_log_round_trips_every_event(tmp_path: Path) -> None:
    path = tmp_path / "log.avro"
    assert write_avro_log(path, [*EVENTS, TICK]) == len(EVENTS) + 1

    read = list(read_avro_log(path))

    assert [n for n, _ in read] == list(range(1, len(EVENTS) + 2))
    assert [canonical_json(obj) for _, obj in read] == [canonical_json(o) for o in [*EVENTS, TICK]]
    with path.open("rb") as fo:  # the container carries the documented schema
        assert fastavro.reader(fo).writer_schema["fields"][2]["type"] == {
            "type": "long",
            "logicalType": "timestamp-millis",
        }


def test_a_container_written_by_another_tool_with_an_older_schema_is_read(tmp_path: Path) -> None:
    path = tmp_path / "old.avro"
    older = fastavro.parse_schema(_older_event_schema())
    records = [
        {k: v for k, v in codec.event_record(obj).items() if k not in {"source", "attributes"}}
        for obj in EVENTS[:3]
    ]
    with path.open("wb") as fo:
        fastavro.writer(fo, older, records)

    read = [obj for _, obj in read_avro_log(path)]
    assert read == [{k: v for k, v in o.items() if k != "source"} for o in EVENTS[:3]]


def test_an_event_that_cannot_be_encoded_stops_writing_a_container(tmp_path: Path) -> None:
    with pytest.raises(EventError, match="unknown field at position 5 "):
        write_avro_log(tmp_path / "x.avro", [TICK, {**TICK, "extra": 1}])


def test_a_file_that_is_not_a_patient_event_container_raises(tmp_path: Path) -> None:
    text = tmp_path / "log.jsonl"
    text.write_text(json.dumps(TICK) + "\n")
    with pytest.raises(CodecError, match="not an Avro object container file"):
        list(read_avro_log(text))

    other = tmp_path / "other.avro"
    with other.open("wb") as fo:
        schema = {"type": "record", "name": "Other", "fields": [{"name": "a", "type": "int"}]}
        fastavro.writer(fo, fastavro.parse_schema(schema), [{"a": 1}])
    with pytest.raises(CodecError, match="does not hold PatientEvent records") as caught:
        list(read_avro_log(other))
    assert caught.value.reason == "malformed-avro"


def test_a_corrupt_container_yields_a_reason_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "log.avro"
    write_avro_log(path, EVENTS)
    data = path.read_bytes()
    path.write_bytes(data[:-40])

    assert list(read_avro_log(path)) == [(1, "corrupt Avro data: the record body is truncated")]

    corrupt = bytearray(data)
    corrupt[-30] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    assert list(read_avro_log(path)) == [(1, "corrupt Avro data: a compressed block is corrupt")]


# -- properties -----------------------------------------------------------------------------------

_text = st.text(max_size=80)
_responses = st.dictionaries(
    st.text(min_size=1, max_size=70),
    st.none() | st.integers(-(2**31), 2**31 - 1),
    max_size=40,
)
_events = st.fixed_dictionaries(
    {
        "event_id": _text,
        "patient_id": _text,
        "occurred_at": st.integers(-(10**13), 10**14).map(codec.format_time),
        "type": _text,
    },
    optional={
        "source": st.none() | _text,
        "survey": st.none()
        | st.fixed_dictionaries(
            {"instrument": _text, "responses": _responses}, optional={"version": _text}
        ),
        "attributes": st.dictionaries(_text, _text, max_size=5),
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_events)
def test_the_fast_path_agrees_with_fastavro_on_any_event(obj: dict[str, Any]) -> None:
    record = codec.event_record(obj)
    data = codec._write_event_v1(record, codec._EVENT_V1_HEADER)

    assert data == codec._EVENT.write(record)
    decoded = decode_event(data)
    assert decoded == codec.event_json(codec._EVENT.read(data))
    assert decode_event(encode_event(decoded)) == decoded


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_raises_only_codec_error(data: bytes) -> None:
    for decode in (decode_event, decode_escalation):
        try:
            decode(data)
        except CodecError as exc:
            assert exc.reason in {"not-single-object-encoding", "unknown-schema", "malformed-avro"}


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_decoding_a_known_header_and_an_arbitrary_body_raises_only_codec_error(
    body: bytes,
) -> None:
    for header, decode in ((EVENT_HEADER, decode_event), (ESCALATION_HEADER, decode_escalation)):
        try:
            decode(header + body)
        except CodecError as exc:
            assert exc.reason == "malformed-avro"


@settings(max_examples=1000)
@given(
    st.sampled_from([*EVENTS[:3], TICK]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_a_damaged_event_fails_cleanly_or_decodes_as_fastavro_reads_it(
    obj: dict[str, Any], damage: list[tuple[int, int]]
) -> None:
    data = bytearray(encode_event(obj))
    for where, value in damage:
        data[10 + where % (len(data) - 10)] = value
    try:
        decoded = decode_event(bytes(data))
    except CodecError as exc:
        assert exc.reason == "malformed-avro"
        return
    assert decoded == codec.event_json(codec._EVENT.read(bytes(data)))


# -- the replay command reads containers ----------------------------------------------------------


def test_replay_of_an_avro_container_gives_the_same_escalations_as_the_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    log, output = tmp_path / "log.avro", tmp_path / "escalations.jsonl"
    write_avro_log(log, EVENTS)

    status = main(["replay", "--input", str(log), "--until", TICK["occurred_at"],
                   "--output", str(output)])  # fmt: skip

    assert status == 0
    expected = REPO / "examples/three-patients.escalations.jsonl"
    assert output.read_bytes() == expected.read_bytes()
    assert capsys.readouterr().err.startswith("replayed 24 events for 3 patients")


def test_replay_of_a_corrupt_container_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    log = tmp_path / "log.avro"
    write_avro_log(log, EVENTS)
    log.write_bytes(log.read_bytes()[:-40])

    assert main(["replay", "--input", str(log)]) == 2
    assert capsys.readouterr().err == (
        f"stepcare: {log}: record 1: corrupt Avro data: the record body is truncated\n"
    )


def test_a_value_that_is_not_bytes_is_not_single_object_encoding() -> None:
    assert _reason(None) == ("not-single-object-encoding", "the value is NoneType, not bytes")
    assert _reason("c301", decode_escalation)[0] == "not-single-object-encoding"
    data = encode_event(EVENTS[0])
    assert decode_event(bytearray(data)) == decode_event(memoryview(data)) == EVENTS[0]


def test_the_fast_container_reader_reads_what_fastavro_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.devtools.demo import demo_cohort

    events = demo_cohort(40, seed=5, end_ms=1_735_689_600_000)
    path = tmp_path / "cohort.avro"
    codec.write_avro_log(path, events)
    fast = list(codec.read_avro_log(path))
    monkeypatch.setattr(codec, "_FAST_EVENT", False)
    assert fast == list(codec.read_avro_log(path))
    assert [obj for _, obj in fast] == [codec.event_json(codec.event_record(e)) for e in events]


# -- escalation_bytes: the worker's encoder, straight from the engine's objects


def _escalations_of_a_simulated_cohort() -> list[Escalation]:
    from streams.analysis.simulate import Cohort, simulate

    policy = resolve_policy(None)
    engine = PartitionEngine(policy)
    found: list[Escalation] = []
    cohort = Cohort(seed=11, patients=80, weeks=40, day0=1_704_067_200_000)  # 2024-01-01
    for obj in simulate(cohort, policy):
        found += engine.process(event_from_json(obj)).escalations
    return found


def test_escalation_bytes_are_those_of_the_json_rendering_for_every_kind() -> None:
    escalations = _escalations_of_a_simulated_cohort()
    assert {str(e.kind) for e in escalations} >= {"INITIAL_VISIT_DUE", "STEP_UP", "SURVEY_OVERDUE"}
    for escalation in escalations:
        assert escalation_bytes(escalation) == encode_escalation(escalation.to_json())


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"due_by": None, "trigger_event_id": None, "related_request_id": "r" * 200},
        {"care_step": 2, "occurred_at": -62135596800000, "due_by": 253402300799999},
        {"patient_id": "pé-\u6f22\u5b57-" + "x" * 70, "policy_version": 2**31 - 1},
    ],
)
def test_escalation_bytes_at_the_edges(changes: dict[str, Any]) -> None:
    reason = Reason(instrument=None, baseline=104, score=-0.5, change=None, threshold=1e300,
                    text="t\u00e9xt " * 40)  # fmt: skip
    escalation = Escalation(
        escalation_id="3bddf662-69d8-5464-a9fc-08b050118cdf", patient_id="p-1",
        kind=Kind.STEP_UP, care_step=1, occurred_at=1_709_285_400_000,
        due_by=1_711_704_600_000, trigger_event_id="e-1", policy_id="step-pc-2024",
        policy_version=1, reason=reason,
    )  # fmt: skip
    escalation = dataclasses.replace(escalation, **changes)
    assert escalation_bytes(escalation) == encode_escalation(escalation.to_json())
    assert decode_escalation(escalation_bytes(escalation)) == escalation.to_json()
