"""``stepcare schemas``: arguments and unusable input, each one line and exit 2, without a
registry (every error here comes before the first HTTP request; the registry itself is in
tests/integration/test_schemas_cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from streams.cli import main
from streams.cli.schemas import SCHEMA_FILE_LIMIT, subject_for
from streams.errors import UsageError
from streams.formats import avro
from streams.kafka.settings import Settings

# Nothing listens here: an error that came after a request would read differently.
NOWHERE = "http://127.0.0.1:9/apis/ccompat/v7"
PATIENT_EVENT = json.dumps(avro.EVENT_CODEC.current.schema)
NO_REGISTRY = (
    "stepcare: no schema registry: pass --registry URL or set STEPCARE_SCHEMA_REGISTRY_URL "
    "(for development, `stepcare registry start` runs one and prints its URL)\n"
)


@pytest.fixture(autouse=True)
def no_registry_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "USERNAME", "PASSWORD", "PASSWORD_FILE"):
        monkeypatch.delenv(f"STEPCARE_SCHEMA_REGISTRY_{name}", raising=False)
    monkeypatch.delenv("STEPCARE_WIRE_FORMAT", raising=False)
    monkeypatch.delenv("STEPCARE_INPUT_TOPIC", raising=False)
    monkeypatch.delenv("STEPCARE_ESCALATIONS_TOPIC", raising=False)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["schemas", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    "argv", [["register"], ["list"], ["list", "--json"], ["check", "x.avsc"]], ids=" ".join
)
def test_without_a_registry_url_every_action_says_how_to_get_one(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(argv, capsys) == (2, "", NO_REGISTRY)


def test_the_setting_is_the_default_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("STEPCARE_SCHEMA_REGISTRY_URL", NOWHERE)
    missing = tmp_path / "missing.avsc"
    assert _run(["check", str(missing)], capsys) == (
        2, "", f"stepcare: cannot read {missing}: No such file or directory\n"
    )  # fmt: skip


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http://user:secret@127.0.0.1:8081", "127.0.0.1:8081"]
)
def test_a_malformed_registry_option_is_one_line_naming_the_option(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = _run(["list", "--registry", url], capsys)
    assert (status, out) == (2, "")
    shown = "(not shown: it holds user info)" if "@" in url else repr(url)
    assert err == (
        f"stepcare: --registry {shown}: expected http(s)://host[:port][/path] (no user name or "
        "password in it: they are settings of their own)\n"
    )
    assert "secret" not in err


def _candidate(tmp_path: Path, content: bytes, name: str = "candidate.avsc") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{nope",
         "not JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
        (b"", "not JSON: Expecting value (line 1, column 1)"),
        (b"\xff\xfe{}", "not UTF-8 text (byte 1)"),
        (b'{"type": "record", "name": "Foo", "fields": [{"name": "a", "type": "Bar"}]}',
         "not an Avro schema fastavro can parse: UnknownType: Bar"),
        (b'{"type": "record", "name": "R", "fields": [{"name": "a"}]}',
         "not an Avro schema fastavro can parse: SchemaParseException: Record field 'a' is "
         "missing 'type'"),
        (b'{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int", '
         b'"default": "x"}]}',
         "not an Avro schema fastavro can parse: SchemaParseException: Default value <x> must "
         "match schema type: int"),
        (b'"no-such-type"', "not an Avro schema fastavro can parse: UnknownType: no-such-type"),
        (b"5",
         "not an Avro schema fastavro can parse: TypeError: argument of type 'int' is not "
         "iterable"),
    ],
)  # fmt: skip
def test_a_candidate_that_is_not_an_avro_schema_is_one_line_exit_2(
    content: bytes, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _candidate(tmp_path, content)
    assert _run(["check", path, "--registry", NOWHERE], capsys) == (
        2, "", f"stepcare: {path}: {why}\n"
    )  # fmt: skip


def test_a_directory_or_an_oversized_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["check", str(tmp_path), "--registry", NOWHERE], capsys) == (
        2, "", f"stepcare: cannot read {tmp_path}: Is a directory\n"
    )  # fmt: skip
    path = _candidate(tmp_path, b" " * (SCHEMA_FILE_LIMIT + 1))
    assert _run(["check", path, "--registry", NOWHERE], capsys) == (
        2, "", f"stepcare: {path}: more than {SCHEMA_FILE_LIMIT} bytes: not an Avro schema file\n"
    )  # fmt: skip


def test_a_schema_that_is_not_stepcares_needs_a_subject(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _candidate(tmp_path, b'{"type": "record", "name": "x.Foo", "fields": []}')
    assert _run(["check", path, "--registry", NOWHERE], capsys) == (
        2, "",
        f"stepcare: {path}: a schema named 'x.Foo' is not one of stepcare's: pass --subject "
        "SUBJECT or --topic TOPIC (PatientEvent -> stepcare.patient-events.v1-value, "
        "Escalation -> stepcare.escalations.v1-value)\n",
    )  # fmt: skip
    path = _candidate(tmp_path, b'"string"')
    status, _, err = _run(["check", path, "--registry", NOWHERE], capsys)
    assert status == 2
    assert err.startswith(f"stepcare: {path}: a schema without a name is not one of stepcare's")


def test_subject_and_topic_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["schemas", "check", "x.avsc", "--subject", "a", "--topic", "b"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "stepcare schemas check: error: argument --topic: not allowed with argument --subject"
    )


def _args(subject: str | None = None, topic: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(file="c.avsc", subject=subject, topic=topic)


def test_the_subject_is_guessed_from_the_schema_name_and_the_topic_settings() -> None:
    settings = Settings(input_topic="ward.in", escalations_topic="ward.out")
    event = avro.EVENT_CODEC.current.schema
    escalation = avro.ESCALATION_CODEC.current.schema
    assert subject_for(event, _args(), settings) == "ward.in-value"
    assert subject_for(escalation, _args(), settings) == "ward.out-value"
    # the short name decides: a team's copy in a namespace of its own is still a PatientEvent
    renamed = {**event, "name": "hospital.PatientEvent", "namespace": "ignored"}
    assert subject_for(renamed, _args(), settings) == "ward.in-value"
    assert subject_for(event, _args(subject="mine"), settings) == "mine"
    assert subject_for(event, _args(topic="other"), settings) == "other-value"
    for empty in (_args(subject=""), _args(topic="")):
        with pytest.raises(UsageError, match=r"^--subject/--topic: empty$"):
            subject_for(event, empty, settings)


def test_stepcares_own_schema_from_stdin_reaches_the_registry_step(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read and parsed from stdin, guessed, then refused only because nothing listens."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(PATIENT_EVENT))
    status, out, err = _run(["check", "-", "--registry", NOWHERE], capsys)
    assert (status, out) == (2, "")
    subject = "stepcare.patient-events.v1-value"
    assert err.startswith(f"stepcare: schema registry {NOWHERE}: {subject}: ")
    assert len(err.splitlines()) == 1
