"""One record cannot flood the schedulers: the survey catch-up is bounded (issue 12).

A record dated year 24 (or 8999) moves its partition's clock over thousands of 6-week survey
cycles at once. The engine sends at most ``MAX_SURVEY_CATCH_UP`` SURVEY_OVERDUE per patient for
such a jump, so one input record causes at most 28 escalations per patient of its partition.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.clinical.engine
from streams.cli import main
from streams.clinical.engine import MAX_SURVEY_CATCH_UP
from streams.clinical.escalations import Kind
from streams.clinical.events import (
    DAY_MS,
    MAX_EVENT_TIME,
    MIN_TIME,
    EventType,
    PatientEvent,
    Survey,
    event_from_json,
    format_time,
    parse_time,
)
from streams.clinical.partition import PartitionEngine
from streams.clinical.scoring import score_fact_l
from tests.stories import STEP_PC, form

CYCLE = 42 * DAY_MS
MAX_PER_RECORD = MAX_SURVEY_CATCH_UP + 2  # + one VISIT_OVERDUE + the record's own escalation


def _event(event_id: str, patient_id: str, at: str, kind: str) -> PatientEvent:
    obj = {"event_id": event_id, "patient_id": patient_id, "occurred_at": at, "type": kind}
    return event_from_json(obj)


def _expected_catch_up(first: int, clock: int) -> list[int]:
    """The deadlines of the SURVEY_OVERDUE sent when the clock jumps from before ``first``."""
    cycles = (clock - 1 - first) // CYCLE + 1
    if cycles <= MAX_SURVEY_CATCH_UP:
        return [first + n * CYCLE for n in range(cycles)]
    return [first, *(first + n * CYCLE for n in range(cycles - MAX_SURVEY_CATCH_UP + 1, cycles))]


def test_the_bound_is_26_cycles_and_28_escalations_per_record() -> None:
    assert MAX_SURVEY_CATCH_UP == 26
    assert MAX_PER_RECORD == 28


@pytest.mark.attack(
    "ENROLLED dated year 24, then the patient's DECEASED in 2024",
    "exactly 28 escalations for that record (not ~17,400)",
)
@pytest.mark.parametrize("year_24", ["0024-01-01T00:00:00Z", "0024-01-01t00:00:00.000z"])
def test_a_year_24_enrollment_then_a_2024_event_sends_the_bounded_number(year_24: str) -> None:
    engine = PartitionEngine(STEP_PC)
    enrolled = parse_time(year_24)
    assert [e.kind for e in engine.process(_event("e1", "p", year_24, "ENROLLED")).escalations] == [
        Kind.INITIAL_VISIT_DUE
    ]
    died = parse_time("2024-03-01T00:00:00Z")
    fired = engine.process(_event("e2", "p", format_time(died), "DECEASED")).escalations
    first = enrolled + 49 * DAY_MS
    deadlines = _expected_catch_up(first, died)
    assert len(deadlines) == MAX_SURVEY_CATCH_UP and (died - first) // CYCLE > 17_000
    assert [(e.kind, e.occurred_at) for e in fired] == [
        (Kind.VISIT_OVERDUE, enrolled + 28 * DAY_MS),
        *[(Kind.SURVEY_OVERDUE, d) for d in deadlines],
        (Kind.VISIT_REQUEST_CANCELLED, died),
    ]
    assert len(fired) == MAX_PER_RECORD
    skipped = (deadlines[1] - first) // CYCLE - 1
    assert fired[1].reason.text == (
        f"No valid FACT-L in the 49 days since enrollment ({format_time(enrolled)}); one is "
        f"expected every 42 days. The next {skipped} missed cycles (to "
        f"{format_time(deadlines[1] - CYCLE)}) are not reported: the clock passed more than 26 "
        "cycles at once."
    )
    assert all("not reported" not in e.reason.text for e in fired[2:])


@pytest.mark.attack(
    "stepcare replay of a log: ENROLLED dated 0024, then another patient's 2024 event",
    "1 VISIT_OVERDUE + 26 SURVEY_OVERDUE for the year-24 patient",
)
def test_replay_of_a_year_24_record_is_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    lines = [
        {"event_id": "e1", "patient_id": "p-24", "occurred_at": "0024-01-01T00:00:00Z",
         "type": "ENROLLED"},
        {"event_id": "e2", "patient_id": "p-1", "occurred_at": "2024-03-01T09:30:00Z",
         "type": "HOSPITAL_ADMITTED"},
    ]  # fmt: skip
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["replay", "--input", str(log)]) == 0
    out, _ = capsys.readouterr()
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]
    assert kinds == ["INITIAL_VISIT_DUE", "VISIT_OVERDUE"] + ["SURVEY_OVERDUE"] * 26


@pytest.mark.attack(
    "a CLOCK_TICK dated 8999 on a partition of two enrolled patients",
    "27 escalations per patient (1 VISIT_OVERDUE + 26 SURVEY_OVERDUE), deadline order",
)
def test_a_far_future_tick_sends_the_bounded_catch_up_to_every_patient() -> None:
    engine = PartitionEngine(STEP_PC)
    for n, patient in enumerate(["p-a", "p-b"]):
        engine.process(_event(f"e{n}", patient, f"2024-01-0{n + 1}T00:00:00Z", "ENROLLED"))
    tick = parse_time("8999-01-01T00:00:00Z")
    fired = engine.process(_event("", "", format_time(tick), "CLOCK_TICK")).escalations
    for n, patient in enumerate(["p-a", "p-b"]):
        enrolled = parse_time(f"2024-01-0{n + 1}T00:00:00Z")
        mine = [(e.kind, e.occurred_at) for e in fired if e.patient_id == patient]
        assert mine == [
            (Kind.VISIT_OVERDUE, enrolled + 28 * DAY_MS),
            *[(Kind.SURVEY_OVERDUE, d) for d in _expected_catch_up(enrolled + 49 * DAY_MS, tick)],
        ]
    times = [e.occurred_at for e in fired]
    assert times == sorted(times), "timers still fire in deadline order across patients"
    assert engine.states["p-a"].survey_due is not None
    assert engine.states["p-a"].survey_due >= tick  # the deadline moved on past the clock


@pytest.mark.parametrize("cycles", [1, 25, 26, 27, 28])
def test_up_to_26_missed_cycles_are_each_sent_and_the_27th_is_the_first_skipped(
    cycles: int,
) -> None:
    engine = PartitionEngine(STEP_PC)
    enrolled = parse_time("2024-01-01T00:00:00Z")
    engine.process(_event("e1", "p", format_time(enrolled), "ENROLLED"))
    first = enrolled + 49 * DAY_MS
    clock = first + (cycles - 1) * CYCLE + 1  # just after the last of `cycles` deadlines
    fired = engine.advance_to(clock)
    surveys = [e for e in fired if e.kind is Kind.SURVEY_OVERDUE]
    assert len(surveys) == min(cycles, MAX_SURVEY_CATCH_UP)
    assert [e.occurred_at for e in surveys] == _expected_catch_up(first, clock)
    notes = [
        e.reason.text.split(" days. ", 1)[1] for e in surveys if "not reported" in e.reason.text
    ]
    if cycles == 27:
        assert notes == [
            f"The next missed cycle ({format_time(first + CYCLE)}) is not reported: the clock "
            "passed more than 26 cycles at once."
        ]
    else:
        assert len(notes) == (cycles > MAX_SURVEY_CATCH_UP)


# -- properties ---------------------------------------------------------------------------------

PATIENT_TYPES = [t for t in EventType if t is not EventType.CLOCK_TICK]


@st.composite
def events(draw: st.DrawFn, times: st.SearchStrategy[int]) -> list[PatientEvent]:
    log = []
    for n in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from([*PATIENT_TYPES, EventType.CLOCK_TICK]))
        survey = None
        if kind is EventType.SURVEY_SUBMITTED:
            responses = form(draw(st.integers(40, 136)))
            survey = Survey("FACT-L", "4", responses, score_fact_l(responses))
        tick = kind is EventType.CLOCK_TICK
        patient = "" if tick else draw(st.sampled_from(["p-a", "p-b", "p-c"]))
        log.append(PatientEvent("" if tick else f"e-{n}", patient, draw(times), kind, None, survey))
    return log


@pytest.mark.attack(
    "arbitrary logs with times anywhere in years 0001-9899, in any order",
    "every record: at most 28 escalations per patient, its timers in deadline order",
)
@settings(max_examples=300, deadline=None)
@given(events(st.integers(MIN_TIME, MAX_EVENT_TIME - 1)))
def test_one_record_causes_at_most_28_escalations_per_patient(log: list[PatientEvent]) -> None:
    engine = PartitionEngine(STEP_PC)
    for event in log:
        fired = engine.process(event).escalations
        for patient in ("p-a", "p-b", "p-c"):
            assert sum(e.patient_id == patient for e in fired) <= MAX_PER_RECORD
        timers = [e.occurred_at for e in fired if e.trigger_event_id is None]
        assert timers == sorted(timers)


START = parse_time("2024-01-01T00:00:00Z")


@settings(max_examples=200, deadline=None)
@given(events(st.integers(START, START + 3 * 365 * DAY_MS)))
def test_histories_of_three_years_send_every_missed_cycle(log: list[PatientEvent]) -> None:
    """Within 3 years (26 cycles of 42 days are 1,092 days) the bound is never reached: the
    output is the same as with no bound at all, one SURVEY_OVERDUE per missed cycle."""

    def run() -> list[dict]:
        engine = PartitionEngine(STEP_PC)
        out = [
            x
            for e in sorted(log, key=lambda e: e.occurred_at)
            for x in engine.process(e).escalations
        ]
        out += engine.advance_to(START + 3 * 365 * DAY_MS)
        return [x.to_json() for x in out]

    bounded = run()
    streams.clinical.engine.MAX_SURVEY_CATCH_UP = 10**9
    try:
        unbounded = run()
    finally:
        streams.clinical.engine.MAX_SURVEY_CATCH_UP = MAX_SURVEY_CATCH_UP
    assert bounded == unbounded
