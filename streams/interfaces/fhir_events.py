"""FHIR R4 resources in as the other PatientEvents: enrolment, visits, stays, deaths, treatment.

:func:`resource_to_event` maps one resource (any supported type, QuestionnaireResponse
included) to its PatientEvent, or :class:`~streams.interfaces.errors.Ignored` when a valid
resource is no event (a planned episode, an outpatient clinic visit, a living patient);
:class:`~streams.errors.AdapterError` refuses it with a reason. Pure functions, no I/O, no clock;
mapping only: what the engine does with the events is the policy's (DESIGN §5). The rules, field
by field: docs/integration.md, "What becomes what".
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.clinical.events import EventError, EventType, event_from_json
from streams.interfaces import fhir
from streams.interfaces.errors import AdapterError, Ignored
from streams.interfaces.fhir import (
    _DATETIME,
    _PATIENT_REFERENCE,
    PALLIATIVE_CARE,
    QUESTIONNAIRE_URL,
    SNOMED,
    validate_resource,
)
from streams.interfaces.pseudonym import PseudonymError, Pseudonymizer

__all__ = [
    "ATC",
    "DEFAULT_PALLIATIVE_CODES",
    "DEFAULT_TREATMENT_CODES",
    "SUPPORTED",
    "FhirFeed",
    "parse_coding",
    "resource_to_event",
]

ATC = "http://www.whocc.no/atc"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC"})
DEFAULT_PALLIATIVE_CODES: frozenset[tuple[str, str]] = frozenset(
    {(PALLIATIVE_CARE["system"], PALLIATIVE_CARE["code"])}
)
# Codings that mark a cancer treatment on a MedicationRequest's or CarePlan's category (or a
# medication code): SNOMED CT 367336001 chemotherapy, 108290001 radiotherapy.
DEFAULT_TREATMENT_CODES: frozenset[tuple[str, str]] = frozenset(
    {(SNOMED, "367336001"), (SNOMED, "108290001")}
)
# ATC groups of systemic cancer therapy: L01 antineoplastic agents, L02 endocrine therapy.
ANTINEOPLASTIC_ATC = ("L01", "L02")
SUPPORTED = (
    "QuestionnaireResponse",
    "EpisodeOfCare",
    "Encounter",
    "Patient",
    "MedicationRequest",
    "CarePlan",
)
_PREFIX = {
    "EpisodeOfCare": "fhir-eoc-",
    "Encounter": "fhir-enc-",
    "Patient": "fhir-pat-",
    "MedicationRequest": "fhir-medreq-",
    "CarePlan": "fhir-cp-",
}
_MAX_ITEMS = 1000  # codings, categories ... looked at in one resource
# The codes of the required value sets read here (R4): any other value is refused, so that no
# free text of a resource ever reaches an Ignored detail (a log line) or an event.
_STATUSES = {
    "EpisodeOfCare": frozenset(
        {"planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"}
    ),
    "Encounter": frozenset(
        {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
         "entered-in-error", "unknown"}
    ),
    "MedicationRequest": frozenset(
        {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft",
         "unknown"}
    ),
    "CarePlan": frozenset(
        {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
    ),
}  # fmt: skip
_INTENTS = {
    "MedicationRequest": frozenset(
        {"proposal", "plan", "order", "original-order", "reflex-order", "filler-order",
         "instance-order", "option"}
    ),
    "CarePlan": frozenset({"proposal", "plan", "order", "option"}),
}  # fmt: skip
# v3 ActEncounterCode: the Encounter classes an event's attributes may name.
_ENCOUNTER_CLASSES = frozenset(
    {"AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR"}
)


@dataclass(frozen=True, slots=True)
class FhirFeed:
    """How a site's FHIR feed maps: its server's base URL (relative references), the events'
    source, the accepted FACT-L Questionnaire canonicals, and the codings that mark the
    palliative-care program (EpisodeOfCare.type, Encounter.type/serviceType) and a cancer
    treatment (MedicationRequest and CarePlan category, medication code)."""

    fhir_base: str = ""
    source: str = "fhir"
    questionnaires: tuple[str, ...] = (QUESTIONNAIRE_URL,)
    palliative_codes: frozenset[tuple[str, str]] = field(default=DEFAULT_PALLIATIVE_CODES)
    treatment_codes: frozenset[tuple[str, str]] = field(default=DEFAULT_TREATMENT_CODES)
    # A Patient resource is named by its identifier of this system (e.g. the MRN's, so that it
    # names the patient as the ADT feed and identifier references do); by default by its id.
    patient_identifier_system: str = ""


def parse_coding(text: str) -> tuple[str, str]:
    """``SYSTEM|CODE`` (as FHIR token search writes a coding) -> (system, code); ValueError."""
    system, bar, code = text.strip().rpartition("|")
    if not bar or not system or not code or any(c.isspace() for c in system + code):
        raise ValueError(
            f"{text[:80]!r} is not SYSTEM|CODE (e.g. http://snomed.info/sct|103735009)"
        )
    return system, code


def resource_to_event(
    resource: Any, pseudonymizer: Pseudonymizer, feed: FhirFeed | None = None
) -> dict[str, Any] | Ignored:
    """The PatientEvent (JSON rendering) of one FHIR R4 resource, or :class:`Ignored`.

    Raises :class:`AdapterError`; reasons (besides QuestionnaireResponse's): ``fhir-invalid``,
    ``fhir-wrong-resource-type``, ``fhir-missing-id``, ``fhir-missing-subject``,
    ``fhir-bad-subject``, ``fhir-missing-time``, ``fhir-bad-time``,
    ``fhir-deceased-without-time``. ``Ignored`` reasons: ``fhir-ignored-status``,
    ``fhir-not-palliative``, ``fhir-not-an-event``, ``fhir-not-a-new-treatment``.
    """
    feed = feed or FhirFeed()
    if not isinstance(resource, Mapping):
        raise AdapterError(
            "fhir-invalid", f"a resource is a JSON object, not {type(resource).__name__}"
        )
    resource_type = resource.get("resourceType")
    try:
        if resource_type == "QuestionnaireResponse":
            return fhir.questionnaire_response_to_event(
                resource,
                pseudonymizer,
                fhir_base=feed.fhir_base,
                source=feed.source,
                questionnaires=feed.questionnaires,
            )
        mapper = _MAPPERS.get(resource_type) if isinstance(resource_type, str) else None
        if mapper is None:
            raise AdapterError(
                "fhir-wrong-resource-type",
                f"resourceType is not {', '.join(SUPPORTED[:-1])} or {SUPPORTED[-1]}",
            )
        validate_resource(resource)
        if not isinstance(resource.get("id"), str) or not resource["id"]:
            raise AdapterError("fhir-missing-id", f"the {resource_type} has no id")
        found = mapper(resource, feed)
        if isinstance(found, Ignored):
            return found
        event_type, occurred_at, patient, attributes = found
        return _event(resource, pseudonymizer, feed, event_type, occurred_at, patient, attributes)
    except RecursionError:  # a hostile nesting too deep for the models
        raise AdapterError("fhir-invalid", "the resource is nested too deeply") from None


_Found = tuple[EventType, str, Any, dict[str, str]]


def _event(
    resource: Mapping[str, Any],
    pseudonymizer: Pseudonymizer,
    feed: FhirFeed,
    event_type: EventType,
    occurred_at: str,
    patient: Any,
    attributes: dict[str, str],
) -> dict[str, Any]:
    resource_type = resource["resourceType"]
    if resource_type == "Patient":
        patient_id = _patient_itself(resource, pseudonymizer, feed)
    else:
        patient_id = _patient(patient, _SUBJECT_FIELD[resource_type], pseudonymizer, feed)
    # The transition of one resource is one event, whatever the resource's version: a later
    # version (a note added to a finished Encounter) or a redelivery gives the same event id.
    name = f"{resource_type}/{resource['id']}"
    token = pseudonymizer.token("fhir", f"{feed.fhir_base.rstrip('/')}|{name}|{event_type}")
    event = {
        "event_id": _PREFIX[resource_type] + token,
        "patient_id": patient_id,
        "occurred_at": occurred_at,
        "type": str(event_type),
        "source": feed.source,
        "attributes": {"fhir_resource": resource_type, **attributes},
    }
    try:
        event_from_json(event)
    except EventError as exc:  # cannot happen for what is built above; never publish it
        raise AdapterError("fhir-invalid", str(exc)) from None
    return event


# -- the resources ------------------------------------------------------------------------------


def _episode_of_care(resource: Mapping[str, Any], feed: FhirFeed) -> _Found | Ignored:
    status = _coded(resource, "status", _STATUSES)
    if not any(_has_coding(c, feed.palliative_codes) for c in _list(resource.get("type"))):
        return Ignored("fhir-not-palliative", "EpisodeOfCare of another program")
    period = _mapping(resource.get("period"))
    if status == "active":
        start = _time(period.get("start"), "EpisodeOfCare.period.start")
        return EventType.ENROLLED, start, resource.get("patient"), {}
    if status in ("finished", "cancelled"):
        if period.get("end") is not None:
            end = _time(period.get("end"), "EpisodeOfCare.period.end")
        else:
            updated = _mapping(resource.get("meta")).get("lastUpdated")
            end = _time(updated, "EpisodeOfCare.period.end (or meta.lastUpdated)")
        return EventType.DISENROLLED, end, resource.get("patient"), {"fhir_status": status}
    return Ignored("fhir-ignored-status", f"EpisodeOfCare status {status}")


def _encounter(resource: Mapping[str, Any], feed: FhirFeed) -> _Found | Ignored:
    status = _coded(resource, "status", _STATUSES)
    klass = _mapping(resource.get("class"))
    code = klass.get("code") if klass.get("system") in (None, ACT_CODE) else None
    period = _mapping(resource.get("period"))
    subject = resource.get("subject")
    if isinstance(code, str) and code in INPATIENT_CLASSES:
        attributes = {"encounter_class": code}
        if status == "in-progress":
            start = _time(period.get("start"), "Encounter.period.start")
            return EventType.HOSPITAL_ADMITTED, start, subject, attributes
        if status == "finished":
            end = _time(period.get("end"), "Encounter.period.end")
            return EventType.HOSPITAL_DISCHARGED, end, subject, attributes
        return Ignored("fhir-ignored-status", f"inpatient Encounter status {status}")
    types = [*_list(resource.get("type")), resource.get("serviceType")]
    if not any(_has_coding(concept, feed.palliative_codes) for concept in types):
        return Ignored("fhir-not-an-event", "Encounter neither inpatient nor palliative care")
    if status != "finished":
        return Ignored("fhir-ignored-status", f"palliative-care Encounter status {status}")
    if period.get("end") is not None:
        end = _time(period.get("end"), "Encounter.period.end")
    else:
        end = _time(period.get("start"), "Encounter.period.end (or period.start)")
    attributes = {"encounter_class": code} if code in _ENCOUNTER_CLASSES else {}
    return EventType.PALLIATIVE_VISIT_COMPLETED, end, subject, attributes


def _patient_resource(resource: Mapping[str, Any], feed: FhirFeed) -> _Found | Ignored:
    when = resource.get("deceasedDateTime")
    if when is not None:
        return EventType.DECEASED, _time(when, "Patient.deceasedDateTime"), None, {}
    if resource.get("deceasedBoolean") is True:
        raise AdapterError(
            "fhir-deceased-without-time",
            "deceasedBoolean is true without deceasedDateTime: a DECEASED event needs the time "
            "of death",
        )
    return Ignored("fhir-not-an-event", "Patient not deceased")


def _medication_request(resource: Mapping[str, Any], feed: FhirFeed) -> _Found | Ignored:
    status = _coded(resource, "status", _STATUSES)
    intent = _coded(resource, "intent", _INTENTS)
    if status != "active":
        return Ignored("fhir-ignored-status", f"MedicationRequest status {status}")
    if intent not in ("order", "original-order"):
        return Ignored("fhir-ignored-status", f"MedicationRequest intent {intent}")
    medication = resource.get("medicationCodeableConcept")
    anticancer = _has_coding(medication, feed.treatment_codes) or _atc_anticancer(medication)
    anticancer = anticancer or any(
        _has_coding(c, feed.treatment_codes) for c in _list(resource.get("category"))
    )
    if not anticancer:
        return Ignored("fhir-not-an-event", "MedicationRequest not a cancer treatment")
    if resource.get("priorPrescription") is not None:
        return Ignored("fhir-not-a-new-treatment", "MedicationRequest with priorPrescription")
    if resource.get("basedOn"):
        return Ignored("fhir-not-a-new-treatment", "MedicationRequest with basedOn")
    when = _time(resource.get("authoredOn"), "MedicationRequest.authoredOn")
    return EventType.TREATMENT_CHANGED, when, resource.get("subject"), {}


def _care_plan(resource: Mapping[str, Any], feed: FhirFeed) -> _Found | Ignored:
    status = _coded(resource, "status", _STATUSES)
    intent = _coded(resource, "intent", _INTENTS)
    if not any(_has_coding(c, feed.treatment_codes) for c in _list(resource.get("category"))):
        return Ignored("fhir-not-an-event", "CarePlan not a cancer treatment plan")
    if status != "active":
        return Ignored("fhir-ignored-status", f"CarePlan status {status}")
    if intent not in ("plan", "order"):
        return Ignored("fhir-ignored-status", f"CarePlan intent {intent}")
    if resource.get("partOf"):
        return Ignored("fhir-not-a-new-treatment", "CarePlan with partOf")
    period = _mapping(resource.get("period"))
    if period.get("start") is not None:
        when = _time(period.get("start"), "CarePlan.period.start")
    else:
        when = _time(resource.get("created"), "CarePlan.period.start (or created)")
    return EventType.TREATMENT_CHANGED, when, resource.get("subject"), {}


_MAPPERS = {
    "EpisodeOfCare": _episode_of_care,
    "Encounter": _encounter,
    "Patient": _patient_resource,
    "MedicationRequest": _medication_request,
    "CarePlan": _care_plan,
}
_SUBJECT_FIELD = {
    "EpisodeOfCare": "patient",
    "Encounter": "subject",
    "MedicationRequest": "subject",
    "CarePlan": "subject",
}


# -- reading the raw JSON (after the model check; still defensive) ------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value[:_MAX_ITEMS] if isinstance(value, list) else []


def _coded(resource: Mapping[str, Any], name: str, codes: Mapping[str, frozenset[str]]) -> str:
    """A required code (status, intent) of its value set; ``fhir-invalid`` otherwise."""
    resource_type, value = resource["resourceType"], resource.get(name)
    if not isinstance(value, str) or value not in codes[resource_type]:
        raise AdapterError("fhir-invalid", f"{name} is not one of the {resource_type}.{name} codes")
    return value


def _has_coding(concept: Any, codes: Collection[tuple[str, str]]) -> bool:
    for coding in _list(_mapping(concept).get("coding")):
        coding = _mapping(coding)
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str) and (system, code) in codes:
            return True
    return False


def _atc_anticancer(concept: Any) -> bool:
    for coding in _list(_mapping(concept).get("coding")):
        coding = _mapping(coding)
        code = coding.get("code")
        if (
            coding.get("system") == ATC
            and isinstance(code, str)
            and code.upper().startswith(ANTINEOPLASTIC_ATC)
        ):
            return True
    return False


def _time(value: Any, label: str) -> str:
    """An event time from a FHIR dateTime/instant: it needs a time of day and an offset."""
    from streams.clinical.events import format_time, parse_time

    if value is None or value == "":
        raise AdapterError("fhir-missing-time", f"{label} is missing: the event needs a time")
    if not isinstance(value, str) or not _DATETIME.fullmatch(value) or value[16] != ":":
        raise AdapterError(
            "fhir-bad-time",
            f"{label} needs a date, a time of day with seconds and an offset "
            "(e.g. 2024-03-01T10:30:00+01:00)",
        )
    try:
        return format_time(parse_time(value))
    except EventError as exc:
        raise AdapterError("fhir-bad-time", f"{label}: {exc}") from None


def _patient(reference: Any, label: str, pseudonymizer: Pseudonymizer, feed: FhirFeed) -> str:
    """The pseudonymous id of a Reference(Patient): by identifier, else by reference, exactly
    as a QuestionnaireResponse's subject."""
    if not isinstance(reference, Mapping) or not (
        reference.get("identifier") or reference.get("reference")
    ):
        raise AdapterError("fhir-missing-subject", f"{label} (the patient) is missing")
    identifier = reference.get("identifier")
    if identifier:
        identifier = _mapping(identifier)
        system, value = identifier.get("system"), identifier.get("value")
        if not isinstance(system, str) or not isinstance(value, str) or not system or not value:
            raise AdapterError("fhir-bad-subject", f"{label}.identifier needs a system and a value")
    else:
        text = reference.get("reference")
        match = _PATIENT_REFERENCE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise AdapterError(
                "fhir-bad-subject",
                f"{label}.reference must be Patient/<id> or an absolute Patient URL",
            )
        base = match["base"] or feed.fhir_base.rstrip("/")
        system = f"{base}/Patient" if base else "Patient"
        value = match["id"]
    try:
        return pseudonymizer.patient_id(system, value)
    except PseudonymError as exc:
        raise AdapterError("fhir-bad-subject", f"{label}: {exc}") from None


def _patient_itself(
    resource: Mapping[str, Any], pseudonymizer: Pseudonymizer, feed: FhirFeed
) -> str:
    """A Patient resource's pseudonymous id: of its identifier of
    ``feed.patient_identifier_system`` when that is set, else of its own id, as a reference
    ``Patient/<id>`` to it would name it."""
    wanted = feed.patient_identifier_system
    if wanted:
        values = [
            i.get("value")
            for i in map(_mapping, _list(resource.get("identifier")))
            if i.get("system") == wanted
        ]
        value = values[0] if values else None
        if not isinstance(value, str) or not value:
            raise AdapterError(
                "fhir-bad-subject", "Patient.identifier has no value of the configured system"
            )
        system, label = wanted, "Patient.identifier"
    else:
        base = feed.fhir_base.rstrip("/")
        system = f"{base}/Patient" if base else "Patient"
        value, label = resource["id"], "Patient.id"
    try:
        return pseudonymizer.patient_id(system, value)
    except PseudonymError as exc:
        raise AdapterError("fhir-bad-subject", f"{label}: {exc}") from None
