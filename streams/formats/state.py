"""Compact, versioned binary encoding of a patient's engine state (the Faust table's values).

Format version 1, little-endian::

    u8 version (1) | u8 flags | u8 more flags | [fields present by flag, in this order]
    enrolled_at i64 | baseline f64, baseline_key u64 | last_survey_at i64 | survey_due i64 |
    request: u8 kind, i64 due_by, 16-byte escalation id |
    u8 n, n x recent event key u64 | u8 n, n x held (i64 at, f64 total, u64 key) |
    u8 n, n x rolling total (i64 at, f64 total)

An ended patient is three bytes. A new version must keep decoding every older one
(``tests/unit/formats/test_state.py`` holds a frozen version-1 encoding).
"""

from __future__ import annotations

import struct
import uuid

from streams.clinical.engine import HeldSurvey, OpenRequest, PatientState
from streams.clinical.escalations import Kind
from streams.errors import StepcareError

VERSION = 1

_KINDS = list(Kind)
_KIND_INDEX = {kind: i for i, kind in enumerate(_KINDS)}
_I64 = struct.Struct("<q")
_F64_U64 = struct.Struct("<dQ")
_REQUEST = struct.Struct("<Bq16s")
_HELD = struct.Struct("<qdQ")
_TOTAL = struct.Struct("<qd")

# flags
_ENDED, _ENROLLED, _BASELINE, _LAST_SURVEY, _SURVEY_DUE, _REQUEST_OPEN = (4, 8, 16, 32, 64, 128)
# more flags
_OVERDUE_SENT, _BASELINE_KEY = (1, 2)


class StateDecodeError(StepcareError, ValueError):
    """The bytes are not an encoded patient state of a known version."""


def encode_state(state: PatientState) -> bytes:
    flags = state.care_step
    more = 0
    parts: list[bytes] = []
    if state.ended:
        return bytes((VERSION, _ENDED, 0))
    if state.enrolled_at is not None:
        flags |= _ENROLLED
        parts.append(_I64.pack(state.enrolled_at))
    if state.baseline is not None:
        flags |= _BASELINE
        if state.baseline_key is not None:
            more |= _BASELINE_KEY
        parts.append(_F64_U64.pack(state.baseline, state.baseline_key or 0))
    if state.last_survey_at is not None:
        flags |= _LAST_SURVEY
        parts.append(_I64.pack(state.last_survey_at))
    if state.survey_due is not None:
        flags |= _SURVEY_DUE
        parts.append(_I64.pack(state.survey_due))
    if state.request is not None:
        flags |= _REQUEST_OPEN
        if state.request.overdue_sent:
            more |= _OVERDUE_SENT
        request = state.request
        parts.append(
            _REQUEST.pack(
                _KIND_INDEX[request.kind], request.due_by, uuid.UUID(request.escalation_id).bytes
            )
        )
    parts.append(bytes((len(state.recent),)))
    parts.append(struct.pack(f"<{len(state.recent)}Q", *state.recent))
    parts.append(bytes((len(state.held),)))
    parts.extend(_HELD.pack(h.occurred_at, h.total, h.event_key) for h in state.held)
    parts.append(bytes((len(state.totals),)))
    parts.extend(_TOTAL.pack(at, total) for at, total in state.totals)
    return bytes((VERSION, flags, more)) + b"".join(parts)


def decode_state(data: bytes) -> PatientState:
    if len(data) < 3:
        raise StateDecodeError(f"{len(data)} bytes is too short for a patient state")
    if data[0] != VERSION:
        raise StateDecodeError(f"unknown state encoding version {data[0]}")
    try:
        return _decode_v1(data)
    except (struct.error, IndexError, ValueError) as exc:
        raise StateDecodeError(f"corrupt version-1 state: {exc}") from None


def _decode_v1(data: bytes) -> PatientState:
    flags, more = data[1], data[2]
    if flags & _ENDED:
        return PatientState(ended=True)
    pos = 3
    enrolled_at = baseline = baseline_key = last_survey_at = survey_due = request = None
    if flags & _ENROLLED:
        (enrolled_at,) = _I64.unpack_from(data, pos)
        pos += 8
    if flags & _BASELINE:
        baseline, key = _F64_U64.unpack_from(data, pos)
        baseline_key = key if more & _BASELINE_KEY else None
        pos += 16
    if flags & _LAST_SURVEY:
        (last_survey_at,) = _I64.unpack_from(data, pos)
        pos += 8
    if flags & _SURVEY_DUE:
        (survey_due,) = _I64.unpack_from(data, pos)
        pos += 8
    if flags & _REQUEST_OPEN:
        kind, due_by, eid = _REQUEST.unpack_from(data, pos)
        overdue_sent = bool(more & _OVERDUE_SENT)
        request = OpenRequest(_KINDS[kind], due_by, str(uuid.UUID(bytes=eid)), overdue_sent)
        pos += _REQUEST.size
    n = data[pos]
    recent = struct.unpack_from(f"<{n}Q", data, pos + 1)
    pos += 1 + 8 * n
    n = data[pos]
    pos += 1
    held = []
    for _ in range(n):
        held.append(HeldSurvey(*_HELD.unpack_from(data, pos)))
        pos += _HELD.size
    n = data[pos]
    pos += 1
    totals = []
    for _ in range(n):
        totals.append(_TOTAL.unpack_from(data, pos))
        pos += _TOTAL.size
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes")
    return PatientState(
        care_step=flags & 3,
        enrolled_at=enrolled_at,
        baseline=baseline,
        baseline_key=baseline_key,
        last_survey_at=last_survey_at,
        survey_due=survey_due,
        request=request,
        recent=recent,
        held=tuple(held),
        totals=tuple(totals),
    )
