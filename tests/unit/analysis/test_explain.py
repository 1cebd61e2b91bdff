"""`stepcare explain` (streams/analysis/explain.py): one patient's story, checked against
`replay`."""

from __future__ import annotations

import html
import io
import logging
from pathlib import Path

import orjson
import pytest

from streams.analysis.explain import explain, read_events
from streams.analysis.replay import replay
from streams.cli import main
from streams.clinical.events import event_from_json, parse_time
from streams.clinical.policy import resolve_policy
from streams.formats.avro import write_avro_log

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "three-patients.jsonl"
UNTIL = "2024-09-01T00:00:00Z"


def _replayed(patient: str, lines: list[str] | None = None, until: str = UNTIL) -> list[dict]:
    """What `stepcare replay` writes for ``patient``, in order."""
    output = io.StringIO()
    source = EXAMPLE.read_text().splitlines() if lines is None else lines
    replay(source, resolve_policy(None), output, until=parse_time(until))
    escalations = [orjson.loads(line) for line in output.getvalue().splitlines()]
    return [e for e in escalations if e["patient_id"] == patient]


def _log_events(patient: str) -> list[dict]:
    return [
        obj
        for obj in map(orjson.loads, EXAMPLE.read_text().splitlines())
        if obj["patient_id"] == patient
    ]


def _explain(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    status = main(["explain", "--input", str(EXAMPLE), *args])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert err == ""  # patient-level data goes to stdout and the files asked for, nowhere else
    return out.splitlines()


def _hm(rfc3339: str) -> str:
    """2024-03-01T09:30:00Z -> 2024-03-01 09:30, as the story prints times."""
    return f"{rfc3339[:10]} {rfc3339[11:16]}"


@pytest.mark.parametrize("patient", ["p-001", "p-002", "p-003"])
def test_the_story_has_exactly_the_escalations_replay_writes_for_the_patient(
    capsys: pytest.CaptureFixture[str], patient: str
) -> None:
    expected = _replayed(patient)
    assert expected  # the example gives every patient escalations
    lines = _explain(capsys, "--patient", patient, "--until", UNTIL)
    told = [line for line in lines if "  => " in line]
    assert len(told) == len(expected)
    for line, escalation in zip(told, expected, strict=True):
        assert line.startswith(_hm(escalation["occurred_at"]) + "  => " + escalation["kind"])
        if escalation["due_by"] is not None:
            assert f"due {_hm(escalation['due_by'])}" in line
        assert escalation["reason"]["text"] in line
    # The same escalations, field for field (ids included): the story ran the same engine.
    events = read_events(str(EXAMPLE))
    story = explain(events, patient, resolve_policy(None), until=parse_time(UNTIL))
    assert story is not None
    assert [e.to_json() for e in story.escalations] == expected


def test_p002_shows_the_suppressed_trigger_and_the_duplicate_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _explain(capsys, "--patient", "p-002", "--until", UNTIL)
    treatment = next(e for e in _log_events("p-002") if e["type"] == "TREATMENT_CHANGED")
    suppressed = [line for line in lines if "suppressed: TREATMENT_CHANGE_VISIT_DUE" in line]
    assert len(suppressed) == 1
    assert suppressed[0].startswith(_hm(treatment["occurred_at"]))
    assert "(a visit request was open: POST_DISCHARGE_VISIT_DUE" in suppressed[0]
    ids = [e["event_id"] for e in _log_events("p-002")]
    duplicated = next(i for i in ids if ids.count(i) > 1)
    told = [line for line in lines if f"({duplicated})" in line]
    assert len(told) == 2
    assert "duplicate event ignored" not in told[0]
    assert "duplicate event ignored" in told[1]
    assert lines[-1].endswith("suppressed triggers: 1.")


def test_p003_incomplete_form_is_shown_as_incomplete(capsys: pytest.CaptureFixture[str]) -> None:
    incomplete = [
        obj
        for obj in _log_events("p-003")
        if obj["type"] == "SURVEY_SUBMITTED" and event_from_json(obj).survey.scores.FACT_L is None
    ]
    assert len(incomplete) == 1
    event_id = incomplete[0]["event_id"]
    lines = _explain(capsys, "--patient", "p-003", "--until", UNTIL)
    (line,) = [line for line in lines if f"({event_id})" in line]
    assert "incomplete (no valid total" in line
    assert "does not count as a survey" in line
    assert " total " not in line.split("incomplete")[0]


def test_the_baseline_line_names_the_baseline_and_its_source_survey(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # p-001: the baseline is the survey held before enrollment (replay's reason has its value).
    baseline = _replayed("p-001")[0]["reason"]["baseline"]
    events = _log_events("p-001")
    enrolled = next(e for e in events if e["type"] == "ENROLLED")
    source = [
        e
        for e in events
        if e["type"] == "SURVEY_SUBMITTED"
        and parse_time(e["occurred_at"]) < parse_time(enrolled["occurred_at"])
    ][-1]
    assert baseline == event_from_json(source).survey.scores.FACT_L
    lines = _explain(capsys, "--patient", "p-001", "--until", UNTIL)
    (line,) = [line for line in lines if f"Enrolled ({enrolled['event_id']})" in line]
    when = _hm(source["occurred_at"])
    assert f"baseline {baseline:.1f} set from the FACT-L survey of {when}" in line
    assert f"({source['event_id']})" in line

    # p-002: no survey before enrollment, so the first valid one after it is the baseline.
    baseline = next(e for e in _replayed("p-002") if e["reason"]["baseline"])["reason"]["baseline"]
    first = next(e for e in _log_events("p-002") if e["type"] == "SURVEY_SUBMITTED")
    lines = _explain(capsys, "--patient", "p-002", "--until", UNTIL)
    (line,) = [line for line in lines if f"({first['event_id']})" in line and "baseline" in line]
    assert f"becomes the baseline ({baseline:.1f})" in line


def test_an_unknown_patient_is_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["explain", "--input", str(EXAMPLE), "--patient", "p-999"])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and "p-999" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "tomorrow"], "--until"),
        (["--policy", "no-such-policy.toml"], "no-such-policy.toml"),
        (["--png", "/nonexistent/dir/chart.png"], "cannot write"),
    ],
)
def test_bad_options_are_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status = main(["explain", "--input", str(EXAMPLE), "--patient", "p-001", *args])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == "" and err.count("\n") == 1 and message in err


def test_png_and_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    png, page = tmp_path / "p-001.png", tmp_path / "p-001.html"
    with caplog.at_level(logging.DEBUG):
        lines = _explain(
            capsys, "--patient", "p-001", "--until", UNTIL, "--png", str(png), "--html", str(page)
        )
    assert not [r for r in caplog.records if "p-001" in r.getMessage()]  # nothing logged
    assert lines[0].startswith("Patient p-001")  # the text story is still written
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    text = page.read_text(encoding="utf-8")
    assert '<img src="data:image/png;base64,' in text
    assert "http://" not in text and "https://" not in text  # self-contained
    for escalation in _replayed("p-001"):
        assert html.escape(escalation["reason"]["text"], quote=False) in text


def test_an_avro_container_log_tells_the_same_story(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "three-patients.avro"
    write_avro_log(log, (orjson.loads(line) for line in EXAMPLE.read_text().splitlines()))
    jsonl = _explain(capsys, "--patient", "p-002", "--until", UNTIL)
    status = main(["explain", "--input", str(log), "--patient", "p-002", "--until", UNTIL])
    out, _ = capsys.readouterr()
    assert status == 0
    assert out.splitlines() == jsonl


def test_timers_fired_by_until_are_told_and_pending_ones_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The log up to mid-May: p-001's monthly visit (due 2024-05-29) is still open.
    lines = [
        line
        for line in EXAMPLE.read_text().splitlines()
        if parse_time(orjson.loads(line)["occurred_at"]) < parse_time("2024-05-15T00:00:00Z")
    ]
    log = tmp_path / "early.jsonl"
    log.write_text("\n".join(lines) + "\n")

    main(["explain", "--input", str(log), "--patient", "p-001"])
    story = capsys.readouterr().out.splitlines()
    assert "VISIT_OVERDUE (timer)" not in "\n".join(story)
    assert story[-1].startswith("Next timer: 2024-05-29 11:00, VISIT_OVERDUE")

    until = "2024-06-01T00:00:00Z"
    main(["explain", "--input", str(log), "--patient", "p-001", "--until", until])
    story = capsys.readouterr().out.splitlines()
    expected = _replayed("p-001", lines, until)
    told = [line for line in story if "  => " in line]
    assert [line.split("  => ")[1].split(",")[0] for line in told] == [
        e["kind"] + (" (timer)" if e["trigger_event_id"] is None else "") for e in expected
    ]
    clock = next(i for i, line in enumerate(story) if "Clock advanced to --until" in line)
    assert "1 timer(s) of this patient fired" in story[clock]
    assert story[clock + 1].startswith("2024-05-29 11:00  => VISIT_OVERDUE (timer)")
    assert expected[-1]["reason"]["text"] in story[clock + 1]


def test_a_rejected_line_of_the_patient_is_part_of_the_story(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "with-a-bad-line.jsonl"
    bad = '{"event_id": "e-99", "patient_id": "p-001", "occurred_at": "2024-04-20T09:00:00Z", '
    bad += '"type": "VISIT_BOOKED"}'
    log.write_text(EXAMPLE.read_text() + bad + "\n" + "not json\n")
    status = main(["explain", "--input", str(log), "--patient", "p-001", "--until", UNTIL])
    out, err = capsys.readouterr()
    assert status == 0 and err == ""
    (line,) = [line for line in out.splitlines() if "Rejected input" in line]
    assert line.startswith("2024-04-20 09:00  Rejected input (line 25)")
    assert "unknown event type (type must be one of" in line
    assert "1 rejected line(s) of the log named no patient or another patient" in out
