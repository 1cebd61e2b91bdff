"""`stepcare convert`: JSONL <-> Avro container, rejects by record number, exit 0 and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.cli import main
from streams.formats.avro import AVRO_CONTAINER_MAGIC
from streams.formats.logs import input_format, output_format, read_events

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "three-patients.jsonl"


def convert(*args: str) -> int:
    return main(["convert", *args])


@pytest.fixture
def simulated(tmp_path: Path) -> Path:
    path = tmp_path / "sim.jsonl"
    assert main(["simulate", "--patients", "25", "--seed", "2", "--output", str(path)]) == 0
    return path


def test_jsonl_to_avro_to_jsonl_gives_back_the_same_bytes(
    simulated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    avro, back = tmp_path / "sim.avro", tmp_path / "back.jsonl"
    assert convert("--input", str(simulated), "--output", str(avro)) == 0
    assert avro.read_bytes()[:4] == AVRO_CONTAINER_MAGIC
    assert convert("--input", str(avro), "--output", str(back)) == 0
    assert back.read_bytes() == simulated.read_bytes()
    lines = len(simulated.read_text().splitlines())
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"converted {lines} records (jsonl -> avro) in ")
    assert err[0].endswith(", 0 rejected")
    assert err[1].startswith(f"converted {lines} records (avro -> jsonl)")


def test_jsonl_output_is_canonical(tmp_path: Path) -> None:
    source = tmp_path / "loose.jsonl"
    source.write_text(
        '{"type": "ENROLLED", "occurred_at": "2024-03-01T10:30:00.000+01:00", '
        '"patient_id": "p-1", "event_id": "e-1", "attributes": {}}\n\n'
    )
    out = tmp_path / "out.jsonl"
    assert convert("--input", str(source), "--output", str(out)) == 0
    assert out.read_text() == (
        '{"event_id":"e-1","patient_id":"p-1","occurred_at":"2024-03-01T09:30:00Z",'
        '"type":"ENROLLED"}\n'
    )


def test_rejects_are_reported_by_record_number_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = EXAMPLE.read_text().splitlines()
    bad = [
        lines[0],
        "not json",
        '{"event_id": "x", "patient_id": "p", "occurred_at": "2024-01-01T00:00:00Z", '
        '"type": "NOPE"}',
        lines[1],
        json.dumps(
            {
                "event_id": "y",
                "patient_id": "p",
                "occurred_at": "2024-01-01T00:00:00Z",
                "type": "SURVEY_SUBMITTED",
                "survey": {"instrument": "FACT-L", "responses": {"GP1": 7}},
            }
        ),
    ]
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(bad) + "\n")
    out = tmp_path / "out.avro"
    assert convert("--input", str(source), "--output", str(out)) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("record 2: not JSON")
    assert err[1].startswith("record 3: unknown event type (type must be one of SURVEY_SUBMITTED, ")
    assert err[2] == "record 5: item GP1: the response is outside 0-4"
    assert err[3].startswith("converted 2 records (jsonl -> avro)")
    assert err[3].endswith(", 3 rejected")
    events = [item for _, item in read_events(str(out))]
    assert [e.event_id for e in events] == ["e-01", "e-02"]  # type: ignore[union-attr]


def test_strict_stops_at_the_first_reject(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(EXAMPLE.read_text().splitlines()[0] + "\n[]\n")
    assert convert("--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--strict") == 2
    assert "record 2: an event is a JSON object, not list" in capsys.readouterr().err


@pytest.mark.attack(
    "convert a truncated Avro container", "exit 2, one line naming the record; output not made"
)
def test_a_truncated_container_exits_2_and_writes_nothing(
    simulated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    avro = tmp_path / "sim.avro"
    assert convert("--input", str(simulated), "--output", str(avro)) == 0
    data = avro.read_bytes()
    cut = tmp_path / "cut.avro"
    cut.write_bytes(data[: len(data) - 200])
    capsys.readouterr()
    assert convert("--input", str(cut), "--output", str(tmp_path / "cut.jsonl")) == 2
    err = capsys.readouterr().err
    assert err == f"stepcare: {cut}: record 232: corrupt Avro data: the record body is truncated\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.avro", "sim.avro", "sim.jsonl"]


def test_formats_by_content_extension_and_flag(simulated: Path, tmp_path: Path) -> None:
    avro = tmp_path / "log.data"  # an Avro container with an odd name: found by content
    assert convert("--input", str(simulated), "--output", str(avro), "--format", "avro") == 0
    assert input_format(str(avro)) == "avro"
    assert input_format(str(simulated)) == "jsonl"
    assert output_format("x.AVRO", None) == "avro"
    assert output_format("x.ndjson", None) == "jsonl"
    assert output_format("x.bin", "jsonl") == "jsonl"
    assert output_format("-", None) == "jsonl"


def test_jsonl_to_stdout(simulated: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert convert("--input", str(simulated), "--output", "-") == 0
    assert capfdbinary.readouterr().out == simulated.read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{missing}", "--output", "{tmp}/o.jsonl"], "cannot read"),
        (["--input", "{log}", "--output", "{tmp}/o.txt"], "cannot tell the format"),
        (["--input", "{log}", "--output", "{log}"], "the same file"),
        (["--input", "{log}", "--output", "-", "--format", "avro"], "Avro output needs a file"),
        (["--input", "{log}", "--output", "{tmp}/no/such/dir.jsonl"], "cannot write"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = {"missing": tmp_path / "missing.jsonl", "tmp": tmp_path, "log": EXAMPLE}
    assert convert(*(a.format(**names) for a in args)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_a_container_of_other_records_is_refused_and_leaves_no_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fastavro

    other = tmp_path / "other.avro"
    schema = {"type": "record", "name": "X", "fields": [{"name": "n", "type": "int"}]}
    with other.open("wb") as fo:
        fastavro.writer(fo, schema, [{"n": 1}])
    out = tmp_path / "out.avro"
    assert convert("--input", str(other), "--output", str(out)) == 2
    assert "does not hold PatientEvent records" in capsys.readouterr().err
    assert not out.exists()
