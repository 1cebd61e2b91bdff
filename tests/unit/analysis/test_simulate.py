"""`stepcare simulate`: deterministic, the arm changes only the visits, and its distributions
match the documented parameters (expectations derived from the module's own constants)."""

from __future__ import annotations

import io
import json
import math
import statistics
from collections import Counter
from itertools import pairwise
from pathlib import Path
from statistics import NormalDist

import pytest

from streams.analysis import simulate as sim
from streams.analysis.replay import replay
from streams.cli import main
from streams.clinical.escalations import Kind
from streams.clinical.events import DAY_MS, event_from_json, parse_time
from streams.clinical.policy import builtin_policy

START = parse_time(sim.TRIAL_START)
WEEK = 7 * DAY_MS


def run_simulate(tmp_path: Path, name: str, *args: str) -> bytes:
    path = tmp_path / name
    assert main(["simulate", "--output", str(path), *args]) == 0
    return path.read_bytes()


@pytest.fixture(scope="module")
def arms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """The same 300 patients (seed 5, 30 weeks) under each arm, as parsed JSONL."""
    tmp = tmp_path_factory.mktemp("arms")
    logs = {}
    for arm in ("step-pc-2024", "early-pc"):
        data = run_simulate(tmp, f"{arm}.jsonl", "--patients", "300", "--weeks", "30",
                            "--seed", "5", "--arm", arm)  # fmt: skip
        logs[arm] = [json.loads(line) for line in data.splitlines()]
    return logs


@pytest.fixture(scope="module")
def plans() -> list[sim.Plan]:
    """400 patients followed for 52 weeks (the arm-independent part)."""
    cohort = sim.Cohort(seed=11, patients=400, weeks=52, day0=START)
    return [sim.plan_patient(cohort, i) for i in range(1, 401)]


# -- determinism and the two arms ----------------------------------------------------------------


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--patients", "40", "--weeks", "24")
    first = run_simulate(tmp_path, "a.jsonl", *args, "--seed", "3")
    second = run_simulate(tmp_path, "b.jsonl", *args, "--seed", "3")
    other = run_simulate(tmp_path, "c.jsonl", *args, "--seed", "4")
    assert first == second
    assert first != other
    err = capsys.readouterr().err
    assert "simulated 40 patients under step-pc-2024" in err


def test_the_log_is_time_ordered_valid_and_canonical(arms: dict[str, list[dict]]) -> None:
    for events in arms.values():
        times = [parse_time(e["occurred_at"]) for e in events]
        assert times == sorted(times)
        for obj in events:
            from streams.clinical.events import event_to_json

            assert event_to_json(event_from_json(obj)) == obj


def test_the_arm_changes_the_visits_and_nothing_else(arms: dict[str, list[dict]]) -> None:
    def without_visits(events: list[dict]) -> list[dict]:
        return [e for e in events if e["type"] != "PALLIATIVE_VISIT_COMPLETED"]

    stepped, early = arms["step-pc-2024"], arms["early-pc"]
    # Same patients, enrollments, forms (times and every response), clinical events, ends.
    assert without_visits(stepped) == without_visits(early)
    visits = [
        Counter(e["patient_id"] for e in log if e["type"] == "PALLIATIVE_VISIT_COMPLETED")
        for log in (stepped, early)
    ]
    assert sum(visits[0].values()) < sum(visits[1].values())
    assert visits[0] != visits[1]


def test_each_arm_runs_under_its_own_policy_as_replay_sees_it(tmp_path: Path) -> None:
    """The engine in the loop and a replay of the written log agree on every escalation."""
    cohort = sim.Cohort(seed=2, patients=120, weeks=30, day0=START)
    for arm in ("step-pc-2024", "early-pc"):
        policy = builtin_policy(arm)
        summary = sim.Summary()
        lines = [json.dumps(obj) for obj in sim.simulate(cohort, policy, summary)]
        out = io.StringIO()
        replayed, engine = replay(lines, policy, out, rejects=io.StringIO())
        assert replayed.rejected == 0
        assert replayed.escalations == summary.escalations
        # Every patient's follow-up ends (death, withdrawal or end of follow-up): no timer left.
        assert all(state.ended for state in engine.states.values())


def test_early_care_gives_about_twice_the_visits_of_stepped_care(
    arms: dict[str, list[dict]],
) -> None:
    """The trial's direction (2.4 vs 4.7 by week 24): stepped care about half."""

    def visits_by_week_24(events: list[dict]) -> float:
        enrolled = {e["patient_id"]: parse_time(e["occurred_at"]) for e in events
                    if e["type"] == "ENROLLED"}  # fmt: skip
        count = sum(
            1
            for e in events
            if e["type"] == "PALLIATIVE_VISIT_COMPLETED"
            and parse_time(e["occurred_at"]) - enrolled[e["patient_id"]] < 24 * WEEK
        )
        return count / len(enrolled)

    stepped = visits_by_week_24(arms["step-pc-2024"])
    early = visits_by_week_24(arms["early-pc"])
    assert 1.9 < stepped < 2.9
    assert 4.2 < early < 5.3
    assert 0.38 < stepped / early < 0.62


# -- distributions -------------------------------------------------------------------------------


def test_baseline_fact_l_has_the_documented_mean_and_sd(plans: list[sim.Plan]) -> None:
    totals = []
    for plan in plans:
        first = plan.events[0][1]
        assert first["event_id"].endswith("-s0")  # the baseline form precedes enrollment
        total = event_from_json(first).survey.scores.FACT_L  # type: ignore[union-attr]
        if total is not None:
            totals.append(total)
    # Sparse forms (P_SPARSE_FORM) are mostly invalid, so most baselines are reported.
    assert len(totals) > 0.9 * len(plans)
    se_mean = sim.BASELINE_SD / math.sqrt(len(totals))
    assert abs(statistics.fmean(totals) - sim.BASELINE_MEAN) < 4 * se_mean
    se_sd = sim.BASELINE_SD / math.sqrt(2 * len(totals))
    assert abs(statistics.stdev(totals) - sim.BASELINE_SD) < 4 * se_sd + 0.5


def test_the_measurement_model_inverts() -> None:
    for total in (20.0, 68.0, sim.BASELINE_MEAN, 120.0):
        assert sim.expected_total(sim.level_for_total(total)) == pytest.approx(total, abs=0.05)


def test_forms_come_every_6_weeks_and_the_documented_share_is_missed(
    plans: list[sim.Plan],
) -> None:
    follow_ups = [s for plan in plans for s in plan.surveys if s.number > 0]
    for plan in plans:
        dues = [s.due for s in plan.surveys if s.number > 0]
        assert all(b - a == sim.SURVEY_INTERVAL_DAYS * DAY_MS for a, b in pairwise(dues))
        delays = [s.at - s.due for s in plan.surveys if s.number > 0]
        assert all(0 <= d < sim.SURVEY_DELAY_DAYS * DAY_MS for d in delays)
    # Submitted intervals between consecutive forms average 6 weeks (the delays cancel out).
    gaps = [(b.at - a.at) / DAY_MS for plan in plans for a, b in pairwise(plan.surveys[1:])]
    assert statistics.fmean(gaps) == pytest.approx(sim.SURVEY_INTERVAL_DAYS, abs=0.3)
    outside = [s for s in follow_ups if not s.in_hospital]
    share = sum(s.missed for s in outside) / len(outside)
    p = sim.P_SURVEY_MISSED
    assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / len(outside))
    inside = [s for s in follow_ups if s.in_hospital]
    assert inside  # admissions do overlap forms
    assert sum(s.missed for s in inside) / len(inside) > p


def test_trajectories_deaths_and_withdrawals_follow_their_rates(plans: list[sim.Plan]) -> None:
    n = len(plans)
    shares = Counter(plan.trajectory for plan in plans)
    for kind, p in sim.TRAJECTORIES.items():
        assert abs(shares[kind] / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    year = 52 * WEEK
    for latent, p in (
        ([plan.death_at for plan in plans], sim.DEATH_12_MONTHS),
        ([plan.withdrawal_at for plan in plans], sim.WITHDRAWAL_12_MONTHS),
    ):
        observed = (
            sum(at - plan.enrolled_at < year for at, plan in zip(latent, plans, strict=True)) / n
        )
        assert abs(observed - p) < 4 * math.sqrt(p * (1 - p) / n)
    # The log's end event is the first of death, withdrawal and the end of follow-up.
    for plan in plans:
        last = plan.events[-1][1]
        assert last["type"] == plan.end and last["event_id"].endswith("-end")
        assert plan.ends_at <= plan.follow_up_end


def test_clinical_events_come_at_their_documented_rates(plans: list[sim.Plan]) -> None:
    # Per week of the horizon, Poisson rate + the events linked to an abrupt decline.
    weeks = sum((p.follow_up_end - p.enrolled_at) / WEEK for p in plans)
    abrupt = [p for p in plans if p.onset is not None and p.onset < p.follow_up_end]
    changes = sum(len(p.treatment_changes) for p in plans)
    expected = sim.TREATMENT_CHANGE_RATE * weeks + sim.P_TREATMENT_CHANGE_AFTER_DROP * len(abrupt)
    assert abs(changes - expected) < 4 * math.sqrt(expected) + 5
    stays = [(a, d) for p in plans for a, d in p.stays]
    median_stay = statistics.median((d - a) / DAY_MS for a, d in stays)
    assert median_stay == pytest.approx(sim.STAY_MEDIAN_DAYS, rel=0.2)


def test_visits_come_after_the_documented_delay(arms: dict[str, list[dict]]) -> None:
    """The first visit after enrollment: booked after the triggered-request delay, unless the
    request was not honoured (then it comes only after VISIT_OVERDUE, past 28 days)."""
    events = arms["early-pc"]
    enrolled = {e["patient_id"]: parse_time(e["occurred_at"]) for e in events
                if e["type"] == "ENROLLED"}  # fmt: skip
    first: dict[str, int] = {}
    for e in events:
        if e["type"] == "PALLIATIVE_VISIT_COMPLETED":
            first.setdefault(e["patient_id"], parse_time(e["occurred_at"]))
    delays = [(first[p] - enrolled[p]) / DAY_MS for p in first]
    # Median of the mixture: (1 - p) F(m) = 1/2 with F lognormal (median, sigma).
    honoured = 1 - sim.P_VISIT_NOT_HONOURED
    z = NormalDist().inv_cdf(0.5 / honoured)
    expected = sim.TRIGGERED_DELAY_MEDIAN_DAYS * math.exp(sim.TRIGGERED_DELAY_SIGMA * z)
    assert statistics.median(delays) == pytest.approx(expected, abs=1.5)
    late = sum(d > 28 for d in delays) / len(delays)
    p_late = 1 - honoured * NormalDist().cdf(
        math.log(28 / sim.TRIGGERED_DELAY_MEDIAN_DAYS) / sim.TRIGGERED_DELAY_SIGMA
    )
    assert abs(late - p_late) < 4 * math.sqrt(p_late * (1 - p_late) / len(delays))


def test_monthly_visits_keep_the_documented_cadence() -> None:
    plan = sim.plan_patient(sim.Cohort(seed=1, patients=1, weeks=400, day0=START), 1)
    # A long follow-up, early care: intervals between visits are the monthly delay (plus
    # the rare unhonoured request).
    lived = sim.live(plan, builtin_policy("early-pc"), 1)
    visits = [at for at, obj in lived.events if obj["type"] == "PALLIATIVE_VISIT_COMPLETED"]
    if len(visits) < 10:
        pytest.skip("this patient's follow-up is too short")
    gaps = [(b - a) / DAY_MS for a, b in pairwise(visits)]
    assert statistics.median(gaps) == pytest.approx(sim.MONTHLY_DELAY_MEDIAN_DAYS, abs=2)
    kinds = Counter(e.kind for e in lived.escalations)
    assert kinds[Kind.MONTHLY_VISIT_DUE] == len(visits)


# -- the command ---------------------------------------------------------------------------------


def test_avro_output_holds_the_same_events(tmp_path: Path) -> None:
    from streams.formats.avro import read_avro_log

    jsonl = run_simulate(tmp_path, "s.jsonl", "--patients", "15", "--seed", "9")
    run_simulate(tmp_path, "s.avro", "--patients", "15", "--seed", "9")
    records = [obj for _, obj in read_avro_log(tmp_path / "s.avro")]
    assert records == [json.loads(line) for line in jsonl.splitlines()]


def test_start_moves_the_cohort(tmp_path: Path) -> None:
    data = run_simulate(tmp_path, "s.jsonl", "--patients", "5", "--start", "2030-01-01T12:00:00Z")
    first = json.loads(data.splitlines()[0])
    assert first["occurred_at"] >= "2030-01-02T00:00:00Z"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--patients", "0", "--output", "x.jsonl"], "--patients must be at least 1"),
        (["--weeks", "0", "--output", "x.jsonl"], "must be more than 0"),
        (["--output", "x.txt"], "cannot tell the format of x.txt"),
        (["--output", "x.jsonl", "--start", "yesterday"], "--start: "),
        (["--output", "-", "--format", "avro"], "Avro output needs a file"),
        (["--output", "x.jsonl", "--arm", "nope.toml"], "nope.toml"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = [str(tmp_path / a) if a.startswith("x.") else a for a in args]
    assert main(["simulate", *args]) == 2
    err = capsys.readouterr().err
    assert message.replace("x.txt", str(tmp_path / "x.txt")) in err
