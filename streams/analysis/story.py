"""One patient's story, as ``stepcare explain`` tells it: its rows, surveys, clinical events and
baselines (Story), and how it reads as text (the header, one line per row, the summary).

explain.py fills a Story by running the log through the engine; charts.py draws it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from streams.clinical.engine import NEW_PATIENT, OpenRequest, PatientState, next_deadline
from streams.clinical.escalations import VISIT_REQUEST_KINDS, Escalation, Kind
from streams.clinical.events import EventType, format_time
from streams.clinical.policy import Policy
from streams.clinical.scoring import FactLScore

SUBSCALES = ("PWB", "SWB", "EWB", "FWB", "LCS")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the story: when, what happened, what stepcare did."""

    at: int | None
    category: str  # event, escalation, suppressed, rejected, clock
    happened: str
    did: str = ""
    escalation: Escalation | None = None
    event_type: EventType | None = None


@dataclass(frozen=True, slots=True)
class SurveyPoint:
    at: int
    scores: FactLScore
    status: str  # used, held, incomplete, ignored


@dataclass
class Story:
    patient_id: str
    policy: Policy
    rows: list[Row] = field(default_factory=list)
    surveys: list[SurveyPoint] = field(default_factory=list)
    markers: list[tuple[int, EventType]] = field(default_factory=list)  # clinical events
    suppressed: list[tuple[int, Kind]] = field(default_factory=list)
    baselines: list[tuple[int, float]] = field(default_factory=list)  # (from, comparison value)
    ended: tuple[int, EventType, int] | None = None  # when, how, last care step
    state: PatientState = NEW_PATIENT
    clock: int | None = None
    until: int | None = None
    visits_completed: int = 0
    rejected_elsewhere: int = 0  # rejected lines of other (or unknown) patients

    @property
    def escalations(self) -> list[Escalation]:
        return [row.escalation for row in self.rows if row.escalation is not None]

    def lines(self) -> list[str]:
        """The story as text: a header, one line per row, and the summary."""
        out = [self.header(), ""]
        out += [render_row(row) for row in self.rows]
        out += ["", *self.summary()]
        return out

    def header(self) -> str:
        p = self.policy
        return (
            f"Patient {self.patient_id}, policy {p.policy_id} v{p.policy_version}: step-up on "
            f"{threshold_rule(p)} from the {baseline_rule(p)}. Times are UTC."
        )

    def summary(self) -> list[str]:
        escalations = self.escalations
        requested = Counter(e.kind for e in escalations if e.kind in VISIT_REQUEST_KINDS)
        overdue = Counter(
            e.kind for e in escalations if e.kind in (Kind.VISIT_OVERDUE, Kind.SURVEY_OVERDUE)
        )
        state = self.state
        clock = "no clock" if self.clock is None else f"clock {when(self.clock)}"
        if self.ended is not None:
            at, how, step = self.ended
            verb = "died" if how is EventType.DECEASED else "disenrolled"
            now = f"monitoring ended {when(at)} ({verb}) in care step {step}"
        elif state.care_step == 0:
            now = "not enrolled"
        else:
            now = f"care step {state.care_step}"
        request = "none" if state.request is None else request_text(state.request)
        lines = [
            f"Summary ({clock}): {now}.",
            f"Open visit request: {request}.",
            f"Visits requested: {sum(requested.values())}"
            + (f" ({_counts(requested)})" if requested else "")
            + f"; palliative-care visits recorded: {self.visits_completed}; overdue notices: "
            + (f"{sum(overdue.values())} ({_counts(overdue)})" if overdue else "0")
            + f"; suppressed triggers: {len(self.suppressed)}.",
        ]
        pending = next_deadline(state)
        if pending is not None:
            r = state.request
            if r is not None and not r.overdue_sent and r.due_by == pending:
                what = "VISIT_OVERDUE if no palliative-care visit is recorded by then"
            else:
                what = "SURVEY_OVERDUE if no valid FACT-L comes by then"
            lines.append(
                f"Next timer: {when(pending)}, {what} (after the clock: not fired"
                + ("; --until moves the clock)." if self.until is None else ").")
            )  # fmt: skip
        if self.rejected_elsewhere:
            lines.append(
                f"{self.rejected_elsewhere} rejected line(s) of the log named no patient or "
                "another patient (stepcare replay lists them)."
            )
        return lines


def request_text(request: OpenRequest) -> str:
    text = f"{request.kind}, due {when(request.due_by)}"
    return text + (", overdue: VISIT_OVERDUE sent" if request.overdue_sent else "")


def _counts(counter: Counter[Kind]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counter.items())


def when(ms: int) -> str:
    """A time for people: ``2024-03-01 09:30`` (UTC; seconds shown only when not zero)."""
    text = format_time(ms)
    seconds = text[16:19] if text[17:19] != "00" else ""
    return f"{text[:10]} {text[11:16]}{seconds}"


def number(value: float) -> str:
    return f"{value:.1f}"


def threshold_rule(policy: Policy) -> str:
    t = f"{policy.step_up_threshold:g}"
    if policy.step_up_comparator == ">=":
        return f"a fall of {t} points or more"
    return f"a fall of more than {t} points"


def baseline_rule(policy: Policy) -> str:
    if policy.baseline_mode == "fixed":
        return "enrollment baseline"
    return (
        f"rolling baseline (median of the last {policy.rolling_count} valid totals within "
        f"{policy.rolling_window_days:g} days)"
    )


def scores_text(scores: FactLScore) -> str:
    subscales = ", ".join(
        f"{name} {'n/a' if getattr(scores, name) is None else number(getattr(scores, name))}"
        for name in SUBSCALES
    )
    if scores.FACT_L is None:
        return f"incomplete (no valid total; {scores.answered} of 34 items answered; {subscales})"
    return f"total {number(scores.FACT_L)} ({subscales})"


def escalation_text(escalation: Escalation) -> str:
    """How an escalation reads in the story: kind, due date, and its reason text."""
    due = "" if escalation.due_by is None else f", due {when(escalation.due_by)}"
    timer = " (timer)" if escalation.trigger_event_id is None else ""
    return f"{escalation.kind}{timer}{due}: {escalation.reason.text}"


def render_row(row: Row) -> str:
    date = "                " if row.at is None else when(row.at).ljust(16)
    if row.category == "escalation":
        return f"{date}  => {row.did}"
    if row.category == "suppressed":
        return f"{date}  -- {row.did}"
    joiner = "; " if row.event_type is EventType.SURVEY_SUBMITTED else ": "
    return f"{date}  {row.happened}" + (f"{joiner}{row.did}" if row.did else "")
