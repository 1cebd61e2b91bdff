"""`stepcare replay --jobs N` (streams.analysis.parallel): the same bytes as one job."""

from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.analysis import parallel
from streams.analysis.parallel import murmur2, partition_of, replay_parallel
from streams.analysis.replay import RejectedLine, replay_events
from streams.cli import main
from streams.clinical.events import DAY_MS, format_time
from streams.clinical.policy import resolve_policy
from streams.formats.avro import write_avro_log
from streams.formats.files import FileError
from streams.formats.logs import read_events
from tests.stories import STEP_PC, form

START = 1704067200000  # 2024-01-01T00:00:00Z
PATIENTS = ["p-a", "p-b", "p-c", "p-d", "p-e", "p-f"]
TYPES = [
    "ENROLLED", "SURVEY_SUBMITTED", "TREATMENT_CHANGED", "HOSPITAL_ADMITTED",
    "HOSPITAL_DISCHARGED", "PALLIATIVE_VISIT_COMPLETED", "DISENROLLED", "DECEASED",
]  # fmt: skip
BAD_LINES = [
    b"not json",
    b'"a string"',
    b"[1, 2]",
    b'{"event_id":"x","patient_id":"p-a","occurred_at":"2024-13-01T00:00:00Z","type":"ENROLLED"}',
    b'{"event_id":"x","patient_id":"p-b","occurred_at":"2024-01-01T00:00:00Z","type":"NOPE"}',
    b'{"event_id":"y","patient_id":"p-c","occurred_at":"2024-02-01T00:00:00Z",'
    b'"type":"SURVEY_SUBMITTED","survey":{"instrument":"FACT-L","responses":{"GP1":9}}}',
    b'{"event_id":"z","patient_id":7,"occurred_at":"2024-02-01T00:00:00Z","type":"ENROLLED"}',
    b"\xff\xfe not UTF-8",
]


def test_murmur2_is_kafkas() -> None:
    for data in [b"", b"a", b"ab", b"abc", b"abcd", b"p-000123", "pätient-é".encode()]:
        assert murmur2(data) == aiokafka_murmur2(data)


def test_the_partitioner_spreads_the_test_patients_over_two_and_three_jobs() -> None:
    assert {partition_of(p, 2) for p in PATIENTS} == {0, 1}
    assert {partition_of(p, 3) for p in PATIENTS} == {0, 1, 2}


@st.composite
def logs(draw: st.DrawFn) -> list[bytes]:
    """Lines of a log: times on a coarse grid (ties across patients, so equal deadlines),
    out of order, duplicated event ids, CLOCK_TICKs, bad lines, blank lines, escaped JSON."""
    lines: list[bytes] = []
    for n in range(draw(st.integers(0, 60))):
        choice = draw(st.integers(0, 19))
        at = START + draw(st.integers(0, 120)) * DAY_MS // 2
        if choice == 0:
            lines.append(draw(st.sampled_from(BAD_LINES)))
            continue
        if choice == 1:
            lines.append(b"" if draw(st.booleans()) else b"   ")
            continue
        if choice == 2:
            tick = {"event_id": "", "patient_id": "", "occurred_at": format_time(at),
                    "type": "CLOCK_TICK"}  # fmt: skip
            lines.append(orjson.dumps(tick))
            continue
        kind = draw(st.sampled_from(TYPES))
        event: dict[str, object] = {
            "event_id": f"e-{draw(st.integers(0, n))}",  # repeats: duplicates
            "patient_id": draw(st.sampled_from(PATIENTS)),
            "occurred_at": format_time(at),
            "type": kind,
        }
        if kind == "SURVEY_SUBMITTED":
            missing = ("GP1", "GP2", "GP3", "GP4") if draw(st.booleans()) else ()
            responses = form(draw(st.integers(40, 136)), missing)
            event["survey"] = {"instrument": "FACT-L", "responses": responses}
        if choice == 3:  # not canonical: the parent decodes it to find the patient
            lines.append(json.dumps(event, indent=None, separators=(", ", ": ")).encode())
        elif choice == 4:
            event["attributes"] = {"note": 'a "quoted" \\ note'}
            lines.append(orjson.dumps(event))
        else:
            lines.append(orjson.dumps(event))
    return lines


def run_one(path: Path, until: int | None, strict: bool) -> tuple[str, str, str, int]:
    out, rejects = io.StringIO(), io.StringIO()
    try:
        summary, engine = replay_events(
            read_events(str(path)), STEP_PC, out, until=until, strict=strict, rejects=rejects
        )
    except (RejectedLine, FileError) as exc:
        return out.getvalue(), rejects.getvalue(), f"error: {exc}", -1
    summary.seconds = 0
    return out.getvalue(), rejects.getvalue(), summary.text(len(engine.states)), 0


def run_many(path: Path, jobs: int, until: int | None, strict: bool) -> tuple[str, str, str, int]:
    out, rejects = io.StringIO(), io.StringIO()
    try:
        summary, patients = replay_parallel(
            str(path), STEP_PC, out, jobs, until=until, strict=strict, rejects=rejects
        )
    except (RejectedLine, FileError) as exc:
        return out.getvalue(), rejects.getvalue(), f"error: {exc}", -1
    summary.seconds = 0
    return out.getvalue(), rejects.getvalue(), summary.text(patients), 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    logs(),
    st.sampled_from([None, START + 200 * DAY_MS, START + 5000 * DAY_MS]),
    st.booleans(),
    st.sampled_from([2, 3]),
    st.sampled_from([1, 4, 1000]),
)
def test_n_jobs_give_the_bytes_of_one_job(
    lines: list[bytes], until: int | None, strict: bool, jobs: int, chunk: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        one = run_one(path, until, strict)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(parallel, "CHUNK", chunk)  # many chunks: the clock crosses them
            many = run_many(path, jobs, until, strict)
    assert many == one


def test_an_avro_container_gives_the_bytes_of_one_job(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "three-patients.jsonl"
    objs = [json.loads(line) for line in example.read_text().splitlines() if line.strip()]
    path = tmp_path / "log.avro"
    with path.open("wb") as out:
        write_avro_log(out, objs)
    until = START + 400 * DAY_MS
    one = run_one(path, until, False)
    assert one[0].count("\n") == 17
    assert run_many(path, 2, until, False) == one


@pytest.mark.parametrize("chunk", [7, 1000])
def test_a_damaged_avro_container_gives_what_one_job_gives(
    tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records before the damage are replayed, then the same error (one job: FileError)."""
    example = Path(__file__).resolve().parents[3] / "examples" / "three-patients.jsonl"
    base = [json.loads(line) for line in example.read_text().splitlines() if line.strip()]
    objs = [
        obj | {"event_id": f"{obj['event_id']}-{n}", "patient_id": f"{obj['patient_id']}-{n}"}
        for n in range(40)
        for obj in base
    ]
    path = tmp_path / "log.avro"
    with path.open("wb") as out:
        write_avro_log(out, objs)
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF
    path.write_bytes(bytes(data))
    one = run_one(path, None, False)
    assert one[2].startswith("error: ") and one[0].count("\n") > 100
    monkeypatch.setattr(parallel, "CHUNK", chunk)
    assert run_many(path, 2, None, False) == one


def test_cli_jobs_2_writes_the_bytes_of_jobs_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "three-patients.jsonl"
    log = tmp_path / "log.jsonl"
    log.write_bytes(example.read_bytes() + b"not json\n")
    results = []
    for jobs in ("1", "2"):
        output = tmp_path / f"out-{jobs}.jsonl"
        args = ["replay", "--input", str(log), "--until", "2024-09-01T00:00:00Z"]
        assert main([*args, "--output", str(output), "--jobs", jobs]) == 0
        err = re.sub(r" in [0-9.]+ s ", " in X s ", capsys.readouterr().err)  # the time taken
        results.append((output.read_bytes(), err))
    assert results[0] == results[1]
    assert results[0][1].startswith("line 25: not JSON")


@pytest.mark.parametrize("jobs", ["0", "-1", "65", "two", "1.5", ""])
def test_bad_jobs_exit_2_with_one_line(jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "three-patients.jsonl"
    assert main(["replay", "--input", str(example), "--jobs", jobs]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "stepcare: --jobs must be a whole number from 1 to 64\n"


def test_a_policy_reaches_the_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "three-patients.jsonl"
    outputs = []
    for jobs in ("1", "3"):
        args = ["replay", "--input", str(example), "--policy", "early-pc", "--jobs", jobs]
        assert main(args) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert {json.loads(x)["policy_id"] for x in outputs[0].splitlines()} == {"early-pc"}
    assert resolve_policy("early-pc").policy_id == "early-pc"


@pytest.mark.parametrize("strict", [False, True])
def test_stdin_and_strict_through_the_command_line(strict: bool) -> None:
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[3] / "examples" / "three-patients.jsonl"
    lines = example.read_bytes().splitlines(keepends=True)
    log = b"".join(lines[:12]) + b"not json\n" + b"".join(lines[12:])
    runs = []
    for jobs in ("1", "2"):
        cmd = [sys.executable, "-m", "streams.cli", "replay", "--input", "-", "--jobs", jobs]
        cmd += ["--until", "2024-09-01T00:00:00Z"] + (["--strict"] if strict else [])
        done = subprocess.run(cmd, input=log, capture_output=True, check=False)
        err = done.stderr.decode()
        runs.append((done.returncode, done.stdout, err.split(" in ")[0], err.count("\n")))
    assert runs[0] == runs[1]
    assert runs[0][0] == (2 if strict else 0)
    assert runs[0][1].count(b"\n") == (5 if strict else 17)


def test_ctrl_c_ends_every_job_with_no_traceback() -> None:
    """Ctrl-C (SIGINT to the process group) while the parent waits for input: exit 130, one
    process group gone, nothing on stderr."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "streams.cli", "replay", "--input", "-", "--jobs", "3"]
    process = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert process.stdin is not None
    try:
        children: list[str] = []
        for _ in range(200):  # the jobs start before the parent reads its input
            found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True)
            children = found.stdout.decode().split()
            if len(children) == 3:
                break
            time.sleep(0.05)
        assert len(children) == 3
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert err == b""
    for child in children:
        for _ in range(100):
            if not os.path.exists(f"/proc/{child}") or "Z" in _state(child):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"job {child} still runs")


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(line for line in status if line.startswith("State:"))
    except OSError:
        return "Z"
