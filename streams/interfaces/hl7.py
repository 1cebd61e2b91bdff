"""HL7 v2 ADT messages in: hospital admissions, discharges (and deaths) as PatientEvents.

Pure functions; the offline converter and the live bridge call :func:`adt_to_event` once per
message. ``hl7apy`` checks each message's header and segments; fields are then read by position
from the message text (hl7apy's full parse is about 30 ms a message: too slow for a feed). The
mapping rules are in docs/integration.md, "What becomes what".
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as fixed_offset
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.clinical.events import EventError, EventType, event_from_json, format_time
from streams.interfaces.errors import AdapterError, Ignored
from streams.interfaces.pseudonym import PseudonymError, Pseudonymizer

__all__ = [
    "EXPIRED_DISPOSITIONS",
    "MALFORMED",
    "AdapterError",
    "Ignored",
    "ack_message",
    "adt_to_event",
    "mllp_frame",
    "split_messages",
    "zone",
]

MALFORMED = "hl7-malformed"
ADMIT_TRIGGERS = frozenset({"A01", "A04"})
DISCHARGE_TRIGGERS = frozenset({"A03"})
UPDATE_TRIGGERS = frozenset({"A08"})  # patient information update: a death, or ignored
DEATH_WITHOUT_TIME = "hl7-death-without-time"
EXPIRED_DISPOSITIONS: tuple[str, ...] = ("20", "40", "41", "42")
MLLP_START, MLLP_END = "\x0b", "\x1c"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_TS = re.compile(
    r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?(?:([+-])(\d{2})(\d{2}))?"
)
_DATE_ONLY = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2})?)?)?([+-]\d{4})?")
_BATCH_SEGMENTS = ("FHS", "BHS", "BTS", "FTS")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def zone(name: str | tzinfo) -> tzinfo:
    """The zone of HL7 times without an offset: an IANA name (``Europe/Zurich``) or a tzinfo."""
    if isinstance(name, tzinfo):
        return name
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AdapterError("hl7-config", f"unknown time zone {name!r}") from None


# -- framing ---------------------------------------------------------------------------------


def split_messages(data: bytes | str) -> Iterator[tuple[int, str]]:
    """(line number, message) for each message of a file or stream.

    MLLP frames, when there are any, delimit messages; otherwise each ``MSH`` segment starts
    one. Batch envelopes (FHS, BHS, BTS, FTS) are skipped. Text that belongs to no message is
    yielded too (at its line), so that :func:`adt_to_event` reports it instead of it vanishing.
    Line numbers count ``\\r``, ``\\n`` and ``\\r\\n`` as line breaks, from 1.
    """
    text = _decode(data)
    if MLLP_START in text or MLLP_END in text:
        yield from _split_frames(text)
        return
    yield from _split_lines(_LINE_BREAK.split(text))


def _split_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """The messages of unframed text given line by line (without line ends)."""
    current: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.startswith(_BATCH_SEGMENTS):
            if current:
                yield start, "\r".join(current)
                current = []
            continue
        if line.startswith("MSH") and current:
            yield start, "\r".join(current)
            current = []
        if not current:
            start = number
        current.append(line)
    if current:
        yield start, "\r".join(current)


_CHUNK = 1 << 20  # characters read at a time by split_file


def split_file(fo: IO[bytes]) -> Iterator[tuple[int, str]]:
    """:func:`split_messages` of a seekable binary file, read in chunks (memory does not grow
    with the file, only with its largest message). A first pass finds the framing and the text
    encoding (UTF-8, else Latin-1), as :func:`split_messages` decides them for the whole text."""
    start = fo.tell()
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8, framed = True, False
    while chunk := fo.read(_CHUNK):
        framed = framed or b"\x0b" in chunk or b"\x1c" in chunk
        if utf8:
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                utf8 = False
        if framed and not utf8:
            break
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    fo.seek(start)
    text = io.TextIOWrapper(fo, encoding="utf-8" if utf8 else "latin-1", newline="")
    try:
        if framed:
            yield from _split_frame_stream(text)
        else:
            yield from _split_lines(line.rstrip("\r\n") for line in text)
    finally:
        text.detach()  # the caller closes the file


def _split_frame_stream(text: IO[str]) -> Iterator[tuple[int, str]]:
    """:func:`_split_frames` over a stream: cut after each frame's end, counting lines."""
    line, held, position, eof = 1, "", 0, False
    while True:
        start = held.find(MLLP_START, position)
        end = held.find(MLLP_END, start + 1) if start >= 0 else -1
        if end >= 0:
            unit, position = held[position : end + 1], end + 1
        elif not eof:
            more = text.read(_CHUNK)
            held, position, eof = held[position:] + more, 0, not more
            continue
        else:
            unit, held, position = held[position:], "", 0
        if not unit:
            return
        for number, message in _split_frames(unit):
            yield number + line - 1, message
        line += _breaks(unit)


def _split_frames(text: str) -> Iterator[tuple[int, str]]:
    line, counted = 1, 0

    def line_at(position: int) -> int:
        nonlocal line, counted
        line += _breaks(text[counted:position])
        counted = position
        return line

    position = 0
    while position < len(text):
        start = text.find(MLLP_START, position)
        outside = text[position : len(text) if start < 0 else start]
        if outside.strip(MLLP_END + " \t\r\n"):  # bytes outside any frame
            stripped = outside.lstrip(MLLP_END + " \t\r\n")
            yield line_at(position + len(outside) - len(stripped)), stripped.rstrip()
        if start < 0:
            return
        end = text.find(MLLP_END, start + 1)
        end = len(text) if end < 0 else end
        yield line_at(start), text[start + 1 : end]
        position = end + 1


def _breaks(text: str) -> int:
    return len(_LINE_BREAK.findall(text))


def mllp_frame(message: str) -> bytes:
    """A message framed for MLLP (``\\x0b`` message ``\\x1c\\r``), segments ending in ``\\r``."""
    body = "\r".join(s for s in _LINE_BREAK.split(message) if s) + "\r"
    return (MLLP_START + body + MLLP_END + "\r").encode()


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # HL7 v2 feeds default to 8-bit single-byte text


# -- one message -----------------------------------------------------------------------------


class _Message:
    """A parsed message: its segments as lists of raw fields, and its encoding characters."""

    def __init__(self, segments: list[str]) -> None:
        msh = segments[0]
        self.field_sep = msh[3]
        encoding = msh[4:8]
        self.component, self.repetition, self.escape, self.subcomponent = tuple(
            (encoding + "\x00\x00\x00\x00")[:4]
        )
        self.segments: list[tuple[str, list[str]]] = []
        for text in segments:
            fields = text.split(self.field_sep)
            if fields[0] == "MSH":  # MSH-1 is the separator itself: MSH-n is fields[n - 1]
                fields = ["MSH", self.field_sep, *fields[1:]]
            self.segments.append((fields[0], fields))

    def all(self, segment_id: str) -> list[list[str]]:
        return [fields for name, fields in self.segments if name == segment_id]

    def raw(self, fields: list[str] | None, n: int) -> str:
        """Field ``n`` (1-based) of a segment, as sent; "" when absent."""
        if fields is None or n >= len(fields):
            return ""
        return fields[n]

    def component_of(self, value: str, n: int, sub: int | None = None) -> str:
        """Component ``n`` (1-based) of a field repetition, unescaped (subcomponent ``sub``)."""
        parts = value.split(self.component)
        text = parts[n - 1] if n <= len(parts) else ""
        if sub is not None:
            subs = text.split(self.subcomponent)
            text = subs[sub - 1] if sub <= len(subs) else ""
        return self.unescape(text)

    def repetitions(self, value: str) -> list[str]:
        return value.split(self.repetition) if value else []

    def unescape(self, text: str) -> str:
        e = self.escape
        if not text or e == "\x00" or e not in text:
            return text
        names = {
            "F": self.field_sep,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": e,
        }

        def replace(match: re.Match[str]) -> str:
            body = match.group(1)
            if body in names:
                return names[body]
            if body[:1] == "X" and re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", body):
                return bytes.fromhex(body[1:]).decode("latin-1")
            return ""  # formatting (\.br\, \H\ ...) carries no meaning in an identifier or time

        return re.sub(re.escape(e) + r"([^" + re.escape(e) + r"]*)" + re.escape(e), replace, text)


def _malformed(detail: str) -> AdapterError:
    return AdapterError(MALFORMED, detail)


def _segments(message: str | bytes) -> list[str]:
    text = _decode(message).strip()
    if text.startswith(MLLP_START):
        text = text[1:]
    if text.endswith(MLLP_END):
        text = text[:-1]
    text = text.strip()
    if MLLP_START in text or MLLP_END in text:
        raise _malformed("more than one MLLP frame (split the stream first)")
    segments = [s for s in _LINE_BREAK.split(text) if s.strip()]
    if not segments:
        raise _malformed("empty message")
    if not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise _malformed("a message starts with an MSH segment and its encoding characters")
    for number, segment in enumerate(segments, start=1):
        if not _SEGMENT_ID.fullmatch(segment[:3]) or (
            len(segment) > 3 and segment[3] != segments[0][3]
        ):
            raise _malformed(f"segment {number} does not start with a segment id (3 characters)")
    return segments


def _check(segments: list[str]) -> None:
    """Let hl7apy check the header (MSH encoding characters, a supported version) and that
    every segment is one of that version (or a site-defined Z segment). hl7apy's full parse is
    not used: it builds an object per component, about 30 ms for one ADT message."""
    from hl7apy import check_version, find_reference
    from hl7apy.core import Segment
    from hl7apy.exceptions import HL7apyException, UnsupportedVersion
    from hl7apy.parser import get_message_info

    try:
        _, _, version = get_message_info("\r".join(segments))
        check_version(version)
    except UnsupportedVersion:
        if not version:
            raise _malformed("MSH-12 (version id) is empty") from None
        raise _malformed(
            "MSH-12 (version id) is not a supported HL7 version (2.1 to 2.8.2)"
        ) from None
    except Exception as exc:  # a third-party parser on untrusted input: never crash the bridge
        raise _malformed(f"not a valid MSH segment ({type(exc).__name__})") from None
    for number, segment in enumerate(segments, start=1):
        name = segment[:3]
        if name.startswith("Z"):
            continue
        try:
            find_reference(name, (Segment,), version)
        except HL7apyException:
            raise _malformed(f"segment {number} ({name}) is not an HL7 {version} segment") from None


def adt_to_event(
    message: str | bytes,
    pseudonymizer: Pseudonymizer,
    *,
    timezone: str | tzinfo = "UTC",
    inpatient_classes: Collection[str] = ("I",),
    expired_dispositions: Collection[str] = EXPIRED_DISPOSITIONS,
    identifier_type: str | None = None,
    authority_systems: Mapping[str, str] | None = None,
    source: str = "adt",
) -> dict[str, Any] | Ignored:
    """The PatientEvent (JSON rendering) of one ADT message, or :class:`Ignored`.

    Raises :class:`AdapterError` (reasons ``hl7-malformed``, ``hl7-death-without-time``: an A08
    with PID-30 = Y and no PID-29). ``Ignored`` reasons: ``hl7-not-adt`` (another message
    type), ``hl7-ignored-trigger`` (an ADT event other than A01, A03, A04, or an A08 that
    reports no death), ``hl7-not-inpatient`` (an A03 of a patient class not in
    ``inpatient_classes``); the detail is the message type (``ADT^A08``).
    """
    local = zone(timezone)
    segments = _segments(message)
    _check(segments)
    msg = _Message(segments)
    msh = msg.all("MSH")[0]
    if len(msg.all("MSH")) > 1:
        raise _malformed("more than one MSH segment (one message at a time)")
    evns = msg.all("EVN")
    evn = evns[0] if evns else None

    message_type = msg.raw(msh, 9)
    code = msg.component_of(message_type, 1)
    trigger = msg.component_of(message_type, 2) or msg.component_of(msg.raw(evn, 1), 1)
    if not code:
        raise _malformed("MSH-9 (message type) is empty")
    name = f"{code}^{trigger}" if trigger else code
    if code != "ADT":
        return Ignored("hl7-not-adt", name[:20])
    if trigger in UPDATE_TRIGGERS:
        pids = msg.all("PID")
        if len(pids) != 1 or msg.component_of(msg.raw(pids[0], 30), 1).upper() != "Y":
            return Ignored("hl7-ignored-trigger", name[:20])  # an update, not a death
        return _update_death(msg, msh, pids[0], name, trigger, pseudonymizer, local,
                             identifier_type, authority_systems or {}, source)  # fmt: skip
    if trigger not in ADMIT_TRIGGERS | DISCHARGE_TRIGGERS:
        return Ignored("hl7-ignored-trigger", name[:20])

    control_id = msg.unescape(msg.raw(msh, 10))
    if not control_id:
        raise _malformed("MSH-10 (message control id) is empty")
    if evn is None:
        raise _malformed(f"{name} without an EVN segment")
    pids, pv1s = msg.all("PID"), msg.all("PV1")
    if len(pids) != 1:
        raise _malformed(f"{name} needs one PID segment, it has {len(pids)}")
    if len(pv1s) != 1:
        raise _malformed(f"{name} needs one PV1 segment, it has {len(pv1s)}")
    pid, pv1 = pids[0], pv1s[0]

    patient_id = _patient(msg, pid, pseudonymizer, identifier_type, authority_systems or {})
    patient_class = msg.component_of(msg.raw(pv1, 2), 1)
    admit = trigger in ADMIT_TRIGGERS
    times: list[tuple[str, list[str] | None, int]] = [
        ("PV1-44", pv1, 44) if admit else ("PV1-45", pv1, 45),
        ("EVN-6", evn, 6),
        ("EVN-2", evn, 2),
    ]
    occurred_at = _first_time(msg, times, local)
    event_type = EventType.HOSPITAL_ADMITTED if admit else EventType.HOSPITAL_DISCHARGED

    if not admit:
        died = msg.component_of(msg.raw(pid, 30), 1).upper() == "Y"
        disposition = msg.component_of(msg.raw(pv1, 36), 1)
        if died or disposition in expired_dispositions:
            event_type = EventType.DECEASED
            death = _first_time(msg, [("PID-29", pid, 29)], local, required=False)
            occurred_at = death if death is not None else occurred_at
        elif patient_class and patient_class not in inpatient_classes:
            return Ignored("hl7-not-inpatient", f"{name} patient class {patient_class[:5]}")

    assert occurred_at is not None  # _first_time(required=True) raised otherwise
    sender = f"{msg.raw(msh, 3)}|{msg.raw(msh, 4)}"
    attributes = {"hl7_trigger": trigger}
    if patient_class:
        attributes["patient_class"] = patient_class[:5]
    event = {
        "event_id": "hl7-" + pseudonymizer.token("hl7", f"{sender}|{control_id}"),
        "patient_id": patient_id,
        "occurred_at": format_time(occurred_at),
        "type": str(event_type),
        "source": source,
        "attributes": attributes,
    }
    try:
        event_from_json(event)
    except EventError as exc:  # cannot happen for what is built above; never publish it
        raise _malformed(str(exc)) from None
    return event


def _update_death(
    msg: _Message,
    msh: list[str],
    pid: list[str],
    name: str,
    trigger: str,
    pseudonymizer: Pseudonymizer,
    local: tzinfo,
    identifier_type: str | None,
    authority_systems: Mapping[str, str],
    source: str,
) -> dict[str, Any]:
    """The ``DECEASED`` event of an update (A08) whose PID-30 (death indicator) is ``Y``: at
    PID-29 (death date/time), which it must carry: the update's own time is when the record was
    changed, not when the patient died."""
    control_id = msg.unescape(msg.raw(msh, 10))
    if not control_id:
        raise _malformed("MSH-10 (message control id) is empty")
    died_at = _first_time(msg, [("PID-29", pid, 29)], local, required=False)
    if died_at is None:
        raise AdapterError(
            DEATH_WITHOUT_TIME,
            f"{name} with PID-30 (death indicator) Y and no PID-29 (death date/time)",
        )
    patient_id = _patient(msg, pid, pseudonymizer, identifier_type, authority_systems)
    sender = f"{msg.raw(msh, 3)}|{msg.raw(msh, 4)}"
    event = {
        "event_id": "hl7-" + pseudonymizer.token("hl7", f"{sender}|{control_id}"),
        "patient_id": patient_id,
        "occurred_at": format_time(died_at),
        "type": str(EventType.DECEASED),
        "source": source,
        "attributes": {"hl7_trigger": trigger},
    }
    try:
        event_from_json(event)
    except EventError as exc:  # cannot happen for what is built above; never publish it
        raise _malformed(str(exc)) from None
    return event


def _patient(
    msg: _Message,
    pid: list[str],
    pseudonymizer: Pseudonymizer,
    identifier_type: str | None,
    authority_systems: Mapping[str, str],
) -> str:
    repetitions = [r for r in msg.repetitions(msg.raw(pid, 3)) if msg.component_of(r, 1)]
    if identifier_type:
        repetitions = [r for r in repetitions if msg.component_of(r, 5) == identifier_type]
        if not repetitions:
            raise _malformed(f"PID-3 has no identifier of type {identifier_type!r} (CX-5)")
    if not repetitions:
        raise _malformed("PID-3 (patient identifier list) is empty")
    cx = repetitions[0]
    value = msg.component_of(cx, 1)
    namespace, universal, kind = (msg.component_of(cx, 4, sub) for sub in (1, 2, 3))
    system = authority_systems.get(namespace) or authority_systems.get(universal)
    if not system:
        if universal and kind.upper() == "ISO":
            system = f"urn:oid:{universal}"
        elif universal and kind.upper() == "UUID":
            system = f"urn:uuid:{universal.lower()}"
        else:
            system = universal or namespace
    if not system:
        raise _malformed("PID-3 identifier has no assigning authority (CX-4)")
    try:
        return pseudonymizer.patient_id(system, value)
    except PseudonymError as exc:
        raise _malformed(f"PID-3: {exc}") from None


def _first_time(
    msg: _Message,
    fields: list[tuple[str, list[str] | None, int]],
    zone: tzinfo,
    *,
    required: bool = True,
) -> int | None:
    """The first non-empty time of ``fields``; every non-empty one must be a valid time."""
    found = None
    for label, segment, n in fields:
        value = msg.component_of(msg.raw(segment, n), 1)  # TS: time ^ degree of precision
        if value:
            moment = _timestamp(label, value, zone)
            found = moment if found is None else found
    if found is None and required:
        raise _malformed(f"no event time: {', '.join(label for label, _, _ in fields)} are empty")
    return found


def _timestamp(label: str, value: str, zone: tzinfo) -> int:
    match = _TS.fullmatch(value)
    if match is None:
        if _DATE_ONLY.fullmatch(value):
            raise _malformed(f"{label} has no time of day (hours and minutes)")
        raise _malformed(f"{label} is not an HL7 timestamp (YYYYMMDDHHMM[SS][+ZZZZ])")
    year, month, day, hour, minute = (int(g) for g in match.group(1, 2, 3, 4, 5))
    second = int(match[6] or 0)
    micro = int((match[7] or "0").ljust(6, "0"))
    try:
        if match[8]:
            offset = timedelta(hours=int(match[9]), minutes=int(match[10]))
            tz: tzinfo = fixed_offset(offset if match[8] == "+" else -offset)
        else:
            tz = zone
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        raise _malformed(f"{label} is not a valid date and time of day") from None
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# -- acknowledgements ------------------------------------------------------------------------


def ack_message(message: str | bytes, code: str, *, timestamp_ms: int, text: str = "") -> str:
    """An ACK for ``message`` (MSA-1 ``AA``, ``AE`` or ``AR``), segments ending in ``\\r``.

    For the live MLLP listener: it echoes MSH-10 in MSA-2 and swaps sender and receiver.
    ``timestamp_ms`` is MSH-7 (the caller's clock: this module has none). If ``message`` is too
    broken to read an MSH from, the ACK has an empty MSA-2.
    """
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"ACK code {code!r} is not AA, AE or AR")
    unreadable = ["MSH", "|", "^~\\&"]
    try:
        msh = _Message(_segments(message)).all("MSH")[0]
    except AdapterError:
        msh = unreadable
    if len(msh) < 3 or not msh[2]:  # no encoding characters to answer in
        msh = unreadable
    sep, encoding = msh[1], msh[2]

    def get(n: int) -> str:
        return msh[n] if n < len(msh) else ""

    trigger = get(9).split(encoding[0])[1] if encoding[0] in get(9) else ""
    control = get(10)
    header = [
        "MSH", encoding, get(5), get(6), get(3), get(4),
        datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y%m%d%H%M%S+0000"), "",
        encoding[0].join(("ACK", trigger, "ACK")) if trigger else "ACK",
        f"ACK{control}"[:20], get(11) or "P", get(12) or "2.5",
    ]  # fmt: skip
    msa = ["MSA", code, control]
    if text:
        msa.append(re.sub(r"[\r\n" + re.escape(sep + encoding) + "]", " ", text)[:80])
    return sep.join(header) + "\r" + sep.join(msa) + "\r"
