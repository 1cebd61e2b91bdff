"""Escalations: what stepcare asks of the palliative-care team, and their deterministic ids.

An escalation is one of the kinds below. Five of them ask for a palliative-care visit
(:data:`VISIT_REQUEST_KINDS`): each opens the patient's one visit request, replacing any open
one. The others report on a request (VISIT_OVERDUE, VISIT_REQUEST_CANCELLED) or on a missing
survey (SURVEY_OVERDUE). Every escalation's id is a UUIDv5 of what caused it, so a replay or a
redelivered event gives the same id and the scheduling system can drop duplicates.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from streams.clinical.events import format_time
from streams.clinical.policy import Policy

# Namespace of escalation ids (UUIDv5); fixed forever, or ids stop being deterministic.
ESCALATION_NAMESPACE = uuid.UUID("5b0e3f52-6c2e-4f0e-9b1e-3c1f6f1a2d47")


class Kind(StrEnum):
    INITIAL_VISIT_DUE = "INITIAL_VISIT_DUE"
    STEP_UP = "STEP_UP"
    TREATMENT_CHANGE_VISIT_DUE = "TREATMENT_CHANGE_VISIT_DUE"
    POST_DISCHARGE_VISIT_DUE = "POST_DISCHARGE_VISIT_DUE"
    MONTHLY_VISIT_DUE = "MONTHLY_VISIT_DUE"
    VISIT_OVERDUE = "VISIT_OVERDUE"
    SURVEY_OVERDUE = "SURVEY_OVERDUE"
    VISIT_REQUEST_CANCELLED = "VISIT_REQUEST_CANCELLED"


VISIT_REQUEST_KINDS: frozenset[Kind] = frozenset(
    {
        Kind.INITIAL_VISIT_DUE,
        Kind.STEP_UP,
        Kind.TREATMENT_CHANGE_VISIT_DUE,
        Kind.POST_DISCHARGE_VISIT_DUE,
        Kind.MONTHLY_VISIT_DUE,
    }
)
"""The kinds that ask for a palliative-care visit (and replace the open request): what the
trial counts as visits requested, and what a FHIR ServiceRequest is made of."""


@dataclass(frozen=True, slots=True)
class Reason:
    """Why an escalation was sent: the numbers where there are any, and one sentence."""

    text: str
    instrument: str | None = None
    baseline: float | None = None
    score: float | None = None
    change: float | None = None
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Escalation:
    escalation_id: str
    patient_id: str
    kind: Kind
    care_step: int
    occurred_at: int
    due_by: int | None
    trigger_event_id: str | None
    policy_id: str
    policy_version: int
    reason: Reason
    # The visit request this escalation is about, by its escalation_id: the one a STEP_UP
    # replaces, a VISIT_OVERDUE reports, a VISIT_REQUEST_CANCELLED cancels (else None).
    related_request_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON rendering of DESIGN §3 (field order as documented)."""
        obj: dict[str, Any] = {
            "escalation_id": self.escalation_id,
            "patient_id": self.patient_id,
            "kind": str(self.kind),
            "care_step": self.care_step,
            "occurred_at": format_time(self.occurred_at),
            "due_by": None if self.due_by is None else format_time(self.due_by),
            "trigger_event_id": self.trigger_event_id,
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "reason": {
                "instrument": self.reason.instrument,
                "baseline": self.reason.baseline,
                "score": self.reason.score,
                "change": self.reason.change,
                "threshold": self.reason.threshold,
                "text": self.reason.text,
            },
        }
        if self.related_request_id is not None:
            obj["related_request_id"] = self.related_request_id
        return obj


def escalation_id(patient_id: str, kind: Kind, trigger: str, policy: Policy) -> str:
    """UUIDv5 of ``patient_id|kind|trigger|policy_id|policy_version`` (trigger: event id, or
    the deadline in RFC 3339 for timer-fired kinds): a replay or redelivery gives the same id."""
    name = f"{patient_id}|{kind}|{trigger}|{policy.policy_id}|{policy.policy_version}"
    # uuid.uuid5 without its object overhead (RFC 4122 §4.3: SHA-1, version 5, variant 10).
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE_BYTES = ESCALATION_NAMESPACE.bytes
