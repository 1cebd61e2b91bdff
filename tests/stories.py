"""Helpers that let the engine tests read like patient stories.

``form(total)`` builds a complete FACT-L form (item codes only) whose FACT-L total is ``total``;
``Story`` runs events through the same driver as ``stepcare replay``.
"""

from __future__ import annotations

from itertools import count

from streams.clinical.escalations import Escalation, Kind
from streams.clinical.events import EventType, PatientEvent, Survey, parse_time
from streams.clinical.partition import PartitionEngine, Processed
from streams.clinical.policy import Policy, builtin_policy
from streams.clinical.scoring import REVERSED, SUBSCALES, score_fact_l

STEP_PC = builtin_policy("step-pc-2024")
EARLY_PC = builtin_policy("early-pc")
SCORED = [code for items in SUBSCALES.values() for code in items]


def form(total: int, missing: tuple[str, ...] = ()) -> dict[str, int | None]:
    """A form whose FACT-L total is ``total`` (every item scores 3 = 102, then +/-1 per item)."""
    assert 0 <= total <= 136
    item_scores = dict.fromkeys(SCORED, 3)
    remaining = total - 102
    step = 1 if remaining > 0 else -1
    while remaining:
        for code in SCORED if step > 0 else SCORED[::-1]:
            if remaining and 0 <= item_scores[code] + step <= 4:
                item_scores[code] += step
                remaining -= step
    responses: dict[str, int | None] = {
        code: 4 - s if code in REVERSED else s for code, s in item_scores.items()
    }
    for code in missing:
        responses[code] = None
    return responses


_ids = count(1)


def event(
    kind: EventType, when: str, patient: str = "p-1", event_id: str | None = None, **survey: object
) -> PatientEvent:
    at = parse_time(when if "T" in when else f"{when}T09:00:00Z")
    surveyed = None
    if kind is EventType.SURVEY_SUBMITTED:
        responses = form(survey["total"], survey.get("missing", ()))  # type: ignore[arg-type]
        surveyed = Survey("FACT-L", "4", responses, score_fact_l(responses))
    return PatientEvent(event_id or f"e-{next(_ids)}", patient, at, kind, None, surveyed)


def enrolled(when: str, patient: str = "p-1", event_id: str | None = None) -> PatientEvent:
    return event(EventType.ENROLLED, when, patient, event_id)


def survey(
    when: str, total: int, patient: str = "p-1", event_id: str | None = None,
    missing: tuple[str, ...] = (),
) -> PatientEvent:  # fmt: skip
    return event(EventType.SURVEY_SUBMITTED, when, patient, event_id, total=total, missing=missing)


def treatment_changed(when: str, patient: str = "p-1") -> PatientEvent:
    return event(EventType.TREATMENT_CHANGED, when, patient)


def admitted(when: str, patient: str = "p-1") -> PatientEvent:
    return event(EventType.HOSPITAL_ADMITTED, when, patient)


def discharged(when: str, patient: str = "p-1") -> PatientEvent:
    return event(EventType.HOSPITAL_DISCHARGED, when, patient)


def visit_completed(when: str, patient: str = "p-1") -> PatientEvent:
    return event(EventType.PALLIATIVE_VISIT_COMPLETED, when, patient)


def died(when: str, patient: str = "p-1") -> PatientEvent:
    return event(EventType.DECEASED, when, patient)


def disenrolled(when: str, patient: str = "p-1") -> PatientEvent:
    return event(EventType.DISENROLLED, when, patient)


class Story:
    """Events told in order to one engine; what it sent, and what happened to each event."""

    def __init__(self, *events: PatientEvent, until: str | None = None, policy: Policy = STEP_PC):
        self.engine = PartitionEngine(policy)
        self.processed: list[Processed] = [self.engine.process(e) for e in events]
        self.escalations: list[Escalation] = [x for p in self.processed for x in p.escalations]
        if until is not None:
            self.escalations += self.engine.advance_to(parse_time(f"{until}T00:00:00Z"))

    def sent(self) -> list[tuple[str, str, str | None]]:
        """(kind, date sent, date due) of every escalation, dates as YYYY-MM-DD."""
        return [
            (x.kind.value, _day(x.occurred_at), None if x.due_by is None else _day(x.due_by))
            for x in self.escalations
        ]

    def kinds(self) -> list[Kind]:
        return [x.kind for x in self.escalations]

    def state(self, patient: str = "p-1"):
        return self.engine.states[patient]


def _day(ms: int) -> str:
    from streams.clinical.events import format_time

    return format_time(ms)[:10]
