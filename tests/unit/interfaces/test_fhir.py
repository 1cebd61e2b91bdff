"""FHIR: the FACT-L Questionnaire (codes only), QuestionnaireResponse -> PatientEvent, escalation
-> transaction Bundle, the offline commands, and a round trip through FHIR and HL7 v2 back to the
same escalations."""

from __future__ import annotations

import copy
import io
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.questionnaire import Questionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.analysis.replay import replay
from streams.cli import main
from streams.clinical.escalations import VISIT_REQUEST_KINDS, Kind, escalation_id
from streams.clinical.events import event_from_json, format_time, parse_time
from streams.clinical.policy import resolve_policy
from streams.clinical.scoring import ITEM_CODES
from streams.errors import AdapterError
from streams.interfaces import fhir, hl7
from streams.interfaces.pseudonym import SECRET_ENV, Pseudonymizer

REPO = Path(__file__).resolve().parents[3]
# The Questionnaire shipped in the repository for sites to load into their FHIR server.
QUESTIONNAIRE_FILE = REPO / "resources" / "fhir" / "fact-l-questionnaire.json"
DATA = REPO / "tests" / "data" / "fhir"
EXAMPLE = REPO / "examples" / "three-patients.jsonl"
EXAMPLE_ESCALATIONS = REPO / "examples" / "three-patients.escalations.jsonl"
SECRET = b"stepcare-test-secret-0123456789abcdef"
MRN_SYSTEM = "urn:oid:2.999.1.1"
# Every identifier the samples carry that must never reach an event.
SOURCE_IDS = (
    "MRN-900417",
    "MRN-900418",
    "PAT-900417",
    "PAT-900418",
    "QR-2024",
    "TESTPATIENT",
    "ALPHA",
    "hospital.example.org",
)


@pytest.fixture
def pz() -> Pseudonymizer:
    return Pseudonymizer(SECRET)


def sample(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def complete_responses() -> dict[str, int]:
    items = sample("qr-complete.json")["item"]
    return {item["linkId"]: item["answer"][0]["valueInteger"] for item in items}


# -- the Questionnaire ------------------------------------------------------------------------


def test_the_shipped_questionnaire_is_the_generated_one_and_valid_r4() -> None:
    assert QUESTIONNAIRE_FILE.read_bytes() == fhir.questionnaire_json()
    resource = json.loads(QUESTIONNAIRE_FILE.read_text())
    Questionnaire.model_validate(resource)
    assert resource["url"] == fhir.QUESTIONNAIRE_URL and resource["version"] == "4"
    assert resource["status"] == "active"


def test_the_shipped_code_system_is_the_generated_one_with_every_kind() -> None:
    code_system = REPO / "resources" / "fhir" / "escalation-kind-codesystem.json"
    assert code_system.read_bytes() == fhir.code_system_json()
    resource = json.loads(code_system.read_text())
    assert resource["url"] == fhir.ESCALATION_KIND_SYSTEM
    assert {c["code"]: c["display"] for c in resource["concept"]} == {
        str(kind): fhir.KIND_DISPLAY[kind] for kind in Kind
    }


def test_the_questionnaire_has_every_item_code_and_no_item_text() -> None:
    resource = json.loads(QUESTIONNAIRE_FILE.read_text())
    items = resource["item"]
    assert [item["linkId"] for item in items] == list(fhir.ITEM_ORDER)
    assert set(fhir.ITEM_ORDER) == ITEM_CODES and len(items) == 36
    for item in items:
        # The only text is the neutral label; nothing else that could hold wording.
        assert set(item) == {"linkId", "text", "type", "required", "answerOption"}
        assert item["text"] == f"FACT-L item {item['linkId']}"
        assert item["type"] == "integer"
        assert item["answerOption"] == [{"valueInteger": n} for n in range(5)]
    assert "prefix" not in json.dumps(resource)


# -- QuestionnaireResponse -> event -----------------------------------------------------------


def test_the_samples_are_valid_r4_question_responses() -> None:
    for name in ("qr-complete.json", "qr-partial.json", "qr-coding-groups.json"):
        QuestionnaireResponse.model_validate(sample(name))


def test_a_complete_response_maps_field_by_field(pz: Pseudonymizer) -> None:
    event = fhir.questionnaire_response_to_event(sample("qr-complete.json"), pz)
    assert event == {
        "event_id": "fhir-qr-"
        + pz.token("fhir", "|QuestionnaireResponse/QR-2024-0312-0007/_history/1"),
        "patient_id": pz.patient_id(MRN_SYSTEM, "MRN-900417"),
        "occurred_at": "2024-03-12T18:58:31Z",  # 14:58:31-04:00
        "type": "SURVEY_SUBMITTED",
        "source": "fhir",
        "survey": {"instrument": "FACT-L", "version": "4", "responses": complete_responses()},
    }
    assert list(event["survey"]["responses"]) == list(fhir.ITEM_ORDER)
    parsed = event_from_json(event)
    assert parsed.survey is not None and parsed.survey.scores.FACT_L is not None


def test_a_partial_response_keeps_missing_items_missing(pz: Pseudonymizer) -> None:
    resource = sample("qr-partial.json")
    event = fhir.questionnaire_response_to_event(
        resource, pz, fhir_base="https://fhir.hospital.example.org/r4/", source="pro-portal"
    )
    expected = {
        code: value
        for code, value in complete_responses().items()
        if code not in ("GS5", "GS6", "GS7", "L5")
    } | {"GS4": None, "GF7": None}
    assert event["survey"]["responses"] == {
        c: expected[c] for c in fhir.ITEM_ORDER if c in expected
    }
    assert event["occurred_at"] == "2024-04-26T07:12:00.250Z"
    assert event["source"] == "pro-portal"
    # Patient/PAT-900417 read against the server's base: the Patient URL is the system.
    assert event["patient_id"] == pz.patient_id(
        "https://fhir.hospital.example.org/r4/Patient", "PAT-900417"
    )
    assert event["event_id"] == "fhir-qr-" + pz.token(
        "fhir",
        "https://fhir.hospital.example.org/r4|QuestionnaireResponse/QR-2024-0426-0019/_history/3",
    )
    scores = event_from_json(event).survey.scores  # type: ignore[union-attr]
    assert scores.SWB is None and scores.FACT_L is None  # 3 of 7 SWB items: not scored, not 0


def test_value_coding_answers_in_groups_map_like_integers(pz: Pseudonymizer) -> None:
    event = fhir.questionnaire_response_to_event(sample("qr-coding-groups.json"), pz)
    assert event["survey"]["responses"] == complete_responses()
    assert event["occurred_at"] == "2024-06-07T08:00:00Z"
    assert event["patient_id"] == pz.patient_id(
        "https://fhir.hospital.example.org/r4/Patient", "PAT-900418"
    )
    assert event["event_id"] == "fhir-qr-" + pz.token(
        "fhir", "|QuestionnaireResponse/QR-2024-0607-0031/_history/1"
    )
    unversioned = {k: v for k, v in sample("qr-coding-groups.json").items() if k != "meta"}
    assert fhir.questionnaire_response_to_event(unversioned, pz)["event_id"] == (
        "fhir-qr-" + pz.token("fhir", "|QuestionnaireResponse/QR-2024-0607-0031")
    )  # no meta.versionId: the id alone


def test_relative_and_absolute_references_to_one_patient_agree(pz: Pseudonymizer) -> None:
    resource = sample("qr-coding-groups.json")
    absolute = fhir.questionnaire_response_to_event(resource, pz)
    resource["subject"] = {"reference": "Patient/PAT-900418/_history/4"}
    relative = fhir.questionnaire_response_to_event(
        resource, pz, fhir_base="https://fhir.hospital.example.org/r4"
    )
    assert relative["patient_id"] == absolute["patient_id"]


def test_the_identifier_wins_over_the_reference_so_feeds_agree(pz: Pseudonymizer) -> None:
    resource = sample("qr-complete.json")
    resource["subject"]["reference"] = "Patient/PAT-900417"
    event = fhir.questionnaire_response_to_event(resource, pz)
    assert event["patient_id"] == pz.patient_id(MRN_SYSTEM, "MRN-900417")
    adt = (REPO / "tests" / "data" / "hl7" / "adt-a01.hl7").read_text()
    assert hl7.adt_to_event(adt, pz)["patient_id"] == event["patient_id"]  # type: ignore[index]


def test_event_ids_follow_the_resource_version(pz: Pseudonymizer) -> None:
    resource = sample("qr-complete.json")
    first = fhir.questionnaire_response_to_event(resource, pz)["event_id"]
    assert fhir.questionnaire_response_to_event(copy.deepcopy(resource), pz)["event_id"] == first
    resource["meta"]["versionId"] = "2"
    assert fhir.questionnaire_response_to_event(resource, pz)["event_id"] != first
    other = Pseudonymizer(b"another-site-secret-0123456789abcdefgh")
    assert fhir.questionnaire_response_to_event(resource, other)["event_id"] != first


INVALID_SAMPLES = {
    "qr-amended.json": ("fhir-status-amended", "amended response corrects"),
    "qr-entered-in-error.json": ("fhir-status-entered-in-error", "entered in error"),
    "qr-in-progress.json": ("fhir-status-in-progress", "not finished"),
    "qr-wrong-resource-type.json": (
        "fhir-wrong-resource-type",
        "resourceType is not QuestionnaireResponse",
    ),
    "qr-answer-5.json": ("fhir-bad-answer", "item GE3: valueInteger is not a response 0-4"),
    "qr-unknown-linkid.json": ("fhir-unknown-item", "a linkId is not a FACT-L item code"),
    "qr-no-subject.json": ("fhir-missing-subject", "no subject"),
    "qr-authored-date-only.json": ("fhir-bad-authored", "needs a date, a time of day and an"),
}


@pytest.mark.parametrize("name", sorted(INVALID_SAMPLES))
def test_every_invalid_sample_is_refused_with_its_reason(name: str, pz: Pseudonymizer) -> None:
    reason, detail = INVALID_SAMPLES[name]
    with pytest.raises(AdapterError) as caught:
        fhir.questionnaire_response_to_event(sample(name), pz)
    assert caught.value.reason == reason
    assert detail in caught.value.detail
    assert not any(source in caught.value.detail for source in SOURCE_IDS)


def _with(**changes: Any) -> dict[str, Any]:
    resource = sample("qr-complete.json")
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


def _items(*items: dict[str, Any]) -> list[dict[str, Any]]:
    return list(items)


@pytest.mark.parametrize(
    ("resource", "reason", "detail"),
    [
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueInteger": "3"}]})),
         "fhir-bad-answer", "GP1: valueInteger is not a response 0-4"),
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueInteger": True}]})),
         "fhir-bad-answer", "GP1: valueInteger is not a response 0-4"),
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueInteger": -1}]})),
         "fhir-bad-answer", "GP1: valueInteger is not a response 0-4"),
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueDecimal": 2.0}]})),
         "fhir-bad-answer", "valueDecimal"),
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueCoding": {"code": "5"}}]})),
         "fhir-bad-answer", "valueCoding code is not 0-4"),
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueInteger": n} for n in (1, 2)]})),
         "fhir-bad-answer", "GP1 has 2 answers"),
        (_with(item=_items({"linkId": "GP1"}, {"linkId": "GP1"})),
         "fhir-bad-answer", "GP1 appears more than once"),
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueInteger": 2.5}]})),
         "fhir-bad-answer", "item.0.answer.0.valueInteger"),
        (_with(authored="2024-03-12T14:58:31-04:00:00"), "fhir-bad-authored", "authored"),
        (_with(subject={"reference": 17}), "fhir-bad-subject", "subject.reference"),
        (_with(status="stopped"), "fhir-status-stopped", "stopped"),
        (_with(status="final"), "fhir-invalid", "status is not a QuestionnaireResponse status"),
        (_with(id=None), "fhir-missing-id", "no id"),
        (_with(authored=None), "fhir-missing-authored", "no authored"),
        (_with(authored="2024-03-12T14:58-04:00"), "fhir-bad-authored", "has no seconds"),
        (_with(authored="2024-03-12T14:58:31"), "fhir-bad-authored", "offset"),
        (_with(subject={"identifier": {"value": "MRN-900417"}}),
         "fhir-bad-subject", "needs both a system and a value"),
        (_with(subject={"reference": "Group/cohort-7"}), "fhir-bad-subject", "names a Group"),
        (_with(subject={"reference": "#contained-patient"}), "fhir-bad-subject", "Patient/<id>"),
        (_with(questionnaire="http://example.org/Questionnaire/phq-9"),
         "fhir-unknown-questionnaire", "is not FACT-L version 4"),
        (_with(questionnaire=fhir.QUESTIONNAIRE_URL + "|3"),
         "fhir-unknown-questionnaire", "is not FACT-L version 4"),
        (_with(unknownElement=1), "fhir-invalid", "unknownElement"),
    ],
)  # fmt: skip
def test_malformed_responses_are_refused_with_a_reason(
    resource: dict[str, Any], reason: str, detail: str, pz: Pseudonymizer
) -> None:
    with pytest.raises(AdapterError) as caught:
        fhir.questionnaire_response_to_event(resource, pz)
    assert (caught.value.reason, detail in caught.value.detail) == (reason, True), caught.value
    assert "MRN-900417" not in caught.value.detail


def test_a_site_can_allow_its_own_questionnaire_canonical(pz: Pseudonymizer) -> None:
    url = "https://fhir.hospital.example.org/r4/Questionnaire/fact-l-local"
    event = fhir.questionnaire_response_to_event(
        _with(questionnaire=url), pz, questionnaires={url, fhir.QUESTIONNAIRE_URL}
    )
    assert event["type"] == "SURVEY_SUBMITTED"
    assert fhir.questionnaire_response_to_event(_with(questionnaire=None), pz)


def test_no_source_identifier_reaches_an_event(pz: Pseudonymizer) -> None:
    for name in ("qr-complete.json", "qr-partial.json", "qr-coding-groups.json"):
        text = json.dumps(fhir.questionnaire_response_to_event(sample(name), pz))
        assert not [source for source in SOURCE_IDS if source in text], name


# -- escalation -> Bundle ---------------------------------------------------------------------


def example_escalations() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EXAMPLE_ESCALATIONS.read_text().splitlines()]


def bundles_of(escalations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [fhir.escalation_to_bundle(escalation) for escalation in escalations]


def opened_before(escalations: list[dict[str, Any]], index: int) -> dict[str, Any]:
    """The last visit request opened for the patient of ``escalations[index]`` before it."""
    patient = escalations[index]["patient_id"]
    return [
        e for e in escalations[:index]
        if e["patient_id"] == patient and Kind(e["kind"]) in VISIT_REQUEST_KINDS
    ][-1]  # fmt: skip


def test_every_bundle_is_a_valid_r4_transaction_of_idempotent_entries() -> None:
    escalations = example_escalations()
    assert {e["kind"] for e in escalations} == set(Kind)  # the example covers every kind
    for escalation, bundle in zip(escalations, bundles_of(escalations), strict=True):
        Bundle.model_validate(bundle)
        assert bundle["type"] == "transaction"
        assert bundle["id"] == f"bundle-{escalation['escalation_id']}"
        for entry in bundle["entry"]:
            resource, request = entry["resource"], entry["request"]
            if request["method"] == "PUT":
                assert request["url"] == f"{resource['resourceType']}/{resource['id']}"
                # a fullUrl on every PUT (HAPI's validator errs without): the same in every Bundle
                name = f"{fhir.BASE_URL}/{request['url']}"
                assert entry["fullUrl"] == f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"
                assert resource["id"].endswith(escalation["escalation_id"])
            else:
                assert request["method"] == "PATCH" and resource["resourceType"] == "Parameters"


def test_a_visit_request_is_a_service_request_and_a_task() -> None:
    step_up = next(e for e in example_escalations() if e["kind"] == "STEP_UP")
    eid = step_up["escalation_id"]
    bundle = fhir.escalation_to_bundle(step_up)
    (sr_entry, task_entry, *_) = bundle["entry"]
    sr, task = sr_entry["resource"], task_entry["resource"]
    assert sr_entry["request"] == {"method": "PUT", "url": f"ServiceRequest/sr-{eid}"}
    assert sr["resourceType"] == "ServiceRequest" and sr["id"] == f"sr-{eid}"
    assert (sr["status"], sr["intent"]) == ("active", "order")
    assert sr["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{eid}"}]
    assert sr["code"]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "103735009",
         "display": "Palliative care (regime/therapy)"}
    ]  # fmt: skip
    assert sr["subject"] == {"reference": "Patient/p-001"}
    assert sr["occurrencePeriod"] == {"start": step_up["occurred_at"], "end": step_up["due_by"]}
    assert sr["authoredOn"] == step_up["occurred_at"]
    assert sr["reasonCode"] == [
        {
            "coding": [
                {"system": fhir.ESCALATION_KIND_SYSTEM, "code": "STEP_UP",
                 "display": fhir.KIND_DISPLAY[Kind.STEP_UP]}
            ],
            "text": step_up["reason"]["text"],
        }
    ]  # fmt: skip
    reason = step_up["reason"]
    assert sr["note"] == [
        {
            "time": step_up["occurred_at"],
            "text": f"FACT-L: baseline {reason['baseline']:.1f}, score {reason['score']:.1f}, "
            f"change {reason['change']:.1f}, threshold {reason['threshold']:.1f}. Care step 2. "
            f"Policy step-pc-2024 v1; trigger event {step_up['trigger_event_id']}.",
        }
    ]
    assert task_entry["request"] == {"method": "PUT", "url": f"Task/task-{eid}"}
    assert (task["status"], task["intent"]) == ("requested", "order")
    assert task["code"]["coding"][0]["code"] == "fulfill"
    assert task["focus"] == {"reference": f"ServiceRequest/sr-{eid}"}
    assert task["for"] == {"reference": "Patient/p-001"}
    assert task["restriction"] == {"period": sr["occurrencePeriod"]}
    assert task["description"] == reason["text"]


def test_overdue_kinds_are_worklist_tasks() -> None:
    escalations = example_escalations()
    bundles = dict(
        zip((e["escalation_id"] for e in escalations), bundles_of(escalations), strict=True)
    )
    for escalation in escalations:
        if escalation["kind"] not in ("VISIT_OVERDUE", "SURVEY_OVERDUE"):
            continue
        (entry,) = bundles[escalation["escalation_id"]]["entry"]
        task = entry["resource"]
        assert task["resourceType"] == "Task" and task["status"] == "requested"
        assert task["code"]["coding"][0]["code"] == escalation["kind"]
        assert task["restriction"]["period"] == {
            "start": escalation["occurred_at"],
            "end": escalation["due_by"],
        }
        if escalation["kind"] == "SURVEY_OVERDUE":
            assert task["input"][0]["valueCanonical"] == fhir.QUESTIONNAIRE_URL + "|4"
            assert "focus" not in task
        else:
            # the open request of the patient: the kind the text names, the related request
            opened = opened_before(escalations, escalations.index(escalation))
            assert opened["kind"] in escalation["reason"]["text"]
            assert escalation["related_request_id"] == opened["escalation_id"]
            assert task["focus"] == {"reference": f"ServiceRequest/sr-{opened['escalation_id']}"}


def test_a_cancellation_revokes_the_request_it_cancels() -> None:
    escalations = example_escalations()
    bundles = bundles_of(escalations)
    cancelled = 0
    for index, escalation in enumerate(escalations):
        if escalation["kind"] != "VISIT_REQUEST_CANCELLED":
            continue
        opened = opened_before(escalations, index)
        assert f"the open {opened['kind']} request is cancelled" in escalation["reason"]["text"]
        rid = opened["escalation_id"]
        assert escalation["related_request_id"] == rid
        sr_patch, task_patch = bundles[index]["entry"]
        assert sr_patch["request"] == {"method": "PATCH", "url": f"ServiceRequest/sr-{rid}"}
        assert task_patch["request"] == {"method": "PATCH", "url": f"Task/task-{rid}"}
        assert sr_patch["resource"]["parameter"][0]["part"] == [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "ServiceRequest.status"},
            {"name": "value", "valueCode": "revoked"},
        ]
        assert task_patch["resource"]["parameter"][0]["part"][2] == {
            "name": "value",
            "valueCode": "cancelled",
        }
        cancelled += 1
    assert cancelled == 2


def test_a_cancellation_needs_the_id_of_the_request() -> None:
    cancel = next(e for e in example_escalations() if e["kind"] == "VISIT_REQUEST_CANCELLED")
    unrelated = {k: v for k, v in cancel.items() if k != "related_request_id"}
    with pytest.raises(AdapterError) as caught:
        fhir.escalation_to_bundle(unrelated)
    assert caught.value.reason == "escalation-unknown-request"


def test_a_step_up_replaces_the_open_request() -> None:
    escalations = example_escalations()
    index, step_up = next((i, e) for i, e in enumerate(escalations) if e["kind"] == "STEP_UP")
    old = opened_before(escalations, index)["escalation_id"]
    assert step_up["related_request_id"] == old
    sr, task, sr_patch, task_patch = fhir.escalation_to_bundle(step_up)["entry"]
    assert sr["resource"]["replaces"] == [{"reference": f"ServiceRequest/sr-{old}"}]
    assert task["resource"]["focus"] == {
        "reference": f"ServiceRequest/sr-{step_up['escalation_id']}"
    }
    assert sr_patch["request"] == {"method": "PATCH", "url": f"ServiceRequest/sr-{old}"}
    assert sr_patch["resource"]["parameter"][0]["part"][2]["valueCode"] == "revoked"
    assert task_patch["request"] == {"method": "PATCH", "url": f"Task/task-{old}"}
    initial = escalations[0]
    assert "related_request_id" not in initial
    assert [e["request"]["method"] for e in fhir.escalation_to_bundle(initial)["entry"]] == [
        "PUT",
        "PUT",
    ]


def test_an_unknown_kind_is_put_aside() -> None:
    with pytest.raises(AdapterError) as caught:
        fhir.escalation_to_bundle({**example_escalations()[0], "kind": "NAP"})
    assert (caught.value.reason, caught.value.detail) == (
        "escalation-unknown-kind",
        "kind is not an escalation kind",
    )


def test_the_patient_reference_can_be_given() -> None:
    initial = example_escalations()[0]
    by_string = fhir.escalation_to_bundle(initial, patient="Patient/pt-0123")
    assert by_string["entry"][0]["resource"]["subject"] == {"reference": "Patient/pt-0123"}
    logical = {"identifier": {"system": "https://stepcare.example.org/pseudonym", "value": "p-001"}}
    by_identifier = fhir.escalation_to_bundle(initial, patient=logical)
    Bundle.model_validate(by_identifier)
    assert by_identifier["entry"][1]["resource"]["for"] == logical


def test_the_same_escalation_gives_the_same_bundle() -> None:
    initial = example_escalations()[0]
    assert fhir.escalation_to_bundle(initial) == fhir.escalation_to_bundle(copy.deepcopy(initial))


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"escalation_id": ""}, "escalation_id must be a non-empty string"),
        ({"occurred_at": "yesterday"}, "not RFC 3339"),
        ({"due_by": None}, "needs due_by"),
        ({"patient_id": "p 001"}, "not a FHIR id"),
        ({"related_request_id": "a b"}, "related_request_id cannot make a FHIR id"),
    ],
)
def test_an_invalid_escalation_is_refused(change: dict[str, Any], detail: str) -> None:
    with pytest.raises(AdapterError) as caught:
        fhir.escalation_to_bundle({**example_escalations()[0], **change})
    assert caught.value.reason == "escalation-invalid" and detail in caught.value.detail


# -- the commands -----------------------------------------------------------------------------


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    monkeypatch.delenv("STEPCARE_PSEUDONYM_SECRET_FILE", raising=False)


def test_fhir_import_writes_events_and_reports_rejects(
    secret: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rejects = tmp_path / "events.jsonl", tmp_path / "rejects.jsonl"
    code = main(["bridge", "fhir-import", "--input", str(DATA), "--output", str(out),
                 "--rejects", str(rejects)])  # fmt: skip
    assert code == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    for event in events:
        event_from_json(event)
    # complete, partial and coding, each twice (files, export.ndjson, search-bundle.json)
    assert len(events) == 6 and len({e["event_id"] for e in events}) == 3
    err = capsys.readouterr().err.splitlines()
    assert f"{DATA / 'export.ndjson'}:2: fhir-status-amended: an amended response" in err[0]
    assert any(line.startswith(f"{DATA / 'export.ndjson'}:3: not-json: ") for line in err)
    assert f"{DATA / 'search-bundle.json'}:1 entry 2: fhir-bad-answer: item GE3" in "\n".join(err)
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert {"file": str(DATA / "search-bundle.json"), "line": 1, "entry": 2,
            "reason": "fhir-bad-answer",
            "detail": "item GE3: valueInteger is not a response 0-4"} in records  # fmt: skip
    by_reason = sorted(r["reason"] for r in records)
    assert by_reason == sorted(
        [reason for reason, _ in INVALID_SAMPLES.values()]
        + ["fhir-status-amended", "not-json", "fhir-bad-answer"]
    )
    assert err[-1].startswith("fhir-import: 17 resources read, 6 written, 11 rejected (")
    text = out.read_text() + rejects.read_text()
    assert not [source for source in SOURCE_IDS if source in text]


def test_fhir_import_strict_stops_at_the_first_reject(
    secret: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bridge", "fhir-import", "--strict", "--input", str(DATA / "qr-amended.json"),
                 "--output", str(tmp_path / "e.jsonl")])  # fmt: skip
    assert code == 2
    assert "fhir-status-amended" in capsys.readouterr().err


def test_fhir_import_without_a_secret_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("STEPCARE_PSEUDONYM_SECRET_FILE", raising=False)
    code = main(["bridge", "fhir-import", "--input", str(DATA), "--output", str(tmp_path / "e")])
    assert code == 2
    assert "no pseudonym secret" in capsys.readouterr().err


def test_fhir_export_writes_one_valid_bundle_per_escalation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundles.ndjson"
    code = main(
        ["bridge", "fhir-export", "--input", str(EXAMPLE_ESCALATIONS), "--output", str(out)]
    )
    assert code == 0
    bundles = [json.loads(line) for line in out.read_text().splitlines()]
    assert bundles == bundles_of(example_escalations())
    for bundle in bundles:
        Bundle.model_validate(bundle)
    assert capsys.readouterr().err.startswith("fhir-export: 17 escalations read, 17 written, 0")


def test_the_questionnaire_command_writes_the_shipped_file(tmp_path: Path) -> None:
    out = tmp_path / "q.json"
    assert main(["bridge", "questionnaire", "--output", str(out)]) == 0
    assert out.read_bytes() == QUESTIONNAIRE_FILE.read_bytes()


# -- round trip: a cohort through FHIR and HL7 v2 gives the same escalations ------------------

OFFSETS = ("-04:00", "+01:00", "Z")


def as_questionnaire_response(event: dict[str, Any], index: int) -> dict[str, Any]:
    """A survey event as a hospital's FHIR server would hold it (ids are the source's)."""
    moment = parse_time(event["occurred_at"])
    offset = OFFSETS[index % len(OFFSETS)]
    hours = 0 if offset == "Z" else int(offset[:3])
    local = format_time(moment + hours * 3_600_000)[:-1]
    items: list[dict[str, Any]] = []
    for n, (code, value) in enumerate(event["survey"]["responses"].items()):
        if value is None:
            items.append({"linkId": code})
        elif n % 2:
            items.append({"linkId": code, "answer": [{"valueCoding": {"code": str(value)}}]})
        else:
            items.append({"linkId": code, "answer": [{"valueInteger": value}]})
    resource = {
        "resourceType": "QuestionnaireResponse",
        "id": f"QR-{event['event_id']}",
        "meta": {"versionId": "1"},
        "questionnaire": fhir.QUESTIONNAIRE_URL,
        "status": "completed",
        "subject": {"identifier": {"system": MRN_SYSTEM, "value": f"MRN-{event['patient_id']}"}},
        "authored": local + ("Z" if offset == "Z" else offset),
        "item": items,
    }
    QuestionnaireResponse.model_validate(resource)
    return resource


def as_adt(event: dict[str, Any]) -> str:
    """An admission or discharge as the hospital's ADT feed sends it (local time, -0400)."""
    trigger = "A01" if event["type"] == "HOSPITAL_ADMITTED" else "A03"
    local = format_time(parse_time(event["occurred_at"]) - 4 * 3_600_000)
    ts = re.sub(r"[-:TZ]", "", local) + "-0400"
    pv1 = ["PV1", "1", "I"] + [""] * 43
    pv1[44 if trigger == "A01" else 45] = ts
    return "\r".join([
        f"MSH|^~\\&|ADT|GHH|STEPCARE|GHH|{ts}||ADT^{trigger}^ADT_{trigger}|CTRL-{event['event_id']}|P|2.5.1",
        f"EVN|{trigger}|{ts}",
        f"PID|1||MRN-{event['patient_id']}^^^GHH&{MRN_SYSTEM[8:]}&ISO^MR||TESTPATIENT^{event['patient_id']}",
        "|".join(pv1),
    ]) + "\r"  # fmt: skip


def test_a_cohort_through_fhir_and_hl7_gives_the_same_escalations(pz: Pseudonymizer) -> None:
    original = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    converted: list[dict[str, Any]] = []
    event_ids: dict[str, str] = {}
    for index, event in enumerate(original):
        if event["type"] == "SURVEY_SUBMITTED":
            new = fhir.questionnaire_response_to_event(as_questionnaire_response(event, index), pz)
        elif event["type"] in ("HOSPITAL_ADMITTED", "HOSPITAL_DISCHARGED"):
            result = hl7.adt_to_event(hl7.mllp_frame(as_adt(event)), pz)
            assert isinstance(result, dict)
            new = result
        else:  # enrolment, treatment, visits, death: other feeds, same pseudonymous patient
            pid = pz.patient_id(MRN_SYSTEM, f"MRN-{event['patient_id']}")
            new = {**event, "patient_id": pid}
        assert new["type"] == event["type"] and new["occurred_at"] == event["occurred_at"]
        event_ids[event["event_id"]] = new["event_id"]
        converted.append(new)
    text = "\n".join(json.dumps(e) for e in converted)
    assert "MRN-" not in text and "CTRL-" not in text and "QR-" not in text
    patients = {f"p-00{n}": pz.patient_id(MRN_SYSTEM, f"MRN-p-00{n}") for n in (1, 2, 3)}
    assert {e["patient_id"] for e in converted} == set(patients.values())

    policy = resolve_policy(None)
    for until in (None, parse_time("2024-12-31T00:00:00Z")):
        expected_out, actual_out = io.StringIO(), io.StringIO()
        replay(map(json.dumps, original), policy, expected_out, until=until, rejects=io.StringIO())
        summary, _ = replay(
            map(json.dumps, converted), policy, actual_out, until=until, rejects=io.StringIO()
        )
        assert summary.rejected == 0 and summary.outcomes["duplicate"] == 1
        expected = [json.loads(line) for line in expected_out.getvalue().splitlines()]
        actual = [json.loads(line) for line in actual_out.getvalue().splitlines()]
        assert len(actual) == len(expected) >= 17
        escalation_ids: dict[str, str] = {}
        for want, got in zip(expected, actual, strict=True):
            patient = patients[want["patient_id"]]
            trigger = want["trigger_event_id"] and event_ids[want["trigger_event_id"]]
            mapped = {
                **want,
                "escalation_id": escalation_id(
                    patient, Kind(want["kind"]), trigger or want["occurred_at"], policy
                ),
                "patient_id": patient,
                "trigger_event_id": trigger,
            }
            if "related_request_id" in want:
                mapped["related_request_id"] = escalation_ids[want["related_request_id"]]
            escalation_ids[want["escalation_id"]] = mapped["escalation_id"]
            assert got == mapped


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 6), st.floats(allow_nan=False), st.text(max_size=8),
    st.just([]), st.just({}), st.just("2024-01-01T00:00:00Z"), st.just({"reference": "Patient/1"}),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_resource_breaks_the_adapter(data: st.DataObject) -> None:
    """Any damage to a resource gives an event or an AdapterError, never a crash."""
    resource: Any = sample("qr-coding-groups.json")
    for _ in range(data.draw(st.integers(1, 3))):
        node = resource
        while isinstance(node, dict | list) and node and data.draw(st.booleans()):
            key = data.draw(
                st.sampled_from(list(node) if isinstance(node, dict) else range(len(node)))
            )
            if not isinstance(node[key], dict | list) or not node[key]:
                break
            node = node[key]
        if isinstance(node, dict | list) and node:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            node[data.draw(st.sampled_from(keys))] = data.draw(JUNK)
    try:
        event = fhir.questionnaire_response_to_event(resource, Pseudonymizer(SECRET))
    except AdapterError as exc:
        assert exc.reason.startswith("fhir-")
    else:
        event_from_json(event)


@pytest.mark.attack(
    "QuestionnaireResponse with a bad answer or authored time",
    "dead letter names the item and the rule, not the value",
)
@pytest.mark.parametrize(
    ("resource", "value"),
    [
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueInteger": 31337}]})), "31337"),
        (_with(item=_items({"linkId": "GP1", "answer": [{"valueCoding": {"code": "7777"}}]})),
         "7777"),
        (_with(authored="2024-03-12T14:58-04:00"), "14:58"),
        (_with(authored="1999-12-31"), "1999"),
    ],
)  # fmt: skip
def test_a_dead_letter_detail_does_not_repeat_the_value(
    resource: dict[str, Any], value: str, pz: Pseudonymizer
) -> None:
    with pytest.raises(AdapterError) as caught:
        fhir.questionnaire_response_to_event(resource, pz)
    assert value not in caught.value.detail
