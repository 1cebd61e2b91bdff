"""The stepped-care rules (DESIGN §5), one short patient story each.

Dates are event times; "sent" lists (kind, date sent, date due). The policy is the trial's
``step-pc-2024`` unless a story says otherwise.
"""

from __future__ import annotations

import dataclasses
import uuid

from streams.clinical.engine import RECENT_EVENTS, Outcome
from streams.clinical.escalations import ESCALATION_NAMESPACE, Kind
from streams.clinical.events import parse_time
from tests.stories import (
    EARLY_PC,
    STEP_PC,
    Story,
    admitted,
    died,
    discharged,
    disenrolled,
    enrolled,
    survey,
    treatment_changed,
    visit_completed,
)

# -- enrollment and baseline ----------------------------------------------------------------


def test_enrollment_requests_an_initial_visit_within_4_weeks() -> None:
    story = Story(enrolled("2024-03-01"))
    assert story.sent() == [("INITIAL_VISIT_DUE", "2024-03-01", "2024-03-29")]
    assert story.state().care_step == 1


def test_baseline_is_the_latest_valid_survey_of_the_30_days_before_enrollment() -> None:
    story = Story(
        survey("2024-01-25", total=120),  # 36 days before enrollment: too old
        survey("2024-02-10", total=100),
        survey("2024-02-25", total=96, missing=("GP1", "GP2", "GP3", "GP4")),  # no valid total
        survey("2024-02-20", total=104),  # the latest valid one, though it arrived late
        enrolled("2024-03-01"),
    )
    assert story.processed[0].outcome is Outcome.HELD
    assert story.processed[2].outcome is Outcome.IGNORED
    assert story.state().baseline == 104
    assert story.escalations[0].reason.baseline == 104


def test_without_a_held_survey_the_first_valid_one_after_enrollment_is_the_baseline() -> None:
    story = Story(
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-03-05", total=80, missing=("GP1", "GP2", "GP3", "GP4")),  # invalid: ignored
        survey("2024-03-08", total=80),  # the baseline: it cannot step the patient up
        survey("2024-04-19", total=75),
        survey("2024-05-31", total=69),
    )
    assert story.state().baseline == 80
    assert story.kinds() == [Kind.INITIAL_VISIT_DUE, Kind.STEP_UP]
    assert story.escalations[1].reason.change == -11


def test_surveys_held_before_enrollment_are_the_newest_few_within_30_days() -> None:
    story = Story(
        survey("2024-01-01", total=90),
        survey("2024-02-01", total=91),
        survey("2024-02-10", total=92),
        survey("2024-02-15", total=93),
        survey("2024-02-20", total=94),
    )
    held = story.state().held
    assert [h.total for h in held] == [92, 93, 94]  # limit 3; 01-01 is beyond 30 days anyway


# -- step 1 ---------------------------------------------------------------------------------


def test_a_fall_of_10_points_from_baseline_steps_the_patient_up() -> None:
    story = Story(
        survey("2024-02-28", total=104),
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-04-12", total=94),
    )
    assert story.sent()[1] == ("STEP_UP", "2024-04-12", "2024-05-10")
    assert story.state().care_step == 2


def test_a_fall_of_9_points_does_not() -> None:
    story = Story(
        survey("2024-02-28", total=104),
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-04-12", total=95),
    )
    assert story.kinds() == [Kind.INITIAL_VISIT_DUE]
    assert story.state().care_step == 1


def test_with_the_strict_comparator_exactly_10_points_is_not_enough() -> None:
    strict = dataclasses.replace(STEP_PC, step_up_comparator=">")
    events = [
        survey("2024-02-28", total=104),
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
    ]
    exactly_10 = Story(*events, survey("2024-04-12", total=94), policy=strict)
    eleven = Story(*events, survey("2024-04-12", total=93), policy=strict)
    assert exactly_10.kinds() == [Kind.INITIAL_VISIT_DUE]
    assert eleven.kinds() == [Kind.INITIAL_VISIT_DUE, Kind.STEP_UP]
    assert eleven.escalations[1].reason.text == (
        "FACT-L fell 11.0 points from baseline 104.0 (threshold: more than 10)"
    )


def test_a_step_up_explains_itself_with_numbers_and_one_sentence() -> None:
    story = Story(
        survey("2024-02-28", total=104),
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-04-12", total=93),
    )
    reason = story.escalations[1].to_json()["reason"]
    assert reason == {
        "instrument": "FACT-L",
        "baseline": 104.0,
        "score": 93.0,
        "change": -11.0,
        "threshold": 10.0,
        "text": "FACT-L fell 11.0 points from baseline 104.0 (threshold 10)",
    }


def test_a_change_of_cancer_treatment_requests_a_visit_within_4_weeks() -> None:
    story = Story(
        enrolled("2024-03-01"), visit_completed("2024-03-20"), treatment_changed("2024-04-02")
    )
    assert story.sent()[1] == ("TREATMENT_CHANGE_VISIT_DUE", "2024-04-02", "2024-04-30")


def test_a_discharge_requests_a_visit_and_an_admission_alone_does_not() -> None:
    story = Story(
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        admitted("2024-04-05"),
        discharged("2024-04-09"),
    )
    assert story.sent()[1:] == [("POST_DISCHARGE_VISIT_DUE", "2024-04-09", "2024-05-07")]


def test_a_trigger_while_a_visit_request_is_open_is_suppressed_and_counted() -> None:
    story = Story(
        enrolled("2024-03-01"),  # the initial visit is still open
        treatment_changed("2024-03-10"),
        discharged("2024-03-15"),
    )
    assert story.kinds() == [Kind.INITIAL_VISIT_DUE]
    assert [p.suppressed for p in story.processed[1:]] == [
        (Kind.TREATMENT_CHANGE_VISIT_DUE,),
        (Kind.POST_DISCHARGE_VISIT_DUE,),
    ]


def test_a_step_up_replaces_the_open_request() -> None:
    story = Story(
        survey("2024-02-28", total=104),
        enrolled("2024-03-01"),  # initial visit due 03-29, never completed
        survey("2024-03-15", total=90),  # step-up: its request replaces the initial one
        until="2024-04-30",
    )
    assert story.sent() == [
        ("INITIAL_VISIT_DUE", "2024-03-01", "2024-03-29"),
        ("STEP_UP", "2024-03-15", "2024-04-12"),
        ("VISIT_OVERDUE", "2024-04-12", "2024-04-19"),  # the step-up's, not the initial one's
    ]


def test_events_before_enrollment_other_than_surveys_are_ignored() -> None:
    story = Story(
        treatment_changed("2024-02-01"), discharged("2024-02-05"), visit_completed("2024-02-06")
    )
    assert story.kinds() == []
    assert [p.outcome for p in story.processed] == [Outcome.IGNORED] * 3


# -- step 2 ---------------------------------------------------------------------------------


def test_in_step_2_each_completed_visit_makes_the_next_due_in_4_weeks() -> None:
    story = Story(
        survey("2024-02-28", total=104),
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-04-12", total=90),
        visit_completed("2024-04-20"),
        visit_completed("2024-05-15"),
    )
    assert story.sent()[2:] == [
        ("MONTHLY_VISIT_DUE", "2024-04-20", "2024-05-18"),
        ("MONTHLY_VISIT_DUE", "2024-05-15", "2024-06-12"),
    ]


def test_step_2_is_for_the_rest_of_the_illness() -> None:
    story = Story(
        survey("2024-02-28", total=104),
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-04-12", total=90),  # step-up
        survey("2024-05-24", total=110),  # better again: no step down
        survey("2024-07-05", total=70),  # worse: no second step-up
        treatment_changed("2024-07-10"),  # step-1 triggers do not apply in step 2
        until="2024-12-31",
    )
    assert Kind.STEP_UP in story.kinds() and story.kinds().count(Kind.STEP_UP) == 1
    assert Kind.TREATMENT_CHANGE_VISIT_DUE not in story.kinds()
    assert Kind.SURVEY_OVERDUE not in story.kinds()  # surveys drive step 1 only
    assert story.state().care_step == 2


# -- overdue timers -------------------------------------------------------------------------


def test_visit_overdue_is_sent_once_strictly_after_the_due_time() -> None:
    due = enrolled("2024-03-01T09:30:00Z")  # initial visit due 2024-03-29T09:30:00Z
    at_due = Story(due, admitted("2024-03-29T09:30:00Z"))
    just_after = Story(due, admitted("2024-03-29T09:30:00.001Z"), admitted("2024-04-15"))
    assert at_due.kinds() == [Kind.INITIAL_VISIT_DUE]
    assert just_after.sent() == [
        ("INITIAL_VISIT_DUE", "2024-03-01", "2024-03-29"),
        ("VISIT_OVERDUE", "2024-03-29", "2024-04-05"),
    ]
    overdue = just_after.escalations[1]
    assert overdue.occurred_at == parse_time("2024-03-29T09:30:00Z")
    assert overdue.trigger_event_id is None
    assert just_after.state().request is not None  # the request stays open


def test_a_completed_visit_closes_the_request() -> None:
    story = Story(enrolled("2024-03-01"), visit_completed("2024-03-20"), until="2024-04-10")
    assert story.kinds() == [Kind.INITIAL_VISIT_DUE]
    assert story.state().request is None


def test_survey_overdue_once_for_each_missed_6_week_cycle() -> None:
    story = Story(
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-03-01T10:00:00Z", total=100),
        until="2024-07-15",
    )
    # last valid survey 03-01 + 42 days + 7 days' grace = 04-19; then every 42 days
    assert story.sent()[1:] == [
        ("SURVEY_OVERDUE", "2024-04-19", "2024-04-26"),
        ("SURVEY_OVERDUE", "2024-05-31", "2024-06-07"),
        ("SURVEY_OVERDUE", "2024-07-12", "2024-07-19"),
    ]


def test_survey_overdue_counts_from_enrollment_and_a_valid_survey_resets_it() -> None:
    story = Story(
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-04-10", total=100, missing=("GF1", "GF2", "GF3", "GF4")),  # not valid
        survey("2024-04-15", total=100),  # valid: next deadline 04-15 + 49 days = 06-03
        until="2024-06-10",
    )
    assert story.sent()[1:] == [("SURVEY_OVERDUE", "2024-06-03", "2024-06-10")]


# -- the end --------------------------------------------------------------------------------


def test_death_cancels_the_open_request_and_ends_monitoring() -> None:
    story = Story(
        enrolled("2024-03-01"),
        died("2024-03-10"),
        survey("2024-03-11", total=50),
        treatment_changed("2024-03-12"),
        until="2025-01-01",
    )
    assert story.sent() == [
        ("INITIAL_VISIT_DUE", "2024-03-01", "2024-03-29"),
        ("VISIT_REQUEST_CANCELLED", "2024-03-10", None),
    ]
    assert [p.outcome for p in story.processed[2:]] == [Outcome.IGNORED, Outcome.IGNORED]
    assert story.state().ended


def test_disenrollment_without_an_open_request_sends_nothing() -> None:
    story = Story(enrolled("2024-03-01"), visit_completed("2024-03-20"), disenrolled("2024-04-01"))
    assert story.kinds() == [Kind.INITIAL_VISIT_DUE]
    assert story.state().ended


# -- idempotence and ids --------------------------------------------------------------------


def test_an_event_seen_before_is_ignored() -> None:
    first = treatment_changed("2024-04-02")
    story = Story(enrolled("2024-03-01"), visit_completed("2024-03-20"), first, first)
    assert story.kinds() == [Kind.INITIAL_VISIT_DUE, Kind.TREATMENT_CHANGE_VISIT_DUE]
    assert story.processed[3].outcome is Outcome.DUPLICATE


def test_idempotence_remembers_the_most_recent_events() -> None:
    story = Story(enrolled("2024-03-01"), *(admitted(f"2024-03-{d:02d}") for d in range(2, 30)))
    assert len(story.state().recent) == RECENT_EVENTS


def test_escalation_ids_are_uuid5_of_patient_kind_trigger_and_policy() -> None:
    story = Story(
        survey("2024-02-28", total=104, event_id="e-1"),
        enrolled("2024-03-01", event_id="e-2"),
        survey("2024-04-12", total=93, event_id="e-3"),
        until="2024-06-01",
    )
    ids = {x.kind: x.escalation_id for x in story.escalations}
    assert ids[Kind.STEP_UP] == str(
        uuid.uuid5(ESCALATION_NAMESPACE, "p-1|STEP_UP|e-3|step-pc-2024|1")
    )
    # timer-fired kinds use the deadline that passed instead of a trigger event
    assert ids[Kind.VISIT_OVERDUE] == str(
        uuid.uuid5(ESCALATION_NAMESPACE, "p-1|VISIT_OVERDUE|2024-05-10T09:00:00Z|step-pc-2024|1")
    )
    again = Story(
        survey("2024-02-28", total=104, event_id="e-1"),
        enrolled("2024-03-01", event_id="e-2"),
        survey("2024-04-12", total=93, event_id="e-3"),
        until="2024-06-01",
    )
    assert [x.to_json() for x in again.escalations] == [x.to_json() for x in story.escalations]


# -- the rolling baseline -------------------------------------------------------------------


def test_rolling_baseline_compares_with_the_median_of_recent_totals() -> None:
    rolling = dataclasses.replace(
        STEP_PC, baseline_mode="rolling", rolling_count=3, rolling_window_days=180
    )
    slow_decline = [
        enrolled("2024-03-01"),
        survey("2024-03-02", total=110),  # baseline
        visit_completed("2024-03-20"),
        survey("2024-04-12", total=104),  # median(110) = 110: fall 6
        survey("2024-05-24", total=102),  # median(110, 104) = 107: fall 5
        survey("2024-07-05", total=100),  # median(110, 104, 102) = 104: fall 4
        survey("2024-08-16", total=94),  # median(104, 102, 100) = 102: fall 8
        survey("2024-09-27", total=90),  # median(102, 100, 94) = 100: fall 10
    ]
    story = Story(*slow_decline, policy=rolling)
    assert story.sent()[1:] == [("STEP_UP", "2024-09-27", "2024-10-25")]
    assert story.escalations[1].reason.baseline == 100
    # The trial's fixed baseline steps the same patient up at the fall from 110 to 100.
    assert Story(*slow_decline).sent()[1] == ("STEP_UP", "2024-07-05", "2024-08-02")


# -- early palliative care (the trial's comparison arm) -------------------------------------


def test_early_care_sees_every_patient_monthly_whatever_the_fact_l() -> None:
    story = Story(
        enrolled("2024-03-01"),
        visit_completed("2024-03-20"),
        survey("2024-04-12", total=60),
        visit_completed("2024-04-15"),
        policy=EARLY_PC,
    )
    assert story.sent() == [
        ("INITIAL_VISIT_DUE", "2024-03-01", "2024-03-29"),
        ("MONTHLY_VISIT_DUE", "2024-03-20", "2024-04-17"),
        ("MONTHLY_VISIT_DUE", "2024-04-15", "2024-05-13"),
    ]
    assert story.escalations[0].care_step == 2


# -- the clock across patients --------------------------------------------------------------


def test_timers_fire_in_deadline_order_across_patients_before_the_event_that_passes_them() -> None:
    story = Story(
        enrolled("2024-03-02", patient="p-b"),  # due 03-30
        enrolled("2024-03-01", patient="p-a"),  # due 03-29 (arrived late: the clock is 03-02)
        admitted("2024-04-01", patient="p-c"),
    )
    assert [(x.patient_id, x.kind.value) for x in story.escalations[2:]] == [
        ("p-a", "VISIT_OVERDUE"),
        ("p-b", "VISIT_OVERDUE"),
    ]
