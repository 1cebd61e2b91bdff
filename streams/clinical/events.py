"""Patient events: their types, validation of the JSON rendering (DESIGN §3), and event times.

A ``PatientEvent`` that leaves this module is valid: known type, RFC 3339 UTC time, a FACT-L
survey whose responses were checked and scored (scoring is validation: an unknown item code or
a response outside 0-4 is an ``EventError``). The engine can therefore never fail on an event.
Times are kept as integer milliseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from streams.clinical.scoring import FactLScore, ScoringError, score_fact_l

DAY_MS = 86_400_000
MIN_TIME = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_TIME = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# Events are accepted up to 9899, so that deadlines (at most 3 policy durations of at most 10
# years each, streams.clinical.policy.MAX_DAYS) still fall within year 9999 and can be rendered.
MAX_EVENT_TIME = 250_246_627_200_000  # 9900-01-01T00:00:00Z


class EventType(StrEnum):
    SURVEY_SUBMITTED = "SURVEY_SUBMITTED"
    ENROLLED = "ENROLLED"
    TREATMENT_CHANGED = "TREATMENT_CHANGED"
    HOSPITAL_ADMITTED = "HOSPITAL_ADMITTED"
    HOSPITAL_DISCHARGED = "HOSPITAL_DISCHARGED"
    PALLIATIVE_VISIT_COMPLETED = "PALLIATIVE_VISIT_COMPLETED"
    DISENROLLED = "DISENROLLED"
    DECEASED = "DECEASED"
    CLOCK_TICK = "CLOCK_TICK"  # control record: advances a partition's clock, nothing else


class EventError(ValueError):
    """The event is not valid input; the message is the reason (dead letter / rejects report)."""


@dataclass(frozen=True, slots=True)
class Survey:
    instrument: str
    version: str
    responses: Mapping[str, int | None]
    scores: FactLScore  # computed once, when the event is read


@dataclass(frozen=True, slots=True)
class PatientEvent:
    event_id: str
    patient_id: str
    occurred_at: int  # ms since the epoch, UTC
    type: EventType
    source: str | None = None
    survey: Survey | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


# -- times ------------------------------------------------------------------------------------

# RFC 3339 §5.6 date-time, with ASCII digits only ([0-9]: \d and int() accept other digits,
# signs, spaces and underscores). "T" and "Z" may be lower case (ABNF strings are case-blind).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# The common shape of the hot path: whole seconds, UTC (2024-03-01T09:30:00Z).
_UTC_SECONDS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
_utc_seconds = _UTC_SECONDS.fullmatch
NOT_RFC3339 = "timestamp is not RFC 3339 (e.g. 2024-03-01T09:30:00Z)"


def parse_time(text: object) -> int:
    """An RFC 3339 date-time (``2024-03-01T09:30:00Z``) in ms since the epoch, UTC.

    Exactly RFC 3339 §5.6: ``full-date "T" full-time`` with ASCII digits; ``t`` and ``z`` as
    well as ``T`` and ``Z``; a fraction of any length, truncated to milliseconds; an offset from
    -23:59 to +23:59, normalised to UTC (the result must fall in years 0001-9999). Refused: a
    space instead of ``T`` (RFC 3339 allows it only in a note), a leap second (``:60``: times
    are ms since the epoch, which has none), and anything else. An ``EventError`` names the rule
    broken, never the text (it may reach a dead letter).
    """
    # Speed (replay, measured on bench/replay.py's log: parse_time 4.3 -> 0.6 us): the common
    # shape, whole seconds in UTC (2024-03-01T09:30:00Z), is its date and its time of day, each
    # looked up in a table of the ones already seen and checked; anything else, or a part not
    # yet seen, takes the full parser (which fills the tables only with valid parts).
    if type(text) is str and len(text) == 20 and text[10] == "T" and text[19] == "Z":
        day = _DATES.get(text[:10])
        if day is not None:
            minute = _MINUTES.get(text[11:16])
            second = _SECONDS.get(text[16:19])
            if minute is not None and second is not None:
                return day + minute + second
    return _parse_time_slow(text)


# The tables of parse_time's fast path: "YYYY-MM-DD" -> ms at its midnight, filled only with
# the dates of valid times (by _parse_time_slow) and cleared when there are _DATES_LIMIT of
# them (27 years of days); every "HH:MM" -> ms since midnight, every ":SS" -> ms.
_DATES: dict[str, int] = {}
_DATES_LIMIT = 10_000
_MINUTES = {f"{h:02d}:{m:02d}": (h * 60 + m) * 60_000 for h in range(24) for m in range(60)}
_SECONDS = {f":{s:02d}": s * 1000 for s in range(60)}


def _parse_time_slow(text: object) -> int:
    match = _utc_seconds(text) if type(text) is str else None
    if match is not None:
        y, mo, d, h, mi, s = match.groups()
        year, month, day = int(y), int(mo), int(d)
        hour, minute, second = int(h), int(mi), int(s)
        if (
            year >= 1 and 1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)
            and hour < 24 and minute < 60 and second < 60
        ):  # fmt: skip
            midnight = _days_from_civil(year, month, day) * DAY_MS
            of_day = (hour * 3600 + minute * 60 + second) * 1000
            assert type(text) is str  # for mypy: matched above
            if len(_DATES) >= _DATES_LIMIT:
                _DATES.clear()
            _DATES[text[:10]] = midnight
            return midnight + of_day
    if not isinstance(text, str):
        raise EventError(f"timestamp must be an RFC 3339 string, got {type(text).__name__}")
    match = _RFC3339.fullmatch(text)
    if not match:
        raise EventError(NOT_RFC3339)
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    if year == 0:
        raise EventError("timestamp is outside years 0001-9999 in UTC")
    if not 1 <= month <= 12:
        raise EventError("timestamp month is not 01-12")
    if not 1 <= day <= _days_in_month(year, month):
        raise EventError("timestamp day is not a day of its month")
    if second == 60 and hour < 24 and minute < 60:
        raise EventError("timestamp has a leap second (:60); times in ms since the epoch have none")
    if hour > 23 or minute > 59 or second > 59:
        raise EventError("timestamp time of day is not 00:00:00-23:59:59")
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    ms = seconds * 1000 + int(match[7][:3].ljust(3, "0") if match[7] else 0)
    if match[8]:
        offset_hours, offset_minutes = int(match[9]), int(match[10])
        if offset_hours > 23 or offset_minutes > 59:
            raise EventError("timestamp offset is not within -23:59 to +23:59")
        offset = (offset_hours * 60 + offset_minutes) * 60_000
        ms -= offset if match[8] == "+" else -offset
        if not MIN_TIME <= ms <= MAX_TIME:  # format_time writes these as years 0 and 10000
            raise EventError("timestamp is outside years 0001-9999 in UTC")
    return ms


def format_time(ms: int) -> str:
    """RFC 3339 UTC with a ``Z``; milliseconds only when they are not zero."""
    # Speed (replay: 2.9 -> 0.7 us): the date and the time of day come from tables of the
    # ones already written (bounded as parse_time's).
    seconds, millis = divmod(ms, 1000)
    days, second_of_day = divmod(seconds, 86400)
    date = _DATE_TEXTS.get(days)
    if date is None:
        if len(_DATE_TEXTS) >= _DATES_LIMIT:
            _DATE_TEXTS.clear()
        year, month, day = _civil_from_days(days)
        date = _DATE_TEXTS[days] = f"{year:04d}-{month:02d}-{day:02d}T"
    clock = _TIME_TEXTS.get(second_of_day)
    if clock is None:
        hour, rest = divmod(second_of_day, 3600)
        minute, second = divmod(rest, 60)
        clock = _TIME_TEXTS[second_of_day] = f"{hour:02d}:{minute:02d}:{second:02d}"
    return f"{date}{clock}.{millis:03d}Z" if millis else f"{date}{clock}Z"


_DATE_TEXTS: dict[int, str] = {}  # day since the epoch -> "YYYY-MM-DDT"
_TIME_TEXTS: dict[int, str] = {}  # second of the day -> "HH:MM:SS"


# Proleptic Gregorian day numbers (H. Hinnant's algorithms): no datetime on the hot path.
def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


# -- JSON rendering ---------------------------------------------------------------------------

_FIELDS = frozenset(
    {"event_id", "patient_id", "occurred_at", "type", "source", "survey", "attributes"}
)
_SURVEY_FIELDS = frozenset({"instrument", "version", "responses"})
MAX_ID_LENGTH = 128


_TYPES = {t.value: t for t in EventType}


def event_from_json(obj: Any) -> PatientEvent:
    """Validate one decoded JSON object as a PatientEvent; ``EventError`` says what is wrong."""
    if type(obj) is not dict:
        raise EventError(f"an event is a JSON object, not {type(obj).__name__}")
    if not _FIELDS.issuperset(obj):
        raise EventError(unknown_field(obj, _FIELDS, "field", "PatientEvent"))
    type_name = obj.get("type")
    kind = _TYPES.get(type_name) if type(type_name) is str else None
    if kind is None:
        raise EventError(f"unknown event type (type must be one of {', '.join(_TYPES)})")
    occurred_at = parse_time(obj.get("occurred_at"))
    if occurred_at >= MAX_EVENT_TIME:
        raise EventError("occurred_at is after the year 9899")
    tick = kind is EventType.CLOCK_TICK
    patient_id = _identifier(obj, "patient_id", allow_empty=tick)
    if tick and patient_id:
        raise EventError("a CLOCK_TICK has an empty patient_id")
    event_id = _identifier(obj, "event_id", allow_empty=tick)
    source = obj.get("source")
    if source is not None and type(source) is not str:
        raise EventError("source must be a string")
    attributes = attributes_of(obj)
    survey = obj.get("survey")
    if kind is EventType.SURVEY_SUBMITTED:
        survey = _survey(survey)
    elif survey is not None:
        raise EventError(f"a {kind} event carries no survey")
    return PatientEvent(event_id, patient_id, occurred_at, kind, source, survey, attributes)


def unknown_field(obj: dict[str, Any], known: frozenset[str], noun: str, record: str) -> str:
    """The message for an object with a field not in ``known``: its position, not its name
    (a name is input, and could be anything: messages reach logs and dead-letter headers)."""
    position = next(i for i, name in enumerate(obj, 1) if name not in known)
    allowed = ", ".join(sorted(known))
    return f"unknown {noun} at position {position} (not a {record} field: {allowed})"


def attributes_of(obj: dict[str, Any]) -> dict[str, str]:
    """The event's ``attributes``: absent is empty; anything but strings to strings is refused."""
    attributes = obj.get("attributes")
    if attributes is None:
        return {}
    if type(attributes) is not dict or not all(
        type(k) is str and type(v) is str for k, v in attributes.items()
    ):
        raise EventError("attributes must map strings to strings")
    return attributes


def _identifier(obj: dict[str, Any], name: str, *, allow_empty: bool) -> str:
    value = obj.get(name, "" if allow_empty else None)
    if type(value) is not str or (not value and not allow_empty):
        raise EventError(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise EventError(f"{name} is longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():  # NUL etc.: the worker's and faust's own table keys use them
        raise EventError(f"{name} contains a control character")
    return value


def _survey(obj: Any) -> Survey:
    if not isinstance(obj, dict):
        raise EventError("a SURVEY_SUBMITTED event needs a survey object")
    if not _SURVEY_FIELDS.issuperset(obj):
        raise EventError(unknown_field(obj, _SURVEY_FIELDS, "survey field", "survey"))
    instrument = obj.get("instrument")
    if instrument != "FACT-L":
        raise EventError("survey instrument is not FACT-L")
    version = obj.get("version", "4")
    if version != "4":
        raise EventError("survey version is not supported (FACT-L version 4 is)")
    responses = obj.get("responses")
    if not isinstance(responses, dict):
        raise EventError("survey responses must be an object of item codes")
    try:
        scores = score_fact_l(responses)
    except ScoringError as exc:
        raise EventError(str(exc)) from None
    return Survey(instrument, version, responses, scores)


def event_to_json(event: PatientEvent) -> dict[str, Any]:
    """The JSON rendering of an event (the inverse of ``event_from_json``)."""
    obj: dict[str, Any] = {
        "event_id": event.event_id,
        "patient_id": event.patient_id,
        "occurred_at": format_time(event.occurred_at),
        "type": str(event.type),
    }
    if event.source is not None:
        obj["source"] = event.source
    if event.survey is not None:
        obj["survey"] = {
            "instrument": event.survey.instrument,
            "version": event.survey.version,
            "responses": dict(event.survey.responses),
        }
    if event.attributes:
        obj["attributes"] = dict(event.attributes)
    return obj
