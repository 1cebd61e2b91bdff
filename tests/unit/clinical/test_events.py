"""Reading patient events: what is valid input, and the reason given for what is not."""

from __future__ import annotations

import pytest

from streams.clinical.events import (
    EventError,
    EventType,
    event_from_json,
    event_to_json,
    format_time,
    parse_time,
)

SURVEY = {
    "event_id": "e-17",
    "patient_id": "p-001",
    "occurred_at": "2024-03-01T09:30:00Z",
    "type": "SURVEY_SUBMITTED",
    "source": "portal",
    "survey": {
        "instrument": "FACT-L",
        "version": "4",
        "responses": {"GP1": 1, "GP2": 0, "GE2": None},
    },
    "attributes": {"site": "A"},
}


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2024-03-01T09:30:00Z", 1709285400000),
        ("2024-03-01T09:30:00.250Z", 1709285400250),
        ("2024-03-01T09:30:00.25Z", 1709285400250),
        ("2024-03-01T10:30:00+01:00", 1709285400000),
        ("2024-03-01T08:00:00-01:30", 1709285400000),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_rfc3339_times_in_milliseconds(text: str, ms: int) -> None:
    assert parse_time(text) == ms


def test_times_are_written_in_utc_with_milliseconds_only_when_needed() -> None:
    assert format_time(1709285400000) == "2024-03-01T09:30:00Z"
    assert format_time(1709285400250) == "2024-03-01T09:30:00.250Z"


@pytest.mark.parametrize("text", ["2024-03-01", "2024-03-01T09:30:00", "2024-02-30T00:00:00Z", 17])
def test_other_times_are_refused(text: object) -> None:
    with pytest.raises(EventError):
        parse_time(text)


def test_a_survey_event_is_read_and_scored_once() -> None:
    event = event_from_json(SURVEY)
    assert event.type is EventType.SURVEY_SUBMITTED
    assert event.survey is not None and event.survey.scores.answered == 2
    assert event_to_json(event) == SURVEY


FACT_L = {"instrument": "FACT-L", "responses": {}}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": "LAB_RESULT"}, "unknown event type (type must be one of SURVEY_SUBMITTED, "),
        ({"patient_id": ""}, "patient_id must be a non-empty string"),
        ({"event_id": 17}, "event_id must be a non-empty string"),
        ({"event_id": "e" * 129}, "event_id is longer than 128 characters"),
        ({"occurred_at": "yesterday"}, "timestamp is not RFC 3339"),
        ({"survey": None}, "a SURVEY_SUBMITTED event needs a survey object"),
        ({"survey": {"instrument": "PHQ-9", "responses": {}}}, "survey instrument is not FACT-L"),
        ({"survey": FACT_L | {"version": "3"}}, "survey version is not supported"),
        ({"survey": FACT_L | {"responses": {"GP1": 5}}}, "item GP1: the response is outside 0-4"),
        ({"survey": FACT_L | {"responses": {"GP1": 1, "Q9": 1}}},
         "unknown item code at position 2 of the responses"),
        ({"attributes": {"site": 1}}, "attributes must map strings to strings"),
        ({"mrn": "123"}, "unknown field at position 8 (not a PatientEvent field: attributes, "),
    ],
)  # fmt: skip
def test_invalid_events_are_refused_with_a_reason(change: dict, reason: str) -> None:
    with pytest.raises(EventError, match=reason.replace("(", r"\(")):
        event_from_json(SURVEY | change)


def test_only_surveys_carry_a_survey() -> None:
    enrolled = {k: v for k, v in SURVEY.items() if k != "survey"} | {"type": "ENROLLED"}
    assert event_from_json(enrolled).survey is None
    with pytest.raises(EventError, match="a ENROLLED event carries no survey"):
        event_from_json(enrolled | {"survey": SURVEY["survey"]})


def test_a_clock_tick_has_an_empty_patient_id() -> None:
    tick = {"patient_id": "", "occurred_at": "2024-03-01T00:00:00Z", "type": "CLOCK_TICK"}
    assert event_from_json(tick).type is EventType.CLOCK_TICK
    with pytest.raises(EventError, match="a CLOCK_TICK has an empty patient_id"):
        event_from_json(tick | {"patient_id": "p-1"})
