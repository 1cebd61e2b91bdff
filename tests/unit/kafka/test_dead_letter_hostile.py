"""Dead letters (streams/kafka/deadletter.py ``dead_letter_record``) and the messages that fill
their ``error.detail``: what a hostile or broken producer can make of them (issue 12, points 2 and
9).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from streams.clinical.events import EventError, event_from_json
from streams.clinical.scoring import ScoringError, score_fact_l
from streams.formats.avro import CodecError, decode_event, encode_event
from streams.kafka.deadletter import _record_size, dead_letter_record

OWN = [
    ("error.reason", b"invalid-event"),
    ("error.detail", b"the rule"),
    ("source.topic", b"events"),
    ("source.partition", b"2"),
    ("source.offset", b"41"),
]
LIMIT = 999_000


@pytest.mark.attack(
    "a record with forged error.reason / source.offset headers",
    "the worker's true headers first; the forged ones renamed original.error.reason ...",
)
def test_the_workers_headers_come_first_and_forged_ones_are_renamed() -> None:
    forged = [("source.offset", b"0"), ("trace", b"t"), ("error.reason", b"none"),
              ("error.cut", b"nothing"), ("original.x", b"o")]  # fmt: skip
    key, value, headers = dead_letter_record(b"p-1", b"v", forged, OWN, LIMIT)
    assert (key, value) == (b"p-1", b"v")
    assert headers == [*OWN, ("original.source.offset", b"0"), ("trace", b"t"),
                       ("original.error.reason", b"none"), ("original.error.cut", b"nothing"),
                       ("original.x", b"o")]  # fmt: skip


@pytest.mark.attack("a record with neither key nor value", "dead-lettered with the empty key")
def test_a_record_without_key_and_value_gets_the_empty_key() -> None:
    # aiokafka refuses to send a record with neither: the agent crashed, the record was skipped
    assert dead_letter_record(None, None, [("a", b"b")], OWN, LIMIT) == (
        b"", None, [*OWN, ("a", b"b")],
    )  # fmt: skip


def test_a_record_that_fits_is_kept_whole() -> None:
    value = b"v" * 990_000  # the biggest survey the hostile suite sends
    assert dead_letter_record(b"p-1", value, [("a", b"b")], OWN, LIMIT) == (
        b"p-1", value, [*OWN, ("a", b"b")],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "headers", "kept", "cut"),
    [
        (b"k" * 1_200_000, b"v", [("a", b"b")], (None, b"v", ["a"]), "key (1200000 bytes)"),
        (b"k", b"v" * 1_200_000, [], (b"k", None, []), "value (1200000 bytes)"),
        (b"k", b"v", [("a", b"x"), ("blob", b"h" * 1_200_000), ("z", b"y")],
         (b"k", b"v", ["a", "z"]), "header 2 of 3 (1200004 bytes)"),
        (b"k" * 600_000, b"v" * 600_000, [], (b"k" * 600_000, None, []), "value (600000 bytes)"),
        (None, None, [("blob", b"h" * 1_200_000)], (b"", None, []),
         "header 1 of 1 (1200004 bytes)"),
        (b"k" * 2_000_000, b"v" * 2_000_000, [("error.detail", b"d" * 2_000_000)], (b"", None, []),
         "key (2000000 bytes); value (2000000 bytes); header 1 of 1 (2000021 bytes)"),
    ],
)  # fmt: skip
def test_what_does_not_fit_is_left_out_biggest_first_and_named(
    key: bytes | None, value: bytes | None, headers: list, kept: tuple, cut: str
) -> None:
    out_key, out_value, out_headers = dead_letter_record(key, value, headers, OWN, LIMIT)
    assert out_headers[:6] == [*OWN, ("error.cut", cut.encode())]
    assert (out_key, out_value, [name for name, _ in out_headers[6:]]) == kept
    assert _record_size(out_key, out_value, out_headers) <= LIMIT


def test_thousands_of_headers_keep_the_first_ones_that_fit() -> None:
    headers = [(f"trace-{i:05d}", b"t" * 200) for i in range(6000)]
    key, value, out = dead_letter_record(b"p-1", b"v", headers, OWN, LIMIT)
    kept = out[6:]
    assert (key, value) == (b"p-1", b"v") and kept == headers[: len(kept)]
    assert LIMIT - 2_000 < _record_size(key, value, out) <= LIMIT
    cut = f"headers {len(kept) + 1}-6000 of 6000 ({(6000 - len(kept)) * 211} bytes)"
    assert out[5] == ("error.cut", cut.encode())


def test_scattered_headers_left_out_are_counted_not_listed() -> None:
    headers = [(f"h{i:04d}", b"x" * (300 if i % 2 else 100)) for i in range(8000)]
    _, _, out = dead_letter_record(b"k", b"v", headers, OWN, LIMIT)
    name, cut = out[5]
    assert name == "error.cut" and re.fullmatch(rb"\d+ headers of 8000 \(\d+ bytes\)", cut)
    assert [n for n, _ in headers[::2]] == [n for n, v in out[6:] if len(v) == 100]  # the small
    assert _record_size(b"k", b"v", out) <= LIMIT


# -- error.detail: the field and the rule, never the value -----------------------------------------

SECRET = "Smith-1942-03-07"  # what a producer could put anywhere: a name, a birth date
SURVEY = {"event_id": "e-1", "patient_id": "p-1", "occurred_at": "2024-03-01T09:30:00Z",
          "type": "SURVEY_SUBMITTED",
          "survey": {"instrument": "FACT-L", "version": "4", "responses": {"GP1": 2}}}  # fmt: skip


def _with(path: tuple[str, ...], value: Any, rename: bool = False) -> dict:
    obj = {
        **SURVEY,
        "survey": {**SURVEY["survey"], "responses": dict(SURVEY["survey"]["responses"])},
    }
    target = obj
    for step in path[:-1]:
        target = target[step]
    if rename:
        target[value] = target.pop(path[-1], 1)
    else:
        target[path[-1]] = value
    return obj


@pytest.mark.attack(
    "patient data in an event's type, survey instrument/version, an item code, a response, "
    "a field name",
    "refused naming the field and the rule; the value is in no message",
)
@pytest.mark.parametrize(
    "obj",
    [
        _with(("type",), SECRET),
        _with(("survey", "instrument"), SECRET),
        _with(("survey", "version"), SECRET),
        _with(("survey", "responses", SECRET), 1),
        _with(("survey", "responses", "GP1"), SECRET),
        _with(("survey", "responses", "GP2"), 19420307),
        _with(("survey", "responses", "GP3"), 1942.37),
        _with(("source",), SECRET, rename=True),
        _with(("survey", "version"), SECRET, rename=True),
    ],
    ids=["type", "instrument", "version", "item code", "response", "number", "float",
         "event field", "survey field"],
)  # fmt: skip
def test_no_validation_message_repeats_the_input(obj: dict) -> None:
    messages = []
    for check in (event_from_json, encode_event):
        try:
            check(obj)
        except EventError as exc:
            messages.append(str(exc))
    assert messages, obj
    for message in messages:
        assert "Smith" not in message and "1942" not in message, message


@pytest.mark.parametrize("value", [b"Smith-1942", b"\xc3\x01Smith-1942" + bytes(20)])
def test_no_decoding_message_repeats_the_bytes(value: bytes) -> None:
    with pytest.raises(CodecError) as caught:
        decode_event(value)
    assert b"Smith".hex() not in str(caught.value) and "Smith" not in str(caught.value)
    assert "536d" not in str(caught.value)  # "Sm", the first bytes, in hex


def test_a_scoring_message_names_the_item_not_the_response() -> None:
    with pytest.raises(ScoringError, match=r"^item GP1: the response is outside 0-4$"):
        score_fact_l({"GP1": 1942})
