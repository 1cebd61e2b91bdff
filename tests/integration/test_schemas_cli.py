"""``stepcare schemas register|check|list`` against a real schema registry (Apicurio, Confluent
API). Each test uses topics of its own (``topic_name``): the registry is shared by the session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from streams.cli import main
from streams.devtools.registry import free_port
from streams.formats import avro
from tests.integration.workers import REPO


@pytest.fixture
def topics(monkeypatch: pytest.MonkeyPatch, topic_name: str, schema_registry_url: str) -> str:
    """stepcare's topics for this test (``<topic_name>.in`` and ``.out``), the registry set."""
    monkeypatch.setenv("STEPCARE_INPUT_TOPIC", f"{topic_name}.in")
    monkeypatch.setenv("STEPCARE_ESCALATIONS_TOPIC", f"{topic_name}.out")
    monkeypatch.setenv("STEPCARE_SCHEMA_REGISTRY_URL", schema_registry_url)
    for name in ("USERNAME", "PASSWORD", "PASSWORD_FILE", "CAFILE", "CERTFILE", "KEYFILE"):
        monkeypatch.delenv(f"STEPCARE_SCHEMA_REGISTRY_{name}", raising=False)
    return topic_name


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["schemas", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def _latest(url: str, subject: str) -> tuple[int, int]:
    found = SchemaRegistryClient({"url": url}).get_latest_version(subject)
    return int(found.version or 0), int(found.schema_id or 0)


def _config(url: str, subject: str) -> Any:
    return SchemaRegistryClient({"url": url})._rest_client.get(f"config/{subject}")


def test_register_twice_gives_the_same_ids_and_sets_backward(
    topics: str, schema_registry_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, first, err = _run(["register"], capsys)
    assert (status, err) == (0, "")
    events, escalations = f"{topics}.in-value", f"{topics}.out-value"
    event_version, event_id = _latest(schema_registry_url, events)
    escalation_version, escalation_id = _latest(schema_registry_url, escalations)
    assert (event_version, escalation_version) == (1, 1)
    lines = [
        f"{events}: org.stepcare.PatientEvent schema id {event_id}, version 1",
        f"{escalations}: org.stepcare.Escalation schema id {escalation_id}, version 1",
    ]
    assert first == "".join(f"{line} (new)\n" for line in lines)
    assert _run(["register"], capsys) == (
        0, "".join(f"{line} (already registered)\n" for line in lines), ""
    )  # fmt: skip
    assert _latest(schema_registry_url, events) == (1, event_id)
    for subject in (events, escalations):
        assert _config(schema_registry_url, subject) == {"compatibilityLevel": "BACKWARD"}
    # the dead-letter topic carries raw bytes: no subject
    subjects = SchemaRegistryClient({"url": schema_registry_url}).get_subjects()
    assert sorted(s for s in subjects if s.startswith(f"{topics}.")) == [events, escalations]


def test_register_takes_the_registry_option_over_the_setting(
    topics: str, schema_registry_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("STEPCARE_SCHEMA_REGISTRY_URL", f"http://127.0.0.1:{free_port()}")
    status, out, err = _run(["register", "--registry", schema_registry_url], capsys)
    assert (status, err, len(out.splitlines())) == (0, "", 2)


SCHEMAS = [
    "schemas/org.stepcare.PatientEvent.avsc",
    "schemas/org.stepcare.Escalation.avsc",
    "schemas/released/org.stepcare.PatientEvent.v1.avsc",
    "schemas/released/org.stepcare.Escalation.v1.avsc",
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_repos_own_schemas_are_compatible(
    schema: str, topics: str, schema_registry_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    subject = f"{topics}.in-value" if "PatientEvent" in schema else f"{topics}.out-value"
    path = str(REPO / schema)
    assert _run(["check", path], capsys) == (
        0, f"compatible: {subject} has no schema yet ({path} would be its version 1)\n", ""
    )  # fmt: skip
    assert _run(["register"], capsys)[0] == 0
    _, schema_id = _latest(schema_registry_url, subject)
    assert _run(["check", path], capsys) == (
        0,
        f"compatible: {path} with {subject} version 1 (the latest, schema id {schema_id}; "
        "compatibility BACKWARD)\n",
        "",
    )


def _changed(tmp_path: Path, name: str, change: Any) -> str:
    schema = json.loads(json.dumps(avro.EVENT_CODEC.current.schema))
    change(schema)
    path = tmp_path / f"{name}.avsc"
    path.write_text(json.dumps(schema, indent=2))
    return str(path)


def _required_field(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "ward", "type": "string"})  # no default: old data lacks it


def _type_change(schema: dict[str, Any]) -> None:
    [field] = [f for f in schema["fields"] if f["name"] == "type"]
    field["type"] = "int"


def _optional_field(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "ward", "type": ["null", "string"], "default": None})


@pytest.mark.parametrize("change", [_required_field, _type_change], ids=lambda c: c.__name__)
def test_an_incompatible_change_exits_1_naming_the_subject_and_latest_version(
    change: Any, topics: str, schema_registry_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert _run(["register"], capsys)[0] == 0
    subject = f"{topics}.in-value"
    _, schema_id = _latest(schema_registry_url, subject)
    path = _changed(tmp_path, change.__name__, change)
    assert _run(["check", path], capsys) == (
        1,
        f"incompatible: {path} with {subject} version 1 (the latest, schema id {schema_id}; "
        "compatibility BACKWARD)\n",
        "",
    )
    # the same against an explicit subject or topic
    assert _run(["check", path, "--subject", subject], capsys)[0] == 1
    assert _run(["check", path, "--topic", f"{topics}.in"], capsys)[0] == 1


def test_an_optional_field_with_a_default_is_compatible(
    topics: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["register"], capsys)[0] == 0
    path = _changed(tmp_path, "optional", _optional_field)
    status, out, err = _run(["check", path], capsys)
    assert (status, err) == (0, "")
    assert out.startswith(f"compatible: {path} with {topics}.in-value version 1 (the latest")


def test_list_shows_stepcares_subjects_first_then_the_others(
    topics: str, schema_registry_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events, escalations = f"{topics}.in-value", f"{topics}.out-value"
    other = f"{topics}.other-value"
    status, out, _ = _run(["list"], capsys)
    assert status == 0
    assert [line.split()[:2] for line in out.splitlines()[:2]] == [
        [events, "-"],
        [escalations, "-"],
    ]
    assert out.splitlines()[0].endswith("  not registered (stepcare schemas register)")

    assert _run(["register"], capsys)[0] == 0
    client = SchemaRegistryClient({"url": schema_registry_url})
    other_id = client.register_schema(other, Schema('"string"', "AVRO"))
    _, event_id = _latest(schema_registry_url, events)
    _, escalation_id = _latest(schema_registry_url, escalations)

    status, out, err = _run(["list", "--json"], capsys)
    assert (status, err) == (0, "")
    listing = json.loads(out)
    assert listing["registry"] == schema_registry_url
    rows = listing["subjects"]
    assert rows[:2] == [
        {"subject": events, "stepcare": "input", "registered": True,
         "compatibility": "BACKWARD", "versions": [{"version": 1, "id": event_id}]},
        {"subject": escalations, "stepcare": "escalations", "registered": True,
         "compatibility": "BACKWARD", "versions": [{"version": 1, "id": escalation_id}]},
    ]  # fmt: skip
    others = [row["subject"] for row in rows[2:]]
    assert others == sorted(others) and other in others
    [row] = [row for row in rows if row["subject"] == other]
    assert row["stepcare"] is None and row["versions"] == [{"version": 1, "id": other_id}]

    status, out, err = _run(["list"], capsys)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == len(rows)
    # columns: the subject, padded; the compatibility level, padded; the versions and ids
    assert lines[0].split() == [events, "BACKWARD", "version", "1", "(id", f"{event_id})"]
    assert lines[1].split() == [escalations, "BACKWARD", "version", "1", "(id", f"{escalation_id})"]
    [line] = [line for line in lines if line.startswith(other + " ")]
    assert line.split()[-4:] == ["version", "1", "(id", f"{other_id})"]


@pytest.mark.parametrize(
    "argv", [["register"], ["list"], ["check", str(REPO / SCHEMAS[0])]], ids=lambda a: a[0]
)
def test_an_unreachable_registry_exits_2_with_one_line(
    argv: list[str], topics: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    status, out, err = _run([*argv, "--registry", url], capsys)
    assert (status, out) == (2, "")
    assert err.startswith(f"stepcare: schema registry {url}: ")
    assert err.endswith("ConnectError: [Errno 111] Connection refused\n")
    assert len(err.splitlines()) == 1
