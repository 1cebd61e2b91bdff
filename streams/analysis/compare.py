"""Run policies over event logs with the same engine and compare what they request.

:func:`compare` runs one ``PartitionEngine`` per (log, policy) pair, one pass per log; each
:class:`Run` reports the counts per enrolled patient (visit requests and completed visits by
week, step-ups, overdue timers ...), rendered as a table, a CSV or bar charts. What each column
counts: docs/simulation.md, "What compare counts".
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.clinical.engine import Outcome
from streams.clinical.escalations import VISIT_REQUEST_KINDS, Escalation, Kind
from streams.clinical.events import DAY_MS, EventType, PatientEvent
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy

WEEK_MS = 7 * DAY_MS
DEFAULT_WEEK = 24


@dataclass
class Run:
    """One policy over one log: its engine and what it emitted."""

    label: str
    policy: Policy
    input: str
    engine: PartitionEngine = field(init=False)
    events: int = 0
    rejected: int = 0
    enrolled: dict[str, int] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, int]] = field(default_factory=list)
    visits: list[tuple[str, int]] = field(default_factory=list)
    step_ups: dict[str, int] = field(default_factory=dict)
    suppressed: int = 0
    by_patient: Counter[str] = field(default_factory=Counter)  # escalations per patient

    def __post_init__(self) -> None:
        self.engine = PartitionEngine(self.policy)

    def feed(self, event: PatientEvent) -> None:
        processed = self.engine.process(event)
        if event.type is not EventType.CLOCK_TICK:
            self.events += 1
        if (
            event.type is EventType.PALLIATIVE_VISIT_COMPLETED
            and processed.outcome is Outcome.APPLIED
        ):
            self.visits.append((event.patient_id, event.occurred_at))
        self.suppressed += len(processed.suppressed)
        for escalation in processed.escalations:
            self.note(escalation)

    def finish(self, until: int | None) -> None:
        if until is not None:
            for escalation in self.engine.advance_to(until):
                self.note(escalation)

    def note(self, escalation: Escalation) -> None:
        kind, patient = escalation.kind, escalation.patient_id
        self.kinds[kind] += 1
        self.by_patient[patient] += 1
        if kind is Kind.INITIAL_VISIT_DUE:
            self.enrolled.setdefault(patient, escalation.occurred_at)
        if kind in VISIT_REQUEST_KINDS:
            self.requests.append((patient, escalation.occurred_at))
        if kind is Kind.STEP_UP:
            self.step_ups.setdefault(patient, escalation.occurred_at)

    def per_patient(self, moments: list[tuple[str, int]], weeks: float) -> float | None:
        """Of ``moments``, those less than ``weeks`` after their patient's enrollment, per
        enrolled patient."""
        if not self.enrolled:
            return None
        limit = weeks * WEEK_MS
        enrolled = self.enrolled
        count = sum(
            1 for patient, at in moments if patient in enrolled and at - enrolled[patient] < limit
        )
        return count / len(enrolled)

    def report(self, weeks: Sequence[float]) -> dict[str, object]:
        """The row of this run: the numbers of the module documentation, by column name."""
        patients = len(self.enrolled)
        days = sorted((at - self.enrolled[p]) / DAY_MS for p, at in self.step_ups.items())
        q1 = median = q3 = None
        if len(days) == 1:
            q1 = median = q3 = days[0]
        elif days:
            q1, median, q3 = statistics.quantiles(days, n=4, method="inclusive")
        row: dict[str, object] = {
            "label": self.label,
            "policy_id": self.policy.policy_id,
            "policy_version": self.policy.policy_version,
            "input": self.input,
            "events": self.events,
            "rejected": self.rejected,
            "patients": patients,
        }
        for week in weeks:
            row[f"visit_requests_per_patient_wk{_week(week)}"] = self.per_patient(
                self.requests, week
            )
        for week in weeks:
            row[f"visits_completed_per_patient_wk{_week(week)}"] = self.per_patient(
                self.visits, week
            )
        row["stepped_up"] = len(self.step_ups)
        row["stepped_up_share"] = len(self.step_ups) / patients if patients else None
        row["step_up_days_median"] = median
        row["step_up_days_q1"] = q1
        row["step_up_days_q3"] = q3
        row["survey_overdue"] = self.kinds[Kind.SURVEY_OVERDUE]
        row["visit_overdue"] = self.kinds[Kind.VISIT_OVERDUE]
        row["suppressed"] = self.suppressed
        for kind in Kind:
            row[f"escalations_{kind}"] = self.kinds[kind]
        return row


def _week(week: float) -> str:
    return f"{week:g}"


def compare(
    inputs: Sequence[str],
    policies: Sequence[Policy],
    *,
    until: int | None = None,
    rejects: object = None,
) -> list[Run]:
    """Run the policies over the inputs (one input for all, or paired in order)."""
    from streams.formats.logs import read_events

    if len(inputs) != 1 and len(inputs) != len(policies):
        raise ValueError("give one --input for all policies, or one --input per --policy")
    pairs = [(inputs[0] if len(inputs) == 1 else inputs[i], p) for i, p in enumerate(policies)]
    labels = _labels(pairs, paired=len(inputs) > 1)
    runs = [Run(label, policy, path) for label, (path, policy) in zip(labels, pairs, strict=True)]
    out = sys.stderr if rejects is None else rejects
    for path in dict.fromkeys(inputs):
        mine = [run for run in runs if run.input == path]
        rejected = 0
        for number, item in read_events(path):
            if isinstance(item, str):
                rejected += 1
                print(f"{path}: record {number}: {item}", file=out)  # type: ignore[call-overload]
                continue
            for run in mine:
                run.feed(item)
        for run in mine:
            run.rejected = rejected
            run.finish(until)
    return runs


def _labels(pairs: list[tuple[str, Policy]], *, paired: bool) -> list[str]:
    base = [
        f"{policy.policy_id} @ {Path(path).name}" if paired else policy.policy_id
        for path, policy in pairs
    ]
    seen: Counter[str] = Counter(base)
    labels, counts = [], Counter[str]()
    for label in base:
        counts[label] += 1
        labels.append(f"{label} #{counts[label]}" if seen[label] > 1 else label)
    return labels


# -- rendering ----------------------------------------------------------------------------------


def table(rows: list[dict[str, object]], weeks: Sequence[float]) -> str:
    """The terminal table: one column per run, one line per number. With two runs or more, the
    runs are lettered A, B, ... and a column B/A per run after the first gives its number over
    run A's, on every line that counts something ("-" where A's is 0 or missing)."""
    Line = tuple[str, list[str], list[object]]  # name, cells, the numbers the ratios divide
    lines: list[Line] = [
        ("policy", [f"{r['policy_id']} v{r['policy_version']}" for r in rows], []),
        ("input", [Path(str(r["input"])).name for r in rows], []),
        ("events (rejected)", [f"{r['events']} ({r['rejected']})" for r in rows],
         [r["events"] for r in rows]),
        ("patients enrolled", [str(r["patients"]) for r in rows], [r["patients"] for r in rows]),
    ]  # fmt: skip
    for week in weeks:
        key = f"visit_requests_per_patient_wk{_week(week)}"
        lines.append(_line(f"visit requests/patient < wk {_week(week)}", rows, key, _num))
    for week in weeks:
        key = f"visits_completed_per_patient_wk{_week(week)}"
        lines.append(_line(f"visits done/patient < wk {_week(week)}", rows, key, _num))
    lines += [
        ("stepped up", [_share(r["stepped_up"], r["stepped_up_share"]) for r in rows],
         [r["stepped_up"] for r in rows]),
        (
            "days to step-up, median [Q1-Q3]",
            [
                "-"
                if r["step_up_days_median"] is None
                else f"{r['step_up_days_median']:.1f} "
                f"[{r['step_up_days_q1']:.1f}-{r['step_up_days_q3']:.1f}]"
                for r in rows
            ],
            [r["step_up_days_median"] for r in rows],
        ),
        _line("overdue surveys", rows, "survey_overdue", str),
        _line("overdue visits", rows, "visit_overdue", str),
        _line("suppressed triggers", rows, "suppressed", str),
        ("escalations by kind", [""] * len(rows), []),
    ]  # fmt: skip
    lines += [_line(f"  {kind}", rows, f"escalations_{kind}", str) for kind in Kind]
    header = [str(r["label"]) for r in rows]
    if len(rows) > 1:  # runs named A, B, C ... (then AA, AB ...) so the ratio columns are short
        header = [f"{_letter(i)}: {label}" for i, label in enumerate(header)]
        header += [f"{_letter(i)}/A" for i in range(1, len(rows))]
        lines = [
            (name, cells + ([_ratio(v, values[0]) for v in values[1:]] if values
                            else [""] * (len(rows) - 1)), values)
            for name, cells, values in lines
        ]  # fmt: skip
    everything = [("", header), *((name, cells) for name, cells, _ in lines)]
    width = max(len(name) for name, _ in everything)
    cols = [max(len(cells[i]) for _, cells in everything) for i in range(len(header))]
    out = []
    for name, cells in everything:
        out.append(
            f"{name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols, strict=True))
        )
    return "\n".join(line.rstrip() for line in out) + "\n"


def _line(
    name: str, rows: list[dict[str, object]], key: str, text: Callable[[Any], str]
) -> tuple[str, list[str], list[object]]:
    return name, [text(r[key]) for r in rows], [r[key] for r in rows]


def _letter(index: int) -> str:
    return chr(65 + index) if index < 26 else _letter(index // 26 - 1) + chr(65 + index % 26)


def ratio(value: object, base: object) -> float | None:
    """value / base; None where either is missing or base is 0."""
    if not isinstance(value, int | float) or not isinstance(base, int | float) or base == 0:
        return None
    return value / base


def _ratio(value: object, base: object) -> str:
    found = ratio(value, base)
    return "-" if found is None else f"{found:.2f}"


def _num(value: object) -> str:
    return "-" if value is None else f"{value:.2f}"


def _share(count: object, share: object) -> str:
    return f"{count} (-)" if share is None else f"{count} ({100 * share:.1f}%)"  # type: ignore[operator]


def write_csv(path: str, rows: list[dict[str, object]]) -> None:
    from streams.formats.files import open_text_output

    with open_text_output(path) as fo:
        writer = csv.DictWriter(fo, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else _csv_value(v) for k, v in row.items()})


PER_PATIENT_COLUMNS = ("escalations", "visit_requests", "visits_completed")


def per_patient_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[object]]]:
    """(header, rows) of the per-patient table: one row per patient any run saw (enrolled, or
    with an escalation or a completed visit), by patient id; per run (``<label>:<column>``):
    its escalations of every kind, its visit requests (the five request kinds) and the
    completed visits it applied, over the whole log (no week limit)."""
    header = ["patient_id"]
    counts = []
    for run in runs:
        header += [f"{run.label}:{column}" for column in PER_PATIENT_COLUMNS]
        requests = Counter(patient for patient, _ in run.requests)
        visits = Counter(patient for patient, _ in run.visits)
        counts.append((run.by_patient, requests, visits))
    patients = sorted(
        {p for run in runs for p in (*run.enrolled, *run.by_patient)}
        | {p for run in runs for p, _ in run.visits}
    )
    rows = [[patient, *(c[patient] for tallies in counts for c in tallies)] for patient in patients]
    return header, rows


def write_per_patient(path: str, runs: Sequence[Run]) -> int:
    """The per-patient table as CSV; returns the number of patients."""
    from streams.formats.files import open_text_output

    header, rows = per_patient_rows(runs)
    with open_text_output(path) as fo:
        writer = csv.writer(fo, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


def _csv_value(value: object) -> object:
    return round(value, 6) if isinstance(value, float) else value


def write_png(path: str, rows: list[dict[str, object]], weeks: Sequence[float]) -> None:
    """Two bar charts: visits per patient by week, and escalations per patient by kind."""
    import matplotlib  # imported here: `stepcare --help` stays fast

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    groups = [f"requests < wk {_week(w)}" for w in weeks] + [f"done < wk {_week(w)}" for w in weeks]
    keys = [f"visit_requests_per_patient_wk{_week(w)}" for w in weeks] + [
        f"visits_completed_per_patient_wk{_week(w)}" for w in weeks
    ]
    width = 0.8 / len(rows)
    highest = 0.0
    for i, row in enumerate(rows):
        values = [float(row[k] or 0.0) for k in keys]  # type: ignore[arg-type]
        xs = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(groups))]
        highest = max(highest, *values)
        bars = left.bar(xs, values, width, label=str(row["label"]))
        left.bar_label(bars, fmt="%.2f", fontsize=7)
    left.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    left.set_ylabel("per enrolled patient")
    left.set_title("Palliative-care visits")
    left.set_ylim(0, highest * 1.3 or 1.0)
    left.legend(fontsize=8, loc="upper left")

    kinds = list(Kind)
    height = 0.8 / len(rows)
    for i, row in enumerate(rows):
        patients = int(row["patients"] or 0) or 1  # type: ignore[call-overload]
        values = [int(row[f"escalations_{k}"]) / patients for k in kinds]  # type: ignore[call-overload]
        ys = [k + (i - (len(rows) - 1) / 2) * height for k in range(len(kinds))]
        right.barh(ys, values, height, label=str(row["label"]))
    right.set_yticks(range(len(kinds)), [str(k) for k in kinds], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("escalations per enrolled patient")
    right.set_title("Escalations by kind")
    right.legend(fontsize=8)
    fig.tight_layout()
    from streams.formats.files import open_output

    try:
        with open_output(path) as out:
            fig.savefig(out, dpi=100, format="png")
    finally:
        plt.close(fig)
