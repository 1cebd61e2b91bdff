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
import io
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from streams.clinical.engine import (
    NEW_PATIENT,
    OpenRequest,
    Outcome,
    PatientState,
    comparison_baseline,
    event_key,
    next_deadline,
)
from streams.clinical.escalations import VISIT_REQUEST_KINDS, Escalation, Kind
from streams.clinical.events import (
    EventError,
    EventType,
    PatientEvent,
    event_from_json,
    format_time,
    parse_time,
)
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy
from streams.clinical.scoring import FactLScore
from streams.errors import UsageError

SUBSCALES = ("PWB", "SWB", "EWB", "FWB", "LCS")
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
    from streams.formats.files import read_objects

    objects = read_objects(name)  # opened now: a missing file is one line before any output

    def events() -> Iterator[tuple[int, PatientEvent | Rejected]]:
        for number, obj in objects:
            if isinstance(obj, str):
                yield number, Rejected(number, obj, None, None)
            else:
                yield number, _event_or_rejected(number, obj)

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
    event_id: str
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
    baseline: tuple[float, str, int] | None = None  # value, source event id, source time
    enrolled_at: int | None = None
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
        story.enrolled_at = t
        text = f"care step {after.care_step}"
        if after.baseline is not None and after.baseline_key in surveys:
            source, at = surveys[after.baseline_key]
            story.baseline = (after.baseline, source, at)
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
        story.baseline = (total, event.event_id, event.occurred_at)
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
    story.surveys.append(SurveyPoint(event.occurred_at, event.event_id, event.survey.scores,
                                     status))  # fmt: skip


# -- the chart ------------------------------------------------------------------------------------

MARKER_STYLE = {  # event type -> (colour, line style, legend label)
    EventType.ENROLLED: ("#00838f", "-", "enrollment"),
    EventType.TREATMENT_CHANGED: ("#8e24aa", "--", "treatment change"),
    EventType.HOSPITAL_ADMITTED: ("#ef6c00", ":", "hospital admission"),
    EventType.HOSPITAL_DISCHARGED: ("#ef6c00", "--", "hospital discharge"),
    EventType.PALLIATIVE_VISIT_COMPLETED: ("#1565c0", "-.", "palliative-care visit"),
    EventType.DISENROLLED: ("#000000", "-", "disenrolled"),
    EventType.DECEASED: ("#000000", "-", "died"),
}
KIND_COLOURS = {
    Kind.INITIAL_VISIT_DUE: "#2e7d32",
    Kind.STEP_UP: "#c62828",
    Kind.TREATMENT_CHANGE_VISIT_DUE: "#8e24aa",
    Kind.POST_DISCHARGE_VISIT_DUE: "#ef6c00",
    Kind.MONTHLY_VISIT_DUE: "#1565c0",
    Kind.VISIT_OVERDUE: "#6d4c41",
    Kind.SURVEY_OVERDUE: "#6d4c41",
    Kind.VISIT_REQUEST_CANCELLED: "#000000",
}
SUBSCALE_COLOURS = {
    "PWB": "#1b9e77", "SWB": "#d95f02", "EWB": "#7570b3", "FWB": "#e7298a", "LCS": "#66a61e",
}  # fmt: skip


def render_png(story: Story) -> bytes:
    """The patient's timeline as a PNG (matplotlib, imported only here)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise UsageError("--png and --html need matplotlib (pip install matplotlib)") from None
    from datetime import UTC, datetime

    def dt(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)

    times = [r.at for r in story.rows if r.at is not None]
    times += [e.due_by for e in story.escalations if e.due_by is not None]
    times = times or [story.clock or 0]  # only rejected lines without a readable time
    start, end = min(times), max(times)
    pad = max((end - start) // 40, 86_400_000)
    x0, x1 = dt(start - pad), dt(end + pad)
    line_end = story.ended[0] if story.ended else end

    # Escalations (and suppressed triggers) on their own track: a marker, the window to the due
    # date, and the kind; each in the first lane where it does not overlap what is there.
    char = (end - start + 2 * pad) * 7 / 900  # ms per character of an 8-pt label
    items: list[tuple[int, int | None, str, str]] = [
        (e.occurred_at, e.due_by, str(e.kind), KIND_COLOURS.get(e.kind, "#424242"))
        for e in story.escalations
    ]
    items += [(t, None, f"suppressed {kind}", "#9e9e9e") for t, kind in story.suppressed]
    items.sort(key=lambda item: item[0])
    lane_ends: list[float] = []
    placed = []
    for t, due, label, colour in items:
        width = (len(label) + 3) * char
        left = t + width > end + pad  # no room on the right: the label goes left of its marker
        first, extent = (t - width, max(t, due or t)) if left else (t, max(t + width, due or t))
        lane = next((i for i, e in enumerate(lane_ends) if e < first), len(lane_ends))
        if lane == len(lane_ends):
            lane_ends.append(extent)
        lane_ends[lane] = extent
        placed.append((t, due, label, colour, lane, left))
    lanes = max(len(lane_ends), 2)

    track_height = 0.32 * lanes + 0.4
    fig = Figure(figsize=(12, 6.4 + track_height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 1, height_ratios=[3.2, track_height, 1.8])
    ax = fig.add_subplot(grid[0])
    track = fig.add_subplot(grid[1], sharex=ax)
    sub = fig.add_subplot(grid[2], sharex=ax)
    p = story.policy
    fig.suptitle(
        f"Patient {story.patient_id} - policy {p.policy_id} v{p.policy_version}: FACT-L, "
        "clinical events and escalations",
        fontsize=13,
        fontweight="bold",
        usetex=False,  # the patient id is text: "$" or "\\" in it is not TeX or mathtext
        parse_math=False,
    )

    # FACT-L totals, baseline and threshold.
    valid = [s for s in story.surveys if s.scores.FACT_L is not None]
    used = [s for s in valid if s.status == "used"]
    values = [s.scores.FACT_L for s in valid]
    levels = [v for _, v in story.baselines] + [v - p.step_up_threshold for _, v in story.baselines]
    low = min([*values, *levels], default=60.0) - 12
    high = max([*values, *levels], default=120.0) + 8
    if used:
        ax.plot([dt(s.at) for s in used], [s.scores.FACT_L for s in used], "-o", color="#263238",
                markersize=7, linewidth=1.4, label="FACT-L total", zorder=4)  # fmt: skip
    held = [s for s in valid if s.status == "held"]
    if held:
        ax.plot([dt(s.at) for s in held], [s.scores.FACT_L for s in held], "o", color="#263238",
                markerfacecolor="white", markersize=7, label="held before enrollment",
                zorder=4)  # fmt: skip
    ignored = [s for s in valid if s.status == "ignored"]
    if ignored:
        ax.plot([dt(s.at) for s in ignored], [s.scores.FACT_L for s in ignored], "o",
                color="#9e9e9e", markersize=6, label="ignored by the engine", zorder=4)  # fmt: skip
    for s in valid:
        ax.annotate(number(s.scores.FACT_L), (dt(s.at), s.scores.FACT_L),  # type: ignore[arg-type]
                    textcoords="offset points", xytext=(0, 12), ha="center",
                    fontsize=8)  # fmt: skip
    incomplete = [s for s in story.surveys if s.scores.FACT_L is None]
    if incomplete:
        y = low + 3
        ax.plot([dt(s.at) for s in incomplete], [y] * len(incomplete), "X", color="#d81b60",
                markersize=10, linestyle="none", label="incomplete form (no valid total)",
                zorder=4)  # fmt: skip
        for s in incomplete:
            ax.annotate("incomplete", (dt(s.at), y), textcoords="offset points", xytext=(6, -3),
                        fontsize=8, color="#d81b60")  # fmt: skip
    if story.baselines:
        xs = [dt(t) for t, _ in story.baselines] + [dt(max(line_end, story.baselines[-1][0]))]
        ys = [v for _, v in story.baselines]
        ys.append(ys[-1])
        label = f"baseline ({number(ys[0])})" if len(set(ys)) == 1 else "baseline"
        ax.step(xs, ys, where="post", color="#2e7d32", linewidth=1.6, label=label)
        thresholds = [v - p.step_up_threshold for v in ys]
        ax.step(xs, thresholds, where="post", color="#c62828", linestyle="--", linewidth=1.3,
                label=f"step-up threshold (baseline - {p.step_up_threshold:g})")  # fmt: skip
        ax.fill_between(xs, thresholds, low, step="post", color="#c62828", alpha=0.06)
    step_ups = [e for e in story.escalations if e.kind is Kind.STEP_UP and e.reason.score]
    for e in step_ups:
        ax.plot([dt(e.occurred_at)], [e.reason.score], "o", markersize=15, zorder=3,
                markerfacecolor="none", markeredgecolor="#c62828", markeredgewidth=2,
                label="stepped up")  # fmt: skip
    ax.set_ylim(low, high)
    ax.set_ylabel("FACT-L total (0-136)")
    ax.grid(axis="y", color="#e0e0e0")

    # Clinical events: vertical lines on every panel, legend once.
    seen: dict[str, Line2D] = {}
    for t, kind in story.markers:
        colour, style, label = MARKER_STYLE.get(kind, ("#757575", ":", str(kind)))
        for axis in (ax, track, sub):
            axis.axvline(dt(t), color=colour, linestyle=style, linewidth=1.1, alpha=0.7, zorder=1)
        seen.setdefault(label, Line2D([], [], color=colour, linestyle=style, label=label))
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, *seen.values()], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=8, frameon=False)  # fmt: skip

    for t, due, label, colour, lane, left in placed:
        y = lanes - lane - 0.5
        if due is not None:
            track.plot([dt(t), dt(due)], [y, y], "-", color=colour, linewidth=2, alpha=0.35)
            track.plot([dt(due)], [y], "|", color=colour, markersize=10)
        track.plot([dt(t)], [y], "v", color=colour, markersize=9)
        track.annotate(label, (dt(t), y), textcoords="offset points",
                       xytext=(-6, 3) if left else (6, 3), ha="right" if left else "left",
                       fontsize=8, color=colour)  # fmt: skip
    track.set_ylim(0, lanes)
    track.set_yticks([])
    track.set_ylabel("escalations\n(to due date)")
    if story.until is not None:
        for axis in (ax, track, sub):
            axis.axvline(dt(story.until), color="#9e9e9e", linestyle=":", linewidth=1)
        ax.text(dt(story.until), 0.98, "--until ", transform=ax.get_xaxis_transform(),
                ha="right", va="top", fontsize=8, color="#757575")  # fmt: skip

    # Subscales.
    for name in SUBSCALES:
        points = [(dt(s.at), getattr(s.scores, name)) for s in story.surveys
                  if s.status != "ignored" and getattr(s.scores, name) is not None]  # fmt: skip
        if points:
            sub.plot(*zip(*points, strict=True), "-o", color=SUBSCALE_COLOURS[name],
                     linewidth=0.9, markersize=3.5, label=name)  # fmt: skip
    sub.set_ylim(0, 28.5)
    sub.set_ylabel("subscale (0-28; EWB 0-24)")
    sub.grid(axis="y", color="#e0e0e0")
    sub.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    locator = AutoDateLocator()
    sub.xaxis.set_major_locator(locator)
    sub.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    sub.set_xlim(x0, x1)
    for axis in (ax, track):
        axis.tick_params(labelbottom=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


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
