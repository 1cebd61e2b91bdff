"""Properties of the engine over arbitrary event histories (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.clinical.escalations import Kind
from streams.clinical.events import DAY_MS, EventType, PatientEvent, Survey, parse_time
from streams.clinical.partition import PartitionEngine
from streams.clinical.scoring import score_fact_l
from tests.stories import STEP_PC, form

START = 1704067200000  # 2024-01-01
PATIENT_TYPES = [t for t in EventType if t is not EventType.CLOCK_TICK]


@st.composite
def histories(draw: st.DrawFn) -> list[PatientEvent]:
    events = []
    for n in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(PATIENT_TYPES))
        at = START + draw(st.integers(0, 400 * DAY_MS))
        survey = None
        if kind is EventType.SURVEY_SUBMITTED:
            missing = ("GP1", "GP2", "GP3", "GP4") if draw(st.booleans()) else ()
            responses = form(draw(st.integers(40, 136)), missing)
            survey = Survey("FACT-L", "4", responses, score_fact_l(responses))
        patient = draw(st.sampled_from(["p-a", "p-b"]))
        events.append(PatientEvent(f"e-{n}", patient, at, kind, None, survey))
    return sorted(events, key=lambda e: e.occurred_at)


def run(events: list[PatientEvent], until: int) -> list[dict]:
    engine = PartitionEngine(STEP_PC)
    out = [x for e in events for x in engine.process(e).escalations]
    out += engine.advance_to(until)
    return [x.to_json() for x in out]


@settings(max_examples=300, deadline=None)
@given(histories())
def test_the_rules_hold_on_any_history(events: list[PatientEvent]) -> None:
    until = START + 500 * DAY_MS
    escalations = run(events, until)
    for patient in ("p-a", "p-b"):
        mine = [x for x in escalations if x["patient_id"] == patient]
        steps = [x["care_step"] for x in mine if x["kind"] != Kind.VISIT_REQUEST_CANCELLED]
        assert steps == sorted(steps), "care steps never go down"
        assert [x["kind"] for x in mine].count(Kind.STEP_UP) <= 1
        assert [x["kind"] for x in mine].count(Kind.INITIAL_VISIT_DUE) <= 1
        if Kind.VISIT_REQUEST_CANCELLED in [x["kind"] for x in mine]:
            assert mine[-1]["kind"] == Kind.VISIT_REQUEST_CANCELLED, "nothing after the end"
    for x in escalations:
        # times compared as times: RFC 3339 text with and without milliseconds does not sort
        assert x["due_by"] is None or parse_time(x["due_by"]) >= parse_time(x["occurred_at"])
        assert (x["trigger_event_id"] is None) == (
            x["kind"] in (Kind.VISIT_OVERDUE, Kind.SURVEY_OVERDUE)
        )
    triggered = [x["escalation_id"] for x in escalations if x["trigger_event_id"]]
    assert len(triggered) == len(set(triggered))
    # Timers fire in deadline order: escalation times never go back across the output.
    timers = [parse_time(x["occurred_at"]) for x in escalations if x["trigger_event_id"] is None]
    assert timers == sorted(timers)
    assert all(t < until for t in timers)


@settings(max_examples=200, deadline=None)
@given(histories())
def test_redelivered_events_change_nothing(events: list[PatientEvent]) -> None:
    until = START + 500 * DAY_MS
    twice = [e for event in events for e in (event, event)]
    assert run(twice, until) == run(events, until)
