"""Hostile input: fuzzing the decoder, validation, the engine and the CLI (issue "Hostile input").

Each layer may refuse input only in its documented way:

* ``decode_event`` / ``decode_escalation`` raise :class:`CodecError` (a dead-letter reason);
* ``event_from_json`` raises :class:`EventError`;
* ``PartitionEngine.process`` never raises on a valid event, and what it emits renders as JSON
  and encodes as Avro;
* ``stepcare score`` and ``stepcare replay`` exit 0 or 2 (then with one line), never with a
  traceback.

The defects these tests found (B1-B8) are fixed; the tests under "Known defects" at the end
pin each fix with the input that found it. The worker's own (B9-B11, on a real broker) are in
tests/integration/test_hostile_worker.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streams.analysis.replay import canonical_json
from streams.cli import main
from streams.clinical.engine import MAX_SURVEY_CATCH_UP
from streams.clinical.escalations import Escalation, Kind
from streams.clinical.events import (
    DAY_MS,
    MAX_ID_LENGTH,
    EventError,
    EventType,
    PatientEvent,
    event_from_json,
    format_time,
    parse_time,
)
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import builtin_policy
from streams.clinical.scoring import ITEM_CODES
from streams.formats.avro import (
    CodecError,
    decode_escalation,
    decode_event,
    encode_escalation,
    encode_event,
    write_avro_log,
)
from tests.stories import form

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = [orjson.loads(line) for line in (REPO / "examples/three-patients.jsonl").open()]
POLICIES = [builtin_policy("step-pc-2024"), builtin_policy("early-pc")]
ITEMS = sorted(ITEM_CODES)
TYPES = [str(t) for t in EventType]

MARKER = b"\xc3\x01"
EVENT_HEADER = encode_event(EXAMPLES[0])[:10]
ESCALATION_HEADER = bytes.fromhex("c301427b3b75de348d4d")
REASONS = {"not-single-object-encoding", "unknown-schema", "malformed-avro"}

# The times format_time and parse_time agree on: years 1 to 9999, UTC.
MIN_MS = parse_time("0001-01-01T00:00:00Z")
MAX_MS = parse_time("9999-12-31T23:59:59.999Z")
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
# One fix of defect B4 refuses events in the last years (so that deadlines stay within 9999):
# tests of far-future events accept that refusal after this time, and only after it.
HORIZON = parse_time("9000-01-01T00:00:00Z")


def fuzz(examples: int) -> settings:
    """Hypothesis settings of these tests: no deadline (huge inputs), ``examples`` examples."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


SUMMARY = "replayed "  # the first word of replay's summary line on stderr


def _beyond_9999(escalation: Escalation) -> bool:
    """An escalation dated after 9999 (defect B4): its time renders as year 10000, which
    ``parse_time`` refuses, so ``encode_escalation`` cannot encode it."""
    return escalation.occurred_at > MAX_MS or (escalation.due_by or 0) > MAX_MS


# -- strategies -----------------------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "FACT-L", "4", "ENROLLED", "2024-03-01T09:30:00Z", "GP1", "\x00"])
)
json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
times_ms = st.one_of(
    st.integers(MIN_MS, MAX_MS),
    st.sampled_from([MIN_MS, MAX_MS, 0, -1, MIN_MS - 1, MAX_MS + 1]),
)
rfc3339_like = st.builds(
    "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}".format,
    st.integers(0, 10001), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25),
    st.integers(0, 61), st.integers(0, 61),
    st.sampled_from(["", ".5", ".123", ".123456789", ".1234567890"]),
    st.sampled_from(["Z", "z", "+00:00", "-23:59", "+23:59", "+99:99", "", "Q"]),
)  # fmt: skip
identifiers = st.text(max_size=MAX_ID_LENGTH + 12) | st.sampled_from(["", "p-1", "e-1", "\x00"])


@st.composite
def response_maps(draw: st.DrawFn) -> dict[str, Any]:
    """Valid forms (complete, partial), invalid ones, and huge ones (thousands of keys)."""
    shape = draw(st.sampled_from(["form"] * 4 + ["partial"] * 2 + ["invalid", "huge"]))
    if shape == "form":
        missing = draw(st.lists(st.sampled_from(ITEMS), max_size=8, unique=True))
        return form(draw(st.integers(40, 136)), tuple(c for c in missing if c not in ("B5", "L5")))
    if shape == "partial":
        return draw(st.dictionaries(st.sampled_from(ITEMS), st.none() | st.integers(0, 4)))
    if shape == "invalid":
        good = draw(st.dictionaries(st.sampled_from(ITEMS), st.integers(0, 4), max_size=10))
        key = draw(st.sampled_from(ITEMS) | st.text(max_size=10))
        value = draw(st.integers(-(2**31), 2**31 - 1) | st.none())
        return {**good, key: value}
    n = draw(st.integers(1000, 3000))
    huge = {f"X{i}": i % 5 for i in range(n)}
    return draw(st.sampled_from([huge, {**form(100), **huge}, {**huge, **form(100)}]))


@st.composite
def events(
    draw: st.DrawFn,
    patients: list[str] | None = None,
    times: st.SearchStrategy[int] = times_ms,
    event_ids: st.SearchStrategy[str] = identifiers,
) -> dict[str, Any]:
    """The JSON rendering of an event of any type, valid or not, that Avro can encode."""
    kind = draw(st.sampled_from(TYPES) | st.text(max_size=12))
    tick = kind == "CLOCK_TICK" and draw(st.integers(0, 3)) > 0
    obj: dict[str, Any] = {
        "event_id": "" if tick else draw(event_ids),
        "patient_id": "" if tick else draw(st.sampled_from(patients) if patients else identifiers),
        "occurred_at": format_time(draw(times)),
        "type": kind,
    }
    if draw(st.booleans()):
        obj["source"] = draw(st.text(max_size=12))
    if kind == "SURVEY_SUBMITTED" or draw(st.integers(0, 9)) == 0:
        obj["survey"] = {
            "instrument": draw(st.sampled_from(["FACT-L", "FACT-G", ""])),
            "version": draw(st.sampled_from(["4", "4", "5"])),
            "responses": draw(response_maps()),
        }
    if draw(st.booleans()):
        obj["attributes"] = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
    return obj


@st.composite
def event_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """An object with some event fields, each plausible or arbitrary, and maybe an extra key."""
    plausible = {
        "event_id": identifiers,
        "patient_id": identifiers,
        "occurred_at": times_ms.map(format_time) | rfc3339_like | st.text(max_size=30),
        "type": st.sampled_from(TYPES) | st.text(max_size=12),
        "source": st.none() | st.text(max_size=10),
        "attributes": st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
        "survey": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "instrument": st.sampled_from(["FACT-L", "FACT-G"]) | json_values,
                "version": st.sampled_from(["4", "3"]) | json_values,
                "responses": response_maps() | json_values,
            },
        ),
    }
    obj = {}
    for name, strategy in plausible.items():
        how = draw(st.integers(0, 9))
        if how < 7:
            obj[name] = draw(strategy)
        elif how < 9:
            obj[name] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        obj[draw(st.text(max_size=8))] = draw(json_values)
    return obj


# -- (a) the decoder ------------------------------------------------------------------------------


def _decodes_or_codec_error(data: Any, decode: Callable[[Any], dict] = decode_event) -> Any:
    """The decoded object, or None after a CodecError with a known reason; nothing else."""
    try:
        return decode(data)
    except CodecError as exc:
        assert exc.reason in REASONS
        assert str(exc)
        return None


def _validates_or_event_error(obj: Any) -> PatientEvent | None:
    try:
        return event_from_json(obj)
    except EventError as exc:
        assert str(exc)
        return None


@fuzz(100)
@given(st.binary(max_size=400), st.sampled_from([b"", MARKER, EVENT_HEADER, ESCALATION_HEADER]))
def test_arbitrary_bytes_decode_or_raise_only_codec_error(body: bytes, prefix: bytes) -> None:
    data = prefix + body
    for value in (data, bytearray(data), memoryview(data)):
        obj = _decodes_or_codec_error(value)
        if obj is not None:
            _validates_or_event_error(obj)
        _decodes_or_codec_error(value, decode_escalation)


def _random_token(rng: random.Random) -> bytes:
    """A piece of an Avro body: a string, a long of any size, a union branch, a map end, noise."""
    pick = rng.randrange(6)
    if pick == 0:
        return _avro_string(rng.choice(["", "p-1", "ENROLLED", "SURVEY_SUBMITTED", "GP1", "é"]))
    if pick == 1:
        return _varint(rng.choice([0, 1, -1, 4, 5, 2**31, 2**63 - 1, -(2**63), 2**70]))
    if pick == 2:
        return _varint(rng.randrange(-(2**66), 2**66) >> rng.randrange(67))
    if pick == 3:
        return bytes([rng.choice([0, 2, 4, 1, 3])])
    return rng.randbytes(rng.randrange(4))


def _random_body(rng: random.Random) -> bytes:
    """A PatientEvent v1 body that follows the schema, each part replaced by noise at times."""

    def part(valid: Callable[[], bytes]) -> bytes:
        return valid() if rng.random() < 0.9 else _random_token(rng)

    def text() -> bytes:
        return _avro_string(rng.choice(["", "e-1", "p-1", "ENROLLED", "SURVEY_SUBMITTED", "é"]))

    def optional(value: Callable[[], bytes]) -> bytes:
        return b"\x00" if rng.random() < 0.5 else b"\x02" + value()

    def a_map(entry: Callable[[], bytes]) -> bytes:
        n = rng.choice([0, 1, 3, 40])
        if n == 0:
            return b"\x00"
        return _varint(n) + b"".join(part(entry) for _ in range(n)) + b"\x00"

    def response() -> bytes:
        value = rng.choice([0, 4, 5, -1, 2**31, 2**40])
        return _avro_string(rng.choice([*ITEMS, "X"])) + optional(lambda: _varint(value))

    def survey() -> bytes:
        return part(text) + part(text) + a_map(response)

    return b"".join(
        [part(text), part(text), part(lambda: _varint(rng.randrange(MIN_MS - 9, MAX_MS + 9))),
         part(text), part(lambda: optional(text)), part(lambda: optional(survey)),
         part(lambda: a_map(lambda: text() + text()))]
    )  # fmt: skip


def test_thousands_of_random_bodies_raise_only_codec_error() -> None:
    rng = random.Random(20240301)
    prefixes = [b"", MARKER, ESCALATION_HEADER, *[EVENT_HEADER] * 7]
    decoded = valid = 0
    for _ in range(10_000):
        if rng.random() < 0.2:
            body = rng.randbytes(rng.choice([0, 1, 5, 9, 20, 60, 200]))
        else:
            body = _random_body(rng)
        obj = _decodes_or_codec_error(rng.choice(prefixes) + body)
        if obj is not None:
            decoded += 1
            valid += _validates_or_event_error(obj) is not None
    assert decoded > valid > 0  # every layer was reached


def test_values_that_are_not_bytes_are_not_single_object_encoding() -> None:
    for value in (None, "", "c301", 0, 3.5, [], {}, object()):
        with pytest.raises(CodecError) as caught:
            decode_event(value)
        assert caught.value.reason == "not-single-object-encoding"


_MUTATIONS = ["flip", "truncate", "extend", "fingerprint", "replace", "insert", "delete", "splice"]


def _mutate(data: bytes, how: str, rng: random.Random, other: bytes) -> bytes:
    out = bytearray(data)
    if how == "flip":
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del out[rng.randrange(len(out)) :]
    elif how == "extend":
        out += rng.randbytes(rng.randint(1, 40))
    elif how == "fingerprint":
        out[2:10] = rng.choice(
            [bytes(8), b"\xff" * 8, ESCALATION_HEADER[2:], rng.randbytes(8), other[2:10]]
        )
    elif how == "replace":
        out[rng.randrange(10, len(out))] = rng.randrange(256)
    elif how == "insert":
        at = rng.randrange(10, len(out) + 1)
        out[at:at] = rng.randbytes(rng.randint(1, 9))
    elif how == "delete":
        at = rng.randrange(10, len(out))
        del out[at : at + rng.randint(1, 9)]
    else:
        out = out[: rng.randrange(10, len(out))] + other[rng.randrange(10, len(other)) :]
    return bytes(out)


def _encodable(obj: dict[str, Any]) -> bytes | None:
    try:
        return encode_event(obj)
    except EventError:
        return None


@fuzz(100)
@given(events(), st.sampled_from(_MUTATIONS), st.randoms(use_true_random=False))
def test_mutated_valid_encodings_raise_only_codec_error(
    obj: dict[str, Any], how: str, rng: random.Random
) -> None:
    data = _encodable(obj)
    assume(data is not None)
    other = encode_event(rng.choice(EXAMPLES))
    damaged = _mutate(data, how, rng, other)
    decoded = _decodes_or_codec_error(damaged)
    if how == "fingerprint" and damaged[2:10] != data[2:10]:
        assert decoded is None  # only the one known fingerprint of PatientEvent is accepted
    if decoded is not None:
        event = _validates_or_event_error(decoded)
        if event is not None:  # what decodes and validates goes through the engine unharmed
            for escalation in PartitionEngine(POLICIES[0]).process(event).escalations:
                _check_escalation(escalation)


def test_thousands_of_seeded_mutations_of_the_example_log_raise_only_codec_error() -> None:
    rng = random.Random(7)
    corpus = [encode_event(obj) for obj in EXAMPLES]
    outcomes = {"codec": 0, "invalid": 0, "valid": 0}
    for _ in range(15_000):
        data = rng.choice(corpus)
        damaged = _mutate(data, rng.choice(_MUTATIONS), rng, rng.choice(corpus))
        decoded = _decodes_or_codec_error(damaged)
        if decoded is None:
            outcomes["codec"] += 1
            continue
        event = _validates_or_event_error(decoded)
        if event is None:
            outcomes["invalid"] += 1
            continue
        outcomes["valid"] += 1
        # A fresh engine: one damaged time (year 9000, say) would otherwise move the clock and
        # fire thousands of timers for everyone after it (finding F1, tested on its own below).
        for escalation in PartitionEngine(POLICIES[0]).process(event).escalations:
            _check_escalation(escalation)
    assert all(outcomes.values()), outcomes  # every layer was reached


def test_escalation_and_event_bytes_are_not_taken_for_each_other() -> None:
    event = encode_event(EXAMPLES[0])
    processed = PartitionEngine(POLICIES[0]).process(event_from_json(EXAMPLES[1]))
    escalation = encode_escalation(processed.escalations[0].to_json())
    with pytest.raises(CodecError) as caught:
        decode_event(escalation)
    assert caught.value.reason == "unknown-schema"
    with pytest.raises(CodecError) as caught:
        decode_escalation(event)
    assert caught.value.reason == "unknown-schema"


def _varint(n: int) -> bytes:
    """Avro's zigzag varint of ``n``, also beyond 64 bits (what a hostile writer may send)."""
    z = (n << 1) if n >= 0 else ((-n) << 1) - 1
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _avro_string(text: str) -> bytes:
    raw = text.encode()
    return _varint(len(raw)) + raw


def _enrolled_at(millis: int, event_id: str = "e-1", patient_id: str = "p-1") -> bytes:
    """A PatientEvent v1 body by hand: any long as ``occurred_at``."""
    body = _avro_string(event_id) + _avro_string(patient_id) + _varint(millis)
    return EVENT_HEADER + body + _avro_string("ENROLLED") + b"\x00\x00\x00"


@pytest.mark.parametrize(
    "millis",
    [MIN_MS, MAX_MS, 0, -1, MIN_MS - 1, MAX_MS + 1, LONG_MIN, LONG_MAX, 2**64, -(2**64), 2**68],
)
def test_any_avro_time_decodes_to_an_event_in_years_1_to_9999_or_fails_cleanly(
    millis: int,
) -> None:
    """Avro carries longs up to 2^63 ms (year 292 million): beyond 9999 is never an event."""
    decoded = _decodes_or_codec_error(_enrolled_at(millis))
    if decoded is None:
        assert not LONG_MIN <= millis <= LONG_MAX  # only a value beyond a long may fail here
        return
    if MIN_MS <= millis <= MAX_MS:
        assert decoded["occurred_at"] == format_time(millis)
        event = _validates_or_event_error(decoded)
        assert event.occurred_at == millis if event else millis > HORIZON
    else:
        with pytest.raises(EventError):
            event_from_json(decoded)


# -- (b) validation -------------------------------------------------------------------------------


def _validation_contract(obj: Any) -> None:
    try:
        event = event_from_json(obj)
    except EventError as exc:
        assert str(exc)
        return
    assert isinstance(event, PatientEvent)
    assert MIN_MS <= event.occurred_at <= MAX_MS  # B5: offsets cannot leave years 1 to 9999


@fuzz(250)
@given(json_values)
def test_arbitrary_json_values_validate_or_raise_only_event_error(obj: Any) -> None:
    _validation_contract(obj)


@fuzz(250)
@given(event_shaped())
def test_event_shaped_objects_validate_or_raise_only_event_error(obj: dict[str, Any]) -> None:
    _validation_contract(obj)


@fuzz(40)
@given(st.integers(1000, 6000), st.sampled_from([*ITEMS, "XX1", "", "gp1"]))
def test_a_survey_with_thousands_of_responses_is_an_event_error(n: int, last: str) -> None:
    responses = {**form(90), **{f"Q{i}": 1 for i in range(n)}, last: 2}
    survey = {"instrument": "FACT-L", "responses": responses}
    obj = {"event_id": "e", "patient_id": "p", "occurred_at": "2024-01-01T00:00:00Z",
           "type": "SURVEY_SUBMITTED", "survey": survey}  # fmt: skip
    with pytest.raises(EventError, match="unknown item code"):
        event_from_json(obj)
    with pytest.raises(EventError, match="unknown item code"):
        event_from_json(decode_event(encode_event(obj)))  # as the worker sees it


# -- (c) the engine -------------------------------------------------------------------------------


def _check_escalation(escalation: Escalation) -> None:
    """It renders as canonical JSON and, in years 1 to 9999, round-trips through Avro."""
    obj = escalation.to_json()
    line = canonical_json(obj)
    assert orjson.loads(line) == obj
    assert set(obj) >= {"escalation_id", "patient_id", "kind", "occurred_at", "due_by"}
    if _beyond_9999(escalation):
        return  # defect B4: pinned below
    assert decode_escalation(encode_escalation(obj)) == obj


WINDOW = 400 * DAY_MS


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int]:
    """A log of up to 40 events for a few patients within 400 days anywhere in years 1 to
    9999 (the edges included), in any order, with duplicates; and a time to advance to."""
    start = draw(st.sampled_from([MIN_MS, MAX_MS - WINDOW]) | st.integers(MIN_MS, MAX_MS - WINDOW))
    times = st.integers(start, start + WINDOW)
    patients = draw(st.lists(identifiers.filter(bool), min_size=1, max_size=3, unique=True))
    pool = st.sampled_from(["e-1", "e-2", "e-3"]) | identifiers
    log: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 40))):
        if log and draw(st.integers(0, 7)) == 0:  # a redelivery, or a flood of them
            log += [draw(st.sampled_from(log))] * draw(st.integers(1, 20))
        else:
            log.append(draw(events(patients, times, pool)))
    return log, start + WINDOW + draw(st.integers(0, 200)) * DAY_MS


@fuzz(80)
@given(histories(), st.sampled_from(POLICIES), st.booleans())
def test_the_engine_never_fails_on_an_event_that_decodes_and_validates(
    history: tuple[list[dict[str, Any]], int], policy: Any, through_avro: bool
) -> None:
    log, until = history
    engine = PartitionEngine(policy)
    for obj in log:
        if through_avro:  # as the worker sees it
            data = _encodable(obj)
            if data is None:
                continue
            obj = decode_event(data)
        event = _validates_or_event_error(obj)
        if event is None:
            continue
        for escalation in engine.process(event).escalations:
            _check_escalation(escalation)
    for escalation in engine.advance_to(until):
        _check_escalation(escalation)


@fuzz(40)
@given(histories())
def test_the_json_and_the_avro_paths_validate_the_same_events(
    history: tuple[list[dict[str, Any]], int],
) -> None:
    for obj in history[0]:
        data = _encodable(obj)
        if data is None:
            continue
        via_json = _validates_or_event_error(obj)
        via_avro = _validates_or_event_error(decode_event(data))
        assert via_json == via_avro


def test_a_duplicate_flood_is_applied_once() -> None:
    engine = PartitionEngine(POLICIES[0])
    enrolled = event_from_json(EXAMPLES[1])
    outcomes = [str(engine.process(enrolled).outcome) for _ in range(500)]
    assert outcomes == ["applied"] + ["duplicate"] * 499


def test_events_at_both_ends_of_time_are_processed_and_render() -> None:
    engine = PartitionEngine(POLICIES[0])
    escalations = []
    times = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00.001Z", "8999-10-01T00:00:00Z",
             "9999-10-01T00:00:00Z"]  # fmt: skip
    for at in times:
        for kind in ("ENROLLED", "TREATMENT_CHANGED", "DECEASED"):
            obj = {"event_id": f"{kind}-{at}", "patient_id": f"p-{at[:4]}",
                   "occurred_at": at, "type": kind}  # fmt: skip
            event = _validates_or_event_error(decode_event(encode_event(obj)))
            if event is None:
                assert parse_time(at) > HORIZON
                continue
            escalations += engine.process(event).escalations
    for patient in ("p-0001", "p-8999"):
        assert [e.kind for e in escalations if e.patient_id == patient] == [
            Kind.INITIAL_VISIT_DUE, Kind.VISIT_REQUEST_CANCELLED,
        ]  # fmt: skip
    for escalation in escalations:
        _check_escalation(escalation)
        assert not _beyond_9999(escalation)


def test_a_far_future_event_fires_a_bounded_catch_up_in_its_partition() -> None:
    """Finding F1 (amplification): one record dated 8999 on a partition moves its clock there.
    It used to send every enrolled step-1 patient of the partition a SURVEY_OVERDUE for each
    6-week cycle until then, ~60,000 each; issue 12 bounds the catch-up (MAX_SURVEY_CATCH_UP):
    the first missed cycle, saying how many are not reported, and the last 25 before the clock."""
    engine = PartitionEngine(POLICIES[0])
    enrolled_at = parse_time("2024-01-01T00:00:00Z")
    engine.process(event_from_json({**EXAMPLES[1], "occurred_at": format_time(enrolled_at)}))
    far = parse_time("8999-01-01T00:00:00Z")
    stranger = {"event_id": "x", "patient_id": "p-x", "occurred_at": format_time(far),
                "type": "HOSPITAL_ADMITTED"}  # fmt: skip
    fired = engine.process(event_from_json(stranger)).escalations
    first, cycle = enrolled_at + 49 * DAY_MS, 42 * DAY_MS
    cycles = (far - 1 - first) // cycle + 1
    skipped = cycles - MAX_SURVEY_CATCH_UP
    assert cycles > 60_000
    assert [(e.kind, e.occurred_at) for e in fired] == [
        (Kind.VISIT_OVERDUE, enrolled_at + 28 * DAY_MS),
        (Kind.SURVEY_OVERDUE, first),
        *[(Kind.SURVEY_OVERDUE, first + n * cycle) for n in range(skipped + 1, cycles)],
    ]
    assert fired[1].reason.text.endswith(
        f"The next {skipped} missed cycles (to {format_time(first + skipped * cycle)}) are not "
        "reported: the clock passed more than 26 cycles at once."
    )
    for escalation in fired:
        _check_escalation(escalation)


# -- (d) the CLI ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _captured(stdin: bytes = b"", errors: str = "surrogateescape") -> Iterator[list[str]]:
    out, err = io.StringIO(), io.StringIO()
    text = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors=errors)
    result: list[str] = []
    old_stdin = sys.stdin
    sys.stdin = text
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield result
    finally:
        sys.stdin = old_stdin
        result += [out.getvalue(), err.getvalue()]


def _run(argv: list[str], stdin: bytes = b"", errors: str = "surrogateescape") -> tuple:
    """(status, stdout, stderr, exception) of ``stepcare ARGV`` in this process."""
    status, exception = None, None
    with _captured(stdin, errors) as result:
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse
            status = exc.code
        except Exception as exc:
            exception = exc
    return status, result[0], result[1], exception


def _assert_user_facing(command: str, status: Any, out: str, err: str, exc: Any) -> None:
    """Exit 0 or 2, never an exception; 2 is one line; stdout is what the command promises."""
    assert exc is None, f"stepcare {command} raised {exc!r}"
    assert "Traceback" not in err
    assert status in (0, 2), (status, err)
    if status == 2:
        assert err.startswith("stepcare: ") and err.count("\n") == 1, err
        # score writes nothing then; replay may have written escalations before a corrupt record
        assert command == "replay" or out == ""
    for line in out.splitlines():
        obj = orjson.loads(line)
        if command == "score":
            ids = ["event_id", "patient_id"] if "event_id" in obj else []  # a form from an event
            assert list(obj) == [*ids, "PWB", "SWB", "EWB", "FWB", "LCS", "FACT_G", "FACT_L",
                                 "TOI", "answered"]  # fmt: skip
        else:
            assert obj["escalation_id"] and obj["kind"] in set(Kind)
    if command == "replay" and status == 0:
        assert err.splitlines()[-1].startswith(SUMMARY)


ODD_LINES = [b"", b"{", b"\xff\xfe", b"\x00" * 10, b"[" * 3000, b"1" * 5000, b'"\\ud800"', b"NaN",
             b"\xef\xbb\xbf{}", b"{}\r", b'{"type": "ENROLLED"}']  # fmt: skip
ODD_FILES = [b"", b"\n\n\n", b"x" * 1_200_000, b'{"GP1":' + b"1" * 100_000 + b"}"]


def _garbage_files() -> st.SearchStrategy[bytes]:
    """JSONL mixing events (valid or not), JSON, garbage and odd lines; binary; odd files."""
    lines = st.lists(
        events().map(orjson.dumps)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=60)
        | st.text(max_size=60).map(str.encode)
        | st.sampled_from(ODD_LINES),
        max_size=12,
    ).map(b"\n".join)
    return (
        lines
        | st.binary(max_size=3000)
        | st.binary(max_size=200).map(lambda b: b"Obj\x01" + b)
        | st.sampled_from(ODD_FILES)
    )


_files = tempfile.TemporaryDirectory(prefix="stepcare-hostile-")


def _file(content: bytes) -> str:
    path = Path(_files.name) / "input"
    path.write_bytes(content)
    return str(path)


@fuzz(60)
@given(_garbage_files())
def test_score_on_any_file_exits_0_or_2_without_a_traceback(content: bytes) -> None:
    _assert_user_facing("score", *_run(["score", _file(content)]))
    _assert_user_facing("score", *_run(["score", "-"], stdin=content))


@fuzz(60)
@given(_garbage_files(), st.booleans())
def test_replay_on_any_file_exits_0_or_2_without_a_traceback(content: bytes, strict: bool) -> None:
    args = ["--until", "2030-01-01T00:00:00Z"] + (["--strict"] if strict else [])
    _assert_user_facing("replay", *_run(["replay", "--input", _file(content), *args]))
    _assert_user_facing("replay", *_run(["replay", "--input", "-", *args], stdin=content))


def test_replay_of_a_damaged_avro_container_exits_0_or_2(tmp_path: Path) -> None:
    log = tmp_path / "log.avro"
    write_avro_log(log, EXAMPLES)
    clean = log.read_bytes()
    rng = random.Random(3)
    for _ in range(80):
        log.write_bytes(_mutate(clean, rng.choice(_MUTATIONS), rng, clean))
        _assert_user_facing("replay", *_run(["replay", "--input", str(log)]))


def test_empty_and_blank_input_is_nothing_to_do() -> None:
    for content in (b"", b"\n", b"  \n\t\n"):
        status, out, err, exc = _run(["replay", "--input", _file(content)])
        assert (status, out, exc) == (0, "", None)
        assert err.startswith("replayed 0 events")
        status, out, err, exc = _run(["score", _file(content)])
        assert exc is None and status in (0, 2) and "Traceback" not in err


def _stepcare(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "streams.cli", *args]
    return subprocess.run(command, cwd=REPO, input=stdin, capture_output=True, timeout=60)


def test_the_real_cli_reports_garbage_in_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(random.Random(1).randbytes(5000))
    done = _stepcare("score", str(garbage))
    assert done.returncode == 2
    assert done.stderr.decode().startswith("stepcare: cannot read ")
    assert done.stderr.count(b"\n") == 1 and done.stdout == b""

    text = tmp_path / "text.jsonl"
    text.write_text('{"type": "ENROLLED"}\nnot json at all\n[1, 2]\n' + "x" * 100_000 + "\n")
    done = _stepcare("replay", "--input", str(text))
    assert done.returncode == 0 and done.stdout == b""
    assert b"Traceback" not in done.stderr
    assert done.stderr.decode().splitlines()[-1].startswith("replayed 0 events")
    done = _stepcare("score", "-", stdin=b"\x00\x01garbage")
    assert done.returncode == 2 and b"Traceback" not in done.stderr


# -- Known defects (reported; each test fails in the reported way until it is fixed) --------------


@pytest.mark.attack("an event type that is a list or an object", "EventError: rejected/DLQ")
@pytest.mark.parametrize("kind", [[], {}, ["ENROLLED"]])
def test_b1_an_unhashable_type_is_an_event_error(kind: Any) -> None:
    with pytest.raises(EventError):
        event_from_json({"type": kind})


def test_b1_replay_reports_a_line_with_an_unhashable_type() -> None:
    status, _out, err, exc = _run(["replay", "--input", _file(b'{"type": []}\n')])
    if exc is not None:
        raise exc
    assert status == 0 and err.startswith("line 1: ")


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_b2_replay_reports_lines_that_are_not_utf8(where: str) -> None:
    content = b'\xff\xfe{"a": 1}\n' + orjson.dumps(EXAMPLES[1]) + b"\n"
    if where == "file":
        status, out, err, exc = _run(["replay", "--input", _file(content)])
    else:  # stdin as a UTF-8 locale opens it (strict), not the C locale (surrogateescape)
        status, out, err, exc = _run(["replay", "--input", "-"], content, errors="strict")
    if exc is not None:
        raise exc
    assert status == 0 and "INITIAL_VISIT_DUE" in out and err.startswith("line 1: ")


def test_b2_score_reports_stdin_that_is_not_utf8() -> None:
    status, _out, err, exc = _run(["score", "-"], b"\xff\xfe{}", errors="strict")
    if exc is not None:
        raise exc
    assert status == 2 and err.startswith("stepcare: ")


def test_b2_the_real_replay_on_binary_garbage_shows_no_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(random.Random(1).randbytes(5000))
    done = _stepcare("replay", "--input", str(garbage))
    assert b"Traceback" not in done.stderr, done.stderr.decode()[-300:]
    assert done.returncode in (0, 2)


@pytest.mark.parametrize("content", [b"[" * 100_000, b"1" * 5000, b'{"GP1": ' + b"9" * 5000 + b"}"])
def test_b3_score_reports_json_it_cannot_read_in_one_line(content: bytes) -> None:
    status, _out, err, exc = _run(["score", _file(content)])
    if exc is not None:
        raise exc
    assert status == 2 and err.startswith("stepcare: ")


@pytest.mark.parametrize("at", ["9999-12-20T00:00:00Z", "9999-12-31T23:59:59.999Z"])
def test_b4_every_escalation_of_a_valid_event_encodes(at: str) -> None:
    obj = {"event_id": "e", "patient_id": "p", "occurred_at": at, "type": "ENROLLED"}
    try:
        event = event_from_json(decode_event(encode_event(obj)))  # the worker accepts it
    except EventError:
        return  # refusing an event this close to the end of time is a fix too
    for escalation in PartitionEngine(POLICIES[0]).process(event).escalations:
        try:
            encode_escalation(escalation.to_json())  # Monitor.publish does this
        except EventError as exc:
            raise AssertionError(f"{escalation.kind} cannot be encoded: {exc}") from None


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_b5_a_time_outside_years_1_to_9999_in_utc_is_an_event_error(at: str) -> None:
    obj = {"event_id": "e", "patient_id": "p", "occurred_at": at, "type": "ENROLLED"}
    try:
        event = event_from_json(obj)
    except EventError:
        return
    rendered = format_time(event.occurred_at)  # "0000-12-31T23:00:00Z", "10000-01-01T00:59:59Z"
    # replay writes escalations with this time; publish sends it and the worker dead-letters it
    assert False, f"{at} validates as {rendered}, which does not parse"  # noqa: B011


def test_b6_a_policy_with_infinite_days_is_a_one_line_error(tmp_path: Path) -> None:
    policy = tmp_path / "evil.toml"
    policy.write_text("visit_window_days = inf\n")
    status, _out, err, exc = _run(["replay", "--input", _file(b""), "--policy", str(policy)])
    if exc is not None:
        raise exc
    assert status == 2 and err.startswith("stepcare: ")


@pytest.mark.parametrize("patient_id", ["\x00clock/0", "__faust\x00offset__"])
def test_b7_a_patient_id_cannot_be_a_reserved_key_of_the_workers_table(patient_id: str) -> None:
    from faust.stores.rocksdb import Store

    from streams.worker.states import _CLOCK_KEY

    # The table key of a patient is its id in UTF-8: these ids are the worker's own keys (the
    # partition's clock) and faust's (the RocksDB store's offset, read back with int()).
    assert patient_id.encode() in {_CLOCK_KEY % 0, Store.offset_key}
    obj = {"event_id": "e", "patient_id": patient_id, "occurred_at": "2024-01-01T00:00:00Z",
           "type": "ENROLLED"}  # fmt: skip
    assert _validates_or_event_error(obj) is None, f"{patient_id!r} is accepted as a patient id"


def test_b8_a_varint_beyond_64_bits_is_malformed_as_fastavro_and_the_fast_path_agree() -> None:
    millis = parse_time("2024-03-01T09:30:00Z")
    data = _enrolled_at(millis + (1 << 63))  # zigzag: bit 64 set, the low 64 bits are `millis`
    fast, slow = _decodes_or_codec_error(data), _decodes_or_codec_error(bytearray(data))
    assert fast is None or fast == slow, f"bytes read {fast}, bytearray (fastavro) reads {slow}"
