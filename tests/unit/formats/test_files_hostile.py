"""The command line's files (issue 12): an input is never destroyed or silently dropped, outputs
are atomic, every command reads logs the same way, a full disk is one line, memory is bounded.

Most tests run the real command (``python -m streams.cli``) so that what reaches the shell
(exit status, stderr, the files) is what is checked, with no traceback anywhere.
"""

from __future__ import annotations

import io
import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.clinical.events import event_from_json, event_to_json
from streams.formats.avro import write_avro_log
from streams.interfaces import hl7

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "three-patients.jsonl"
ESCALATIONS = REPO / "examples" / "three-patients.escalations.jsonl"
FHIR = REPO / "tests" / "data" / "fhir"
HL7 = REPO / "tests" / "data" / "hl7"
SECRET = "stepcare-test-secret-0123456789abcdef"
FULL = "No space left on device"


def canonical(path: Path) -> bytes:
    """A JSONL log as ``convert`` writes it."""
    objs = (event_to_json(event_from_json(orjson.loads(line))) for line in path.open("rb"))
    return b"".join(orjson.dumps(obj) + b"\n" for obj in objs)


def stepcare(
    *args: str | Path, stdin: bytes | None = None, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess:
    env = {**os.environ, "STEPCARE_PSEUDONYM_SECRET": SECRET, "PYTHONPATH": str(REPO)}
    env.pop("STEPCARE_PSEUDONYM_SECRET_FILE", None)
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *map(str, args)],
        input=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def one_line(done: subprocess.CompletedProcess) -> str:
    """The one line of a failed run (exit 2, one line on stderr, no traceback)."""
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.startswith("stepcare: ") and err.count("\n") == 1, err
    return err.removeprefix("stepcare: ").removesuffix("\n")


@pytest.fixture
def log(tmp_path: Path) -> Path:
    copy = tmp_path / "log.jsonl"
    copy.write_bytes(EXAMPLE.read_bytes())
    return copy


# -- the same file as input and output -------------------------------------------------------------


def _hard_link(path: Path, name: str) -> Path:
    link = path.with_name(name)
    os.link(path, link)
    return link


def _symlink(path: Path, name: str) -> Path:
    link = path.with_name(name)
    link.symlink_to(path.name)
    return link


SAME_FILE = {
    "replay --output L": (["replay", "--input", "{L}", "--output", "{L}"], lambda p: p),
    "replay --output symlink": (
        ["replay", "--input", "{L}", "--output", "{O}"],
        lambda p: _symlink(p, "link.jsonl"),
    ),
    "convert --output hard link": (
        ["convert", "--input", "{L}", "--output", "{O}"],
        lambda p: _hard_link(p, "hard.jsonl"),
    ),
    "compare --csv L": (
        ["compare", "--input", "{L}", "--policy", "early-pc", "--csv", "{L}"],
        lambda p: p,
    ),
    "explain --html hard link": (
        ["explain", "--input", "{L}", "--patient", "p-001", "--html", "{O}"],
        lambda p: _hard_link(p, "page.html"),
    ),
    "fhir-export --rejects L": (
        ["bridge", "fhir-export", "--input", "{L}", "--output", "{T}", "--rejects", "{L}"],
        lambda p: p,
    ),
}


@pytest.mark.attack(
    "replay/convert/compare/explain/bridge: an output that IS the input (name, hard link, symlink)",
    "exit 2, one line; the input unchanged",
)
@pytest.mark.parametrize("case", SAME_FILE)
def test_an_output_that_is_the_input_is_refused(case: str, log: Path) -> None:
    argv, other = SAME_FILE[case]
    output = other(log)
    names = {"L": log, "O": output, "T": log.with_name("out.ndjson")}
    before = log.read_bytes()
    done = stepcare(*(a.format(**names) for a in argv))
    assert one_line(done).endswith(f"is the same file as the input {log}: refusing to overwrite it")
    assert log.read_bytes() == before
    assert sorted(p.name for p in log.parent.iterdir()) == sorted({log.name, output.name})


def test_stdin_that_is_the_output_file_is_refused(log: Path) -> None:
    before = log.read_bytes()
    with log.open("rb") as stdin:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "replay",
                "--input",
                "-",
                "--output",
                str(log),
            ],
            stdin=stdin,
            capture_output=True,
            cwd=REPO,
            timeout=60,
        )
    assert one_line(done) == f"{log} is the same file as the input stdin: refusing to overwrite it"
    assert log.read_bytes() == before


@pytest.mark.parametrize(
    "argv",
    [
        ["bridge", "fhir-export", "--input", "{E}", "--output", "{T}/x", "--rejects", "{T}/x"],
        ["compare", "--input", "{L}", "--policy", "early-pc", "--csv", "{T}/x", "--png", "{T}/x"],
    ],
    ids=["fhir-export --output X --rejects X", "compare --csv X --png X"],
)
def test_two_outputs_that_are_one_file_are_refused(argv: list[str], log: Path) -> None:
    names = {"E": ESCALATIONS, "L": log, "T": log.parent}
    done = stepcare(*(a.format(**names) for a in argv))
    x = log.parent / "x"
    assert one_line(done) == f"{x} and {x} are the same file: one output each"
    assert sorted(p.name for p in log.parent.iterdir()) == ["log.jsonl"]


# -- an input that cannot be read leaves the previous output alone ---------------------------------

MISSING_INPUT = {
    "replay": ["replay", "--input", "{M}", "--output", "{P}"],
    "convert": ["convert", "--input", "{M}", "--output", "{P}"],
    "compare --csv": ["compare", "--input", "{M}", "--policy", "early-pc", "--csv", "{P}"],
    "explain --png": ["explain", "--input", "{M}", "--patient", "p-1", "--png", "{P}"],
    "hl7-import": ["bridge", "hl7-import", "--input", "{M}", "--output", "{P}"],
    "fhir-import": ["bridge", "fhir-import", "--input", "{M}", "--output", "{P}"],
    "fhir-export": ["bridge", "fhir-export", "--input", "{M}", "--output", "{P}"],
}


@pytest.mark.attack(
    "an --input typo beside the previous --output (bridge hl7-import, replay, convert ...)",
    "exit 2, 'cannot read' in one line; the old output unchanged",
)
@pytest.mark.parametrize("command", MISSING_INPUT)
def test_a_missing_input_never_truncates_the_output(command: str, tmp_path: Path) -> None:
    previous = tmp_path / "prev.jsonl"
    previous.write_bytes(EXAMPLE.read_bytes())
    names = {"M": tmp_path / "typo.jsonl", "P": previous}
    done = stepcare(*(a.format(**names) for a in MISSING_INPUT[command]))
    assert one_line(done).startswith(f"cannot read {tmp_path / 'typo.jsonl'}")
    assert previous.read_bytes() == EXAMPLE.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prev.jsonl"]


# -- atomic outputs --------------------------------------------------------------------------------

BAD_LINE = b'{"event_id": "x", "type": "NO_SUCH_TYPE"}\n'


@pytest.mark.attack(
    "a run that fails half-way (--strict, bad line 20) over an existing output",
    "exit 2; the previous output byte for byte; no temporary file left",
)
@pytest.mark.parametrize("command", ["replay", "convert", "fhir-export"])
def test_a_failed_run_leaves_the_previous_output_as_it_was(command: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    good = (ESCALATIONS if command == "fhir-export" else EXAMPLE).read_bytes().splitlines(True)
    source.write_bytes(b"".join(good[:19]) + BAD_LINE + b"".join(good[19:]))
    previous = tmp_path / "prev.jsonl"
    previous.write_bytes(b"the previous output\n")
    argv = ["bridge", command] if command == "fhir-export" else [command]
    done = stepcare(*argv, "--input", source, "--output", previous, "--strict")
    assert done.returncode == 2 and b"Traceback" not in done.stderr
    assert previous.read_bytes() == b"the previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "prev.jsonl"]


def test_a_successful_run_replaces_the_output_keeping_its_mode(log: Path) -> None:
    out = log.with_name("out.jsonl")
    out.write_bytes(b"old\n")
    out.chmod(0o640)
    link = _symlink(out, "link.jsonl")
    done = stepcare("convert", "--input", log, "--output", link)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == canonical(EXAMPLE) and link.is_symlink()
    assert out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in log.parent.iterdir()) == ["link.jsonl", "log.jsonl", "out.jsonl"]


# -- a full disk -----------------------------------------------------------------------------------

WRITERS = {
    "replay": (["replay", "--input", EXAMPLE], "stdout"),
    "replay --output": (["replay", "--input", EXAMPLE, "--output", "/dev/full"], "/dev/full"),
    "score": (["score", "-"], "stdout"),
    "convert": (["convert", "--input", EXAMPLE, "--output", "-"], "stdout"),
    "convert --output": (
        ["convert", "--input", EXAMPLE, "--output", "/dev/full", "--format", "avro"],
        "/dev/full",
    ),
    "simulate": (["simulate", "--patients", "3"], "stdout"),
    "simulate --output": (
        ["simulate", "--patients", "3", "--output", "/dev/full", "--format", "jsonl"],
        "/dev/full",
    ),
    "compare": (["compare", "--input", EXAMPLE, "--policy", "early-pc"], "stdout"),
    "compare --csv": (
        ["compare", "--input", EXAMPLE, "--policy", "early-pc", "--csv", "/dev/full"],
        "/dev/full",
    ),
    "explain": (["explain", "--input", EXAMPLE, "--patient", "p-001"], "stdout"),
    "explain --html": (
        ["explain", "--input", EXAMPLE, "--patient", "p-001", "--html", "/dev/full"],
        "/dev/full",
    ),
    "fhir-import": (
        ["bridge", "fhir-import", "--input", FHIR / "qr-complete.json", "--output", "/dev/full"],
        "/dev/full",
    ),
    "hl7-import": (
        ["bridge", "hl7-import", "--input", HL7 / "adt-a01.hl7", "--output", "-"],
        "stdout",
    ),
    "fhir-export": (
        ["bridge", "fhir-export", "--input", ESCALATIONS, "--output", "/dev/full"],
        "/dev/full",
    ),
    "questionnaire": (["bridge", "questionnaire"], "stdout"),
    "demo cohort": (["demo", "cohort", "--patients", "3", "--output", "/dev/full"], "/dev/full"),
    "settings": (["settings"], "stdout"),
}


@pytest.mark.attack(
    "every command that writes, writing to a full disk (/dev/full)",
    "exit 2, 'cannot write X: No space left on device', no traceback",
)
@pytest.mark.parametrize("command", WRITERS)
def test_a_full_disk_is_one_line_in_every_command(command: str) -> None:
    argv, where = WRITERS[command]
    stdin = b'{"GP1": 1}' if argv[0] == "score" else None
    with open("/dev/full" if where == "stdout" else os.devnull, "wb") as out:
        done = stepcare(*argv, stdin=stdin, stdout=out.fileno())
    assert one_line(done) == f"cannot write {where}: {FULL}"


@pytest.mark.attack(
    "stdout closed by its reader (stepcare simulate | head -c 100)",
    "quiet exit 141, as SIGPIPE ends a process; no traceback, no message",
)
def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = stepcare("simulate", "--patients", "50", "--seed", "1", stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, b"")


# -- one reader for every command ------------------------------------------------------------------


def _truncated_container(tmp_path: Path) -> Path:
    events = [orjson.loads(line) for line in EXAMPLE.read_bytes().splitlines()] * 40
    whole = tmp_path / "whole.avro"
    write_avro_log(whole, events)
    cut = tmp_path / "cut.avro"
    cut.write_bytes(whole.read_bytes()[:-300])
    return cut


@pytest.mark.attack(
    "a truncated Avro log given to replay, compare, convert, explain",
    "exit 2, one line naming the damaged record, in every command",
)
@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "--input", "{C}", "--output", "{T}/out.jsonl"],
        ["compare", "--input", "{C}", "--policy", "early-pc"],
        ["convert", "--input", "{C}", "--output", "{T}/out.jsonl"],
        ["explain", "--input", "{C}", "--patient", "p-001"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_damaged_container_is_exit_2_in_every_reader(argv: list[str], tmp_path: Path) -> None:
    cut = _truncated_container(tmp_path)
    done = stepcare(*(a.format(C=cut, T=tmp_path) for a in argv))
    line = one_line(done)
    assert line.startswith(f"{cut}: record ") and "corrupt Avro data" in line
    assert done.stdout == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.avro", "whole.avro"]


def _with_a_latin1_line(tmp_path: Path) -> Path:
    lines = EXAMPLE.read_bytes().splitlines(True)
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(lines[0] + b'{"event_id": "e-\xe9"}\n' + b"".join(lines[1:]))
    return bad


@pytest.mark.attack(
    "a log with one Latin-1 (non-UTF-8) byte given to convert, explain, compare",
    "that line rejected (number, reason); the rest read; exit 0",
)
@pytest.mark.parametrize("command", ["convert", "explain", "compare", "replay"])
def test_a_line_that_is_not_utf8_is_rejected_and_the_rest_read(
    command: str, tmp_path: Path
) -> None:
    bad = _with_a_latin1_line(tmp_path)
    reason = "not UTF-8 text (byte 17 of the line)"
    if command == "convert":
        out = tmp_path / "out.jsonl"
        done = stepcare("convert", "--input", bad, "--output", out)
        assert done.returncode == 0, done.stderr
        err = done.stderr.decode().splitlines()
        assert err[0] == f"record 2: {reason}"
        assert err[1].startswith("converted 24 records (jsonl -> jsonl)") and "1 rejected" in err[1]
        assert out.read_bytes() == canonical(EXAMPLE)
    elif command == "compare":
        done = stepcare("compare", "--input", bad, "--policy", "step-pc-2024")
        assert done.returncode == 0, done.stderr
        assert done.stderr.decode().splitlines()[0] == f"{bad}: record 2: {reason}"
        assert "24 (1)" in done.stdout.decode()  # events (rejected)
    elif command == "explain":
        done = stepcare("explain", "--input", bad, "--patient", "p-001")
        assert done.returncode == 0, done.stderr
        clean = stepcare("explain", "--input", EXAMPLE, "--patient", "p-001")
        assert done.stdout.splitlines()[:-1] == clean.stdout.splitlines()
        assert done.stdout.splitlines()[-1].startswith(b"1 rejected line(s) of the log")
    else:
        done = stepcare("replay", "--input", bad)
        assert done.returncode == 0 and done.stderr.decode().startswith(f"line 2: {reason}\n")
        assert done.stdout == ESCALATIONS.read_bytes()


SEPARATORS = ["\u2028", "\u2029", "\u0085"]


@pytest.mark.attack(
    "score a form with a raw U+2028/U+2029/U+0085 inside a JSON string",
    "one object, one score: lines end at \\n only",
)
@pytest.mark.parametrize("separator", SEPARATORS, ids=["U+2028", "U+2029", "U+0085"])
def test_score_splits_lines_on_newline_only(separator: str, tmp_path: Path) -> None:
    responses = {code: 2 for code in ("GP1", "GP2", "GS1", "GE1", "GF1", "L1")}
    form = {
        "event_id": f"e{separator}1",
        "type": "SURVEY_SUBMITTED",
        "survey": {"instrument": "FACT-L", "responses": responses},
    }
    line = orjson.dumps(form)  # orjson writes these characters raw (UTF-8), not escaped
    assert separator.encode() in line
    source = tmp_path / "forms.jsonl"
    source.write_bytes(line + b"\n" + line + b"\n")
    done = stepcare("score", source)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    one = stepcare("score", "-", stdin=line)  # one line alone: one document
    assert one.returncode == 0 and one.stdout == done.stdout.splitlines(True)[0]


@pytest.mark.parametrize("separator", SEPARATORS, ids=["U+2028", "U+2029", "U+0085"])
def test_every_jsonl_reader_splits_on_newline_only(separator: str, tmp_path: Path) -> None:
    events = [orjson.loads(line) for line in EXAMPLE.read_bytes().splitlines()]
    events[0]["source"] = f"ehr{separator}feed"
    source = tmp_path / "log.jsonl"
    source.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    done = stepcare("replay", "--input", source)
    assert done.returncode == 0 and "0 rejected" in done.stderr.decode()
    out = tmp_path / "out.jsonl"
    done = stepcare("convert", "--input", source, "--output", out)
    assert done.returncode == 0 and out.read_bytes() == source.read_bytes()
    done = stepcare("explain", "--input", source, "--patient", events[0]["patient_id"])
    assert done.returncode == 0 and b"rejected" not in done.stdout
    escalations = [orjson.loads(line) for line in ESCALATIONS.read_bytes().splitlines()]
    escalations[0]["reason"]["text"] += separator
    esc = tmp_path / "esc.jsonl"
    esc.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in escalations))
    done = stepcare("bridge", "fhir-export", "--input", esc, "--output", "-")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == len(escalations)


# -- bounded memory --------------------------------------------------------------------------------

MEMORY_LIMIT = 256 * 1024 * 1024  # address space of the command: far less than its input
INPUT_SIZE = 384  # MiB


def _limited(argv: list[str]) -> subprocess.CompletedProcess:
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
        "from streams.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "STEPCARE_PSEUDONYM_SECRET": SECRET, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, cwd=REPO, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """384 MiB of blank lines (1 MiB each): cheap to read as a stream, impossible to hold."""
    path = tmp_path_factory.mktemp("huge") / "huge.ndjson"
    line = b" " * (1024 * 1024 - 1) + b"\n"
    with path.open("wb") as fo:
        for _ in range(INPUT_SIZE):
            fo.write(line)
    yield path
    path.unlink()


@pytest.mark.attack(
    "score / hl7-import / fhir-import / fhir-export: an input larger than the memory allowed",
    "streamed: exit 0 under RLIMIT_AS 256 MiB",
)
@pytest.mark.parametrize(
    "argv",
    [
        ["score", "{H}"],
        ["bridge", "hl7-import", "--input", "{H}", "--output", "-"],
        ["bridge", "fhir-import", "--input", "{H}", "--output", "-"],
        ["bridge", "fhir-export", "--input", "{H}", "--output", "-"],
    ],
    ids=lambda argv: argv[1] if argv[0] == "bridge" else argv[0],
)
def test_inputs_are_streamed_not_held(argv: list[str], huge: Path) -> None:
    assert huge.stat().st_size > MEMORY_LIMIT
    done = _limited([a.format(H=huge) for a in argv])
    assert done.returncode == 0, done.stderr.decode()[-500:]
    assert done.stdout == b""


def test_the_memory_limit_is_real() -> None:
    """The limit of the test above stops a command that holds 384 MiB (so it can fail)."""
    code = (
        f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT},) * 2)\n"
        f"data = bytearray({INPUT_SIZE} * 1024 * 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 1 and b"MemoryError" in done.stderr
    assert resource.RLIMIT_AS  # the platform has it


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "MSH|^~\\&|A",
                "PID|1",
                "\r",
                "\n",
                "\r\n",
                "\x0b",
                "\x1c",
                " ",
                "BHS|",
                "EVN|A01",
                "é",
                "\xff",
                "x",
            ]
        ),
        max_size=40,
    ),
    st.integers(1, 9),
)
def test_hl7_files_split_as_a_stream_as_a_whole(parts: list[str], chunk: int) -> None:
    data = "".join(parts).encode("latin-1" if random.Random(len(parts)).random() < 0.3 else "utf-8")
    original = hl7._CHUNK
    hl7._CHUNK = chunk  # tiny reads: every boundary case of the stream
    try:
        assert list(hl7.split_file(io.BytesIO(data))) == list(hl7.split_messages(data))
    finally:
        hl7._CHUNK = original
