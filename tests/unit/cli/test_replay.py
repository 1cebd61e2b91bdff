"""`stepcare replay` (DESIGN §8) on the shipped example and on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.cli import main

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "three-patients.jsonl"
EXPECTED = REPO / "examples" / "three-patients.escalations.jsonl"
UNTIL = "2024-09-01T00:00:00Z"


def test_the_three_patients_example_gives_its_expected_escalations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "escalations.jsonl"
    status = main(["replay", "--input", str(EXAMPLE), "--until", UNTIL, "--output", str(output)])
    _, err = capsys.readouterr()
    assert status == 0
    assert output.read_bytes() == EXPECTED.read_bytes()
    assert err == (
        "replayed 24 events for 3 patients in 0.0 s (22 applied, 1 duplicate, 1 held, 0 ignored, "
        "0 rejected); 17 escalations (3 INITIAL_VISIT_DUE, 1 MONTHLY_VISIT_DUE, "
        "2 POST_DISCHARGE_VISIT_DUE, 1 STEP_UP, 5 SURVEY_OVERDUE, 1 TREATMENT_CHANGE_VISIT_DUE, "
        "2 VISIT_OVERDUE, 2 VISIT_REQUEST_CANCELLED); suppressed: 1 TREATMENT_CHANGE_VISIT_DUE\n"
    )


def test_the_example_triggers_every_escalation_kind() -> None:
    from streams.clinical.engine import Kind

    kinds = {json.loads(line)["kind"] for line in EXPECTED.read_text().splitlines()}
    assert kinds == {k.value for k in Kind}


def test_stdout_carries_only_escalations_and_runs_are_identical() -> None:
    def run() -> subprocess.CompletedProcess[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "streams.cli",
            "replay",
            "--input",
            str(EXAMPLE),
            "--until",
            UNTIL,
        ]
        return subprocess.run(cmd, capture_output=True, check=True, cwd=REPO)

    first, second = run(), run()
    assert first.stdout == second.stdout == EXPECTED.read_bytes()
    assert first.stderr.startswith(b"replayed 24 events")


def test_until_fires_the_timers_due_after_the_last_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(
        line("e-1", "2024-03-01T09:00:00Z", "ENROLLED")
        + line("e-2", "2024-03-20T09:00:00Z", "PALLIATIVE_VISIT_COMPLETED")
    )
    assert main(["replay", "--input", str(log)]) == 0
    without = capsys.readouterr().out.splitlines()
    assert main(["replay", "--input", str(log), "--until", "2024-05-01T00:00:00Z"]) == 0
    until = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["kind"] for x in without] == ["INITIAL_VISIT_DUE"]
    assert until[0] == without[0]
    assert [(json.loads(x)["kind"], json.loads(x)["occurred_at"]) for x in until[1:]] == [
        ("SURVEY_OVERDUE", "2024-04-19T09:00:00Z")  # enrollment + 42 days + 7 days' grace
    ]


def line(event_id: str, when: str, kind: str, **extra: object) -> str:
    event = {"event_id": event_id, "patient_id": "p-1", "occurred_at": when, "type": kind}
    return json.dumps(event | extra) + "\n"


BAD_LOG = (
    line("e-1", "2024-03-01T09:00:00Z", "ENROLLED")
    + "not json\n"
    + line("e-2", "2024-03-02", "ENROLLED")
    + line("e-3", "2024-03-03T09:00:00Z", "SURVEY_SUBMITTED",
           survey={"instrument": "FACT-L", "responses": {"GP1": 7}})
    + line("e-4", "2024-03-04T09:00:00Z", "DECEASED")
)  # fmt: skip


def test_bad_lines_are_reported_with_their_number_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(BAD_LOG)
    assert main(["replay", "--input", str(log)]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["kind"] for line in out.splitlines()] == [
        "INITIAL_VISIT_DUE",
        "VISIT_REQUEST_CANCELLED",
    ]
    lines = err.splitlines()
    assert lines[:3] == [
        "line 2: not JSON: invalid literal, expected 'null' (column 1)",
        "line 3: timestamp is not RFC 3339 (e.g. 2024-03-01T09:30:00Z)",
        "line 4: item GP1: the response is outside 0-4",
    ]
    assert "2 events" in lines[3] and "3 rejected" in lines[3]


def test_strict_mode_stops_at_the_first_bad_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(BAD_LOG)
    assert main(["replay", "--input", str(log), "--strict"]) == 2
    _, err = capsys.readouterr()
    assert err == "stepcare: line 2: not JSON: invalid literal, expected 'null' (column 1)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "tomorrow"], "stepcare: --until: timestamp is not RFC 3339 (e.g. "),
        (["--policy", "no-such.toml"], "stepcare: cannot read policy no-such.toml"),
        (["--input", "absent.jsonl"], "stepcare: cannot read absent.jsonl"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["replay", "--input", str(EXAMPLE)]
    assert main([*base, *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1


def test_a_policy_can_be_chosen_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--input", str(EXAMPLE), "--policy", "early-pc"]) == 0
    out, _ = capsys.readouterr()
    escalations = [json.loads(line) for line in out.splitlines()]
    assert {e["policy_id"] for e in escalations} == {"early-pc"}
    assert "STEP_UP" not in {e["kind"] for e in escalations}
