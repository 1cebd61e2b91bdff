"""FHIR R4: the FACT-L Questionnaire, QuestionnaireResponses in, escalations out as Bundles.

Pure functions (no I/O, no clock); the offline converters and the live bridges call them.
Resources are checked with the ``fhir.resources`` models of FHIR R4B (structure and datatypes,
not value sets or invariants). The mapping rules are in docs/integration.md, "What becomes what".
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping
from functools import cache
from typing import Any

import orjson

from streams.clinical.escalations import VISIT_REQUEST_KINDS, Kind
from streams.clinical.events import EventError, EventType, event_from_json, format_time, parse_time
from streams.clinical.scoring import SUBSCALES, UNSCORED
from streams.errors import AdapterError
from streams.interfaces.pseudonym import PseudonymError, Pseudonymizer

__all__ = [
    "ESCALATION_KIND_SYSTEM",
    "QUESTIONNAIRE_URL",
    "AdapterError",
    "code_system_json",
    "escalation_kind_code_system",
    "escalation_to_bundle",
    "fact_l_questionnaire",
    "questionnaire_json",
    "questionnaire_response_to_event",
    "validate_resource",
]

# A placeholder namespace of stepcare's own FHIR artefacts; a site that publishes the Questionnaire
# under its own canonical URL passes it to questionnaire_response_to_event(questionnaires=...).
BASE_URL = "https://stepcare.example.org/fhir"
QUESTIONNAIRE_URL = f"{BASE_URL}/Questionnaire/fact-l"
QUESTIONNAIRE_VERSION = "4"
ESCALATION_KIND_SYSTEM = f"{BASE_URL}/CodeSystem/escalation-kind"
SNOMED = "http://snomed.info/sct"
PALLIATIVE_CARE = {
    "system": SNOMED,
    "code": "103735009",
    "display": "Palliative care (regime/therapy)",
}
TASK_CODES = "http://hl7.org/fhir/CodeSystem/task-code"
URI_SYSTEM = "urn:ietf:rfc:3986"
ITEM_ORDER: tuple[str, ...] = (
    *(c for items in SUBSCALES.values() for c in items),
    *sorted(UNSCORED),
)
"""Every FACT-L item code, in the order of the Questionnaire (subscales, then B5 and L5)."""

_ITEMS = frozenset(ITEM_ORDER)
_RESPONSE_CODES = {str(n): n for n in range(5)}
_STATUSES = frozenset({"in-progress", "completed", "amended", "entered-in-error", "stopped"})
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_PATIENT_REFERENCE = re.compile(
    r"(?:(?P<base>https?://[^\s]+?)/)?Patient/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)


KIND_DISPLAY: dict[Kind, str] = {
    Kind.INITIAL_VISIT_DUE: "Initial palliative-care visit due",
    Kind.STEP_UP: "Stepped up to care step 2 after a FACT-L decline",
    Kind.TREATMENT_CHANGE_VISIT_DUE: "Palliative-care visit due after a change of cancer treatment",
    Kind.POST_DISCHARGE_VISIT_DUE: "Palliative-care visit due after a hospital discharge",
    Kind.MONTHLY_VISIT_DUE: "Monthly palliative-care visit due (care step 2)",
    Kind.VISIT_OVERDUE: "Palliative-care visit overdue",
    Kind.SURVEY_OVERDUE: "FACT-L survey overdue",
    Kind.VISIT_REQUEST_CANCELLED: "Palliative-care visit request cancelled",
}


# -- the Questionnaire ---------------------------------------------------------------------------


def fact_l_questionnaire() -> dict[str, Any]:
    """The FACT-L v4 Questionnaire: item codes and answer options 0-4, no item wording."""
    return {
        "resourceType": "Questionnaire",
        "id": "fact-l",
        "url": QUESTIONNAIRE_URL,
        "version": QUESTIONNAIRE_VERSION,
        "name": "FACT_L_v4_ItemCodes",
        "title": "FACT-L version 4 (item codes only)",
        "status": "active",
        "subjectType": ["Patient"],
        "publisher": "stepcare",
        "description": (
            "Functional Assessment of Cancer Therapy - Lung (FACT-L), version 4: one integer "
            "item per FACIT item code, each answered 0-4. The item wording is not included; "
            "it is licensed from FACIT.org and supplied by the form renderer."
        ),
        "copyright": (
            "FACT-L is copyrighted by FACIT.org (David Cella, PhD); use requires permission "
            "from FACIT.org. This resource carries item codes only, no item wording."
        ),
        "item": [
            {
                "linkId": code,
                "text": f"FACT-L item {code}",
                "type": "integer",
                "required": False,
                "answerOption": [{"valueInteger": n} for n in range(5)],
            }
            for code in ITEM_ORDER
        ],
    }


def questionnaire_json() -> bytes:
    """The Questionnaire as the file ``resources/fhir/fact-l-questionnaire.json`` holds it."""
    return orjson.dumps(fact_l_questionnaire(), option=orjson.OPT_INDENT_2) + b"\n"


def escalation_kind_code_system() -> dict[str, Any]:
    """The CodeSystem of the escalation kinds (ServiceRequest.reasonCode, Task.code/reasonCode),
    for a FHIR server or a validator to check stepcare's codes against."""
    return {
        "resourceType": "CodeSystem",
        "id": "escalation-kind",
        "url": ESCALATION_KIND_SYSTEM,
        "version": "1",
        "name": "StepcareEscalationKind",
        "title": "stepcare escalation kinds",
        "status": "active",
        "publisher": "stepcare",
        "description": "Why stepcare asks for a palliative-care visit, or for a worklist task.",
        "caseSensitive": True,
        "content": "complete",
        "count": len(KIND_DISPLAY),
        "concept": [{"code": str(kind), "display": text} for kind, text in KIND_DISPLAY.items()],
    }


def code_system_json() -> bytes:
    """The CodeSystem as ``resources/fhir/escalation-kind-codesystem.json`` holds it."""
    return orjson.dumps(escalation_kind_code_system(), option=orjson.OPT_INDENT_2) + b"\n"


# -- validation with fhir.resources -------------------------------------------------------------


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class  # slow to import: only when used

    return get_fhir_model_class(resource_type)


def validate_resource(resource: Mapping[str, Any], reason: str = "fhir-invalid") -> None:
    """Check ``resource`` against the FHIR R4(B) model of its ``resourceType``.

    Structure and datatypes only (what ``fhir.resources`` checks; not value sets, not
    invariants). Raises :class:`AdapterError` with ``reason`` and the first problem.
    """
    from pydantic import ValidationError

    resource_type = resource.get("resourceType")
    try:
        model = _model(resource_type) if isinstance(resource_type, str) else None
    except (KeyError, ValueError, AttributeError, ImportError):
        model = None
    if model is None:
        raise AdapterError(reason, "resourceType is not a FHIR R4 resource type")
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ())) or resource_type
        raise AdapterError(reason, f"{where}: {_first_line(error.get('msg', ''))}") from None
    except (ValueError, TypeError) as exc:
        raise AdapterError(reason, _first_line(str(exc))) from None


def _first_line(text: str) -> str:
    return " ".join(text.split())[:200]


# -- QuestionnaireResponse -> PatientEvent -------------------------------------------------------


def questionnaire_response_to_event(
    resource: Mapping[str, Any],
    pseudonymizer: Pseudonymizer,
    *,
    fhir_base: str = "",
    source: str = "fhir",
    questionnaires: Collection[str] = (QUESTIONNAIRE_URL,),
) -> dict[str, Any]:
    """The ``SURVEY_SUBMITTED`` PatientEvent (JSON rendering) of a FACT-L QuestionnaireResponse.

    ``fhir_base`` is the base URL of the server the resource came from (relative references
    are read against it). Raises :class:`AdapterError`; its reasons: ``fhir-wrong-resource-type``,
    ``fhir-status-amended``, ``fhir-status-entered-in-error``, ``fhir-status-in-progress``,
    ``fhir-status-stopped``, ``fhir-invalid`` (not a valid R4 resource), ``fhir-missing-id``,
    ``fhir-missing-subject``, ``fhir-bad-subject``, ``fhir-missing-authored``,
    ``fhir-bad-authored``, ``fhir-unknown-questionnaire``, ``fhir-unknown-item``,
    ``fhir-bad-answer``.
    """
    if not isinstance(resource, Mapping):
        raise AdapterError(
            "fhir-invalid", f"a resource is a JSON object, not {type(resource).__name__}"
        )
    resource_type = resource.get("resourceType")
    if resource_type != "QuestionnaireResponse":
        raise AdapterError(
            "fhir-wrong-resource-type",
            "resourceType is not QuestionnaireResponse",
        )
    status = resource.get("status")
    if isinstance(status, str) and status in _STATUSES and status != "completed":
        raise AdapterError(f"fhir-status-{status}", _STATUS_DETAIL[status])
    occurred_at = _authored(resource.get("authored"))  # before the model: a precise reason
    try:
        validate_resource(resource)
    except AdapterError as exc:  # name the part that is wrong when it has its own reason
        field = exc.detail.partition(".")[0].partition(":")[0]
        raise AdapterError(_FIELD_REASONS.get(field, exc.reason), exc.detail) from None
    if status != "completed":
        raise AdapterError("fhir-invalid", "status is not a QuestionnaireResponse status")

    resource_id = resource.get("id")
    if not resource_id:
        raise AdapterError("fhir-missing-id", "the QuestionnaireResponse has no id")
    version = (resource.get("meta") or {}).get("versionId")
    name = f"QuestionnaireResponse/{resource_id}" + (f"/_history/{version}" if version else "")
    event_id = "fhir-qr-" + pseudonymizer.token("fhir", f"{fhir_base.rstrip('/')}|{name}")

    patient_id = _subject(resource.get("subject"), pseudonymizer, fhir_base)
    _check_questionnaire(resource.get("questionnaire"), questionnaires)
    responses = _responses(resource.get("item") or [])

    event = {
        "event_id": event_id,
        "patient_id": patient_id,
        "occurred_at": occurred_at,
        "type": str(EventType.SURVEY_SUBMITTED),
        "source": source,
        "survey": {
            "instrument": "FACT-L",
            "version": QUESTIONNAIRE_VERSION,
            "responses": responses,
        },
    }
    try:
        event_from_json(event)  # the event a worker would accept, or a bug here
    except EventError as exc:
        raise AdapterError("fhir-bad-answer", str(exc)) from None
    return event


_FIELD_REASONS = {
    "authored": "fhir-bad-authored",
    "subject": "fhir-bad-subject",
    "item": "fhir-bad-answer",
}

_STATUS_DETAIL = {
    "amended": "an amended response corrects one already sent; the engine cannot take a survey "
    "back, so it needs review",
    "entered-in-error": "the response was entered in error",
    "in-progress": "the response is not finished",
    "stopped": "the response was stopped before it was finished",
}


def _subject(subject: Any, pseudonymizer: Pseudonymizer, fhir_base: str) -> str:
    if not isinstance(subject, Mapping) or not (
        subject.get("identifier") or subject.get("reference")
    ):
        raise AdapterError("fhir-missing-subject", "the response has no subject (the patient)")
    identifier = subject.get("identifier")
    if identifier:
        system, value = identifier.get("system"), identifier.get("value")
        if not system or not value:
            raise AdapterError(
                "fhir-bad-subject", "subject.identifier needs both a system and a value"
            )
    else:
        reference = subject["reference"]
        match = _PATIENT_REFERENCE.fullmatch(reference)
        if match is None:
            parts = reference.split("/")
            named = parts[-2] if len(parts) >= 2 and parts[-2].isalpha() else ""
            raise AdapterError(
                "fhir-bad-subject",
                "subject.reference must be Patient/<id> or an absolute Patient URL"
                + (f" (it names a {named[:40]})" if named and named != "Patient" else ""),
            )
        base = match["base"] or fhir_base.rstrip("/")
        system = f"{base}/Patient" if base else "Patient"
        value = match["id"]
    try:
        return pseudonymizer.patient_id(system, value)
    except PseudonymError as exc:
        raise AdapterError("fhir-bad-subject", str(exc)) from None


_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})")


def _authored(authored: Any) -> str:
    if not authored:
        raise AdapterError("fhir-missing-authored", "the response has no authored time")
    if not isinstance(authored, str) or not _DATETIME.fullmatch(authored):
        raise AdapterError(
            "fhir-bad-authored",
            "authored needs a date, a time of day and an offset (e.g. 2024-03-01T10:30:00+01:00)",
        )
    if authored[16] != ":":  # no seconds: FHIR requires them, parse_time too
        raise AdapterError("fhir-bad-authored", "authored has no seconds")
    try:
        return format_time(parse_time(authored))
    except EventError as exc:
        raise AdapterError("fhir-bad-authored", str(exc)) from None


def questionnaire_accepted(canonical: str, allowed: Collection[str]) -> bool:
    """Whether a response's ``questionnaire`` canonical is one of ``allowed``: an allowed
    ``URL`` takes ``URL`` and ``URL|4`` (FACT-L version 4); an allowed ``URL|VERSION`` takes
    ``URL|VERSION`` and ``URL`` (a response that names no version)."""
    url, bar, version = canonical.partition("|")
    for entry in allowed:
        entry_url, entry_bar, entry_version = entry.partition("|")
        if entry_url != url:
            continue
        if not bar or version == (entry_version if entry_bar else QUESTIONNAIRE_VERSION):
            return True
    return False


def _check_questionnaire(canonical: Any, allowed: Collection[str]) -> None:
    if canonical is None:
        return
    if not isinstance(canonical, str) or not questionnaire_accepted(canonical, allowed):
        accepted = ", ".join(sorted(allowed))[:200]
        raise AdapterError(
            "fhir-unknown-questionnaire",
            f"questionnaire {str(canonical)[:120]!r} is not FACT-L version 4 ({accepted})",
        )


def _responses(items: list[Any]) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    _collect(items, found)
    return {code: found[code] for code in ITEM_ORDER if code in found}


def _collect(items: list[Any], found: dict[str, int | None]) -> None:
    for item in items:
        link_id = item.get("linkId")
        answers = item.get("answer") or []
        children = item.get("item") or []
        if children and not answers:  # a group: its own linkId is a section name
            _collect(children, found)
            continue
        if link_id not in _ITEMS:
            raise AdapterError("fhir-unknown-item", "a linkId is not a FACT-L item code")
        if link_id in found:
            raise AdapterError("fhir-bad-answer", f"item {link_id} appears more than once")
        if len(answers) > 1:
            raise AdapterError("fhir-bad-answer", f"item {link_id} has {len(answers)} answers")
        found[link_id] = _answer(link_id, answers[0]) if answers else None
        for answer in answers:
            if answer.get("item"):
                _collect(answer["item"], found)
        if children:
            _collect(children, found)


def _answer(link_id: str, answer: Mapping[str, Any]) -> int:
    # The raw JSON, not the model: pydantic would read "3" or true as an integer.
    if "valueInteger" in answer:
        value = answer["valueInteger"]
        if type(value) is int and 0 <= value <= 4:
            return value
        raise AdapterError("fhir-bad-answer", f"item {link_id}: valueInteger is not a response 0-4")
    coding = answer.get("valueCoding")
    if isinstance(coding, Mapping):
        code = coding.get("code")
        if code in _RESPONSE_CODES:
            return _RESPONSE_CODES[code]
        raise AdapterError("fhir-bad-answer", f"item {link_id}: valueCoding code is not 0-4")
    kinds = sorted(k for k in answer if k.startswith("value")) or ["no value"]
    raise AdapterError(
        "fhir-bad-answer", f"item {link_id}: {kinds[0]} (expected valueInteger or valueCoding)"
    )


# -- Escalation -> Bundle ------------------------------------------------------------------------


def escalation_to_bundle(
    escalation: Mapping[str, Any], *, patient: str | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A FHIR R4 transaction Bundle that carries one escalation (JSON rendering, DESIGN §3).

    ``patient``: the patient's Reference (a dict), or a reference string; by default
    ``Patient/<patient_id>``. The Bundle is checked with ``fhir.resources``. Raises
    :class:`AdapterError`: ``escalation-invalid``, ``escalation-unknown-kind``,
    ``escalation-unknown-request`` (a cancellation without ``related_request_id``).
    """
    esc = _escalation(escalation)
    eid, kind, related = esc["escalation_id"], esc["kind"], esc["related_request_id"]
    if patient is None:
        if not _FHIR_ID.fullmatch(esc["patient_id"]):
            raise AdapterError("escalation-invalid", "patient_id is not a FHIR id; pass patient=")
        reference: dict[str, Any] = {"reference": f"Patient/{esc['patient_id']}"}
    elif isinstance(patient, str):
        reference = {"reference": patient}
    else:
        reference = dict(patient)

    if kind in VISIT_REQUEST_KINDS:
        entries = _request_entries(esc, reference)
        if related:
            entries[0]["resource"]["replaces"] = [{"reference": f"ServiceRequest/sr-{related}"}]
            entries += _end_request(related)
    elif kind is Kind.VISIT_REQUEST_CANCELLED:
        if not related:
            raise AdapterError(
                "escalation-unknown-request",
                "a VISIT_REQUEST_CANCELLED without related_request_id (the request it cancels)",
            )
        entries = _end_request(related)
    else:
        entries = [_put(_overdue_task(esc, reference))]
    bundle = {
        "resourceType": "Bundle",
        "id": f"bundle-{eid}",
        "type": "transaction",
        "entry": entries,
    }
    validate_resource(bundle, reason="escalation-invalid")
    return bundle


def _end_request(request_id: str) -> list[dict[str, Any]]:
    """Entries that end an open request: its ServiceRequest revoked, its Task cancelled."""
    return [
        _status_patch("ServiceRequest", f"sr-{request_id}", "revoked"),
        _status_patch("Task", f"task-{request_id}", "cancelled"),
    ]


_ESCALATION_FIELDS = ("escalation_id", "patient_id", "kind", "occurred_at", "policy_id")


def _escalation(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise AdapterError("escalation-invalid", "an escalation is a JSON object")
    for name in _ESCALATION_FIELDS:
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise AdapterError("escalation-invalid", f"{name} must be a non-empty string")
    try:
        kind = Kind(obj["kind"])
    except ValueError:
        raise AdapterError("escalation-unknown-kind", "kind is not an escalation kind") from None
    related = obj.get("related_request_id")
    if related is not None and not (
        isinstance(related, str) and _FHIR_ID.fullmatch(f"task-{related}")
    ):
        raise AdapterError("escalation-invalid", "related_request_id cannot make a FHIR id")
    if not _FHIR_ID.fullmatch(f"task-{obj['escalation_id']}"):
        raise AdapterError("escalation-invalid", "escalation_id cannot make a FHIR id")
    try:
        occurred_at = format_time(parse_time(obj["occurred_at"]))
        due = obj.get("due_by")
        due_by = None if due is None else format_time(parse_time(due))
    except EventError as exc:
        raise AdapterError("escalation-invalid", str(exc)) from None
    if due_by is None and kind is not Kind.VISIT_REQUEST_CANCELLED:
        raise AdapterError("escalation-invalid", f"a {kind} escalation needs due_by")
    given = obj.get("reason")
    reason = given if isinstance(given, Mapping) else {}
    return {
        **obj,
        "kind": kind,
        "occurred_at": occurred_at,
        "due_by": due_by,
        "reason": reason,
        "text": str(reason.get("text") or KIND_DISPLAY[kind]),
        "related_request_id": related,
    }


def _identifier(eid: str) -> list[dict[str, str]]:
    return [{"system": URI_SYSTEM, "value": f"urn:uuid:{eid}"}]


def _kind_concept(esc: Mapping[str, Any]) -> dict[str, Any]:
    kind = esc["kind"]
    coding = {"system": ESCALATION_KIND_SYSTEM, "code": str(kind), "display": KIND_DISPLAY[kind]}
    return {"coding": [coding], "text": esc["text"]}


def _notes(esc: Mapping[str, Any]) -> list[dict[str, str]]:
    """The numbers behind the escalation, as one annotation."""
    reason = esc["reason"]
    numbers = [
        f"{name} {reason[key]:.1f}"
        for key, name in (
            ("baseline", "baseline"),
            ("score", "score"),
            ("change", "change"),
            ("threshold", "threshold"),
        )
        if isinstance(reason.get(key), int | float) and not isinstance(reason.get(key), bool)
    ]
    parts = []
    if numbers:
        parts.append(f"{reason.get('instrument') or 'FACT-L'}: {', '.join(numbers)}.")
    if isinstance(esc.get("care_step"), int):
        parts.append(f"Care step {esc['care_step']}.")
    policy = f"Policy {esc['policy_id']} v{esc.get('policy_version')}"
    trigger = esc.get("trigger_event_id")
    parts.append(f"{policy}; trigger event {trigger}." if trigger else f"{policy}.")
    return [{"time": esc["occurred_at"], "text": " ".join(parts)}]


def _period(esc: Mapping[str, Any]) -> dict[str, str]:
    return {"start": esc["occurred_at"], "end": esc["due_by"]}


def _requester(esc: Mapping[str, Any]) -> dict[str, str]:
    return {"display": f"stepcare ({esc['policy_id']} v{esc.get('policy_version')})"}


def _request_entries(esc: Mapping[str, Any], patient: dict[str, Any]) -> list[dict[str, Any]]:
    eid = esc["escalation_id"]
    service_request = {
        "resourceType": "ServiceRequest",
        "id": f"sr-{eid}",
        "identifier": _identifier(eid),
        "status": "active",
        "intent": "order",
        "code": {"coding": [PALLIATIVE_CARE], "text": "Palliative-care visit"},
        "subject": patient,
        "occurrencePeriod": _period(esc),
        "authoredOn": esc["occurred_at"],
        "requester": _requester(esc),
        "reasonCode": [_kind_concept(esc)],
        "note": _notes(esc),
    }
    task = {
        "resourceType": "Task",
        "id": f"task-{eid}",
        "identifier": _identifier(eid),
        "status": "requested",
        "intent": "order",
        "code": {
            "coding": [
                {"system": TASK_CODES, "code": "fulfill", "display": "Fulfill the focal request"}
            ]
        },
        "description": esc["text"],
        "focus": {"reference": f"ServiceRequest/sr-{eid}"},
        "for": patient,
        "authoredOn": esc["occurred_at"],
        "requester": _requester(esc),
        "reasonCode": _kind_concept(esc),
        "restriction": {"period": _period(esc)},
    }
    return [_put(service_request), _put(task)]


def _overdue_task(esc: Mapping[str, Any], patient: dict[str, Any]) -> dict[str, Any]:
    eid = esc["escalation_id"]
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": f"task-{eid}",
        "identifier": _identifier(eid),
        "status": "requested",
        "intent": "order",
        "code": _kind_concept(esc),
        "description": esc["text"],
    }
    if esc["kind"] is Kind.VISIT_OVERDUE and esc["related_request_id"]:
        task["focus"] = {"reference": f"ServiceRequest/sr-{esc['related_request_id']}"}
    task |= {
        "for": patient,
        "authoredOn": esc["occurred_at"],
        "requester": _requester(esc),
        "restriction": {"period": _period(esc)},
        "note": _notes(esc),
    }
    if esc["kind"] is Kind.SURVEY_OVERDUE:
        task["input"] = [
            {
                "type": {"text": "questionnaire"},
                "valueCanonical": f"{QUESTIONNAIRE_URL}|{QUESTIONNAIRE_VERSION}",
            }
        ]
    return task


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    """A PUT entry. FHIR wants a fullUrl on every entry with a resource (HAPI's validator: "Bundle
    entry missing fullUrl"); stepcare does not know the server's base, so it is a urn:uuid, the
    same for the same resource in every Bundle (version 5, from the placeholder namespace)."""
    url = f"{resource['resourceType']}/{resource['id']}"
    full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{BASE_URL}/{url}')}"
    return {"fullUrl": full_url, "resource": resource, "request": {"method": "PUT", "url": url}}


def _status_patch(resource_type: str, resource_id: str, status: str) -> dict[str, Any]:
    operation = [
        {"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": f"{resource_type}.status"},
        {"name": "value", "valueCode": status},
    ]
    return {
        "resource": {
            "resourceType": "Parameters",
            "parameter": [{"name": "operation", "part": operation}],
        },
        "request": {"method": "PATCH", "url": f"{resource_type}/{resource_id}"},
    }
