"""The chart of ``stepcare explain``: one patient's timeline as a PNG, in three panels.

On top, the FACT-L totals with the baseline and the step-up threshold; in the middle, the
escalations (and suppressed triggers), each with its window to the due date; below, the
subscales. Clinical events are vertical lines across all three. matplotlib is imported only
when a chart is drawn, so ``stepcare --help`` stays fast.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from streams.analysis.story import SUBSCALES, Story, SurveyPoint, number
from streams.clinical.escalations import Kind
from streams.clinical.events import EventType
from streams.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
TOTAL_STYLES: dict[str, tuple[str, dict[str, Any]]] = {  # survey status -> format, style
    "used": ("-o", {"color": "#263238", "markersize": 7, "linewidth": 1.4,
                    "label": "FACT-L total"}),
    "held": ("o", {"color": "#263238", "markerfacecolor": "white", "markersize": 7,
                   "label": "held before enrollment"}),
    "ignored": ("o", {"color": "#9e9e9e", "markersize": 6, "label": "ignored by the engine"}),
}  # fmt: skip


def render_png(story: Story) -> bytes:
    """The patient's timeline as a PNG (matplotlib, imported only here)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--png and --html need matplotlib (pip install matplotlib)") from None
    span = _Span.of(story)
    placed, lanes = _place_escalations(story, span)
    track_height = 0.32 * lanes + 0.4
    fig = Figure(figsize=(12, 6.4 + track_height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 1, height_ratios=[3.2, track_height, 1.8])
    scores = fig.add_subplot(grid[0])
    track = fig.add_subplot(grid[1], sharex=scores)
    subscales = fig.add_subplot(grid[2], sharex=scores)
    panels = (scores, track, subscales)
    _draw_title(fig, story)
    _draw_scores(scores, story, span)
    _draw_clinical_events(panels, story)  # the top panel's legend names them
    _draw_escalations(track, placed, lanes)
    _draw_until(panels, story)
    _draw_subscales(subscales, story)
    _draw_time_axis(panels, span)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class _Span:
    """The times the chart covers (ms): the story's first and last, and a margin either side."""

    start: int
    end: int
    pad: int

    @classmethod
    def of(cls, story: Story) -> _Span:
        times = [r.at for r in story.rows if r.at is not None]
        times += [e.due_by for e in story.escalations if e.due_by is not None]
        times = times or [story.clock or 0]  # only rejected lines without a readable time
        start, end = min(times), max(times)
        return cls(start, end, max((end - start) // 40, 86_400_000))


class _Placed(NamedTuple):
    """An escalation (or suppressed trigger) on the track: its lane, its label's side."""

    at: int
    due: int | None
    label: str
    colour: str
    lane: int
    left: bool


def _place_escalations(story: Story, span: _Span) -> tuple[list[_Placed], int]:
    """Escalations (and suppressed triggers) on their own track, and the number of lanes.

    Each has a marker, the window to the due date, and the kind; each goes in the first lane
    where it does not overlap what is there.
    """
    start, end, pad = span.start, span.end, span.pad
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
        placed.append(_Placed(t, due, label, colour, lane, left))
    return placed, max(len(lane_ends), 2)


def _draw_title(fig: Figure, story: Story) -> None:
    p = story.policy
    fig.suptitle(
        f"Patient {story.patient_id} - policy {p.policy_id} v{p.policy_version}: FACT-L, "
        "clinical events and escalations",
        fontsize=13,
        fontweight="bold",
        usetex=False,  # the patient id is text: "$" or "\\" in it is not TeX or mathtext
        parse_math=False,
    )


# -- the FACT-L panel -----------------------------------------------------------------------------


def _draw_scores(ax: Axes, story: Story, span: _Span) -> None:
    """FACT-L totals, baseline and threshold."""
    p = story.policy
    valid = [s for s in story.surveys if s.scores.FACT_L is not None]
    values = [s.scores.FACT_L for s in valid]
    levels = [v for _, v in story.baselines] + [v - p.step_up_threshold for _, v in story.baselines]
    low = min([*values, *levels], default=60.0) - 12
    high = max([*values, *levels], default=120.0) + 8
    _draw_totals(ax, valid)
    _draw_incomplete(ax, story, low + 3)
    _draw_baseline(ax, story, low, story.ended[0] if story.ended else span.end)
    _draw_step_ups(ax, story)
    ax.set_ylim(low, high)
    ax.set_ylabel("FACT-L total (0-136)")
    ax.grid(axis="y", color="#e0e0e0")


def _draw_totals(ax: Axes, valid: Sequence[SurveyPoint]) -> None:
    """The valid totals, one style per survey status, each with its value above it."""
    for status, (fmt, style) in TOTAL_STYLES.items():
        points = [s for s in valid if s.status == status]
        if points:
            ax.plot([_dt(s.at) for s in points], [s.scores.FACT_L for s in points], fmt, **style,
                    zorder=4)  # fmt: skip
    for s in valid:
        ax.annotate(number(s.scores.FACT_L), (_dt(s.at), s.scores.FACT_L),  # type: ignore[arg-type]
                    textcoords="offset points", xytext=(0, 12), ha="center",
                    fontsize=8)  # fmt: skip


def _draw_incomplete(ax: Axes, story: Story, y: float) -> None:
    """Forms without a valid total, as crosses along the bottom of the panel."""
    incomplete = [s for s in story.surveys if s.scores.FACT_L is None]
    if not incomplete:
        return
    ax.plot([_dt(s.at) for s in incomplete], [y] * len(incomplete), "X", color="#d81b60",
            markersize=10, linestyle="none", label="incomplete form (no valid total)",
            zorder=4)  # fmt: skip
    for s in incomplete:
        ax.annotate("incomplete", (_dt(s.at), y), textcoords="offset points", xytext=(6, -3),
                    fontsize=8, color="#d81b60")  # fmt: skip


def _draw_baseline(ax: Axes, story: Story, low: float, line_end: int) -> None:
    """The baseline as it changes, the threshold below it, and the step-up zone shaded."""
    if not story.baselines:
        return
    p = story.policy
    xs = [_dt(t) for t, _ in story.baselines] + [_dt(max(line_end, story.baselines[-1][0]))]
    ys = [v for _, v in story.baselines]
    ys.append(ys[-1])
    label = f"baseline ({number(ys[0])})" if len(set(ys)) == 1 else "baseline"
    ax.step(xs, ys, where="post", color="#2e7d32", linewidth=1.6, label=label)
    thresholds = [v - p.step_up_threshold for v in ys]
    ax.step(xs, thresholds, where="post", color="#c62828", linestyle="--", linewidth=1.3,
            label=f"step-up threshold (baseline - {p.step_up_threshold:g})")  # fmt: skip
    ax.fill_between(xs, thresholds, low, step="post", color="#c62828", alpha=0.06)


def _draw_step_ups(ax: Axes, story: Story) -> None:
    """A ring around the total of each survey that stepped the patient up."""
    step_ups = [e for e in story.escalations if e.kind is Kind.STEP_UP and e.reason.score]
    for e in step_ups:
        ax.plot([_dt(e.occurred_at)], [e.reason.score], "o", markersize=15, zorder=3,
                markerfacecolor="none", markeredgecolor="#c62828", markeredgewidth=2,
                label="stepped up")  # fmt: skip


# -- the escalation and subscale panels -----------------------------------------------------------


def _draw_escalations(track: Axes, placed: Sequence[_Placed], lanes: int) -> None:
    """Each escalation: a marker, a bar to its due date, and its kind; lane 0 on top."""
    for t, due, label, colour, lane, left in placed:
        y = lanes - lane - 0.5
        if due is not None:
            track.plot([_dt(t), _dt(due)], [y, y], "-", color=colour, linewidth=2, alpha=0.35)
            track.plot([_dt(due)], [y], "|", color=colour, markersize=10)
        track.plot([_dt(t)], [y], "v", color=colour, markersize=9)
        track.annotate(label, (_dt(t), y), textcoords="offset points",
                       xytext=(-6, 3) if left else (6, 3), ha="right" if left else "left",
                       fontsize=8, color=colour)  # fmt: skip
    track.set_ylim(0, lanes)
    track.set_yticks([])
    track.set_ylabel("escalations\n(to due date)")


def _draw_subscales(sub: Axes, story: Story) -> None:
    """The five subscales of every survey the engine did not ignore."""
    for name in SUBSCALES:
        points = [(_dt(s.at), getattr(s.scores, name)) for s in story.surveys
                  if s.status != "ignored" and getattr(s.scores, name) is not None]  # fmt: skip
        if points:
            sub.plot(*zip(*points, strict=True), "-o", color=SUBSCALE_COLOURS[name],
                     linewidth=0.9, markersize=3.5, label=name)  # fmt: skip
    sub.set_ylim(0, 28.5)
    sub.set_ylabel("subscale (0-28; EWB 0-24)")
    sub.grid(axis="y", color="#e0e0e0")
    sub.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


# -- across the panels ----------------------------------------------------------------------------


def _draw_clinical_events(panels: Sequence[Axes], story: Story) -> None:
    """Clinical events: vertical lines on every panel, legend once (beside the top panel)."""
    from matplotlib.lines import Line2D

    seen: dict[str, Line2D] = {}
    for t, kind in story.markers:
        colour, style, label = MARKER_STYLE.get(kind, ("#757575", ":", str(kind)))
        for axis in panels:
            axis.axvline(_dt(t), color=colour, linestyle=style, linewidth=1.1, alpha=0.7, zorder=1)
        seen.setdefault(label, Line2D([], [], color=colour, linestyle=style, label=label))
    top = panels[0]
    handles, _ = top.get_legend_handles_labels()
    top.legend(handles=[*handles, *seen.values()], loc="upper left", bbox_to_anchor=(1.01, 1.0),
               fontsize=8, frameon=False)  # fmt: skip


def _draw_until(panels: Sequence[Axes], story: Story) -> None:
    """The time --until moved the clock to, as a dotted line on every panel."""
    if story.until is None:
        return
    for axis in panels:
        axis.axvline(_dt(story.until), color="#9e9e9e", linestyle=":", linewidth=1)
    top = panels[0]
    top.text(_dt(story.until), 0.98, "--until ", transform=top.get_xaxis_transform(),
             ha="right", va="top", fontsize=8, color="#757575")  # fmt: skip


def _draw_time_axis(panels: Sequence[Axes], span: _Span) -> None:
    """Dates under the bottom panel only; the span (and margins) on all three (shared)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    *upper, bottom = panels
    locator = AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    bottom.set_xlim(_dt(span.start - span.pad), _dt(span.end + span.pad))
    for axis in upper:
        axis.tick_params(labelbottom=False)
