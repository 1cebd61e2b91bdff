"""A seeded synthetic cohort shaped like the STEP PC trial, with the engine in the loop.

Each patient is planned from random streams of their own (one per purpose, seeded from seed,
patient and purpose) and lived through a ``PartitionEngine`` under the arm's policy, whose visit
requests are booked and completed; only the visit stream depends on the arm, so one seed gives
both arms of the trial with the same patients. :func:`simulate` yields the events in time order.
The model, every parameter and its source: docs/simulation.md, "The simulated cohort".
"""

from __future__ import annotations

import functools
import heapq
import math
import random
import statistics
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from streams.clinical.engine import next_deadline
from streams.clinical.escalations import VISIT_REQUEST_KINDS, Escalation, Kind
from streams.clinical.events import (
    DAY_MS,
    event_from_json,
    format_time,
)
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy
from streams.clinical.scoring import REVERSED, SUBSCALES, UNSCORED

MINUTE_MS = 60_000
WEEK_MS = 7 * DAY_MS

# -- parameters (docs/simulation.md gives the source of each) ----------------------------------

TRIAL_START = "2018-02-12T00:00:00Z"  # first day of the trial [V]
ACCRUAL_WEEKS = 208  # enrollment spread uniformly over 4 years (assumption)
ENROLLMENT_HOURS = (8, 17)  # clinic hours, UTC (assumption)
FOLLOW_UP_WINDOW_DAYS = 7  # follow-up ends --weeks weeks + this after enrollment (assumption)

# Quality of life: a patient's true FACT-L total at enrollment ~ Normal, and a trajectory.
BASELINE_MEAN = 102.5  # points (assumption; week-24 means 100.6 / 97.8 [V])
BASELINE_SD = 17.0  # points, the SD of observed baseline totals (assumption)
TOTAL_RANGE = (4.0, 132.0)  # true totals are kept inside the scale
TRAJECTORIES = {"stable": 0.55, "gradual": 0.30, "abrupt": 0.15}  # shares (assumption)
STABLE_DRIFT_SD = 0.05  # points per week, SD of a stable patient's slope (assumption)
GRADUAL_SLOPE = (-0.6, -0.15)  # points per week, uniform (assumption)
ABRUPT_DROP = (10.0, 25.0)  # points, uniform (assumption; 10 = the step-up threshold [V])
ABRUPT_ONSET_WEEKS = (2.0, 48.0)  # weeks after enrollment, uniform (assumption)

# FACT-L forms: item score (positive direction) = clip(floor(level + noise + 0.5), 0, 4).
ITEM_NOISE_SD = 0.7  # per item and form (assumption)
SURVEY_INTERVAL_DAYS = 42  # FACT-L every 6 weeks [V]
SURVEY_DELAY_DAYS = 4.0  # a form is submitted uniformly 0-4 days after it is due (assumption)
BASELINE_LEAD_DAYS = 7.0  # the baseline form: uniformly 30 min - 7 days before enrollment
P_SURVEY_MISSED = 0.09  # 91% of expected forms completed (PRO-TECT [V])
P_SURVEY_MISSED_IN_HOSPITAL = 0.5  # worse when admitted (direction [V], size assumption)
P_ITEM_MISSING = 0.02  # an item left blank (assumption)
P_SPARSE_FORM = 0.04  # a form with many blanks (assumption) ...
P_ITEM_MISSING_SPARSE = 0.35  # ... each item blank with this chance: total usually invalid

# Clinical events: Poisson processes per week, and what comes with an abrupt decline.
TREATMENT_CHANGE_RATE = 1 / 24  # per week (assumption)
ADMISSION_RATE = 1 / 30  # per week (assumption)
AFTER_DROP_DAYS = 14.0  # events linked to an abrupt decline come within this many days
P_TREATMENT_CHANGE_AFTER_DROP = 0.6  # progression -> new treatment (assumption, [R] clinical.md)
P_ADMISSION_AFTER_DROP = 0.3  # (assumption)
STAY_MEDIAN_DAYS = 4.0  # hospital length of stay ~ lognormal (assumption)
STAY_SIGMA = 0.6
STAY_MIN_DAYS = 0.5

# End of follow-up: 12-month probabilities (OSCAR [V]); death hazard by trajectory (assumption,
# direction [V]: lower quality of life predicts death), scaled so the cohort's 12-month
# probability is DEATH_12_MONTHS.
DEATH_12_MONTHS = 0.282
WITHDRAWAL_12_MONTHS = 0.185
DEATH_RELATIVE_RISK = {"stable": 0.6, "gradual": 1.3, "abrupt": 2.0}

# Palliative-care visits, per request of the arm's policy (all assumption).
P_VISIT_NOT_HONOURED = 0.10  # not booked, or a no-show: VISIT_OVERDUE comes first
P_REBOOKED_AFTER_OVERDUE = 0.7  # the scheduler then books it within the overdue window
REBOOK_DAYS = 7.0  # uniformly 0-7 days after VISIT_OVERDUE (overdue_action_days)
TRIGGERED_DELAY_MEDIAN_DAYS = 14.0  # INITIAL, STEP_UP, TREATMENT_CHANGE, POST_DISCHARGE
TRIGGERED_DELAY_SIGMA = 0.45  # lognormal: ~6% after the 28-day window
MONTHLY_DELAY_MEDIAN_DAYS = 27.0  # MONTHLY_VISIT_DUE: booked about 4 weeks after the last
MONTHLY_DELAY_SIGMA = 0.08  # lognormal: ~33% a few days after the 28-day window

ENDS = frozenset({"DECEASED", "DISENROLLED"})
_ITEMS = [item for items in SUBSCALES.values() for item in items] + sorted(UNSCORED)
_SCORED = sum(len(items) for items in SUBSCALES.values())  # 34


def stream(seed: int, index: int, purpose: str) -> random.Random:
    """The random stream of one patient and purpose (independent of every other stream)."""
    return random.Random(f"stepcare-simulate|{seed}|{index}|{purpose}")


# -- the measurement model: true total -> item level ------------------------------------------


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _item_probabilities(level: float) -> list[float]:
    """P(item score = k), k = 0..4, for clip(floor(level + N(0, sd) + 0.5), 0, 4)."""
    cdf = [_phi((k + 0.5 - level) / ITEM_NOISE_SD) for k in range(4)]
    return [cdf[0], cdf[1] - cdf[0], cdf[2] - cdf[1], cdf[3] - cdf[2], 1.0 - cdf[3]]


def expected_total(level: float) -> float:
    """Expected FACT-L total of a complete form when every item has this latent level."""
    return _SCORED * sum(k * p for k, p in enumerate(_item_probabilities(level)))


def measurement_variance(level: float) -> float:
    """Variance of a complete form's total around :func:`expected_total` (item noise only)."""
    probs = _item_probabilities(level)
    mean = sum(k * p for k, p in enumerate(probs))
    return _SCORED * (sum(k * k * p for k, p in enumerate(probs)) - mean * mean)


def _level_of(target: float) -> float:
    """The level whose complete forms score ``target`` on average (bisection)."""
    lo, hi = -4.0, 8.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_total(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@functools.cache
def _level_table() -> tuple[list[float], list[float]]:
    """Levels on a 0.25-point grid of totals (built on first use: ``--help`` stays fast)."""
    totals = [i * 0.25 for i in range(0, 4 * 136 + 1)]
    return totals, [_level_of(total) for total in totals]


def level_for_total(total: float) -> float:
    """The latent item level whose complete forms score ``total`` on average."""
    totals, levels = _level_table()
    total = min(max(total, totals[0]), totals[-1])
    i = min(bisect_left(totals, total), len(totals) - 1)
    if i == 0:
        return levels[0]
    t0, t1 = totals[i - 1], totals[i]
    return levels[i - 1] + (levels[i] - levels[i - 1]) * (total - t0) / (t1 - t0)


# The spread of true baselines, so that observed baselines (true + item noise) have BASELINE_SD.
TRUE_BASELINE_SD = math.sqrt(BASELINE_SD**2 - measurement_variance(_level_of(BASELINE_MEAN)))


def _death_rate_per_week() -> float:
    """The base weekly death hazard giving DEATH_12_MONTHS over the trajectory mix."""
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        dead = sum(
            share * (1 - math.exp(-mid * DEATH_RELATIVE_RISK[kind] * 52))
            for kind, share in TRAJECTORIES.items()
        )
        lo, hi = (mid, hi) if dead < DEATH_12_MONTHS else (lo, mid)
    return (lo + hi) / 2


DEATH_RATE = _death_rate_per_week()
WITHDRAWAL_RATE = -math.log(1 - WITHDRAWAL_12_MONTHS) / 52


# -- one patient's plan: everything that does not depend on the arm -----------------------------


@dataclass(frozen=True, slots=True)
class Cohort:
    seed: int
    patients: int
    weeks: float
    day0: int  # ms, UTC midnight: the first day of accrual
    accrual_weeks: float = ACCRUAL_WEEKS


@dataclass(frozen=True, slots=True)
class PlannedSurvey:
    number: int  # 0 = baseline, k = the form due k x 6 weeks after enrollment
    due: int
    at: int  # when it is (or would have been) submitted
    missed: bool
    in_hospital: bool


@dataclass(slots=True)
class Plan:
    index: int
    patient_id: str
    enrolled_at: int
    trajectory: str
    baseline: float  # true FACT-L total at enrollment
    slope: float  # points per week
    drop: float  # abrupt decline: points
    onset: int | None  # abrupt decline: when
    death_at: int  # latent times (may be after the end of follow-up)
    withdrawal_at: int
    follow_up_end: int
    ends_at: int
    end: str  # DECEASED, or DISENROLLED
    end_reason: str  # died, withdrew, end-of-follow-up
    surveys: list[PlannedSurvey] = field(default_factory=list)
    stays: list[tuple[int, int]] = field(default_factory=list)  # (admitted, discharged)
    treatment_changes: list[int] = field(default_factory=list)
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # time-ordered

    def true_total(self, at: int) -> float:
        weeks = (at - self.enrolled_at) / WEEK_MS
        total = self.baseline + self.slope * max(weeks, 0.0)
        if self.onset is not None and at >= self.onset:
            total -= self.drop
        return min(max(total, TOTAL_RANGE[0]), TOTAL_RANGE[1])


def enrollment_time(cohort: Cohort, index: int) -> int:
    rng = stream(cohort.seed, index, "enrollment")
    day = rng.randrange(max(1, round(cohort.accrual_weeks * 7)))
    hour_lo, hour_hi = ENROLLMENT_HOURS
    minute = rng.randrange(hour_lo * 60, hour_hi * 60)
    # The first days are kept for the baseline forms that precede the first enrollments.
    first = cohort.day0 + math.ceil(BASELINE_LEAD_DAYS) * DAY_MS
    return first + day * DAY_MS + minute * MINUTE_MS


def patient_id(index: int) -> str:
    return f"sim-{index:06d}"


def plan_patient(cohort: Cohort, index: int) -> Plan:
    """The arm-independent part of a patient: trajectory, forms, clinical events, the end."""
    seed = cohort.seed
    pid = patient_id(index)
    enrolled = enrollment_time(cohort, index)

    rng = stream(seed, index, "trajectory")
    u = rng.random()
    kinds = list(TRAJECTORIES)
    cumulative = 0.0
    trajectory = kinds[-1]
    for kind in kinds:
        cumulative += TRAJECTORIES[kind]
        if u < cumulative:
            trajectory = kind
            break
    baseline = min(max(rng.gauss(BASELINE_MEAN, TRUE_BASELINE_SD), TOTAL_RANGE[0]), TOTAL_RANGE[1])
    drift = rng.gauss(0.0, STABLE_DRIFT_SD)
    gradual = rng.uniform(*GRADUAL_SLOPE)
    drop = rng.uniform(*ABRUPT_DROP)
    onset_weeks = rng.uniform(*ABRUPT_ONSET_WEEKS)
    slope = gradual if trajectory == "gradual" else drift
    onset = enrolled + round(onset_weeks * WEEK_MS) if trajectory == "abrupt" else None

    rng = stream(seed, index, "end")
    death_at = enrolled + round(rng.expovariate(DEATH_RATE * DEATH_RELATIVE_RISK[trajectory])
                                * WEEK_MS)  # fmt: skip
    withdrawal_at = enrolled + round(rng.expovariate(WITHDRAWAL_RATE) * WEEK_MS)
    follow_up_end = enrolled + round(cohort.weeks * WEEK_MS) + FOLLOW_UP_WINDOW_DAYS * DAY_MS
    ends_at, end, reason = min(
        (death_at, "DECEASED", "died"),
        (withdrawal_at, "DISENROLLED", "withdrew"),
        (follow_up_end, "DISENROLLED", "end-of-follow-up"),
    )
    ends_at = ends_at // MINUTE_MS * MINUTE_MS
    plan = Plan(index, pid, enrolled, trajectory, baseline, slope,
                drop if onset is not None else 0.0, onset, death_at, withdrawal_at, follow_up_end,
                ends_at, end, reason)  # fmt: skip

    horizon = follow_up_end  # processes are drawn to the horizon whatever the end: stable draws
    plan.stays = _stays(stream(seed, index, "hospital"), enrolled, horizon, onset)
    plan.treatment_changes = _treatment_changes(
        stream(seed, index, "treatment"), enrolled, horizon, onset
    )
    plan.surveys = _surveys(stream(seed, index, "surveys"), enrolled, horizon, plan.stays)
    plan.events = _exogenous_events(plan, stream(seed, index, "items"))
    return plan


def _poisson(rng: random.Random, start: int, horizon: int, rate_per_week: float) -> list[int]:
    times, at = [], start
    while True:
        at += round(rng.expovariate(rate_per_week) * WEEK_MS)
        if at >= horizon:
            return times
        times.append(at // MINUTE_MS * MINUTE_MS)


def _stays(
    rng: random.Random, enrolled: int, horizon: int, onset: int | None
) -> list[tuple[int, int]]:
    linked = rng.random() < P_ADMISSION_AFTER_DROP
    linked_at = round(rng.uniform(0, AFTER_DROP_DAYS) * DAY_MS)
    admissions = _poisson(rng, enrolled, horizon, ADMISSION_RATE)
    if onset is not None and linked and onset + linked_at < horizon:
        admissions.append((onset + linked_at) // MINUTE_MS * MINUTE_MS)
        admissions.sort()
    stays: list[tuple[int, int]] = []
    lengths = [rng.lognormvariate(math.log(STAY_MEDIAN_DAYS), STAY_SIGMA) for _ in admissions]
    for admitted, days in zip(admissions, lengths, strict=True):
        if stays and admitted <= stays[-1][1]:
            continue  # still in hospital: the same stay
        discharged = admitted + round(max(days, STAY_MIN_DAYS) * DAY_MS) // MINUTE_MS * MINUTE_MS
        stays.append((admitted, discharged))
    return stays


def _treatment_changes(
    rng: random.Random, enrolled: int, horizon: int, onset: int | None
) -> list[int]:
    linked = rng.random() < P_TREATMENT_CHANGE_AFTER_DROP
    linked_at = round(rng.uniform(0, AFTER_DROP_DAYS) * DAY_MS)
    changes = _poisson(rng, enrolled, horizon, TREATMENT_CHANGE_RATE)
    if onset is not None and linked and onset + linked_at < horizon:
        changes.append((onset + linked_at) // MINUTE_MS * MINUTE_MS)
        changes.sort()
    return changes


def _surveys(
    rng: random.Random, enrolled: int, horizon: int, stays: list[tuple[int, int]]
) -> list[PlannedSurvey]:
    lead = rng.randrange(30, round(BASELINE_LEAD_DAYS * 24 * 60)) * MINUTE_MS
    surveys = [PlannedSurvey(0, enrolled - lead, enrolled - lead, False, False)]
    number = 1
    while True:
        due = enrolled + number * SURVEY_INTERVAL_DAYS * DAY_MS
        delay = rng.randrange(0, round(SURVEY_DELAY_DAYS * 24 * 60)) * MINUTE_MS
        u = rng.random()
        at = (due + delay) // MINUTE_MS * MINUTE_MS
        if at >= horizon:
            return surveys
        in_hospital = any(a <= at < d for a, d in stays)
        missed = u < (P_SURVEY_MISSED_IN_HOSPITAL if in_hospital else P_SURVEY_MISSED)
        surveys.append(PlannedSurvey(number, due, at, missed, in_hospital))
        number += 1


def _responses(rng: random.Random, level: float) -> dict[str, int | None]:
    blank = P_ITEM_MISSING_SPARSE if rng.random() < P_SPARSE_FORM else P_ITEM_MISSING
    responses: dict[str, int | None] = {}
    gauss, random_ = rng.gauss, rng.random
    for item in _ITEMS:
        missing = random_() < blank
        score = math.floor(level + gauss(0.0, ITEM_NOISE_SD) + 0.5)
        if missing:
            responses[item] = None
            continue
        score = 0 if score < 0 else 4 if score > 4 else score
        responses[item] = 4 - score if item in REVERSED else score
    return responses


def _exogenous_events(plan: Plan, items: random.Random) -> list[tuple[int, dict[str, Any]]]:
    pid = plan.patient_id
    events: list[tuple[int, int, dict[str, Any]]] = []  # (time, order, event)

    def add(at: int, order: int, kind: str, suffix: str, source: str, **extra: Any) -> None:
        obj: dict[str, Any] = {
            "event_id": f"{pid}-{suffix}",
            "patient_id": pid,
            "occurred_at": format_time(at),
            "type": kind,
            "source": source,
        }
        obj.update(extra)
        events.append((at, order, obj))

    add(plan.enrolled_at, 1, "ENROLLED", "enrolled", "ctms")
    for survey in plan.surveys:
        responses = _responses(items, level_for_total(plan.true_total(survey.at)))
        if survey.missed or survey.at >= plan.ends_at:
            continue
        add(survey.at, 0, "SURVEY_SUBMITTED", f"s{survey.number}", "portal",
            survey={"instrument": "FACT-L", "version": "4", "responses": responses})  # fmt: skip
    for number, at in enumerate(plan.treatment_changes, start=1):
        if at < plan.ends_at:
            add(at, 2, "TREATMENT_CHANGED", f"t{number}", "ehr")
    for number, (admitted, discharged) in enumerate(plan.stays, start=1):
        if admitted < plan.ends_at:
            add(admitted, 3, "HOSPITAL_ADMITTED", f"a{number}", "adt")
        if discharged < plan.ends_at:
            add(discharged, 4, "HOSPITAL_DISCHARGED", f"d{number}", "adt")
    if plan.end == "DECEASED":
        add(plan.ends_at, 9, plan.end, "end", "ehr")
    else:
        add(plan.ends_at, 9, plan.end, "end", "ctms", attributes={"reason": plan.end_reason})
    events.sort(key=lambda e: (e[0], e[1]))
    return [(at, obj) for at, _, obj in events]


# -- the arm: the engine in the loop ----------------------------------------------------------


@dataclass(slots=True)
class Lived:
    """What one patient's follow-up gave under the arm's policy."""

    events: list[tuple[int, dict[str, Any]]]
    escalations: list[Escalation]


def visit_delay_days(rng: random.Random, kind: Kind) -> float:
    """Days from a visit request to the visit, when it is honoured."""
    if kind is Kind.MONTHLY_VISIT_DUE:
        return rng.lognormvariate(math.log(MONTHLY_DELAY_MEDIAN_DAYS), MONTHLY_DELAY_SIGMA)
    return rng.lognormvariate(math.log(TRIGGERED_DELAY_MEDIAN_DAYS), TRIGGERED_DELAY_SIGMA)


def live(plan: Plan, policy: Policy, seed: int) -> Lived:
    """Run the patient's events through the engine, booking a visit for each request."""
    rng = stream(seed, plan.index, "visits")
    pid = plan.patient_id
    engine = PartitionEngine(policy)
    queue = [(at, order, obj) for order, (at, obj) in enumerate(plan.events)]  # sorted: a heap
    order = len(queue)
    booked = False
    visits = 0
    out: list[tuple[int, dict[str, Any]]] = []
    escalations: list[Escalation] = []

    def book(at: int) -> None:
        nonlocal order, visits, booked
        visits += 1
        at = at // MINUTE_MS * MINUTE_MS
        obj = {"event_id": f"{pid}-v{visits}", "patient_id": pid, "occurred_at": format_time(at),
               "type": "PALLIATIVE_VISIT_COMPLETED", "source": "ehr"}  # fmt: skip
        heapq.heappush(queue, (at, order, obj))
        order += 1
        booked = True

    def react(fired: tuple[Escalation, ...]) -> None:
        for escalation in fired:
            escalations.append(escalation)
            kind = escalation.kind
            if booked:
                continue  # the visit already booked serves this request too
            if kind in VISIT_REQUEST_KINDS:
                if rng.random() >= P_VISIT_NOT_HONOURED:
                    book(escalation.occurred_at + MINUTE_MS
                         + round(visit_delay_days(rng, kind) * DAY_MS))  # fmt: skip
            elif kind is Kind.VISIT_OVERDUE and rng.random() < P_REBOOKED_AFTER_OVERDUE:
                rebook = round(rng.uniform(0, REBOOK_DAYS) * DAY_MS)
                book(escalation.occurred_at + MINUTE_MS + rebook)

    while queue:
        at = queue[0][0]
        state = engine.states.get(pid)
        deadline = None if state is None else next_deadline(state)
        if deadline is not None and deadline < at:
            react(engine.advance_to(deadline + 1))  # a timer fires before the next event
            continue
        _, _, obj = heapq.heappop(queue)
        processed = engine.process(event_from_json(obj))
        out.append((at, obj))
        if obj["type"] == "PALLIATIVE_VISIT_COMPLETED":
            booked = False
        react(processed.escalations)
        if obj["type"] in ENDS:
            break
    return Lived(out, escalations)


# -- the cohort ---------------------------------------------------------------------------------


@dataclass
class Summary:
    patients: int = 0
    events: Counter[str] = field(default_factory=Counter)
    escalations: Counter[str] = field(default_factory=Counter)
    ends: Counter[str] = field(default_factory=Counter)
    visits_by_week_24: int = 0
    requests_by_week_24: int = 0
    stepped_up: int = 0
    baselines: list[float] = field(default_factory=list)
    week_24: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def text(self, policy: Policy) -> str:
        n = max(self.patients, 1)
        events = sum(self.events.values())
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(self.escalations.items())) or "none"
        types = ", ".join(f"{v} {k}" for k, v in sorted(self.events.items()))
        ends = ", ".join(f"{v} {k}" for k, v in sorted(self.ends.items()))
        base = _mean_sd(self.baselines)
        week24 = _mean_sd(self.week_24)
        return (
            f"simulated {self.patients} patients under {policy.policy_id} in "
            f"{self.seconds:.1f} s: {events} events ({types}); ends: {ends}; "
            f"escalations by the arm's engine: {kinds}; by week 24 per patient: "
            f"{self.visits_by_week_24 / n:.2f} visits completed, "
            f"{self.requests_by_week_24 / n:.2f} visit requests; stepped up: "
            f"{self.stepped_up} ({100 * self.stepped_up / n:.1f}%); FACT-L baseline {base}, "
            f"week 24 {week24}"
        )


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    return (
        f"mean {statistics.fmean(values):.1f} SD {statistics.stdev(values):.1f} (n={len(values)})"
    )


def simulate(
    cohort: Cohort,
    policy: Policy,
    summary: Summary | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The cohort's events in time order (ties: patient, then the patient's own order).

    Patients are generated in enrollment order and their events merged through a heap, so only
    the patients still in follow-up are held in memory.
    """
    summary = Summary() if summary is None else summary
    started = time.monotonic()
    order = sorted(range(1, cohort.patients + 1), key=lambda i: (enrollment_time(cohort, i), i))
    lead = math.ceil(BASELINE_LEAD_DAYS) * DAY_MS
    heap: list[tuple[int, int, int, dict[str, Any]]] = []
    week_24 = 24 * WEEK_MS
    for done, index in enumerate(order, start=1):
        plan = plan_patient(cohort, index)
        horizon = plan.enrolled_at - lead  # no later patient has an event before this
        while heap and heap[0][0] < horizon:
            yield heapq.heappop(heap)[3]
        lived = live(plan, policy, cohort.seed)
        for position, (at, obj) in enumerate(lived.events):
            heapq.heappush(heap, (at, index, position, obj))
        _tally(summary, plan, lived, week_24)
        if progress is not None:
            progress(done, cohort.patients)
    while heap:
        yield heapq.heappop(heap)[3]
    summary.seconds = time.monotonic() - started


def _tally(summary: Summary, plan: Plan, lived: Lived, week_24: int) -> None:
    summary.patients += 1
    summary.ends[plan.end_reason] += 1
    for at, obj in lived.events:
        kind = obj["type"]
        summary.events[kind] += 1
        if kind == "PALLIATIVE_VISIT_COMPLETED" and at - plan.enrolled_at < week_24:
            summary.visits_by_week_24 += 1
        elif kind == "SURVEY_SUBMITTED":
            number = obj["event_id"].rsplit("-s", 1)[1]
            if number in ("0", "4"):
                total = event_from_json(obj).survey.scores.FACT_L  # type: ignore[union-attr]
                if total is not None:
                    (summary.baselines if number == "0" else summary.week_24).append(total)
    for escalation in lived.escalations:
        summary.escalations[escalation.kind] += 1
        if escalation.kind is Kind.STEP_UP:
            summary.stepped_up += 1
        if (
            escalation.kind in VISIT_REQUEST_KINDS
            and escalation.occurred_at - plan.enrolled_at < week_24
        ):
            summary.requests_by_week_24 += 1
