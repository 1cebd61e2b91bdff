"""`stepcare score`: FACT-L scores for events, surveys or bare response maps (DESIGN §8)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from streams.cli import main

# A complete form answered 2 everywhere: every item scores 2 (reversed or not), so each 7-item
# subscale is 14, EWB (6 items) is 12, FACT-G 54, FACT-L 68, TOI 42.
ALL_TWOS = {
    code: 2
    for code in (
        *(f"GP{i}" for i in range(1, 8)),
        *(f"GS{i}" for i in range(1, 8)),
        *(f"GE{i}" for i in range(1, 7)),
        *(f"GF{i}" for i in range(1, 8)),
        "B1", "C2", "L1", "L2", "C6", "L3", "L4", "B5", "L5",
    )
}  # fmt: skip
ALL_TWOS_SCORES = {
    "PWB": 14.0, "SWB": 14.0, "EWB": 12.0, "FWB": 14.0, "LCS": 14.0,
    "FACT_G": 54.0, "FACT_L": 68.0, "TOI": 42.0, "answered": 34,
}  # fmt: skip
# Two PWB items only: nothing can be reported, and that is null, never 0.
SPARSE = {"GP1": 1, "GP2": 0, "GE2": None}
SPARSE_SCORES = {k: None for k in ALL_TWOS_SCORES} | {"answered": 2}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list, str]:
    status = main(["score", *args])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_jsonl_of_events_surveys_and_bare_maps_gives_one_line_each_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event = {
        "event_id": "e-17", "patient_id": "p-001", "occurred_at": "2024-03-01T09:30:00Z",
        "type": "SURVEY_SUBMITTED",
        "survey": {"instrument": "FACT-L", "version": "4", "responses": ALL_TWOS},
    }  # fmt: skip
    lines = [event, {"instrument": "FACT-L", "responses": SPARSE}, ALL_TWOS]
    log = tmp_path / "forms.jsonl"
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")

    status, scores, err = run(capsys, str(log))

    assert (status, err) == (0, "scored 3 forms, skipped 0 non-survey events\n")
    assert scores == [
        {"event_id": "e-17", "patient_id": "p-001"} | ALL_TWOS_SCORES,
        SPARSE_SCORES,
        ALL_TWOS_SCORES,
    ]
    assert list(scores[0])[:2] == ["event_id", "patient_id"]  # the ids first


def test_an_event_log_skips_the_events_that_are_not_surveys_and_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def event(n: int, kind: str, **more: object) -> dict:
        return {"event_id": f"e-{n}", "patient_id": f"p-{n % 2}",
                "occurred_at": f"2024-03-0{n}T09:30:00Z", "type": kind, **more}  # fmt: skip

    survey = {"instrument": "FACT-L", "version": "4", "responses": ALL_TWOS}
    lines = [
        event(1, "ENROLLED", baseline_visit_due_at="2024-03-02T00:00:00Z"),
        event(2, "SURVEY_SUBMITTED", survey=survey),
        event(3, "VISIT_COMPLETED", visit_request_id="v-1"),
        event(4, "CLOCK_TICK"),
        event(5, "SURVEY_SUBMITTED", survey={"responses": SPARSE}),
        event(6, "DISENROLLED"),
    ]
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))

    status, scores, err = run(capsys, str(log))

    assert (status, err) == (0, "scored 2 forms, skipped 4 non-survey events\n")
    assert scores == [
        {"event_id": "e-2", "patient_id": "p-0"} | ALL_TWOS_SCORES,
        {"event_id": "e-5", "patient_id": "p-1"} | SPARSE_SCORES,
    ]


def test_a_pretty_printed_json_document_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "sys.stdin", io.StringIO(json.dumps({"survey": {"responses": SPARSE}}, indent=2))
    )

    assert run(capsys) == (0, [SPARSE_SCORES], "scored 1 form, skipped 0 non-survey events\n")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"GP1": 5}', "line 1: item GP1: the response is outside 0-4"),
        ('{"GP1": 1}\n{"GP1": true}', "line 2: item GP1: the response is not a whole number"),
        ('{"GP1": 1}\n{"XX9": 1}', "line 2: unknown item code at position 1 of the responses"),
        ('{"GP1": 1}\n{"GP1": 1', "line 2: not JSON"),
        (
            '{"event_id": "e-1", "type": "ENROLLED"}\n'
            '{"event_id": "e-2", "type": "SURVEY_SUBMITTED"}',
            "line 2: event of type 'SURVEY_SUBMITTED' carries no survey",
        ),
        ('{"instrument": "PHQ-9", "responses": {}}', "line 1: instrument 'PHQ-9' is not FACT-L"),
        ("[1, 2]", "line 1: expected a JSON object, got list"),
    ],
)
def test_invalid_input_exits_2_with_one_line_and_no_scores(
    content: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)

    status, scores, err = run(capsys, str(path))

    assert (status, scores) == (2, [])
    assert err.startswith(f"stepcare: {reason}") and err.count("\n") == 1


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, scores, err = run(capsys, str(tmp_path / "absent.jsonl"))
    assert (status, scores) == (2, [])
    assert err.startswith("stepcare: cannot read") and err.count("\n") == 1
