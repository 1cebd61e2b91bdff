"""Timestamps: exactly RFC 3339, checked against a reference parser that is not ours.

Validity is judged by ``rfc3339-validator`` (what jsonschema checks ``format: date-time`` with)
and the value by ``datetime.fromisoformat``. The reference's own quirks are put aside: it does
not accept ``t``/``z`` (RFC 3339 §5.6 does: ABNF strings are case-insensitive), and its ``$``
also matches before a final newline.
"""

from __future__ import annotations

import string
from datetime import datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rfc3339_validator import validate_rfc3339

from streams.clinical.events import MAX_TIME, MIN_TIME, EventError, event_from_json, parse_time
from streams.formats.logs import events_of_lines

EPOCH = datetime(1970, 1, 1)
NOT_RFC3339 = "timestamp is not RFC 3339 (e.g. 2024-03-01T09:30:00Z)"


def reference(text: str) -> int | None:
    """The ms of ``text`` by the reference parsers, or None when it is not a valid stamp."""
    if len(text) > 10 and text[10] == "t":
        text = f"{text[:10]}T{text[11:]}"
    if text.endswith("z"):
        text = f"{text[:-1]}Z"
    if text.endswith("\n") or not validate_rfc3339(text):
        return None
    moment = datetime.fromisoformat(text)
    offset = moment.utcoffset()
    assert offset is not None
    ms = (moment.replace(tzinfo=None) - EPOCH - offset) // timedelta(milliseconds=1)
    return ms if MIN_TIME <= ms <= MAX_TIME else None  # years 0001-9999 in UTC


def ours(text: object) -> int | None:
    try:
        return parse_time(text)
    except EventError:
        return None


# -- text near the grammar: valid stamps, then broken one character at a time -----------------

HOSTILE = [
    "0", "9", " ", "+", "-", "_", ":", ".", "T", "t", "Z", "z", "\n", "\t", "\x00",
    "\u0662", "\u0660", "\u00b2", "\uff10", "\uff19", "\U0001d7ce", "\u00a0", "\u2212", "e",
]  # fmt: skip


def _two(n: int) -> str:
    return f"{n:02d}"


@st.composite
def stamps(draw: st.DrawFn) -> str:
    """Stamps of the RFC 3339 shape, fields in and out of range (month 13, second 60, ...)."""
    date = f"{draw(st.integers(0, 9999)):04d}-{_two(draw(st.integers(0, 13)))}-" + _two(
        draw(st.integers(0, 32))
    )
    time = ":".join(_two(draw(st.integers(0, n))) for n in (25, 61, 61))
    fraction = draw(st.one_of(st.just(""), st.text(string.digits, min_size=1, max_size=12)))
    if fraction:
        fraction = "." + fraction
    offset = draw(
        st.one_of(
            st.sampled_from(["Z", "z"]),
            st.builds(
                lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
                st.sampled_from("+-"),
                st.integers(0, 99),
                st.integers(0, 99),
            ),
        )
    )
    return f"{date}{draw(st.sampled_from('Tt '))}{time}{fraction}{offset}"


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(stamps())
    at = draw(st.integers(0, len(text)))
    char = draw(st.sampled_from(HOSTILE))
    how = draw(st.sampled_from(["replace", "insert", "delete"]))
    if how == "replace":
        return text[:at] + char + text[at + 1 :]
    if how == "insert":
        return text[:at] + char + text[at:]
    return text[:at] + text[at + 1 :]


@pytest.mark.attack(
    "arbitrary text, near-RFC 3339 stamps, mutations (Unicode digits, signs, _, spaces)",
    "accepted exactly when rfc3339-validator accepts (ms = datetime.fromisoformat's)",
)
@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.text(), stamps(), mutated()))
@example("2024-03-01T09:30:00Z")
@example("\u0662\u0660\u0662\u0664-03-01T09:30:00Z")
@example(" 024-03-01T09:30:00Z")
@example("+024-03-01T09:30:00Z")
@example("2_24-03-01T09:30:00Z")
@example("2024-03-01T09:30:00+99:99")
@example("2024-03-01T09:30:00.123456789123-23:59")
@example("0001-01-01T00:00:00+00:01")
@example("9999-12-31T23:59:59.999-00:01")
@example("2024-03-01T09:30:00Z\n")
def test_parse_time_accepts_exactly_what_the_reference_accepts(text: str) -> None:
    assert ours(text) == reference(text)


@pytest.mark.attack(
    "a timestamp that int() or \\d reads: ' 024', '+024', '2_24', Arabic-Indic digits",
    "EventError, one rule, the text not repeated",
)
@pytest.mark.parametrize(
    "text",
    [
        " 024-03-01T09:30:00Z",
        "+024-03-01T09:30:00Z",
        "2_24-03-01T09:30:00Z",
        "\u0662\u0660\u0662\u0664-03-01T09:30:00Z",
        "2024-03-01T09:30:0\u0660Z",
        "2024-03-01T09:30:00.\u0660Z",
        "2024-03-01T09:30:00+0\u0660:00",
        "2024-03-01 09:30:00Z",
        "2024-03-01T09:30:00Z\n",
        "2024-03-01T09:30Z",
    ],
)
def test_not_ascii_digits_or_not_the_grammar_is_refused(text: str) -> None:
    with pytest.raises(EventError) as raised:
        parse_time(text)
    assert str(raised.value) == NOT_RFC3339


@pytest.mark.attack("out-of-range fields: +99:99, month 13, 30 Feb, 24:00, :60", "EventError")
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2024-03-01T09:30:00+99:99", "timestamp offset is not within -23:59 to +23:59"),
        ("2024-03-01T09:30:00-24:00", "timestamp offset is not within -23:59 to +23:59"),
        ("2024-03-01T09:30:00+00:60", "timestamp offset is not within -23:59 to +23:59"),
        ("2024-13-01T09:30:00Z", "timestamp month is not 01-12"),
        ("2023-02-29T09:30:00Z", "timestamp day is not a day of its month"),
        ("2024-03-01T24:00:00Z", "timestamp time of day is not 00:00:00-23:59:59"),
        ("2024-03-01T09:60:00Z", "timestamp time of day is not 00:00:00-23:59:59"),
        ("2016-12-31T23:59:60Z", "timestamp has a leap second (:60); times in ms since the "
                                 "epoch have none"),
        ("0000-01-01T00:00:00Z", "timestamp is outside years 0001-9999 in UTC"),
        ("0001-01-01T00:00:00+00:01", "timestamp is outside years 0001-9999 in UTC"),
    ],
)  # fmt: skip
def test_out_of_range_fields_are_refused_by_rule(text: str, message: str) -> None:
    with pytest.raises(EventError) as raised:
        parse_time(text)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T09:30:00Z", "2024-03-01T09:30:00Z"),
        ("2024-03-01t09:30:00z", "2024-03-01T09:30:00Z"),
        ("2024-03-01T09:30:00.1234567891Z", "2024-03-01T09:30:00.123Z"),
        ("2024-03-01T10:30:00.5+01:00", "2024-03-01T09:30:00.500Z"),
        ("2024-03-01T09:30:00-00:00", "2024-03-01T09:30:00Z"),
        ("2024-03-02T09:29:00+23:59", "2024-03-01T09:30:00Z"),
    ],
)
def test_valid_stamps_are_read_in_utc(text: str, expected: str) -> None:
    assert parse_time(text) == parse_time(expected)


@pytest.mark.attack(
    "a log line whose occurred_at is patient data in a non-RFC 3339 shape",
    "rejected; the reason names the rule, not the value",
)
def test_a_rejected_timestamp_is_not_repeated_in_the_reason() -> None:
    line = (
        '{"event_id": "e1", "patient_id": "p-1", "type": "ENROLLED",'
        ' "occurred_at": "1961-04-12 Jane Doe"}'
    )
    assert list(events_of_lines([line])) == [(1, NOT_RFC3339)]
    with pytest.raises(EventError) as raised:
        event_from_json({"event_id": "e1", "patient_id": "p", "type": "ENROLLED",
                         "occurred_at": "2024-02-30T00:00:00Z"})  # fmt: skip
    assert "2024" not in str(raised.value)
