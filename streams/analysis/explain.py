"""Why was this patient (not) seen? One patient's story, as the engine lived it.

:func:`explain` runs the whole log through one ``PartitionEngine`` (timers depend on the clock,
which every patient's events move) and tells the chosen patient's events, outcomes, suppressed
triggers and escalations as a :class:`Story`; :func:`render_png` and :func:`render_html` draw it.
What the story tells: docs/simulation.md, "Explaining one patient".
"""

from __future__ import annotations

import base64
import contextlib
import html
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from streams.analysis.story import (
    Row,
    Story,
    SurveyPoint,
    escalation_text,
    number,
    request_text,
    scores_text,
    threshold_rule,
    when,
)
from streams.clinical.engine import (
    NEW_PATIENT,
    Outcome,
    PatientState,
    comparison_baseline,
    event_key,
)
from streams.clinical.escalations import Escalation, Kind
from streams.clinical.events import (
    EventError,
    EventType,
    PatientEvent,
    event_from_json,
    parse_time,
)
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy

LABELS = {
    EventType.SURVEY_SUBMITTED: "FACT-L survey",
    EventType.ENROLLED: "Enrolled",
    EventType.TREATMENT_CHANGED: "Cancer treatment changed",
    EventType.HOSPITAL_ADMITTED: "Admitted to hospital",
    EventType.HOSPITAL_DISCHARGED: "Discharged from hospital",
    EventType.PALLIATIVE_VISIT_COMPLETED: "Palliative-care visit completed",
    EventType.DISENROLLED: "Disenrolled",
    EventType.DECEASED: "Died",
}


# -- reading the log ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """A log line (or Avro record) that is not a valid event: skipped, as by ``replay``."""

    number: int
    reason: str
    patient_id: str | None  # when the line is a JSON object with a string patient_id
    occurred_at: int | None  # when its occurred_at is readable


def read_events(name: str) -> Iterator[tuple[int, PatientEvent | Rejected]]:
    """(line or record number, event) for each valid event of a JSONL or Avro container log."""
    from streams.formats.logs import read_objects

    objects = read_objects(name)  # opened now: a missing file is one line before any output

    def events() -> Iterator[tuple[int, PatientEvent | Rejected]]:
        for line_number, obj in objects:
            if isinstance(obj, str):
                yield line_number, Rejected(line_number, obj, None, None)
            else:
                yield line_number, _event_or_rejected(line_number, obj)

    return events()


def _event_or_rejected(number: int, obj: Any) -> PatientEvent | Rejected:
    try:
        return event_from_json(obj)
    except EventError as exc:
        patient = obj.get("patient_id") if isinstance(obj, dict) else None
        at = None
        if isinstance(obj, dict):
            with contextlib.suppress(EventError):
                at = parse_time(obj.get("occurred_at"))
        return Rejected(number, str(exc), patient if isinstance(patient, str) else None, at)


# -- the story ------------------------------------------------------------------------------------


def explain(
    events: Iterable[tuple[int, PatientEvent | Rejected]],
    patient_id: str,
    policy: Policy,
    *,
    until: int | None = None,
) -> Story | None:
    """Run every event through one engine and tell what happened to ``patient_id``.

    ``None`` when the patient appears nowhere in the log (not even in a rejected line).
    """
    engine = PartitionEngine(policy)
    story = Story(patient_id, policy, until=until)
    known = False
    surveys: dict[int, tuple[str, int]] = {}  # event key -> (event id, time), this patient's
    for _, item in events:
        if isinstance(item, Rejected):
            if item.patient_id == patient_id:
                known = True
                story.rows.append(
                    Row(item.occurred_at, "rejected", f"Rejected input (line {item.number})",
                        f"{item.reason}; not given to the engine")
                )  # fmt: skip
            else:
                story.rejected_elsewhere += 1
            continue
        mine = item.patient_id == patient_id and item.type is not EventType.CLOCK_TICK
        # What PartitionEngine.process does first (there, a no-op after this): fire the timers
        # due before the event, so the state the event meets can be read in between.
        for escalation in engine.advance_to(item.occurred_at):
            if escalation.patient_id == patient_id:
                story.rows.append(_escalation_row(escalation))
        before = engine.states.get(patient_id, NEW_PATIENT)
        processed = engine.process(item)
        own = list(processed.escalations)
        if not mine:
            continue
        known = True
        after = engine.states.get(patient_id, NEW_PATIENT)
        if item.type is EventType.SURVEY_SUBMITTED:
            surveys[event_key(item.event_id)] = (item.event_id, item.occurred_at)
        _tell_event(story, item, processed.outcome, before, after, own, surveys)
        for kind in processed.suppressed:
            story.suppressed.append((item.occurred_at, kind))
            request = before.request
            open_text = "" if request is None else ": " + request_text(request)
            story.rows.append(
                Row(item.occurred_at, "suppressed", "",
                    f"suppressed: {kind} (a visit request was open{open_text})")
            )  # fmt: skip
        for escalation in own:
            if escalation.patient_id == patient_id:
                story.rows.append(_escalation_row(escalation, before))
    if until is not None:
        fired = [e for e in engine.advance_to(until) if e.patient_id == patient_id]
        story.rows.append(Row(until, "clock", "Clock advanced to --until", _fired_text(fired)))
        story.rows.extend(_escalation_row(e) for e in fired)
    if not known:
        return None
    story.clock = engine.clock
    story.state = engine.states.get(patient_id, NEW_PATIENT)
    return story


def _fired_text(fired: list[Escalation]) -> str:
    if not fired:
        return "no timer of this patient was due"
    return f"{len(fired)} timer(s) of this patient fired"


def _escalation_row(escalation: Escalation, before: PatientState | None = None) -> Row:
    text = escalation_text(escalation)
    replaced = before.request if before is not None else None
    if replaced is not None and escalation.kind is Kind.STEP_UP:
        text += f" [replaces the open {replaced.kind} request]"
    return Row(escalation.occurred_at, "escalation", "", text, escalation)


def _tell_event(
    story: Story,
    event: PatientEvent,
    outcome: Outcome,
    before: PatientState,
    after: PatientState,
    own: list[Escalation],
    surveys: dict[int, tuple[str, int]],
) -> None:
    t = event.occurred_at
    kind = event.type
    label = f"{LABELS.get(kind, str(kind))} ({event.event_id})"
    if kind is EventType.SURVEY_SUBMITTED:
        assert event.survey is not None
        label += ": " + scores_text(event.survey.scores)
    elif kind is not EventType.CLOCK_TICK and outcome is not Outcome.DUPLICATE:
        story.markers.append((t, kind))

    def row(did: str) -> None:
        story.rows.append(Row(t, "event", label, did, event_type=kind))

    if outcome is Outcome.DUPLICATE:
        return row("duplicate event ignored (this event id was already processed)")
    if outcome is Outcome.IGNORED and before.ended:
        if kind is EventType.SURVEY_SUBMITTED:
            _add_survey(story, event, "ignored")
        return row("ignored: monitoring ended")
    if kind is EventType.SURVEY_SUBMITTED:
        return row(_tell_survey(story, event, outcome, before, after, surveys))
    if kind is EventType.ENROLLED:
        if outcome is Outcome.IGNORED:
            return row(f"ignored: already enrolled (care step {before.care_step})")
        text = f"care step {after.care_step}"
        if after.baseline is not None and after.baseline_key in surveys:
            source, at = surveys[after.baseline_key]
            story.baselines.append((t, after.baseline))
            text += (
                f"; baseline {number(after.baseline)} set from the FACT-L survey of {when(at)} "
                f"({source}), the latest valid total in the {story.policy.baseline_lookback_days:g}"
                " days before enrollment"
            )
        else:
            text += (
                f"; no valid FACT-L in the {story.policy.baseline_lookback_days:g} days before "
                "enrollment: the first valid one after it will be the baseline"
            )
        return row(text)
    if kind in (EventType.TREATMENT_CHANGED, EventType.HOSPITAL_DISCHARGED):
        if outcome is Outcome.IGNORED:
            why = "not enrolled" if before.care_step == 0 else "in care step 2 (monthly visits)"
            return row(f"ignored: {why}")
        return row("")
    if kind is EventType.HOSPITAL_ADMITTED:
        return row("recorded (context only: no action)")
    if kind is EventType.PALLIATIVE_VISIT_COMPLETED:
        if outcome is Outcome.IGNORED:
            return row("ignored: not enrolled")
        story.visits_completed += 1
        request = before.request
        if request is None:
            return row("visit recorded; no visit request was open")
        timing = "on time" if t <= request.due_by else "late"
        return row(
            f"visit recorded; closes the open {request.kind} request "
            f"(due {when(request.due_by)}: {timing})"
        )
    if kind in (EventType.DISENROLLED, EventType.DECEASED):
        story.ended = (t, kind, before.care_step)
        if own:
            return row("monitoring ends")
        return row("monitoring ends; no visit request was open, nothing to cancel")
    return row(str(outcome))


def _tell_survey(
    story: Story,
    event: PatientEvent,
    outcome: Outcome,
    before: PatientState,
    after: PatientState,
    surveys: dict[int, tuple[str, int]],
) -> str:
    total = event.survey.scores.FACT_L  # type: ignore[union-attr]
    policy = story.policy
    if outcome is Outcome.HELD:
        _add_survey(story, event, "held")
        return "held until enrollment (not enrolled yet; may become the baseline)"
    if total is None:
        _add_survey(story, event, "incomplete")
        if before.care_step == 0:
            return "not enrolled and no valid total: not held"
        return "no valid total: does not count as a survey (no baseline, survey clock unchanged)"
    if outcome is Outcome.IGNORED:
        _add_survey(story, event, "ignored")
        return "ignored: dated before enrollment, and the baseline was already set"
    _add_survey(story, event, "used")
    if before.baseline is None:
        story.baselines.append((event.occurred_at, total))
        return (
            f"becomes the baseline ({number(total)}): the first valid FACT-L after enrollment "
            "(it cannot itself step the patient up)"
        )
    baseline = comparison_baseline(before, event.occurred_at, policy)
    if policy.baseline_mode == "rolling":
        story.baselines.append((event.occurred_at, baseline))
    change = total - baseline
    crossed = policy.declined(baseline, total)
    text = (
        f"change {change:+.1f} from baseline {number(baseline)}: "
        + ("crosses" if crossed else "within")
        + f" the step-up threshold ({threshold_rule(policy)})"
    )
    if crossed and after.care_step == before.care_step:
        if before.care_step == 2:
            text += "; already in care step 2: no further step-up"
        elif event_key(event.event_id) == before.baseline_key:
            text += "; this survey is the baseline: no step-up"
    return text


def _add_survey(story: Story, event: PatientEvent, status: str) -> None:
    assert event.survey is not None
    story.surveys.append(SurveyPoint(event.occurred_at, event.survey.scores, status))


# -- the HTML page --------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#212121}
h1{font-size:1.4em}table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{border-bottom:1px solid #e0e0e0;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.when{white-space:nowrap;font-variant-numeric:tabular-nums}
tr.escalation td{background:#fff8e1}tr.suppressed td,tr.rejected td{color:#757575}
tr.clock td{font-style:italic}img{max-width:100%;border:1px solid #e0e0e0;margin:1em 0}
p.summary{margin:.3em 0}
"""


def render_html(story: Story, png: bytes) -> str:
    """A self-contained page: the story as a table and the chart as an embedded PNG."""
    e = html.escape
    rows = []
    for row in story.rows:
        date = "" if row.at is None else when(row.at)
        if row.category == "escalation" and row.escalation is not None:
            happened = "" if row.escalation.trigger_event_id else "deadline passed (timer)"
            did = row.did
        elif row.category == "suppressed":
            happened, did = "", row.did
        else:
            happened, did = row.happened, row.did
        rows.append(
            f'<tr class="{row.category}"><td class="when">{e(date)}</td><td>{e(happened)}</td>'
            f"<td>{e(did)}</td></tr>"
        )
    image = base64.b64encode(png).decode("ascii")
    summary = "".join(f'<p class="summary">{e(line)}</p>' for line in story.summary())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>stepcare explain: {e(story.patient_id)}</title><style>{_CSS}</style></head>"
        f"<body><h1>Why was patient {e(story.patient_id)} (not) seen?</h1>"
        f"<p>{e(story.header())}</p>"
        f'<img src="data:image/png;base64,{image}" alt="timeline of patient '
        f'{e(story.patient_id)}">'
        "<table><thead><tr><th>Date (UTC)</th><th>What happened</th><th>What stepcare did</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<h2>Summary</h2>{summary}</body></html>\n"
    )
