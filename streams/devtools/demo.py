"""A small seeded demo cohort: a time-ordered JSONL log that exercises every event type.

Used by ``make run`` (the cohort ends now, so the wall clock can fire its timers) and by the
worker's equivalence test (a fixed end). Each patient has a quality of life that drifts, a
FACT-L form every ~6 weeks (some early forms before enrollment, some missed, some incomplete),
treatment changes, hospital stays, palliative visits some days after they are requested, and
some leave the study or die. A few events are delivered twice (same ``event_id``), as feeds do.
The trial-shaped simulation is ``stepcare simulate``; this one only needs to be varied.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from streams.clinical.events import DAY_MS, format_time
from streams.clinical.scoring import REVERSED, SUBSCALES, UNSCORED

_ITEMS = [item for items in SUBSCALES.values() for item in items] + sorted(UNSCORED)


def demo_cohort(patients: int, seed: int, end_ms: int, weeks: int = 30) -> list[dict[str, Any]]:
    """The cohort's events, ordered by time (ties by patient and sequence), as JSON objects."""
    rng = random.Random(seed)
    start = (end_ms - weeks * 7 * DAY_MS) // 60_000 * 60_000  # whole minutes
    events: list[tuple[int, str, int, dict[str, Any]]] = []
    for number in range(1, patients + 1):
        patient_id = f"demo-{number:04d}"
        for sequence, obj in enumerate(_patient(rng, patient_id, start, end_ms)):
            events.append((_ms(obj), patient_id, sequence, obj))
    events.sort(key=lambda item: item[:3])
    return [obj for *_, obj in events]


def _patient(rng: random.Random, patient_id: str, start: int, end: int) -> Iterator[dict]:
    counter = iter(range(1, 1_000))
    enrolled = start + rng.randrange(0, (end - start) // 120_000) * 60_000
    level = rng.uniform(1.6, 3.4)  # mean item score on the positive scale, 0-4
    decline = rng.choice([0.0, 0.0, 0.004, 0.012, 0.03])  # per day
    ends = rng.random()
    last = end if ends > 0.15 else enrolled + rng.randrange(30, 150) * DAY_MS
    last = min(last, end)

    def event(kind: str, at: int, **extra: Any) -> dict[str, Any]:
        obj = {"event_id": f"{patient_id}-{next(counter)}", "patient_id": patient_id,
               "occurred_at": format_time(at), "type": kind, "source": "demo"}  # fmt: skip
        obj.update(extra)
        return obj

    if rng.random() < 0.6:  # a form shortly before enrollment: the baseline candidate
        yield _survey(rng, event, enrolled - rng.randrange(1, 25) * DAY_MS, level)
    yield event("ENROLLED", enrolled)
    at = enrolled + rng.randrange(1, 10) * DAY_MS
    while at < last:
        days = (at - enrolled) / DAY_MS
        if rng.random() < 0.85:  # missed forms make SURVEY_OVERDUE
            drop = decline * days + (rng.uniform(0.6, 1.2) if rng.random() < 0.05 else 0.0)
            form = _survey(rng, event, at, level - drop)
            yield form
            if rng.random() < 0.03:
                yield dict(form)  # redelivered: same event_id, ignored by the engine
        for kind, chance in (("TREATMENT_CHANGED", 0.15), ("HOSPITAL_ADMITTED", 0.1)):
            if rng.random() < chance:
                moment = at + rng.randrange(1, 20) * DAY_MS
                if moment < last:
                    yield event(kind, moment)
                    discharged = moment + rng.randrange(2, 9) * DAY_MS
                    if kind == "HOSPITAL_ADMITTED" and discharged < last:
                        yield event("HOSPITAL_DISCHARGED", discharged)
        if rng.random() < 0.4:
            visit = at + rng.randrange(7, 30) * DAY_MS
            if visit < last:
                yield event("PALLIATIVE_VISIT_COMPLETED", visit)
        at += rng.randrange(38, 47) * DAY_MS
    if last < end:
        yield event("DECEASED" if ends < 0.08 else "DISENROLLED", last)


def _survey(rng: random.Random, event: Any, at: int, level: float) -> dict[str, Any]:
    responses: dict[str, int | None] = {}
    skip = 0.02 if rng.random() < 0.9 else 0.3  # now and then a form with many gaps
    for item in _ITEMS:
        if rng.random() < skip:
            responses[item] = None
            continue
        positive = min(4, max(0, round(rng.gauss(level, 0.7))))
        responses[item] = 4 - positive if item in REVERSED else positive
    survey = {"instrument": "FACT-L", "version": "4", "responses": responses}
    return event("SURVEY_SUBMITTED", at, source="portal", survey=survey)


def _ms(obj: dict[str, Any]) -> int:
    from streams.clinical.events import parse_time

    return parse_time(obj["occurred_at"])
