"""The Avro schemas in schemas/: compatible with every released version, both ways (DESIGN §3).

Producers in the field keep writing released versions and consumers keep reading with them, so
each current schema must read what every released version wrote (backward) and every released
version must read what the current one writes (forward). The checker is Apache Avro's own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from streams.formats import avro as avro_format
from streams.formats.avro import fingerprint

# The schemas the package reads (package data; in a checkout, a link to schemas/).
SCHEMA_DIR = Path(str(avro_format.SCHEMA_DIR))
RELEASED_DIR = Path(str(avro_format.RELEASED_DIR))

CURRENT = sorted(SCHEMA_DIR.glob("*.avsc"))
RELEASED = sorted(RELEASED_DIR.glob("*.avsc"))
RELEASED_NAME = re.compile(r"(?P<name>org\.stepcare\.\w+)\.v(?P<version>[1-9]\d*)\.avsc")

# A released version is frozen: producers in the field frame records with these fingerprints.
RELEASED_FINGERPRINTS = {
    "org.stepcare.PatientEvent.v1.avsc": "0ab1e41abb00a9c3",
    "org.stepcare.Escalation.v1.avsc": "dd77e6d04f83826b",
}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _compatible(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    return result.compatibility is SchemaCompatibilityType.compatible


def _pairs() -> list[tuple[Path, Path]]:
    pairs = []
    for released in RELEASED:
        match = RELEASED_NAME.fullmatch(released.name)
        assert match, f"{released.name}: released files are named <full name>.v<N>.avsc"
        pairs.append((SCHEMA_DIR / f"{match['name']}.avsc", released))
    return pairs


def test_there_are_the_two_schemas_and_each_has_a_released_version() -> None:
    assert [p.name for p in CURRENT] == [
        "org.stepcare.Escalation.avsc",
        "org.stepcare.PatientEvent.avsc",
    ]
    assert {current.name for current, _ in _pairs()} == {p.name for p in CURRENT}
    assert sorted(p.name for p in RELEASED) == sorted(RELEASED_FINGERPRINTS)


@pytest.mark.parametrize(("current", "released"), _pairs(), ids=lambda p: p.name)
def test_current_reads_what_a_released_version_wrote(current: Path, released: Path) -> None:
    assert _compatible(reader=_load(current), writer=_load(released))


@pytest.mark.parametrize(("current", "released"), _pairs(), ids=lambda p: p.name)
def test_a_released_version_reads_what_the_current_one_writes(
    current: Path, released: Path
) -> None:
    assert _compatible(reader=_load(released), writer=_load(current))


@pytest.mark.parametrize("path", RELEASED, ids=lambda p: p.name)
def test_released_versions_never_change(path: Path) -> None:
    assert fingerprint(_load(path)).hex() == RELEASED_FINGERPRINTS[path.name]


def test_fingerprints_tell_every_schema_version_apart() -> None:
    prints = {}
    for path in CURRENT + RELEASED:
        prints.setdefault(fingerprint(_load(path)), set()).add(_load(path)["name"])
    assert all(len(names) == 1 for names in prints.values())


# -- the checker catches what would break a consumer or a producer ---------------------------------


def _event() -> dict[str, Any]:
    return _load(SCHEMA_DIR / "org.stepcare.PatientEvent.avsc")


def test_a_new_field_without_default_breaks_backward_compatibility() -> None:
    new = _event()
    new["fields"].append({"name": "site", "type": "string"})

    assert not _compatible(reader=new, writer=_event())  # old records lack "site"
    assert _compatible(reader=_event(), writer=new)  # old readers skip it

    new["fields"][-1]["default"] = ""
    assert _compatible(reader=new, writer=_event())


def test_removing_a_field_without_default_breaks_forward_compatibility() -> None:
    new = _event()
    new["fields"] = [f for f in new["fields"] if f["name"] != "type"]

    assert not _compatible(reader=_event(), writer=new)  # old readers need "type"


def test_renaming_a_field_or_changing_its_type_breaks_compatibility() -> None:
    renamed, retyped = _event(), _event()
    renamed["fields"][0]["name"] = "id"
    retyped["fields"][2]["type"] = "string"  # occurred_at

    assert not _compatible(reader=renamed, writer=_event())
    assert not _compatible(reader=_event(), writer=renamed)
    assert not _compatible(reader=retyped, writer=_event())
    assert not _compatible(reader=_event(), writer=retyped)


# -- documentation and naming ---------------------------------------------------------------------


def _records(schema: Any) -> list[dict[str, Any]]:
    """Every record schema defined in ``schema`` (the top level and the nested ones)."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            found.append(schema)
            for f in schema["fields"]:
                found += _records(f["type"])
        for key in ("items", "values"):
            if key in schema:
                found += _records(schema[key])
    elif isinstance(schema, list):
        for branch in schema:
            found += _records(branch)
    return found


@pytest.mark.parametrize("path", CURRENT + RELEASED, ids=lambda p: p.name)
def test_every_named_type_is_in_the_org_stepcare_namespace(path: Path) -> None:
    schema = _load(path)
    assert schema["namespace"] == "org.stepcare"
    parsed = avro.schema.parse(json.dumps(schema))
    assert parsed.fullname == "org.stepcare." + schema["name"]
    assert path.name.startswith(parsed.fullname + ".")
    for record in _records(schema):  # nested records inherit the namespace
        assert "." not in record["name"]
        assert record.get("namespace", "org.stepcare") == "org.stepcare"


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: p.name)
def test_every_record_and_field_is_documented(path: Path) -> None:
    undocumented = [
        f"{record['name']}.{f['name']}"
        for record in _records(_load(path))
        for f in record["fields"]
        if not f.get("doc", "").strip()
    ]
    assert undocumented == []
    assert all(r.get("doc", "").strip() for r in _records(_load(path)))


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: p.name)
def test_every_optional_field_has_a_default_so_it_can_evolve(path: Path) -> None:
    for record in _records(_load(path)):
        for f in record["fields"]:
            if isinstance(f["type"], list) and "null" in f["type"]:
                assert f["type"][0] == "null" and f.get("default", 0) is None, f["name"]
