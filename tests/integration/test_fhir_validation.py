"""What stepcare emits as FHIR, checked by the standard's validator (HAPI FHIR), not only by ours.

One JVM run validates the whole batch: the FACT-L Questionnaire (`stepcare bridge questionnaire`
and the shipped file), the CodeSystem of escalation kinds, the transaction Bundle of every
escalation of the example log (`stepcare bridge fhir-export`: every kind, a step-up that revokes
the request it replaces, a cancellation, the overdue Tasks), a Bundle whose patient is a logical
reference, every FHIR example under examples/ and the QuestionnaireResponses stepcare's tests
accept. Each must have no error at all; the warnings that remain are listed in the terminal
summary (docs/integration.md says why they are acceptable).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from streams.cli import main
from streams.clinical.escalations import Kind
from streams.devtools.fhir_validator import FhirValidator, Result
from streams.interfaces import fhir

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_ESCALATIONS = REPO / "examples" / "three-patients.escalations.jsonl"
QUESTIONNAIRE_FILE = REPO / "resources" / "fhir" / "fact-l-questionnaire.json"
CODE_SYSTEM_FILE = REPO / "resources" / "fhir" / "escalation-kind-codesystem.json"
# QuestionnaireResponses that stepcare turns into events (the others there are refused on purpose)
ACCEPTED_RESPONSES = ("qr-complete.json", "qr-partial.json")


def example_resources() -> dict[str, Any]:
    """Every FHIR resource under examples/: a .json file, or each line of an .ndjson file."""
    found: dict[str, Any] = {}
    for path in sorted((REPO / "examples").rglob("*.json")):
        if (
            isinstance(resource := json.loads(path.read_text()), dict)
            and "resourceType" in resource
        ):
            found[str(path.relative_to(REPO))] = path
    for path in sorted((REPO / "examples").rglob("*.ndjson")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            resource = json.loads(line)
            if isinstance(resource, dict) and "resourceType" in resource:
                found[f"{path.relative_to(REPO)}:{number}"] = resource
    return found


def errors(results: dict[str, Result], prefix: str) -> dict[str, list[str]]:
    """The errors of each result whose name starts with ``prefix`` (name -> messages)."""
    return {
        name: [str(e) for e in r.errors] for name, r in results.items() if name.startswith(prefix)
    }


@pytest.fixture(scope="module")
def escalations() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EXAMPLE_ESCALATIONS.read_text().splitlines()]


@pytest.fixture(scope="module")
def validated(
    fhir_validator: FhirValidator,
    escalations: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Result]:
    tmp = tmp_path_factory.mktemp("fhir-validation")
    questionnaire, bundles = tmp / "questionnaire.json", tmp / "bundles.ndjson"
    assert main(["bridge", "questionnaire", "--output", str(questionnaire)]) == 0
    export = [
        "bridge",
        "fhir-export",
        "--input",
        str(EXAMPLE_ESCALATIONS),
        "--output",
        str(bundles),
    ]
    assert main(export) == 0
    exported = [json.loads(line) for line in bundles.read_text().splitlines()]
    assert len(exported) == len(escalations)

    initial = escalations[0]
    by_identifier = fhir.escalation_to_bundle(
        initial, patient={"identifier": {"system": "urn:oid:2.999.1.1", "value": "p-001"}}
    )
    no_full_url = copy.deepcopy(exported[0])
    del no_full_url["entry"][0]["fullUrl"]
    items: dict[str, Any] = {
        "questionnaire: stepcare bridge questionnaire": questionnaire,
        "questionnaire: resources/fhir/fact-l-questionnaire.json": QUESTIONNAIRE_FILE,
        "code system: resources/fhir/escalation-kind-codesystem.json": CODE_SYSTEM_FILE,
        **{
            f"bundle: {e['kind']} {e['escalation_id']}": bundle
            for e, bundle in zip(escalations, exported, strict=True)
        },
        "bundle: the patient as a logical reference": by_identifier,
        **{f"example: {name}": item for name, item in example_resources().items()},
        **{f"response: {n}": REPO / "tests" / "data" / "fhir" / n for n in ACCEPTED_RESPONSES},
        "broken: a PUT entry without fullUrl": no_full_url,
    }
    results = dict(zip(items, fhir_validator.validate(items.values(), record=False), strict=True))
    fhir_validator.record(r for name, r in results.items() if not name.startswith("broken:"))
    return results


def test_the_questionnaire_and_the_code_system_are_valid_r4(validated: dict[str, Result]) -> None:
    assert errors(validated, "questionnaire:") | errors(validated, "code system:") == {
        "questionnaire: stepcare bridge questionnaire": [],
        "questionnaire: resources/fhir/fact-l-questionnaire.json": [],
        "code system: resources/fhir/escalation-kind-codesystem.json": [],
    }


def test_the_bundle_of_every_escalation_kind_is_valid_r4(
    validated: dict[str, Result], escalations: list[dict[str, Any]]
) -> None:
    assert {e["kind"] for e in escalations} == set(Kind)
    # what the log holds beyond one of each kind: a request revoked by the one replacing it
    # (PATCHes beside PUTs), a cancellation (PATCHes only), an overdue Task naming its request
    assert any(e["kind"] == "STEP_UP" and e.get("related_request_id") for e in escalations)
    assert any(e["kind"] == "VISIT_OVERDUE" and e.get("related_request_id") for e in escalations)
    found = errors(validated, "bundle:")
    assert len(found) == len(escalations) + 1
    assert found == {name: [] for name in found}


def test_the_example_fhir_inputs_are_valid_r4(validated: dict[str, Result]) -> None:
    found = errors(validated, "example:")
    if not found:
        pytest.skip("no FHIR resource under examples/")
    assert found == {name: [] for name in found}


def test_the_responses_stepcare_accepts_are_valid_against_the_questionnaire(
    validated: dict[str, Result],
) -> None:
    assert errors(validated, "response:") == {f"response: {n}": [] for n in ACCEPTED_RESPONSES}


def test_the_validator_finds_what_is_wrong(validated: dict[str, Result]) -> None:
    """The check is real: a PUT entry without fullUrl is an error (the one stepcare had)."""
    (broken,) = errors(validated, "broken:").values()
    assert broken == [
        "error: Bundle.entry[0]: Bundle entry missing fullUrl",
        "error: Bundle.entry[0].resource/*ServiceRequest/sr-3bddf662-69d8-5464-a9fc-08b050118cdf*/"
        ".subject: Relative Reference appears inside Bundle whose entry is missing a fullUrl",
    ]


def test_check_names_a_missing_file_in_one_line(
    fhir_validator: FhirValidator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fhir-validator", "check", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err == f"stepcare: {tmp_path / 'missing.json'}: no such file\n"
