"""HAPI FHIR's validator, the parts that need no JVM: results, the warning record, one-line
errors when Maven or javac is missing (tests/integration/test_fhir_validation.py runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools import fhir_validator
from streams.devtools.fhir_validator import FhirValidator, FhirValidatorError, Issue, Result

NARRATIVE = "Constraint failed: dom-6: 'A resource should have narrative'"
UNKNOWN = (
    "CodeSystem is unknown and can't be validated: https://x.example/cs for "
    "'https://x.example/cs#STEP_UP'"
)


def test_errors_are_errors_and_fatals_warnings_are_warnings() -> None:
    issues = (
        Issue("fatal", "Nope", "cannot be parsed"),
        Issue("error", "Bundle.entry[0]", "Bundle entry missing fullUrl"),
        Issue("warning", "Task", NARRATIVE),
        Issue("information", "Task", "noted"),
    )
    result = Result("Bundle/b-1", issues)
    assert result.errors == list(issues[:2])
    assert result.warnings == [issues[2]]
    assert str(issues[1]) == "error: Bundle.entry[0]: Bundle entry missing fullUrl"


def test_record_counts_warnings_with_ids_and_kind_codes_masked(tmp_path: Path) -> None:
    validator = FhirValidator(tmp_path)
    ids = ("3bddf662-69d8-5464-a9fc-08b050118cdf", "6c759a71-4283-5234-ac08-3ea2010bdb99")
    results = [
        Result("a", (Issue("warning", "Task", f"Entry 0 matches ServiceRequest/sr-{i}"),))
        for i in ids
    ] + [Result("b", (Issue("warning", "Task", UNKNOWN), Issue("error", "Task", "not counted")))]
    validator.record(results)
    assert validator.warnings == {
        "Entry 0 matches ServiceRequest/sr-<uuid>": 2,
        "CodeSystem is unknown and can't be validated: https://x.example/cs for "
        "'https://x.example/cs#<code>'": 1,
    }


def test_no_maven_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fhir_validator.shutil, "which", lambda name: None)
    with pytest.raises(FhirValidatorError) as caught:
        fhir_validator.fetch(tmp_path, report=lambda line: None)
    assert str(caught.value) == (
        "Maven (mvn) is needed to fetch the FHIR validator: apt-get install maven"
    )


def test_no_javac_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = fhir_validator.home(tmp_path.resolve()) / "libs"
    libs.mkdir(parents=True)
    (libs / ".complete").write_text("{}\n")  # as if fetched
    java = tmp_path / "jre" / "bin" / "java"  # a JRE: no javac beside java
    monkeypatch.setattr(fhir_validator, "find_java", lambda: str(java))
    monkeypatch.setattr(fhir_validator.shutil, "which", lambda name: None)
    with pytest.raises(FhirValidatorError) as caught:
        fhir_validator.compile_validator(tmp_path)
    assert str(caught.value) == (
        "javac (a JDK, not only a JRE) is needed: apt-get install openjdk-17-jdk-headless"
    )
