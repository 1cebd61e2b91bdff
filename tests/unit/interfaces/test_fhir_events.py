"""FHIR R4 resources of the other events (EpisodeOfCare, Encounter, Patient, MedicationRequest,
CarePlan) -> PatientEvents, the site's Questionnaire canonicals, the offline command and the live
converter; HL7 v2 deaths (A03 expired, A08). The samples are examples/fhir and examples/hl7."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.cli import main
from streams.clinical.events import event_from_json
from streams.errors import AdapterError
from streams.interfaces import fhir, hl7
from streams.interfaces.errors import Ignored
from streams.interfaces.fhir_events import FhirFeed, parse_coding, resource_to_event
from streams.interfaces.live import fhir_in_record
from streams.interfaces.pseudonym import SECRET_ENV, Pseudonymizer
from streams.kafka.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "fhir"
HL7_EXAMPLES = REPO / "examples" / "hl7"
SECRET = b"stepcare-test-secret-0123456789abcdef"
MRN_SYSTEM = "urn:oid:2.999.1.1"
SOURCE_IDS = ("MRN-9004", "EOC-2024", "ENC-PC", "ENC-IP", "MR-ONC", "CP-RT", "PAT-9004", "EXH-A0")


@pytest.fixture
def pz() -> Pseudonymizer:
    return Pseudonymizer(SECRET)


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def patient(pz: Pseudonymizer, value: str = "MRN-900417") -> str:
    return pz.patient_id(MRN_SYSTEM, value)


def event_id(pz: Pseudonymizer, prefix: str, name: str, kind: str, base: str = "") -> str:
    return prefix + pz.token("fhir", f"{base}|{name}|{kind}")


# -- one mapping each, exactly ------------------------------------------------------------------

MAPPED = [
    ("episode-of-care-active.json", "fhir-eoc-", "EpisodeOfCare/EOC-2024-0001", "ENROLLED",
     "2024-03-01T14:30:00Z", {"fhir_resource": "EpisodeOfCare"}),
    ("episode-of-care-finished.json", "fhir-eoc-", "EpisodeOfCare/EOC-2024-0001", "DISENROLLED",
     "2024-08-20T16:00:00Z", {"fhir_resource": "EpisodeOfCare", "fhir_status": "finished"}),
    ("encounter-palliative-visit.json", "fhir-enc-", "Encounter/ENC-PC-0001",
     "PALLIATIVE_VISIT_COMPLETED", "2024-03-20T14:45:00Z",
     {"fhir_resource": "Encounter", "encounter_class": "AMB"}),
    ("encounter-inpatient-admitted.json", "fhir-enc-", "Encounter/ENC-IP-0001",
     "HOSPITAL_ADMITTED", "2024-05-03T02:10:00Z",
     {"fhir_resource": "Encounter", "encounter_class": "IMP"}),
    ("encounter-inpatient-discharged.json", "fhir-enc-", "Encounter/ENC-IP-0001",
     "HOSPITAL_DISCHARGED", "2024-05-06T15:30:00Z",
     {"fhir_resource": "Encounter", "encounter_class": "IMP"}),
    ("medication-request-new-line.json", "fhir-medreq-", "MedicationRequest/MR-ONC-0001",
     "TREATMENT_CHANGED", "2024-06-03T18:00:00Z", {"fhir_resource": "MedicationRequest"}),
    ("care-plan-radiotherapy.json", "fhir-cp-", "CarePlan/CP-RT-0001", "TREATMENT_CHANGED",
     "2024-07-01T12:00:00Z", {"fhir_resource": "CarePlan"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "prefix", "resource", "kind", "at", "attributes"), MAPPED)
def test_each_resource_maps_to_its_event_exactly(
    name: str,
    prefix: str,
    resource: str,
    kind: str,
    at: str,
    attributes: dict[str, str],
    pz: Pseudonymizer,
) -> None:
    event = resource_to_event(example(name), pz)
    assert event == {
        "event_id": event_id(pz, prefix, resource, kind),
        "patient_id": patient(pz),
        "occurred_at": at,
        "type": kind,
        "source": "fhir",
        "attributes": attributes,
    }
    assert isinstance(event, dict)
    event_from_json(event)


def test_a_death_is_named_by_the_patient_id_or_by_its_mrn(pz: Pseudonymizer) -> None:
    resource = example("patient-deceased.json")
    by_id = resource_to_event(resource, pz, FhirFeed(fhir_base="https://fhir.example.org/r4/"))
    assert by_id == {
        "event_id": event_id(
            pz, "fhir-pat-", "Patient/PAT-900417", "DECEASED", "https://fhir.example.org/r4"
        ),
        "patient_id": pz.patient_id("https://fhir.example.org/r4/Patient", "PAT-900417"),
        "occurred_at": "2024-08-20T03:40:00Z",
        "type": "DECEASED",
        "source": "fhir",
        "attributes": {"fhir_resource": "Patient"},
    }
    by_mrn = resource_to_event(resource, pz, FhirFeed(patient_identifier_system=MRN_SYSTEM))
    assert isinstance(by_mrn, dict) and by_mrn["patient_id"] == patient(pz)
    # ... the patient the ADT feed names (PID-3 MRN-900417 of authority 2.999.1.1)
    adt = hl7.adt_to_event((HL7_EXAMPLES / "adt-a08-death.hl7").read_text(), pz)
    assert isinstance(adt, dict) and adt["patient_id"] == by_mrn["patient_id"]
    assert adt["occurred_at"] == by_mrn["occurred_at"]


def test_the_feed_source_and_a_relative_reference(pz: Pseudonymizer) -> None:
    resource = example("encounter-palliative-visit.json")
    resource["subject"] = {"reference": "Patient/PAT-900417"}
    feed = FhirFeed(fhir_base="https://fhir.example.org/r4", source="site-fhir")
    event = resource_to_event(resource, pz, feed)
    assert isinstance(event, dict)
    assert event["patient_id"] == pz.patient_id("https://fhir.example.org/r4/Patient", "PAT-900417")
    assert event["source"] == "site-fhir"
    assert event["event_id"] == event_id(pz, "fhir-enc-", "Encounter/ENC-PC-0001",
                                         "PALLIATIVE_VISIT_COMPLETED",
                                         "https://fhir.example.org/r4")  # fmt: skip


def test_one_transition_is_one_event_whatever_the_version(pz: Pseudonymizer) -> None:
    discharged = example("encounter-inpatient-discharged.json")
    first = resource_to_event(discharged, pz)
    discharged["meta"] = {"versionId": "3", "lastUpdated": "2024-05-07T08:00:00Z"}
    again = resource_to_event(discharged, pz)
    assert isinstance(first, dict) and first == again
    admitted = resource_to_event(example("encounter-inpatient-admitted.json"), pz)
    assert isinstance(admitted, dict) and admitted["event_id"] != first["event_id"]


def test_a_finished_inpatient_encounter_is_one_discharge_not_two_events(pz: Pseudonymizer) -> None:
    resource = example("encounter-inpatient-discharged.json")
    resource["serviceType"] = {"coding": [{"system": fhir.SNOMED, "code": "103735009"}]}
    event = resource_to_event(resource, pz)  # an inpatient palliative-care stay: a discharge
    assert isinstance(event, dict) and event["type"] == "HOSPITAL_DISCHARGED"
    for code in ("ACUTE", "NONAC"):
        resource["class"]["code"] = code
        event = resource_to_event(resource, pz)
        assert isinstance(event, dict) and event["attributes"]["encounter_class"] == code


def test_disenrolment_falls_back_to_last_updated(pz: Pseudonymizer) -> None:
    resource = example("episode-of-care-finished.json")
    del resource["period"]["end"]
    resource["status"] = "cancelled"
    event = resource_to_event(resource, pz)
    assert isinstance(event, dict)
    assert (event["type"], event["occurred_at"]) == ("DISENROLLED", "2024-08-20T16:00:00Z")
    assert event["attributes"]["fhir_status"] == "cancelled"


def test_a_visit_without_an_end_is_at_its_start(pz: Pseudonymizer) -> None:
    resource = example("encounter-palliative-visit.json")
    del resource["period"]["end"]
    resource["serviceType"], resource["type"] = (
        None,
        [{"coding": [{"system": fhir.SNOMED, "code": "103735009"}]}],
    )
    del resource["serviceType"]
    event = resource_to_event(resource, pz)
    assert isinstance(event, dict) and event["occurred_at"] == "2024-03-20T14:00:00Z"


def test_only_a_known_encounter_class_reaches_the_attributes(pz: Pseudonymizer) -> None:
    resource = example("encounter-palliative-visit.json")
    resource["class"] = {"system": "http://example.org/classes", "code": "MRN-900417"}
    event = resource_to_event(resource, pz)
    assert isinstance(event, dict) and event["attributes"] == {"fhir_resource": "Encounter"}


def test_a_care_plan_without_a_period_starts_when_created(pz: Pseudonymizer) -> None:
    resource = example("care-plan-radiotherapy.json")
    del resource["period"]
    event = resource_to_event(resource, pz)
    assert isinstance(event, dict) and event["occurred_at"] == "2024-06-25T19:00:00Z"


def test_an_atc_antineoplastic_or_a_site_code_marks_a_treatment(pz: Pseudonymizer) -> None:
    resource = example("medication-request-new-line.json")
    del resource["category"]
    for code in ("L01XC18", "L02BG04"):  # antineoplastic agents, endocrine therapy
        resource["medicationCodeableConcept"]["coding"][0]["code"] = code
        assert isinstance(resource_to_event(resource, pz), dict)
    resource["medicationCodeableConcept"]["coding"][0]["code"] = "N02AA01"  # morphine
    assert resource_to_event(resource, pz) == Ignored(
        "fhir-not-an-event", "MedicationRequest not a cancer treatment"
    )
    site = FhirFeed(treatment_codes=frozenset({parse_coding("http://example.org/rx|ONC")}))
    resource["category"] = [{"coding": [{"system": "http://example.org/rx", "code": "ONC"}]}]
    assert isinstance(resource_to_event(resource, pz, site), dict)


def test_the_palliative_program_codes_are_a_setting(pz: Pseudonymizer) -> None:
    resource = example("episode-of-care-active.json")
    resource["type"] = [{"coding": [{"system": "http://example.org/programs", "code": "PC"}]}]
    assert resource_to_event(resource, pz) == Ignored(
        "fhir-not-palliative", "EpisodeOfCare of another program"
    )
    site = FhirFeed(palliative_codes=frozenset({("http://example.org/programs", "PC")}))
    event = resource_to_event(resource, pz, site)
    assert isinstance(event, dict) and event["type"] == "ENROLLED"


def test_parse_coding() -> None:
    assert parse_coding("http://snomed.info/sct|103735009") == (
        "http://snomed.info/sct",
        "103735009",
    )
    for bad in ("103735009", "|1", "http://x|", "http://x y|1"):
        with pytest.raises(ValueError, match=r"is not SYSTEM\|CODE"):
            parse_coding(bad)


# -- valid resources that are no event ----------------------------------------------------------


def _edit(name: str, **changes: Any) -> dict[str, Any]:
    resource = example(name)
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


IGNORED = [
    *[(_edit("episode-of-care-active.json", status=s), "fhir-ignored-status",
       f"EpisodeOfCare status {s}")
      for s in ("planned", "waitlist", "onhold", "entered-in-error")],
    (_edit("encounter-inpatient-admitted.json", status="planned"), "fhir-ignored-status",
     "inpatient Encounter status planned"),
    (_edit("encounter-palliative-visit.json", status="in-progress"), "fhir-ignored-status",
     "palliative-care Encounter status in-progress"),
    (_edit("encounter-palliative-visit.json", serviceType=None), "fhir-not-an-event",
     "Encounter neither inpatient nor palliative care"),
    (_edit("patient-deceased.json", deceasedDateTime=None), "fhir-not-an-event",
     "Patient not deceased"),
    (_edit("patient-deceased.json", deceasedDateTime=None, deceasedBoolean=False),
     "fhir-not-an-event", "Patient not deceased"),
    (_edit("medication-request-new-line.json", status="completed"), "fhir-ignored-status",
     "MedicationRequest status completed"),
    (_edit("medication-request-new-line.json", intent="plan"), "fhir-ignored-status",
     "MedicationRequest intent plan"),
    (_edit("medication-request-new-line.json",
           priorPrescription={"reference": "MedicationRequest/MR-ONC-0000"}),
     "fhir-not-a-new-treatment", "MedicationRequest with priorPrescription"),
    (_edit("medication-request-new-line.json", basedOn=[{"reference": "CarePlan/CP-1"}]),
     "fhir-not-a-new-treatment", "MedicationRequest with basedOn"),
    (_edit("care-plan-radiotherapy.json", status="draft"), "fhir-ignored-status",
     "CarePlan status draft"),
    (_edit("care-plan-radiotherapy.json", intent="proposal"), "fhir-ignored-status",
     "CarePlan intent proposal"),
    (_edit("care-plan-radiotherapy.json", partOf=[{"reference": "CarePlan/CP-0"}]),
     "fhir-not-a-new-treatment", "CarePlan with partOf"),
    (_edit("care-plan-radiotherapy.json", category=None), "fhir-not-an-event",
     "CarePlan not a cancer treatment plan"),
]  # fmt: skip


@pytest.mark.parametrize(("resource", "reason", "detail"), IGNORED)
def test_valid_resources_that_are_no_event_are_ignored_with_a_reason(
    resource: dict[str, Any], reason: str, detail: str, pz: Pseudonymizer
) -> None:
    assert resource_to_event(resource, pz) == Ignored(reason, detail)


# -- refusals -----------------------------------------------------------------------------------


def _period(name: str, **period: Any) -> dict[str, Any]:
    return _edit(name, period=period)


WRONG_TYPE = "resourceType is not QuestionnaireResponse, EpisodeOfCare, Encounter, Patient"
REFUSED = [
    ({"resourceType": "Observation", "id": "x", "status": "final",
      "code": {"text": "x"}}, "fhir-wrong-resource-type", WRONG_TYPE),
    ({"id": "x"}, "fhir-wrong-resource-type", WRONG_TYPE),
    (_edit("episode-of-care-active.json", id=None), "fhir-missing-id", "EpisodeOfCare has no id"),
    (_edit("episode-of-care-active.json", patient=None), "fhir-invalid", "patient"),
    (_edit("encounter-palliative-visit.json", subject=None), "fhir-missing-subject",
     "subject (the patient) is missing"),
    (_edit("encounter-palliative-visit.json", subject={"reference": "Group/1"}),
     "fhir-bad-subject", "subject.reference must be Patient/<id>"),
    (_edit("encounter-palliative-visit.json", subject={"identifier": {"value": "MRN-1"}}),
     "fhir-bad-subject", "subject.identifier needs a system and a value"),
    (_period("episode-of-care-active.json"), "fhir-missing-time",
     "EpisodeOfCare.period.start is missing"),
    (_period("episode-of-care-active.json", start="2024-03-01"), "fhir-bad-time",
     "EpisodeOfCare.period.start needs a date, a time of day"),
    (_period("episode-of-care-active.json", start="2024-03-01T09:30:00"), "fhir-invalid",
     "period.start"),
    (_edit("episode-of-care-finished.json", period={"start": "2024-03-01T09:30:00Z"},
           meta=None), "fhir-missing-time", "EpisodeOfCare.period.end (or meta.lastUpdated)"),
    (_period("encounter-inpatient-admitted.json"), "fhir-missing-time",
     "Encounter.period.start is missing"),
    (_period("encounter-inpatient-discharged.json", start="2024-05-02T22:10:00-04:00"),
     "fhir-missing-time", "Encounter.period.end is missing"),
    (_period("encounter-palliative-visit.json"), "fhir-missing-time",
     "Encounter.period.end (or period.start) is missing"),
    (_edit("patient-deceased.json", deceasedDateTime=None, deceasedBoolean=True),
     "fhir-deceased-without-time", "deceasedBoolean is true without deceasedDateTime"),
    (_edit("patient-deceased.json", deceasedDateTime="2024-08-19"), "fhir-bad-time",
     "Patient.deceasedDateTime needs a date, a time of day"),
    (_edit("medication-request-new-line.json", authoredOn=None), "fhir-missing-time",
     "MedicationRequest.authoredOn is missing"),
    (_edit("care-plan-radiotherapy.json", period=None, created=None), "fhir-missing-time",
     "CarePlan.period.start (or created) is missing"),
    (_edit("encounter-palliative-visit.json", status=7), "fhir-invalid", "status"),
    (_edit("episode-of-care-active.json", status="MRN-900417"), "fhir-invalid",
     "status is not one of the EpisodeOfCare.status codes"),
    (_edit("encounter-palliative-visit.json", status="done"), "fhir-invalid",
     "status is not one of the Encounter.status codes"),
    (_edit("medication-request-new-line.json", intent="MRN-900417"), "fhir-invalid",
     "intent is not one of the MedicationRequest.intent codes"),
    (_edit("care-plan-radiotherapy.json", status="ok"), "fhir-invalid",
     "status is not one of the CarePlan.status codes"),
    (_edit("encounter-palliative-visit.json", period="2024"), "fhir-invalid", "period"),
    (_edit("care-plan-radiotherapy.json", category={"coding": []}), "fhir-invalid", "category"),
]  # fmt: skip


@pytest.mark.parametrize(("resource", "reason", "detail"), REFUSED)
def test_broken_resources_are_refused_with_a_reason(
    resource: dict[str, Any], reason: str, detail: str, pz: Pseudonymizer
) -> None:
    with pytest.raises(AdapterError) as caught:
        resource_to_event(resource, pz)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


def test_a_patient_without_the_configured_identifier_is_refused(pz: Pseudonymizer) -> None:
    feed = FhirFeed(patient_identifier_system="urn:oid:2.999.9.9")
    with pytest.raises(AdapterError) as caught:
        resource_to_event(example("patient-deceased.json"), pz, feed)
    assert (caught.value.reason, caught.value.detail) == (
        "fhir-bad-subject",
        "Patient.identifier has no value of the configured system",
    )


@pytest.mark.parametrize("value", [None, 3, "x", [], ["x"], 1.5, True])
def test_not_an_object_is_refused(value: Any, pz: Pseudonymizer) -> None:
    with pytest.raises(AdapterError) as caught:
        resource_to_event(value, pz)
    assert caught.value.reason == "fhir-invalid"


def test_hostile_resources_give_an_adapter_error(pz: Pseudonymizer) -> None:
    deep: Any = {"url": "http://example.org/x", "valueString": "x"}
    for _ in range(3000):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    huge = _edit("encounter-palliative-visit.json", serviceType=None)
    huge["type"] = [{"coding": [{"system": "s", "code": str(n)}]} for n in range(50_000)]
    wrong = example("episode-of-care-active.json")
    wrong["type"] = {"coding": "103735009"}
    cases = [
        {**example("episode-of-care-active.json"), "extension": [deep]},
        {**example("patient-deceased.json"), "deceasedDateTime": ["2024-08-19T23:40:00Z"]},
        {**example("medication-request-new-line.json"), "authoredOn": {"$date": 1}},
        {**example("encounter-palliative-visit.json"), "class": "AMB"},
        {**example("patient-deceased.json"), "id": "x" * 100_000},
        wrong,
    ]
    for resource in cases:
        with pytest.raises(AdapterError) as caught:
            resource_to_event(resource, pz)
        assert caught.value.reason.startswith("fhir-")
    # a long but valid list of other codings is no event, and no crash
    assert resource_to_event(huge, pz) == Ignored(
        "fhir-not-an-event", "Encounter neither inpatient nor palliative care"
    )


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 6), st.text(max_size=8), st.just([]), st.just({}),
    st.just("2024-01-01T00:00:00Z"), st.just({"reference": "Patient/1"}),
    st.just([{"coding": [{"system": fhir.SNOMED, "code": "103735009"}]}]),
)  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_no_damage_to_a_resource_breaks_the_adapter(data: st.DataObject) -> None:
    """Any damage gives an event, an Ignored or an AdapterError, never another exception."""
    name = data.draw(st.sampled_from(sorted(p.name for p in EXAMPLES.glob("*.json"))))
    resource: Any = example(name)
    for _ in range(data.draw(st.integers(1, 3))):
        node = resource
        while isinstance(node, dict | list) and node and data.draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = data.draw(st.sampled_from(keys))
            if not isinstance(node[key], dict | list) or not node[key]:
                break
            node = node[key]
        if isinstance(node, dict | list) and node:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            node[data.draw(st.sampled_from(keys))] = data.draw(JUNK)
    try:
        result = resource_to_event(resource, Pseudonymizer(SECRET))
    except AdapterError as exc:
        assert exc.reason.startswith("fhir-")
    else:
        if not isinstance(result, Ignored):
            event_from_json(result)


def test_no_source_identifier_reaches_an_event_or_a_detail(pz: Pseudonymizer) -> None:
    for path in EXAMPLES.glob("*.json"):
        text = json.dumps(resource_to_event(json.loads(path.read_text()), pz))
        assert not [s for s in SOURCE_IDS if s in text], path.name
    for resource, _, _ in REFUSED:
        try:
            resource_to_event(copy.deepcopy(resource), pz)
        except AdapterError as exc:
            assert not [s for s in SOURCE_IDS if s in exc.detail]


# -- QuestionnaireResponse through the same entry, and site canonicals -------------------------


def _response(canonical: str | None) -> dict[str, Any]:
    resource = json.loads((REPO / "tests" / "data" / "fhir" / "qr-complete.json").read_text())
    resource["questionnaire"] = canonical
    return resource


SITE = "https://fhir.hospital.example.org/Questionnaire/fact-l-site"


@pytest.mark.parametrize(
    ("allowed", "canonical", "accepted"),
    [
        ((fhir.QUESTIONNAIRE_URL,), fhir.QUESTIONNAIRE_URL, True),
        ((fhir.QUESTIONNAIRE_URL,), fhir.QUESTIONNAIRE_URL + "|4", True),
        ((fhir.QUESTIONNAIRE_URL,), fhir.QUESTIONNAIRE_URL + "|3", False),
        ((fhir.QUESTIONNAIRE_URL,), SITE, False),
        ((SITE,), SITE, True),
        ((SITE,), SITE + "|4", True),
        ((SITE,), fhir.QUESTIONNAIRE_URL, False),
        ((SITE + "|2.1",), SITE + "|2.1", True),
        ((SITE + "|2.1",), SITE, True),
        ((SITE + "|2.1",), SITE + "|4", False),
        ((SITE + "|2.1", fhir.QUESTIONNAIRE_URL), fhir.QUESTIONNAIRE_URL + "|4", True),
    ],
)
def test_site_questionnaire_canonicals(
    allowed: tuple[str, ...], canonical: str, accepted: bool, pz: Pseudonymizer
) -> None:
    feed = FhirFeed(questionnaires=allowed)
    if accepted:
        event = resource_to_event(_response(canonical), pz, feed)
        assert event == fhir.questionnaire_response_to_event(_response(None), pz)
    else:
        with pytest.raises(AdapterError) as caught:
            resource_to_event(_response(canonical), pz, feed)
        assert caught.value.reason == "fhir-unknown-questionnaire"


def test_the_questionnaire_setting_is_checked_when_read() -> None:
    assert Settings().fhir_questionnaire_urls == fhir.QUESTIONNAIRE_URL
    value = f"{SITE}|2.1, {fhir.QUESTIONNAIRE_URL}"
    assert Settings.from_env({"STEPCARE_FHIR_QUESTIONNAIRE_URLS": value})
    for bad in ("", "fact-l", f"{SITE}|", f"{SITE},", f"{SITE}|1|2", "http://x y"):
        with pytest.raises(SettingsError, match="STEPCARE_FHIR_QUESTIONNAIRE_URLS"):
            Settings.from_env({"STEPCARE_FHIR_QUESTIONNAIRE_URLS": bad})


# -- the offline command and the live converter -------------------------------------------------


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    monkeypatch.delenv("STEPCARE_PSEUDONYM_SECRET_FILE", raising=False)
    monkeypatch.delenv("STEPCARE_FHIR_QUESTIONNAIRE_URLS", raising=False)


def test_fhir_import_maps_every_example(
    secret: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], pz: Pseudonymizer
) -> None:
    feed = tmp_path / "feed.ndjson"
    lines = [json.dumps(json.loads(p.read_text())) for p in sorted(EXAMPLES.glob("*.json"))]
    lines += [
        json.dumps(_edit("episode-of-care-active.json", status="planned")),
        json.dumps(_edit("patient-deceased.json", deceasedDateTime=None, deceasedBoolean=True)),
        json.dumps(_response(SITE)),
    ]
    feed.write_text("\n".join(lines) + "\n")
    out, rejects = tmp_path / "events.jsonl", tmp_path / "rejects.jsonl"
    code = main(["bridge", "fhir-import", "--input", str(feed), "--output", str(out),
                 "--rejects", str(rejects), "--patient-identifier-system", MRN_SYSTEM])  # fmt: skip
    assert code == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(e["type"] for e in events) == sorted(
        ["TREATMENT_CHANGED", "HOSPITAL_ADMITTED", "HOSPITAL_DISCHARGED",
         "PALLIATIVE_VISIT_COMPLETED", "ENROLLED", "DISENROLLED", "TREATMENT_CHANGED", "DECEASED"]
    )  # fmt: skip
    assert {e["patient_id"] for e in events} == {patient(pz)}
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in records] == [
        (10, "fhir-deceased-without-time"),
        (11, "fhir-unknown-questionnaire"),
    ]
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(
        "fhir-import: 11 resources read, 8 written, 2 rejected (1 fhir-deceased-without-time, "
        "1 fhir-unknown-questionnaire), 1 ignored (1 fhir-ignored-status EpisodeOfCare status "
        "planned) in "
    )
    # the site's canonical, by flag, then by setting
    out2 = tmp_path / "site.jsonl"
    single = tmp_path / "qr.json"
    single.write_text(json.dumps(_response(SITE + "|4")))
    assert main(["bridge", "fhir-import", "--strict", "--input", str(single), "--output",
                 str(out2), "--questionnaire-url", SITE]) == 0  # fmt: skip
    assert len(out2.read_text().splitlines()) == 1


def test_fhir_import_takes_the_questionnaire_setting(
    secret: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single, out = tmp_path / "qr.json", tmp_path / "e.jsonl"
    single.write_text(json.dumps(_response(SITE)))
    command = ["bridge", "fhir-import", "--strict", "--input", str(single), "--output", str(out)]
    assert main(command) == 2
    monkeypatch.setenv("STEPCARE_FHIR_QUESTIONNAIRE_URLS", f"{fhir.QUESTIONNAIRE_URL},{SITE}")
    assert main(command) == 0


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--questionnaire-url", "not a url", "--questionnaire-url='not a url': expected"),
        ("--palliative-code", "103735009", "--palliative-code: '103735009' is not SYSTEM|CODE"),
        ("--treatment-code", "sct|", "--treatment-code: 'sct|' is not SYSTEM|CODE"),
    ],
)
def test_bad_feed_options_are_usage_errors(
    option: str,
    value: str,
    message: str,
    secret: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["bridge", "fhir-import", "--input", str(EXAMPLES), "--output",
                 str(tmp_path / "e.jsonl"), option, value])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_live_converter_maps_ignores_and_refuses(pz: Pseudonymizer) -> None:
    value = (EXAMPLES / "episode-of-care-active.json").read_bytes()
    output = fhir_in_record(value, pz)
    assert not isinstance(output, Ignored)
    assert output.key == patient(pz).encode()
    ignored = orjson.dumps(_edit("episode-of-care-active.json", status="onhold"))
    assert fhir_in_record(ignored, pz) == Ignored(
        "fhir-ignored-status", "EpisodeOfCare status onhold"
    )
    with pytest.raises(AdapterError) as caught:
        fhir_in_record(orjson.dumps(_response(SITE)), pz)
    assert caught.value.reason == "fhir-unknown-questionnaire"
    site = fhir_in_record(orjson.dumps(_response(SITE)), pz, feed=FhirFeed(questionnaires=(SITE,)))
    assert not isinstance(site, Ignored)


# -- HL7 v2 deaths --------------------------------------------------------------------------------


def test_an_a08_with_a_death_is_deceased_at_pid_29(pz: Pseudonymizer) -> None:
    message = (HL7_EXAMPLES / "adt-a08-death.hl7").read_text()
    sender = "EXAMPLEADT|EXH"
    assert hl7.adt_to_event(message, pz) == {
        "event_id": "hl7-" + pz.token("hl7", f"{sender}|EXH-A08-0001"),
        "patient_id": patient(pz),
        "occurred_at": "2024-08-20T03:40:00Z",
        "type": "DECEASED",
        "source": "adt",
        "attributes": {"hl7_trigger": "A08"},
    }


def test_an_a08_without_a_death_is_ignored_and_without_a_time_refused(pz: Pseudonymizer) -> None:
    message = (HL7_EXAMPLES / "adt-a08-death.hl7").read_text()
    alive = message.replace("|20240819234000-0400|Y", "||N")
    assert hl7.adt_to_event(alive, pz) == Ignored("hl7-ignored-trigger", "ADT^A08")
    assert hl7.adt_to_event(message.replace("|20240819234000-0400|Y", ""), pz) == Ignored(
        "hl7-ignored-trigger", "ADT^A08"
    )
    with pytest.raises(AdapterError) as caught:
        hl7.adt_to_event(message.replace("|20240819234000-0400|Y", "||Y"), pz)
    assert (caught.value.reason, caught.value.detail) == (
        "hl7-death-without-time",
        "ADT^A08 with PID-30 (death indicator) Y and no PID-29 (death date/time)",
    )
    with pytest.raises(AdapterError) as caught:
        hl7.adt_to_event(message.replace("20240819234000-0400", "20240819"), pz)
    assert caught.value.reason == "hl7-malformed" and "PID-29" in caught.value.detail
    with pytest.raises(AdapterError) as caught:
        hl7.adt_to_event(message.replace("MRN-900417^^^EXH&2.999.1.1&ISO^MR", ""), pz)
    assert caught.value.reason == "hl7-malformed" and "PID-3" in caught.value.detail


def test_an_expired_discharge_is_a_death_not_also_a_discharge(pz: Pseudonymizer) -> None:
    message = (HL7_EXAMPLES / "adt-a03-expired.hl7").read_text()
    assert hl7.adt_to_event(message, pz) == {
        "event_id": "hl7-" + pz.token("hl7", "EXAMPLEADT|EXH|EXH-A03-0001"),
        "patient_id": patient(pz, "MRN-900418"),
        "occurred_at": "2024-07-01T10:40:00Z",  # no PID-29: the discharge time, PV1-45
        "type": "DECEASED",
        "source": "adt",
        "attributes": {"hl7_trigger": "A03", "patient_class": "I"},
    }


def test_hl7_import_of_the_death_examples(
    secret: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e.jsonl"
    code = main(["bridge", "hl7-import", "--strict", "--input", str(HL7_EXAMPLES), "--output",
                 str(out)])  # fmt: skip
    assert code == 0
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == ["DECEASED"] * 2
