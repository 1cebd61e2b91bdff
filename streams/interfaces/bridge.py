"""Hospital interfaces: FHIR and HL7 v2 in as PatientEvents, FHIR out; files, or live on Kafka.

``stepcare bridge fhir-import`` turns FHIR R4 ``QuestionnaireResponse`` resources (a directory
of ``.json``/``.ndjson`` files, one NDJSON file as a Bulk Data export writes it, or one JSON
resource or Bundle) into a PatientEvent log (JSONL). ``stepcare bridge hl7-import`` does the same
for HL7 v2 ADT messages (a file or a directory of files; MLLP frames or plain segments).
``stepcare bridge fhir-export`` turns an escalation log (``stepcare replay`` output) into FHIR
transaction Bundles, one per line (NDJSON). ``stepcare bridge questionnaire`` writes the FACT-L
Questionnaire resource (item codes only) to load into a FHIR server.

Patient identifiers are replaced by pseudonymous ids (``streams.interfaces.pseudonym``): the
imports need the site secret in ``STEPCARE_PSEUDONYM_SECRET_FILE`` or
``STEPCARE_PSEUDONYM_SECRET``. Input the adapters refuse is reported on stderr (``FILE:LINE:
reason: detail``, never an identifier) and skipped, or with ``--rejects FILE`` written there as
JSONL; a summary ends the run, and the exit status is 0 unless ``--strict`` stops at the first
reject (exit 2). Events are written in input order: ``stepcare replay`` wants each patient's events
in time order, so merge the logs of several feeds by ``occurred_at`` before replaying them.

**Live bridges** (Kafka in, Kafka out, until SIGTERM or Ctrl-C):

* ``stepcare bridge fhir-in``: ``stepcare.fhir.questionnaire-responses.v1`` (one FHIR
  QuestionnaireResponse, JSON, per record; any key) to PatientEvents on
  ``stepcare.patient-events.v1``; dead letters to ``stepcare.patient-events.dlq.v1``.
* ``stepcare bridge hl7-in``: ``stepcare.hl7v2.adt.v1`` (one HL7 v2 message per record, MLLP
  framing tolerated; any key) to PatientEvents, the same way.
* ``stepcare bridge fhir-out``: escalations (``stepcare.escalations.v1``) to FHIR transaction
  Bundles on ``stepcare.escalations.fhir.v1``; dead letters to
  ``stepcare.escalations.fhir.dlq.v1``.

Events are keyed by their pseudonymous ``patient_id``, valued with their Avro single-object
encoding and stamped with ``occurred_at``, by the producer ``stepcare publish`` uses (idempotent,
``acks=all``, the Java client's murmur2 partitioner: a patient lands on the partition every other
feed puts them on). Bundles (JSON, ``application/fhir+json``) are keyed by ``patient_id`` and keep
the escalation's headers (``ce_id`` ...). Each bridge is a consumer group
(``stepcare-bridge-<name>``) reading with ``read_committed``; it commits a batch's offsets only
once the broker has acknowledged everything the batch produced: **at least once**. A redelivery
is harmless: event ids are keyed hashes of the source ids, so the engine drops a repeated event,
and a Bundle's entries are ``PUT`` requests to ids derived from the escalation id (or status
patches).
Input an adapter refuses goes, byte for byte with its key and headers, to the dead-letter topic
with ``error.reason``, ``error.detail``, ``source.topic``, ``source.partition`` and
``source.offset`` added; input it ignores (an ADT^A08 ...) is counted. A summary line (counts by
reason, never an identifier or any content) is written every ``--report-every`` seconds and at
the end.

Why plain commands and not Faust agents beside the engine: the bridges are stateless
transformations, so they need none of Faust's tables, changelogs or RocksDB; what they must get
right is the order "produce, wait for the acknowledgement, then commit", which a synchronous
confluent-kafka loop states in five lines, while a Faust agent commits on its own timer after the
agent acknowledges the record and would need its acks deferred to the produce futures; they use
the producer ``stepcare publish`` uses (murmur2 partitioning, idempotence) rather than a second,
differently configured client; and they run as separate processes, with their own Kafka users
and restart policy: only the ``-in`` bridges hold the pseudonym secret and read identifiers,
the worker never does, and a stuck or crashing interface never stalls the engine.

The pure mappings live in ``streams.interfaces.fhir`` and ``streams.interfaces.hl7``; this module
holds what they share (:class:`AdapterError`, :class:`Ignored`), the offline commands and the live
bridges.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from streams.errors import StepcareError, UsageError
from streams.interfaces.errors import AdapterError, Ignored, Where
from streams.kafka.deadletter import DEAD_LETTER_MARGIN, dead_letter_record, error_headers

if TYPE_CHECKING:
    from streams.interfaces.pseudonym import Pseudonymizer

# The live bridges' topics. Those the worker shares (its input, its dead letters, its
# escalations) default to the worker's settings, whose defaults are the names of DESIGN §2.
FHIR_RESPONSES_TOPIC = "stepcare.fhir.questionnaire-responses.v1"
HL7_ADT_TOPIC = "stepcare.hl7v2.adt.v1"
PATIENT_EVENTS_TOPIC = "stepcare.patient-events.v1"
PATIENT_EVENTS_DLQ_TOPIC = "stepcare.patient-events.dlq.v1"
ESCALATIONS_TOPIC = "stepcare.escalations.v1"
FHIR_BUNDLES_TOPIC = "stepcare.escalations.fhir.v1"
FHIR_BUNDLES_DLQ_TOPIC = "stepcare.escalations.fhir.dlq.v1"
FHIR_JSON = "application/fhir+json"
REPORT_EVERY = 60.0  # seconds between summary lines of a live bridge
BATCH = 500  # records a live bridge produces before it waits for the acks and commits
PROCESSING_ERROR = "processing-error"  # a defect of an adapter, not of the input


# -- the command ---------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    fhir_in = actions.add_parser(
        "fhir-import",
        help="FHIR QuestionnaireResponses (dir, NDJSON, JSON or Bundle) -> PatientEvent JSONL",
    )
    fhir_in.add_argument("--input", required=True, help="directory, .ndjson or .json file")
    fhir_in.add_argument("--output", required=True, help="PatientEvent log (JSONL), or -")
    fhir_in.add_argument(
        "--fhir-base",
        default="",
        help="base URL of the FHIR server the resources came from: relative subject "
        "references (Patient/123) are read as BASE/Patient/123",
    )
    fhir_in.add_argument("--source", default="fhir", help="the events' source (default fhir)")
    _common(fhir_in)
    fhir_in.set_defaults(action_handler=_fhir_import)

    hl7_in = actions.add_parser("hl7-import", help="HL7 v2 ADT messages -> PatientEvent JSONL")
    hl7_in.add_argument("--input", required=True, help="a file of messages, or a directory")
    hl7_in.add_argument("--output", required=True, help="PatientEvent log (JSONL), or -")
    hl7_in.add_argument(
        "--timezone",
        default="UTC",
        help="IANA zone of HL7 times without an offset (default UTC), e.g. America/New_York",
    )
    hl7_in.add_argument(
        "--inpatient-classes",
        default="I",
        help="PV1-2 patient classes whose A03 is a hospital discharge (comma-separated; default I)",
    )
    hl7_in.add_argument(
        "--identifier-type",
        help="use the first PID-3 identifier of this type (CX-5, e.g. MR) instead of the first",
    )
    hl7_in.add_argument("--source", default="adt", help="the events' source (default adt)")
    _common(hl7_in)
    hl7_in.set_defaults(action_handler=_hl7_import)

    fhir_out = actions.add_parser(
        "fhir-export", help="escalations (JSONL) -> FHIR transaction Bundles (NDJSON)"
    )
    fhir_out.add_argument("--input", required=True, help="escalation log (JSONL), or -")
    fhir_out.add_argument("--output", required=True, help="Bundles, one per line, or -")
    _common(fhir_out)
    fhir_out.set_defaults(action_handler=_fhir_export)

    questionnaire = actions.add_parser(
        "questionnaire", help="write the FACT-L Questionnaire (item codes only) as FHIR JSON"
    )
    questionnaire.add_argument("--output", default="-", help="file to write, or -")
    questionnaire.set_defaults(action_handler=_questionnaire)

    live_in = actions.add_parser(
        "fhir-in",
        help="live: FHIR QuestionnaireResponses from Kafka -> PatientEvents (until Ctrl-C)",
    )
    _live(live_in, "fhir-in", FHIR_RESPONSES_TOPIC, "STEPCARE_INPUT_TOPIC",
          "STEPCARE_DEAD_LETTER_TOPIC")  # fmt: skip
    live_in.add_argument(
        "--fhir-base", default="", help="base URL of the FHIR server (as for fhir-import)"
    )
    live_in.add_argument("--source", default="fhir", help="the events' source (default fhir)")

    live_hl7 = actions.add_parser(
        "hl7-in", help="live: HL7 v2 ADT messages from Kafka -> PatientEvents (until Ctrl-C)"
    )
    _live(live_hl7, "hl7-in", HL7_ADT_TOPIC, "STEPCARE_INPUT_TOPIC", "STEPCARE_DEAD_LETTER_TOPIC")
    live_hl7.add_argument(
        "--timezone", default="UTC", help="IANA zone of HL7 times without an offset (default UTC)"
    )
    live_hl7.add_argument(
        "--inpatient-classes",
        default="I",
        help="PV1-2 patient classes whose A03 is a hospital discharge (comma-separated; default I)",
    )
    live_hl7.add_argument(
        "--identifier-type", help="use the first PID-3 identifier of this type (CX-5, e.g. MR)"
    )
    live_hl7.add_argument("--source", default="adt", help="the events' source (default adt)")

    live_out = actions.add_parser(
        "fhir-out", help="live: escalations from Kafka -> FHIR transaction Bundles (until Ctrl-C)"
    )
    _live(live_out, "fhir-out", "STEPCARE_ESCALATIONS_TOPIC", FHIR_BUNDLES_TOPIC,
          FHIR_BUNDLES_DLQ_TOPIC)  # fmt: skip


def _live(
    parser: argparse.ArgumentParser, name: str, source: str, target: str, dead_letters: str
) -> None:
    """The options every live bridge has; a default named STEPCARE_* is that setting's value."""

    def default(topic: str) -> str:
        if topic in _SETTING_TOPICS:
            return f"default: {topic}, or {_SETTING_TOPICS[topic]}"
        return f"default: {topic}"

    parser.add_argument("--from-topic", help=f"topic to read ({default(source)})")
    parser.add_argument("--to-topic", help=f"topic to write ({default(target)})")
    parser.add_argument(
        "--dead-letter-topic", help=f"topic of refused input ({default(dead_letters)})"
    )
    parser.add_argument("--group", default=f"stepcare-bridge-{name}", help="consumer group id")
    parser.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap servers (default: STEPCARE_BOOTSTRAP_SERVERS)"
    )
    parser.add_argument(
        "--max-messages", type=int, help="stop after this many records (tests, backfills)"
    )
    parser.add_argument(
        "--idle-timeout", type=float, help="stop after this many seconds without a record"
    )
    parser.add_argument(
        "--report-every",
        type=float,
        default=REPORT_EVERY,
        help=f"seconds between summary lines on stderr (default {REPORT_EVERY:g})",
    )
    parser.set_defaults(action_handler=None, live=(name, source, target, dead_letters))


_SETTING_TOPICS = {
    "STEPCARE_INPUT_TOPIC": PATIENT_EVENTS_TOPIC,
    "STEPCARE_DEAD_LETTER_TOPIC": PATIENT_EVENTS_DLQ_TOPIC,
    "STEPCARE_ESCALATIONS_TOPIC": ESCALATIONS_TOPIC,
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rejects", help="also write rejects here as JSONL")
    parser.add_argument("--strict", action="store_true", help="exit 2 on the first reject")


def run(args: argparse.Namespace, settings: Any) -> int:
    if getattr(args, "live", None):
        return _run_live(args, settings)
    return int(args.action_handler(args))


class _Run:
    """Output, rejects and counts of one conversion: a context manager that commits the output
    (and rejects) files only if the conversion ends without an error (``streams.formats.files``)."""

    def __init__(self, args: argparse.Namespace, noun: str) -> None:
        from streams.formats.files import refuse_same_file

        self.args, self.noun = args, noun
        self.read = self.written = 0
        self.rejected: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.started = time.monotonic()
        inputs = [args.input] if hasattr(args, "input") else []
        refuse_same_file(inputs, [args.output, getattr(args, "rejects", None)])
        self._files = contextlib.ExitStack()
        self.rejects: IO[bytes] | None = None

    def __enter__(self) -> _Run:
        from streams.formats.files import open_output

        with self._files as files:
            self.out = files.enter_context(open_output(self.args.output))
            if getattr(self.args, "rejects", None):
                self.rejects = files.enter_context(open_output(self.args.rejects))
            self._files = files.pop_all()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._files.__exit__(*exc_info)  # commits the files, or drops them on an error
        if exc_info[0] is None:  # an error is its one line, without a summary of a lost output
            self.summarize()

    def write(self, obj: dict[str, Any]) -> None:
        self._write(self.out, self.args.output, orjson.dumps(obj) + b"\n")
        self.written += 1

    def _write(self, out: IO[bytes], name: str, data: bytes) -> None:
        from streams.formats.files import FileError

        try:
            out.write(data)
        except OSError as exc:  # not to be taken for an error reading the input
            where = "stdout" if name == "-" else name
            raise FileError(f"cannot write {where}: {exc.strerror}") from None

    def reject(self, where: Where, reason: str, detail: str) -> None:

        text = f"{where}: {reason}: {detail}"
        if self.args.strict:
            raise UsageError(text)
        self.rejected[reason] += 1
        print(text, file=sys.stderr)
        if self.rejects is not None:
            record: dict[str, Any] = {"file": where.file, "line": where.line}
            if where.entry is not None:
                record["entry"] = where.entry
            record |= {"reason": reason, "detail": detail}
            self._write(self.rejects, self.args.rejects, orjson.dumps(record) + b"\n")

    def ignore(self, ignored: Ignored) -> None:
        self.ignored[f"{ignored.reason} {ignored.detail}"] += 1

    def summarize(self) -> None:
        parts = [f"{self.read} {self.noun} read", f"{self.written} written"]
        rejected = sum(self.rejected.values())
        parts.append(f"{rejected} rejected" + _breakdown(self.rejected))
        if self.ignored:
            parts.append(f"{sum(self.ignored.values())} ignored" + _breakdown(self.ignored))
        seconds = time.monotonic() - self.started
        print(f"{self.args.action}: {', '.join(parts)} in {seconds:.1f} s", file=sys.stderr)


def _breakdown(counts: Counter[str]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"


def _fhir_import(args: argparse.Namespace) -> int:
    from streams.interfaces import fhir

    pseudonymizer = _pseudonymizer()
    paths = _files(args.input, (".json", ".ndjson", ".jsonl"), args)
    with _Run(args, "resources") as run:
        for where, item in _fhir_resources(paths):
            run.read += 1
            if isinstance(item, AdapterError):
                run.reject(where, item.reason, item.detail)
                continue
            try:
                event = fhir.questionnaire_response_to_event(
                    item, pseudonymizer, fhir_base=args.fhir_base, source=args.source
                )
            except AdapterError as exc:
                run.reject(where, exc.reason, exc.detail)
                continue
            run.write(event)
    return 0


def _hl7_import(args: argparse.Namespace) -> int:
    from streams.interfaces import hl7

    pseudonymizer = _pseudonymizer()
    classes = tuple(c.strip() for c in args.inpatient_classes.split(",") if c.strip())
    try:
        zone = hl7.zone(args.timezone)
    except AdapterError as exc:
        raise UsageError(f"--timezone: {exc.detail}") from None
    paths = _files(args.input, (".hl7", ".txt", ".er7", ".adt"), args)
    with _Run(args, "messages") as run:
        for path in paths:
            with _reading(path) as fo:
                for line, message in hl7.split_file(fo):
                    run.read += 1
                    try:
                        result = hl7.adt_to_event(
                            message,
                            pseudonymizer,
                            timezone=zone,
                            inpatient_classes=classes,
                            identifier_type=args.identifier_type,
                            source=args.source,
                        )
                    except AdapterError as exc:
                        run.reject(Where(str(path), line), exc.reason, exc.detail)
                        continue
                    if isinstance(result, Ignored):
                        run.ignore(result)
                    else:
                        run.write(result)
    return 0


def _fhir_export(args: argparse.Namespace) -> int:
    from streams.formats.files import numbered_lines
    from streams.interfaces import fhir

    with _reading(args.input) as fo, _Run(args, "escalations") as run:
        for number, obj in _json_lines(numbered_lines(fo)):
            run.read += 1
            where = Where(args.input, number)
            if isinstance(obj, AdapterError):
                run.reject(where, obj.reason, obj.detail)
                continue
            try:
                bundle = fhir.escalation_to_bundle(obj)
            except AdapterError as exc:
                run.reject(where, exc.reason, exc.detail)
                continue
            run.write(bundle)
    return 0


def _questionnaire(args: argparse.Namespace) -> int:
    from streams.formats.files import write_output
    from streams.interfaces import fhir

    write_output(args.output, fhir.questionnaire_json())
    return 0


# -- reading ---------------------------------------------------------------------------------


def _pseudonymizer() -> Pseudonymizer:
    from streams.interfaces.pseudonym import PseudonymError, Pseudonymizer

    try:
        return Pseudonymizer.from_env()
    except PseudonymError as exc:
        raise UsageError(str(exc)) from None


def _files(name: str, extensions: tuple[str, ...], args: argparse.Namespace) -> list[Path]:
    """The input file, or the files of a directory with one of ``extensions``, sorted (but not
    the output or rejects file, should they be written into that directory)."""
    from streams.formats.files import same_file

    path = Path(name)
    if path.is_dir():
        ours = [n for n in (args.output, args.rejects) if n and n != "-"]
        return sorted(
            p
            for p in path.iterdir()
            if p.is_file()
            and p.suffix.lower() in extensions
            and not any(same_file(str(p), n) for n in ours)
        )
    if not path.is_file():
        raise UsageError(f"cannot read {name}: no such file or directory")
    return [path]


@contextlib.contextmanager
def _reading(path: str | Path) -> Iterator[IO[bytes]]:
    """An input file (``-``: stdin) open for binary reading; a read error is one line."""
    from streams.formats.files import FileError, open_input

    fo = open_input(str(path))
    try:
        yield fo
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        if str(path) != "-":
            fo.close()


def _fhir_resources(paths: list[Path]) -> Iterator[tuple[Where, dict[str, Any] | AdapterError]]:
    """(where, resource) for every resource in the input; an AdapterError for text that is not
    a JSON object. A JSON file holds one resource, or a Bundle whose entries' resources count
    one by one (``entry N``); anything else is read as NDJSON, a resource a line, as a stream
    (a document over ``streams.formats.files.DOCUMENT_LIMIT`` bytes is read as NDJSON too)."""
    from streams.formats.files import Document, document_or_lines

    for path in paths:
        with _reading(path) as fo:
            found = document_or_lines(fo, orjson.loads)
            if not isinstance(found, Document):
                for number, obj in _json_lines(found):
                    yield Where(str(path), number), obj
                continue
            whole, line = found.value, found.line
            if isinstance(whole, dict) and whole.get("resourceType") == "Bundle":
                for index, entry in enumerate(whole.get("entry") or [], start=1):
                    resource = entry.get("resource") if isinstance(entry, dict) else None
                    yield (
                        Where(str(path), line, index),
                        (
                            resource
                            if isinstance(resource, dict)
                            else AdapterError("fhir-invalid", "a Bundle entry without a resource")
                        ),
                    )
            elif isinstance(whole, dict):
                yield Where(str(path), line), whole
            else:
                yield Where(str(path), line), AdapterError("fhir-invalid", "not a JSON object")


def _json_lines(
    lines: Iterable[tuple[int, bytes]],
) -> Iterator[tuple[int, dict[str, Any] | AdapterError]]:
    """(line number, object) per non-blank line; an AdapterError for one that is not an object."""
    from streams.formats.files import json_line

    for number, line in lines:
        if not line.strip():
            continue
        obj, reason = json_line(line)
        if reason is not None:
            yield number, AdapterError("not-json", reason.removeprefix("not JSON: "))
            continue
        if not isinstance(obj, dict):
            yield number, AdapterError("not-json", "a line is one JSON object")
            continue
        yield number, obj


# -- the live bridges ----------------------------------------------------------------------------


class BridgeError(StepcareError):
    """The bridge cannot go on (a record not delivered, a fatal Kafka error): exit status 1.
    Nothing of the batch in hand was committed: a restart reads it again."""


@dataclass(frozen=True, slots=True)
class Output:
    """One record a bridge writes for one record it read."""

    key: bytes
    value: bytes
    timestamp: int  # ms: the record timestamp
    headers: list[tuple[str, bytes]]


def fhir_in_record(
    value: bytes | None, pseudonymizer: Any, *, fhir_base: str = "", source: str = "fhir"
) -> Output:
    """The PatientEvent record of one QuestionnaireResponse record (``AdapterError`` if none)."""
    from streams.interfaces import fhir

    if not value:
        raise AdapterError("not-json", "the record has no value")
    try:
        resource = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise AdapterError("not-json", f"{exc.msg} (column {exc.colno})") from None
    if not isinstance(resource, dict):
        raise AdapterError("fhir-invalid", "not a JSON object")
    event = fhir.questionnaire_response_to_event(
        resource, pseudonymizer, fhir_base=fhir_base, source=source
    )
    return _event_output(event)


def hl7_in_record(
    value: bytes | None,
    pseudonymizer: Any,
    *,
    timezone: Any = "UTC",
    inpatient_classes: tuple[str, ...] = ("I",),
    identifier_type: str | None = None,
    source: str = "adt",
) -> Output | Ignored:
    """The PatientEvent record of one ADT message record, or :class:`Ignored`."""
    from streams.interfaces import hl7

    if not value:
        raise AdapterError(hl7.MALFORMED, "the record has no value")
    result = hl7.adt_to_event(
        value,
        pseudonymizer,
        timezone=timezone,
        inpatient_classes=inpatient_classes,
        identifier_type=identifier_type,
        source=source,
    )
    if isinstance(result, Ignored):
        return result
    return _event_output(result)


def _event_output(event: dict[str, Any]) -> Output:
    """A PatientEvent as its record: keyed by ``patient_id``, Avro SOE, stamped ``occurred_at``."""
    from streams.clinical.events import parse_time
    from streams.formats.avro import encode_event

    return Output(
        key=event["patient_id"].encode(),
        value=encode_event(event),
        timestamp=parse_time(event["occurred_at"]),
        headers=[],
    )


def fhir_out_record(value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> Output:
    """The transaction Bundle record of one escalation record: JSON, keyed by ``patient_id``,
    with the escalation's headers (``content-type`` becomes ``application/fhir+json``)."""
    from streams.clinical.events import parse_time
    from streams.formats.avro import CodecError, decode_escalation
    from streams.interfaces import fhir

    try:
        escalation = decode_escalation(value)  # type: ignore[arg-type]
    except CodecError as exc:
        raise AdapterError(exc.reason, str(exc)) from None
    bundle = fhir.escalation_to_bundle(escalation)
    kept = [(k, v) for k, v in headers or [] if k != "content-type"]
    return Output(
        key=escalation["patient_id"].encode(),
        value=orjson.dumps(bundle),
        timestamp=parse_time(escalation["occurred_at"]),
        headers=[*kept, ("content-type", FHIR_JSON.encode())],
    )


class LiveBridge:
    """Consume, convert, produce, wait for the acks, commit; see the module documentation."""

    def __init__(
        self,
        name: str,
        convert: Any,  # (value, headers) -> Output | Ignored, raises AdapterError
        *,
        source: str,
        target: str,
        dead_letters: str,
        consumer_config: dict[str, Any],
        producer_config: dict[str, Any],
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        report_every: float = REPORT_EVERY,
        err: IO[str] | None = None,
    ) -> None:
        self.name, self.convert = name, convert
        self.source, self.target, self.dead_letters = source, target, dead_letters
        self.consumer_config, self.producer_config = consumer_config, producer_config
        # librdkafka refuses a record above message.max.bytes: a dead letter always fits under it.
        self.dead_letter_limit = (
            int(producer_config.get("message.max.bytes", 1_000_000)) - DEAD_LETTER_MARGIN
        )
        self.max_messages, self.idle_timeout = max_messages, idle_timeout
        self.report_every = report_every
        self.err = sys.stderr if err is None else err
        self.stopping = False
        self.read = self.written = self.dead_lettered = 0
        self.reasons: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.started = time.monotonic()

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        from confluent_kafka import Consumer, KafkaException, Producer

        try:
            consumer = Consumer(self.consumer_config)
            producer = Producer(self.producer_config)
        except KafkaException as exc:
            raise BridgeError(f"cannot create a Kafka client: {_kafka_text(exc)}") from None
        consumer.subscribe([self.source])
        last_record = next_report = time.monotonic()
        next_report += self.report_every
        try:
            while not self.stopping:
                if self.max_messages is not None and self.read >= self.max_messages:
                    break
                batch = self._next_batch(consumer)
                now = time.monotonic()
                if batch:
                    last_record = now
                    self._handle(batch, producer, consumer)
                elif self.idle_timeout is not None and now - last_record >= self.idle_timeout:
                    break
                if now >= next_report:
                    self._say(self.summary())
                    next_report = now + self.report_every
        finally:
            producer.flush(30)
            consumer.close()  # leaves the group at once: its partitions move without a wait
            self._say(self.summary())
        return 0

    def _next_batch(self, consumer: Any) -> list[Any]:
        from confluent_kafka import KafkaError

        first = consumer.poll(0.5)
        if first is None:
            return []
        room = BATCH if self.max_messages is None else min(BATCH, self.max_messages - self.read)
        records = [first]
        if room > 1:  # what has already been fetched, without waiting for more
            records += consumer.consume(num_messages=room - 1, timeout=0)
        batch = []
        for record in records:
            error = record.error()
            if error is None:
                batch.append(record)
            elif error.fatal():
                raise BridgeError(f"Kafka: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                self._say(f"bridge {self.name}: Kafka: {error.str()}")
        return batch

    def _handle(self, batch: list[Any], producer: Any, consumer: Any) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        failed: list[str] = []

        def delivered(counter: str, error: Any, msg: Any) -> None:
            if error is not None:
                failed.append(error.str())
            elif counter == "written":
                self.written += 1
            else:
                self.dead_lettered += 1

        positions: dict[tuple[str, int], int] = {}
        for record in batch:
            self.read += 1
            positions[(record.topic(), record.partition())] = record.offset() + 1
            headers = record.headers() or []
            try:
                result = self.convert(record.value(), headers)
            except AdapterError as exc:
                result = exc
            except Exception as exc:  # a defect on untrusted input: set the record aside
                result = AdapterError(PROCESSING_ERROR, f"{type(exc).__name__} in the adapter")
            if isinstance(result, Ignored):
                self.ignored[f"{result.reason} {result.detail}"] += 1
            elif isinstance(result, AdapterError):
                self.reasons[result.reason] += 1
                self._say(
                    f"bridge {self.name}: dead letter: {result.reason} "
                    f"(partition {record.partition()} offset {record.offset()})"
                )
                own = error_headers(result.reason, result.detail, record.topic(),
                                    record.partition(), record.offset())  # fmt: skip
                key, value, dead_headers = dead_letter_record(
                    record.key(), record.value(), list(headers), own, self.dead_letter_limit
                )
                _produce(
                    producer, self.dead_letters, key=key, value=value, headers=dead_headers,
                    on_delivery=lambda e, m: delivered("dead", e, m),
                )  # fmt: skip
            else:
                _produce(
                    producer, self.target, key=result.key, value=result.value,
                    timestamp=result.timestamp, headers=result.headers or None,
                    on_delivery=lambda e, m: delivered("written", e, m),
                )  # fmt: skip
        while producer.flush(5.0):  # every record acknowledged (or failed) before the commit
            if self.stopping and producer.flush(25.0):
                break
        if failed or len(producer):
            self.failures.update(failed or ["not acknowledged in time"])
            reasons = "; ".join(f"{n} x {r}" for r, n in self.failures.most_common())
            raise BridgeError(
                f"bridge {self.name}: records not delivered ({reasons}); nothing of this batch "
                "was committed: it is read again when the bridge restarts"
            )
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. the partitions moved: read again, at least once
            self._say(f"bridge {self.name}: commit failed ({_kafka_text(exc)}); "
                      "these records will be read again")  # fmt: skip

    def summary(self) -> str:
        parts = [f"{self.read} read", f"{self.written} written to {self.target}"]
        parts.append(f"{sum(self.reasons.values())} dead-lettered" + _breakdown(self.reasons))
        parts.append(f"{sum(self.ignored.values())} ignored" + _breakdown(self.ignored))
        seconds = time.monotonic() - self.started
        return f"bridge {self.name}: {', '.join(parts)} in {seconds:.1f} s"

    def _say(self, line: str) -> None:
        print(line, file=self.err, flush=True)


def _produce(producer: Any, topic: str, **kwargs: Any) -> None:
    """Produce one record, waiting for room when the local queue is full."""
    while True:
        try:
            producer.produce(topic, **kwargs)
        except BufferError:
            producer.poll(0.1)
            continue
        producer.poll(0)
        return


def _kafka_text(exc: Exception) -> str:
    error: Any = exc.args[0] if exc.args else None  # a KafkaError, if confluent-kafka raised it
    return error.str() if hasattr(error, "str") else str(exc)


def _run_live(args: argparse.Namespace, settings: Any) -> int:
    """``stepcare bridge fhir-in|hl7-in|fhir-out``: 0 after a clean stop (SIGTERM, Ctrl-C,
    ``--max-messages``, ``--idle-timeout``), 1 if a record could not be delivered, 2 for a
    usage error (no pseudonym secret, no broker, a bad option)."""
    import signal
    from functools import partial

    name, source, target, dead_letters = args.live

    def topic(option: str | None, default: str) -> str:
        if option:
            return option
        return getattr(settings, default.removeprefix("STEPCARE_").lower(), default)

    source, target = topic(args.from_topic, source), topic(args.to_topic, target)
    dead_letters = topic(args.dead_letter_topic, dead_letters)
    # Reading its own output, a bridge would loop forever (a dead letter refused again).
    if len({source, target, dead_letters}) < 3:
        raise UsageError(
            f"bridge {name}: the topics to read ({source}), to write ({target}) and of dead "
            f"letters ({dead_letters}) must differ"
        )
    if args.max_messages is not None and args.max_messages < 1:
        raise UsageError("--max-messages must be at least 1")
    if args.idle_timeout is not None and not args.idle_timeout > 0:
        raise UsageError("--idle-timeout must be more than 0 seconds")
    if not args.report_every > 0:
        raise UsageError("--report-every must be more than 0 seconds")

    identity = ""
    if name == "fhir-out":
        convert: Any = fhir_out_record
    else:
        from streams.interfaces.pseudonym import fingerprint

        pseudonymizer = _pseudonymizer()  # exit 2 at once without the secret
        identity = f", pseudonym secret {fingerprint(pseudonymizer)}"
        if name == "fhir-in":
            convert = _values_only(
                partial(
                    fhir_in_record,
                    pseudonymizer=pseudonymizer,
                    fhir_base=args.fhir_base,
                    source=args.source,
                )
            )
        else:
            from streams.interfaces import hl7

            try:
                zone = hl7.zone(args.timezone)
            except AdapterError as exc:
                raise UsageError(f"--timezone: {exc.detail}") from None
            classes = tuple(c.strip() for c in args.inpatient_classes.split(",") if c.strip())
            convert = _values_only(
                partial(
                    hl7_in_record,
                    pseudonymizer=pseudonymizer,
                    timezone=zone,
                    inpatient_classes=classes,
                    identifier_type=args.identifier_type,
                    source=args.source,
                )
            )

    from streams.kafka.publish import producer_config

    producer = producer_config(settings, args.bootstrap_servers)
    producer["client.id"] = f"stepcare-bridge-{name}"
    connection = {k: v for k, v in producer.items() if k in _CONNECTION_KEYS}
    created = _ensure_topics(connection, (source, target, dead_letters), settings)
    if created:
        _err(f"created topics {', '.join(created)} ({settings.partitions} partitions)")
    consumer = {
        **connection,
        "group.id": args.group,
        "client.id": f"stepcare-bridge-{name}",
        "enable.auto.commit": False,  # offsets are committed after the produce is acknowledged
        "auto.offset.reset": "earliest",  # a new group misses nothing already on the topic
        "isolation.level": "read_committed",
        "logger": _quiet_logger(settings),
    }
    producer["logger"] = consumer["logger"]
    bridge = LiveBridge(
        name, convert, source=source, target=target, dead_letters=dead_letters,
        consumer_config=consumer, producer_config=producer, max_messages=args.max_messages,
        idle_timeout=args.idle_timeout, report_every=args.report_every,
    )  # fmt: skip
    _err(
        f"bridge {name}: {source} -> {target} (dead letters: {dead_letters}), "
        f"group {args.group}{identity}"
    )
    previous = {sig: signal.signal(sig, bridge.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return bridge.run()
    except BridgeError as exc:
        _err(f"stepcare: {exc}")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_CONNECTION_KEYS = frozenset(
    {
        "bootstrap.servers",
        "security.protocol",
        "sasl.mechanism",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
    }
)


def _values_only(convert: Any) -> Any:
    """An -in converter called as (value, headers): the headers are not read."""
    return lambda value, headers: convert(value)


def _ensure_topics(config: dict[str, Any], names: tuple[str, ...], settings: Any) -> list[str]:
    """Create the missing topics of a bridge (source, target, dead letters) as the worker creates
    its own (STEPCARE_PARTITIONS, STEPCARE_REPLICATION); the names created."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from streams.kafka.topics import TopicError, check_access, create_topics

    check_access(config, 30.0)  # a refused login: one line at once
    admin = AdminClient(config)
    try:
        existing = admin.list_topics(timeout=30).topics
    except KafkaException as exc:
        raise TopicError(f"cannot reach Kafka: {_kafka_text(exc)}") from None
    missing = sorted({n for n in names if n not in existing})
    create_topics(admin, settings, missing, keep=names[:2])  # dead letters: default retention
    return missing


def _quiet_logger(settings: Any) -> Any:
    """librdkafka's own lines (reconnects, retries) only with STEPCARE_LOG_LEVEL=DEBUG."""
    import logging

    logger = logging.getLogger("stepcare.bridge.librdkafka")
    logger.propagate = False
    if not logger.handlers:
        debug = str(getattr(settings, "log_level", "INFO")).upper() == "DEBUG"
        logger.addHandler(logging.StreamHandler(sys.stderr) if debug else logging.NullHandler())
        logger.setLevel(logging.DEBUG)
    return logger


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
