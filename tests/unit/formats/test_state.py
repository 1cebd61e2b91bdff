"""The patient state as stored in the table: compact, versioned, and old encodings still load."""

from __future__ import annotations

import pytest

from streams.clinical.engine import RECENT_EVENTS, HeldSurvey, OpenRequest, PatientState
from streams.clinical.escalations import Kind
from streams.formats.state import StateDecodeError, decode_state, encode_state
from tests.stories import Story, admitted, enrolled, survey, visit_completed

FULL = PatientState(
    care_step=1,
    enrolled_at=1709285400000,
    baseline=104.0,
    baseline_key=0x1122334455667788,
    last_survey_at=1709285400000,
    survey_due=1713519000000,
    request=OpenRequest(
        Kind.TREATMENT_CHANGE_VISIT_DUE, 1714478400000, "3f1c2a9e-8d4b-5c6e-9f70-1a2b3c4d5e6f", True
    ),
    recent=(1, 2, 2**64 - 1),
    held=(HeldSurvey(1708423200000, 100.5, 7),),
    totals=((1709285400000, 104.0),),
)

# FULL encoded by format version 1. Never change this: a future version must still decode it.
FULL_V1 = bytes.fromhex(
    "01f903"  # version 1, flags (step 1, enrolled, baseline, last survey, due, request), more
    "c05d59f98d010000"  # enrolled_at
    "0000000000005a40" "8877665544332211"  # baseline 104.0, baseline key
    "c05d59f98d010000" "c0f9b0f58e010000"  # last_survey_at, survey_due
    "02" "0042e02e8f010000" "3f1c2a9e8d4b5c6e9f701a2b3c4d5e6f"  # request: kind 2, due, id
    "03" "0100000000000000" "0200000000000000" "ffffffffffffffff"  # recent event keys
    "01" "003df5c58d010000" "0000000000205940" "0700000000000000"  # held survey
    "01" "c05d59f98d010000" "0000000000005a40"  # rolling totals
)  # fmt: skip


def test_a_version_1_encoding_still_loads() -> None:
    assert decode_state(FULL_V1) == FULL


def test_encoding_is_version_1_today() -> None:
    assert encode_state(FULL) == FULL_V1


@pytest.mark.parametrize(
    "state", [PatientState(), PatientState(ended=True), FULL], ids=["new", "ended", "full"]
)
def test_round_trip(state: PatientState) -> None:
    assert decode_state(encode_state(state)) == state


def test_states_from_a_patient_story_round_trip_and_stay_small() -> None:
    story = Story(
        survey("2024-02-28", total=104),
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        *(admitted(f"2024-04-{d:02d}") for d in range(1, 29)),
        survey("2024-04-12", total=90),
    )
    state = story.state()
    assert len(state.recent) == RECENT_EVENTS
    encoded = encode_state(state)
    assert decode_state(encoded) == state
    assert len(encoded) <= 256  # an active patient with a full idempotence window
    assert len(encode_state(PatientState(ended=True))) == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x09\x00\x00", "unknown state encoding version 9"),
        (FULL_V1[:-3], "corrupt version-1 state"),
        (FULL_V1 + b"\x00", "corrupt version-1 state: 1 trailing bytes"),
    ],
)
def test_bad_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(StateDecodeError, match=message):
        decode_state(data)
