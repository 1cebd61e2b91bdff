"""`stepcare compare` on a small hand-written log: every number worked out by hand below."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from streams.analysis.compare import compare
from streams.analysis.seeds import Interval, interval, t_975
from streams.cli import main
from streams.clinical.escalations import VISIT_REQUEST_KINDS, Kind
from streams.clinical.policy import builtin_policy
from streams.clinical.scoring import REVERSED, SUBSCALES, UNSCORED

# A form where every scored item has the same item score s (positive direction): the subscales
# are 7s, 7s, 6s, 7s, 7s and FACT-L = 34 s. s = 3 gives 102, s = 2 gives 68 (a fall of 34).
# ``lower_fwb`` items of FWB (GF1..) get s - 1: FWB 21 - 5 = 16, FACT-L 97 (a fall of 5).


def form(s: int, lower_fwb: int = 0) -> dict:
    responses: dict[str, int | None] = {}
    lowered = set(SUBSCALES["FWB"][:lower_fwb])
    for items in SUBSCALES.values():
        for item in items:
            score = s - 1 if item in lowered else s
            responses[item] = 4 - score if item in REVERSED else score
    for item in sorted(UNSCORED):
        responses[item] = 0
    return {"instrument": "FACT-L", "version": "4", "responses": responses}


def ev(event_id: str, patient: str, when: str, kind: str, **extra: object) -> str:
    obj = {
        "event_id": event_id,
        "patient_id": patient,
        "occurred_at": f"2024-{when}Z",
        "type": kind,
    }
    obj.update(extra)
    return json.dumps(obj)


# Patients A, B, C, E are enrolled; D has a visit but is never enrolled (ignored, not a patient).
LOG = [
    ev("a1", "A", "01-01T10:00:00", "SURVEY_SUBMITTED", survey=form(3)),  # 102, held: baseline
    ev("a2", "A", "01-02T10:00:00", "ENROLLED"),  # INITIAL (both), due 01-30
    ev("b1", "B", "01-03T10:00:00", "ENROLLED"),  # INITIAL (both), due 01-31 10:00
    ev("d1", "D", "01-04T10:00:00", "PALLIATIVE_VISIT_COMPLETED"),  # not enrolled: ignored
    ev("c1", "C", "01-05T10:00:00", "ENROLLED"),  # INITIAL (both), due 02-02
    ev("c2", "C", "01-06T10:00:00", "SURVEY_SUBMITTED", survey=form(3)),  # C's baseline 102
    ev("e1", "E", "01-08T12:00:00", "ENROLLED"),  # INITIAL (both), due 02-05 12:00; no forms
    ev("b2", "B", "01-10T10:00:00", "TREATMENT_CHANGED"),  # stepped: suppressed (INITIAL open)
    ev("b3", "B", "01-12T10:00:00", "SURVEY_SUBMITTED", survey=form(3)),  # B's baseline 102
    ev("a3", "A", "01-16T10:00:00", "PALLIATIVE_VISIT_COMPLETED"),  # early: MONTHLY, due 02-13
    ev("b4", "B", "01-20T10:00:00", "HOSPITAL_ADMITTED"),
    ev("b5", "B", "01-25T10:00:00", "HOSPITAL_DISCHARGED"),  # stepped: suppressed (INITIAL open)
    ev("c3", "C", "01-26T10:00:00", "SURVEY_SUBMITTED", survey=form(3, 5)),  # 97: fall 5, no step
    ev("c4", "C", "01-29T10:00:00", "PALLIATIVE_VISIT_COMPLETED"),  # early: MONTHLY, due 02-26
    ev("c4", "C", "01-29T10:00:00", "PALLIATIVE_VISIT_COMPLETED"),  # redelivered: duplicate
    '{"event_id": "x1", "patient_id": "C"}',  # not an event: rejected (record 16)
    # Before b6 the clock passes 01-31 10:00: VISIT_OVERDUE for B's INITIAL (both policies).
    ev("b6", "B", "02-03T10:00:00", "PALLIATIVE_VISIT_COMPLETED"),  # early: MONTHLY, due 03-02
    ev("a4", "A", "02-05T10:00:00", "SURVEY_SUBMITTED", survey=form(2)),  # 68: stepped STEP_UP
    # Before b7 the clock passes 02-05 12:00: VISIT_OVERDUE for E's INITIAL (both policies).
    ev("b7", "B", "02-08T10:00:00", "TREATMENT_CHANGED"),  # stepped: TREATMENT_CHANGE, due 03-07
    ev("b8", "B", "02-09T10:00:00", "DECEASED"),  # VISIT_REQUEST_CANCELLED (both policies)
    ev("c5", "C", "02-10T10:00:00", "HOSPITAL_DISCHARGED"),  # stepped: POST_DISCHARGE
    # Before c6 the clock passes 02-13 10:00: early: VISIT_OVERDUE for A's MONTHLY.
    ev("c6", "C", "02-14T10:00:00", "SURVEY_SUBMITTED", survey=form(2)),  # 68: stepped STEP_UP
]
UNTIL = "2024-03-05T00:00:00Z"
# --until 03-05 00:00 fires: stepped: VISIT_OVERDUE for A's STEP_UP (due 03-04 10:00) and
# SURVEY_OVERDUE for E (enrolled 01-08 12:00, no valid form: 42 + 7 days -> 02-26 12:00);
# early: VISIT_OVERDUE for C's MONTHLY (due 02-26 10:00). C's STEP_UP is due 03-13: not yet.

# Enrollment (days from 2024-01-01): A 1, B 2, C 4, E 7 (+ half a day).
# Visit requests, days after the patient's enrollment:
#   stepped: INITIAL x4 at 0; A STEP_UP 02-05 - 01-02 = 34; B TREATMENT_CHANGE 02-08 - 01-03 = 36;
#            C POST_DISCHARGE 02-10 - 01-05 = 36; C STEP_UP 02-14 - 01-05 = 40.     (8 in all)
#   early:   INITIAL x4 at 0; MONTHLY A 14 (01-16), C 24 (01-29), B 31 (02-03).   (7 in all)
# Visits applied (D's ignored, C's duplicate not counted): A 14, C 24, B 31 days.
STEPPED = {
    "label": "step-pc-2024",
    "policy_id": "step-pc-2024",
    "policy_version": "1",
    "events": "21",  # valid records fed (the duplicate included); the bad one is not
    "rejected": "1",
    "patients": "4",
    "visit_requests_per_patient_wk4": "1.0",  # < 28 days: the 4 INITIAL / 4
    "visit_requests_per_patient_wk5": "1.25",  # < 35 days: + A's STEP_UP (34) = 5 / 4
    "visit_requests_per_patient_wk24": "2.0",  # all 8 / 4
    "visits_completed_per_patient_wk4": "0.5",  # A 14, C 24 = 2 / 4
    "visits_completed_per_patient_wk5": "0.75",  # + B 31 = 3 / 4
    "visits_completed_per_patient_wk24": "0.75",
    "stepped_up": "2",  # A and C
    "stepped_up_share": "0.5",
    "step_up_days_median": "37.0",  # of 34 and 40
    "step_up_days_q1": "35.5",  # 34 + 0.25 x 6
    "step_up_days_q3": "38.5",  # 34 + 0.75 x 6
    "survey_overdue": "1",  # E
    "visit_overdue": "3",  # B's INITIAL, E's INITIAL, A's STEP_UP (until)
    "suppressed": "2",  # B's treatment change and discharge while INITIAL was open
    "escalations_INITIAL_VISIT_DUE": "4",
    "escalations_STEP_UP": "2",
    "escalations_TREATMENT_CHANGE_VISIT_DUE": "1",
    "escalations_POST_DISCHARGE_VISIT_DUE": "1",
    "escalations_MONTHLY_VISIT_DUE": "0",
    "escalations_VISIT_OVERDUE": "3",
    "escalations_SURVEY_OVERDUE": "1",
    "escalations_VISIT_REQUEST_CANCELLED": "1",  # B's TREATMENT_CHANGE request at death
}
EARLY = {
    "label": "early-pc",
    "policy_id": "early-pc",
    "policy_version": "1",
    "events": "21",
    "rejected": "1",
    "patients": "4",
    "visit_requests_per_patient_wk4": "1.5",  # INITIAL x4 + MONTHLY A 14, C 24 = 6 / 4
    "visit_requests_per_patient_wk5": "1.75",  # + MONTHLY B 31 = 7 / 4
    "visit_requests_per_patient_wk24": "1.75",
    "visits_completed_per_patient_wk4": "0.5",  # the same visits: they are the log's
    "visits_completed_per_patient_wk5": "0.75",
    "visits_completed_per_patient_wk24": "0.75",
    "stepped_up": "0",  # early care starts in step 2: FACT-L falls step nobody up
    "stepped_up_share": "0.0",
    "step_up_days_median": "",
    "step_up_days_q1": "",
    "step_up_days_q3": "",
    "survey_overdue": "0",  # no survey timer in step 2
    "visit_overdue": "4",  # B's INITIAL, E's INITIAL, A's MONTHLY, C's MONTHLY (until)
    "suppressed": "0",  # step-1 triggers are ignored in step 2, not suppressed
    "escalations_INITIAL_VISIT_DUE": "4",
    "escalations_STEP_UP": "0",
    "escalations_TREATMENT_CHANGE_VISIT_DUE": "0",
    "escalations_POST_DISCHARGE_VISIT_DUE": "0",
    "escalations_MONTHLY_VISIT_DUE": "3",
    "escalations_VISIT_OVERDUE": "4",
    "escalations_SURVEY_OVERDUE": "0",
    "escalations_VISIT_REQUEST_CANCELLED": "1",  # B's MONTHLY request at death
}
COLUMNS = [
    "label", "policy_id", "policy_version", "input", "events", "rejected", "patients",
    "visit_requests_per_patient_wk4", "visit_requests_per_patient_wk5",
    "visit_requests_per_patient_wk24", "visits_completed_per_patient_wk4",
    "visits_completed_per_patient_wk5", "visits_completed_per_patient_wk24", "stepped_up",
    "stepped_up_share", "step_up_days_median", "step_up_days_q1", "step_up_days_q3",
    "survey_overdue", "visit_overdue", "suppressed",
    *(f"escalations_{kind}" for kind in Kind),
]  # fmt: skip


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "hand.jsonl"
    path.write_text("\n".join(LOG) + "\n")
    return path


def test_one_log_under_two_policies_gives_the_numbers_worked_out_by_hand(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_csv, out_png = tmp_path / "c.csv", tmp_path / "c.png"
    status = main([
        "compare", "--input", str(log), "--policy", "step-pc-2024", "--policy", "early-pc",
        "--week", "5", "--week", "4", "--until", UNTIL, "--csv", str(out_csv),
        "--png", str(out_png),
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0
    with out_csv.open() as fo:
        reader = csv.DictReader(fo)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert [r.pop("input") for r in rows] == [str(log), str(log)]
    assert rows == [STEPPED, EARLY]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{log}: record 16: " in err
    assert err.strip().splitlines()[-1].startswith("compared 2 policy runs over 21 events (1 log)")
    # The terminal table: one column per policy (A, B), then B/A.
    header, *_ = out.splitlines()
    assert re.split(r"\s{2,}", header.strip()) == ["A: step-pc-2024", "B: early-pc", "B/A"]
    lines = {re.split(r"\s{2,}", line.strip())[0]: line.split() for line in out.splitlines()}
    assert lines["events (rejected)"][-5:] == ["21", "(1)", "21", "(1)", "1.00"]
    assert lines["visit requests/patient < wk 24"][-3:] == ["2.00", "1.75", "0.88"]
    assert lines["visits done/patient < wk 4"][-3:] == ["0.50", "0.50", "1.00"]
    assert lines["stepped up"][-5:] == ["2", "(50.0%)", "0", "(0.0%)", "0.00"]
    assert lines["days to step-up, median [Q1-Q3]"][-4:] == ["37.0", "[35.5-38.5]", "-", "-"]
    assert lines["VISIT_OVERDUE"][-3:] == ["3", "4", "1.33"]
    assert lines["STEP_UP"][-3:] == ["2", "0", "0.00"]
    assert lines["policy"][-4:] == ["step-pc-2024", "v1", "early-pc", "v1"]  # no ratio of names


def test_paired_inputs_run_each_log_under_its_own_policy(log: Path, tmp_path: Path) -> None:
    # The trial use: one log per arm. Here the early arm's "log" has only patients A and E.
    early_log = tmp_path / "early.jsonl"
    early_log.write_text("\n".join(line for line in LOG if '"A"' in line or '"E"' in line))
    runs = compare(
        [str(log), str(early_log)], [builtin_policy("step-pc-2024"), builtin_policy("early-pc")]
    )
    stepped, early = (run.report([24]) for run in runs)
    assert stepped["label"] == "step-pc-2024 @ hand.jsonl"
    assert early["label"] == "early-pc @ early.jsonl"
    assert stepped["visit_requests_per_patient_wk24"] == 8 / 4
    # A: INITIAL, MONTHLY (01-16); E: INITIAL. A's MONTHLY goes overdue on 02-13 10:00 only
    # when the clock passes it, and without --until this log's clock stops at 02-05 10:00;
    # E's INITIAL (due 02-05 12:00) does not go overdue either.
    assert early["patients"] == 2
    assert early["visit_requests_per_patient_wk24"] == 3 / 2
    assert early["visits_completed_per_patient_wk24"] == 1 / 2
    assert early["escalations_VISIT_OVERDUE"] == 0


def test_the_same_policy_twice_gets_distinct_labels(log: Path) -> None:
    runs = compare([str(log)], [builtin_policy("early-pc"), builtin_policy("early-pc")])
    assert [run.label for run in runs] == ["early-pc #1", "early-pc #2"]
    assert runs[0].report([24]) | {"label": ""} == runs[1].report([24]) | {"label": ""}


def test_visit_kinds_are_the_five_request_kinds() -> None:
    assert {str(k) for k in VISIT_REQUEST_KINDS} == {
        "INITIAL_VISIT_DUE", "STEP_UP", "TREATMENT_CHANGE_VISIT_DUE",
        "POST_DISCHARGE_VISIT_DUE", "MONTHLY_VISIT_DUE",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "A", "--input", "B", "--policy", "early-pc"], "2 --input for 1 --policy"),
        (["--policy", "early-pc", "--week", "0"], "--week must be more than 0"),
        (["--policy", "early-pc", "--until", "soon"], "--until: "),
        (["--policy", "no-such.toml"], "no-such.toml"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    log: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--input" not in args:
        args = ["--input", str(log), *args]
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_input_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(["compare", "--input", str(missing), "--policy", "early-pc"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_per_patient_csv_gives_each_patients_escalations_requests_and_visits_per_policy(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "patients.csv"
    status = main(["compare", "--input", str(log), "--policy", "step-pc-2024", "--policy",
                   "early-pc", "--until", UNTIL, "--per-patient", str(out)])  # fmt: skip
    assert status == 0
    # Worked out from the comments of LOG. D's visit is ignored: D is in no run.
    #   stepped: A INITIAL, STEP_UP, VISIT_OVERDUE; B INITIAL, VISIT_OVERDUE, TREATMENT_CHANGE,
    #            CANCELLED; C INITIAL, POST_DISCHARGE, STEP_UP; E INITIAL, VISIT_OVERDUE,
    #            SURVEY_OVERDUE.
    #   early:   A INITIAL, MONTHLY, VISIT_OVERDUE; B INITIAL, VISIT_OVERDUE, MONTHLY,
    #            CANCELLED; C INITIAL, MONTHLY, VISIT_OVERDUE; E INITIAL, VISIT_OVERDUE.
    assert out.read_text() == (
        "patient_id,step-pc-2024:escalations,step-pc-2024:visit_requests,"
        "step-pc-2024:visits_completed,early-pc:escalations,early-pc:visit_requests,"
        "early-pc:visits_completed\n"
        "A,3,2,1,3,2,1\n"
        "B,4,2,1,4,2,1\n"
        "C,3,3,1,3,2,1\n"
        "E,3,1,0,2,1,0\n"
    )


def test_seeds_give_each_number_its_mean_and_95_percent_t_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seeds.csv"
    status = main(["compare", "--seeds", "3", "--seed", "4", "--patients", "25", "--policy",
                   "step-pc-2024", "--policy", "early-pc", "--csv", str(out)])  # fmt: skip
    table, err = capsys.readouterr()
    assert status == 0
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("compared 2 policies over 3 simulated cohorts of 25 patients (seeds 4-6) in ")
    )
    with out.open() as fo:
        rows = list(csv.DictReader(fo))
    assert [(r["seed"], r["policy_id"]) for r in rows] == [
        (str(s), p) for s in (4, 5, 6) for p in ("step-pc-2024", "early-pc")
    ]
    # Each seed is the trial comparison of `stepcare simulate --seed S --arm P` under P.
    for seed in (4, 5, 6):
        logs = []
        for arm in ("step-pc-2024", "early-pc"):
            path = tmp_path / f"{arm}-{seed}.jsonl"
            assert main(["simulate", "--patients", "25", "--seed", str(seed), "--arm", arm,
                         "--output", str(path)]) == 0  # fmt: skip
            logs.append(str(path))
        runs = compare(logs, [builtin_policy("step-pc-2024"), builtin_policy("early-pc")])
        for run, row in zip(runs, [r for r in rows if r["seed"] == str(seed)], strict=True):
            expected = run.report([24])
            assert row["events"] == str(expected["events"])
            assert float(row["visits_completed_per_patient_wk24"]) == pytest.approx(
                expected["visits_completed_per_patient_wk24"], abs=1e-6
            )
    capsys.readouterr()
    # mean ± t(0.975, 2) sd / sqrt(3), t(0.975, 2) = 4.303; B/A taken seed by seed.
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    for key in ("visits_completed_per_patient_wk24", "visit_overdue"):
        a = [float(r[key]) for r in rows if r["policy_id"] == "step-pc-2024"]
        b = [float(r[key]) for r in rows if r["policy_id"] == "early-pc"]
        cells = []
        for values in (a, b, [y / x for x, y in zip(a, b, strict=True)]):
            mean = statistics.fmean(values)
            half = 4.303 * statistics.stdev(values) / math.sqrt(3)
            cells.append(f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]")
        assert re.split(r"\s{2,}", lines[key].strip()) == [key, *cells]
    assert table.splitlines()[0].split("  ")[0] == "mean [95% CI], 3 seeds"


@pytest.mark.parametrize(
    ("df", "t"), [(1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (40, 2.021), (60, 2.0),
                  (120, 1.98), (10_000, 1.96)],
)  # fmt: skip
def test_t_quantiles_match_the_tables(df: int, t: float) -> None:
    assert t_975(df) == pytest.approx(t, abs=0.0011)


def test_interval_of_known_values() -> None:
    found = interval([1.0, 2.0, 3.0, 4.0, 5.0])  # sd 1.5811, t(0.975, 4) = 2.776
    assert found is not None
    assert (found.mean, found.n) == (3.0, 5)
    assert (round(found.low or 0, 4), round(found.high or 0, 4)) == (
        1.0371,
        4.9629,
    )  # 3 -/+ 2.776 x 0.7071
    assert interval([]) is None
    assert interval([2.0]) == Interval(2.0, None, None, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "1"], "--seeds must be a whole number from 2 to 1000"),
        (["--seeds", "x"], "--seeds must be a whole number from 2 to 1000"),
        (["--seeds", "3", "--input", "a.jsonl"], "--seeds simulates the cohorts: give no --input"),
        (["--seeds", "3", "--png", "a.png"], "--png and --per-patient need --input"),
        (["--seeds", "3", "--patients", "0"], "--patients must be at least 1"),
        ([], "give --input LOG (or --seeds N"),
    ],
)
def test_seeds_usage_errors_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "--policy", "early-pc", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stepcare: {message}") and err.count("\n") == 1
