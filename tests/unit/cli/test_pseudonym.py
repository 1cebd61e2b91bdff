"""``stepcare pseudonym``: the ids the bridges give, a lookup table out, rejects counted by line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.cli import main
from streams.cli.pseudonym import MAX_LINE_BYTES, lines
from streams.interfaces import fhir, hl7
from streams.interfaces.pseudonym import SECRET_ENV, SECRET_FILE_ENV, Pseudonymizer
from tests.unit.interfaces.test_fhir import SECRET, sample

REPO = Path(__file__).resolve().parents[3]
SYSTEM = "urn:oid:2.999.1.1"  # the assigning authority of tests/data/hl7 (GHH&2.999.1.1&ISO)
# What the bridges give MRN-900417 of that system under the test secret (hl7-in, fhir-in).
ALPHA = "pt-9400c25b6cb65dde7525b615b02ae916"
FINGERPRINT = "ecc658fc"


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)


def run(
    tmp_path: Path, data: bytes, *options: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    path = tmp_path / "mrns.txt"
    path.write_bytes(data)
    status = main(["pseudonym", "--system", SYSTEM, "--input", str(path), *options])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_ids_are_those_of_the_hl7_and_fhir_bridges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pz = Pseudonymizer(SECRET)
    adt = hl7.adt_to_event((REPO / "tests/data/hl7/adt-a01.hl7").read_bytes(), pz)
    assert isinstance(adt, dict) and adt["patient_id"] == ALPHA
    response = sample("qr-complete.json")
    response["subject"] = {"identifier": {"system": SYSTEM, "value": "MRN-900417"}}
    assert fhir.questionnaire_response_to_event(response, pz)["patient_id"] == ALPHA

    status, out, err = run(tmp_path, b"MRN-900417\nMRN-1\n", capsys=capsys)
    assert status == 0
    assert out == f"MRN-900417\t{ALPHA}\nMRN-1\tpt-4f45aec93e168b276d4a24331f54df5a\n"
    assert err == f"stepcare pseudonym: 2 ids (pseudonym secret {FINGERPRINT})\n"


def test_ids_only_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(tmp_path, b"MRN-900417\r\n", "--ids-only", capsys=capsys)
    assert (status, out) == (0, ALPHA + "\n")
    status, out, _ = run(tmp_path, b"MRN-900417", "--json", capsys=capsys)
    assert status == 0 and orjson.loads(out) == {"mrn": "MRN-900417", "patient_id": ALPHA}
    assert out.count("\n") == 1


BAD = (
    b"MRN-900417\n"  # 1
    b"\n"  # 2 blank
    b"   \n"  # 3 blank
    b"MRN\t1\n"  # 4 control character
    b" MRN-2\n"  # 5 surrounding whitespace
    + b"9" * (MAX_LINE_BYTES + 1)
    + b"\n"  # 6 too long
    + b"\xff\xfe\n"  # 7 not UTF-8
    + b"MRN-\x1b[31m\n"  # 8 control character
    + b"MRN-900417\n"  # 9
)


def test_rejects_are_counted_by_line_in_one_line_never_echoed_and_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(tmp_path, BAD, capsys=capsys)
    assert status == 0
    assert out == f"MRN-900417\t{ALPHA}\n" * 2
    assert err == (
        f"stepcare pseudonym: 2 ids (pseudonym secret {FINGERPRINT}), 7 lines rejected "
        "(2 blank: lines 2, 3; 2 control character: lines 4, 8; 1 not UTF-8: line 7; "
        "1 surrounding whitespace: line 5; 1 too long: line 6)\n"
    )
    assert "MRN" not in err and "999" not in err


def test_strict_exits_2_after_writing_the_good_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(tmp_path, BAD, "--strict", "--ids-only", capsys=capsys)
    assert status == 2
    assert out == f"{ALPHA}\n{ALPHA}\n"
    assert err.startswith("stepcare: pseudonym: 2 ids (pseudonym secret ecc658fc), 7 lines")
    assert err.count("\n") == 1
    status, _, err = run(tmp_path, b"MRN-1\n", "--strict", capsys=capsys)
    assert status == 0 and err.count("\n") == 1


def test_many_rejects_name_the_first_ten_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(tmp_path, b"\n" * 25, capsys=capsys)
    assert (status, out) == (0, "")
    assert err.endswith(
        "0 ids (pseudonym secret ecc658fc), 25 lines rejected "
        "(25 blank: lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...)\n"
    )


@pytest.mark.parametrize(
    ("env", "options", "message"),
    [
        ({SECRET_ENV: ""}, [], "stepcare: no pseudonym secret: set STEPCARE_PSEUDONYM_SECRET_FILE"),
        ({SECRET_ENV: "short"}, [], "stepcare: STEPCARE_PSEUDONYM_SECRET: the pseudonym secret"),
        ({}, ["--input", "/nonexistent/mrns"], "stepcare: --input: cannot read /nonexistent"),
        ({}, ["--input", "/"], "stepcare: --input: cannot read /: Is a directory"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    env: dict[str, str],
    options: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["pseudonym", "--system", SYSTEM, *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message) and captured.err.count("\n") == 1


def test_a_system_with_a_bar_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pseudonym", "--system", "a|b"]) == 2
    assert capsys.readouterr().err == "stepcare: --system: a non-empty issuer without '|'\n"


def test_lines_are_read_in_bounded_pieces() -> None:
    """An over-long line is skipped in pieces, not held whole; the next line is still read."""
    huge = b"x" * (5 * 1024 * 1024)

    class Counting(io.BytesIO):
        largest = 0

        def readline(self, size: int | None = -1) -> bytes:
            line = super().readline(size)
            Counting.largest = max(Counting.largest, len(line))
            return line

    result = list(lines(Counting(huge + b"\nMRN-1")))
    assert [(n, v if isinstance(v, str) else v.reason) for n, v in result] == [
        (1, "too long"),
        (2, "MRN-1"),
    ]
    assert Counting.largest <= 1 << 16


def test_stdin_is_streamed_through_the_real_command() -> None:
    env = {**os.environ, SECRET_ENV: SECRET.decode(), "PYTHONPATH": str(REPO)}
    env.pop(SECRET_FILE_ENV, None)
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "pseudonym", "--system", SYSTEM, "--ids-only"],
        input=b"MRN-900417\n" * 3 + b"\n",
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == f"{ALPHA}\n".encode() * 3
    assert done.stderr == (
        b"stepcare pseudonym: 3 ids (pseudonym secret ecc658fc), 1 line rejected "
        b"(1 blank: line 4)\n"
    )
