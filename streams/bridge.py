"""Hospital interfaces, offline: FHIR and HL7 v2 files in, PatientEvent logs out, and FHIR out.

``stepcare bridge fhir-import`` turns FHIR R4 ``QuestionnaireResponse`` resources (a directory
of ``.json``/``.ndjson`` files, one NDJSON file as a Bulk Data export writes it, or one JSON
resource or Bundle) into a PatientEvent log (JSONL). ``stepcare bridge hl7-import`` does the same
for HL7 v2 ADT messages (a file or a directory of files; MLLP frames or plain segments).
``stepcare bridge fhir-export`` turns an escalation log (``stepcare replay`` output) into FHIR
transaction Bundles, one per line (NDJSON). ``stepcare bridge questionnaire`` writes the FACT-L
Questionnaire resource (item codes only) to load into a FHIR server.

Patient identifiers are replaced by pseudonymous ids (``streams.pseudonym``): the imports need
the site secret in ``STEPCARE_PSEUDONYM_SECRET_FILE`` or ``STEPCARE_PSEUDONYM_SECRET``. Input the
adapters refuse is reported on stderr (``FILE:LINE: reason: detail``, never an identifier) and
skipped, or with ``--rejects FILE`` written there as JSONL; a summary ends the run, and the
exit status is 0 unless ``--strict`` stops at the first reject (exit 2). Events are written in
input order: ``stepcare replay`` wants each patient's events in time order, so merge the logs
of several feeds by ``occurred_at`` before replaying them.

The pure mappings live in ``streams.fhir`` and ``streams.hl7``; this module holds what they
share (:class:`AdapterError`, :class:`Ignored`) and the commands. The live (Kafka) bridges call
the same functions.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson


class AdapterError(ValueError):
    """Input a hospital adapter refuses. ``reason`` is a short fixed code (a dead-letter header
    and a metric label, e.g. ``fhir-status-amended``); ``detail`` says precisely what is wrong
    and never quotes a patient identifier."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Where:
    """Where a rejected input is: file, line (from 1), and entry (from 1) of a JSON Bundle."""

    file: str
    line: int
    entry: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + ("" if self.entry is None else f" entry {self.entry}")


@dataclass(frozen=True, slots=True)
class Ignored:
    """Valid input that maps to no patient event (e.g. an ADT^A08 update): count it, drop it."""

    reason: str  # a short fixed code, e.g. "hl7-ignored-trigger"
    detail: str  # e.g. "ADT^A08"


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


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rejects", help="also write rejects here as JSONL")
    parser.add_argument("--strict", action="store_true", help="exit 2 on the first reject")


def run(args: argparse.Namespace, settings: object) -> int:
    return int(args.action_handler(args))


class _Run:
    """Output, rejects and counts of one conversion."""

    def __init__(self, args: argparse.Namespace, noun: str) -> None:
        from streams.cli import UsageError

        self.args, self.noun = args, noun
        self.read = self.written = 0
        self.rejected: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.started = time.monotonic()
        inputs = [args.input] if hasattr(args, "input") else []
        for name in (args.output, getattr(args, "rejects", None)):
            if name and name != "-" and any(_same_file(name, other) for other in inputs):
                raise UsageError(f"{name} is also the input")
        self.out = _open_output(args.output)
        self.rejects = _open_output(args.rejects) if getattr(args, "rejects", None) else None

    def write(self, obj: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(obj) + b"\n")
        self.written += 1

    def reject(self, where: Where, reason: str, detail: str) -> None:
        from streams.cli import UsageError

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
            self.rejects.write(orjson.dumps(record) + b"\n")

    def ignore(self, ignored: Ignored) -> None:
        self.ignored[f"{ignored.reason} {ignored.detail}"] += 1

    def close(self, action: str) -> None:
        for stream in (self.out, self.rejects):
            if stream is not None and stream is not sys.stdout.buffer:
                stream.close()
        sys.stdout.flush()
        parts = [f"{self.read} {self.noun} read", f"{self.written} written"]
        rejected = sum(self.rejected.values())
        parts.append(f"{rejected} rejected" + _breakdown(self.rejected))
        if self.ignored:
            parts.append(f"{sum(self.ignored.values())} ignored" + _breakdown(self.ignored))
        seconds = time.monotonic() - self.started
        print(f"{action}: {', '.join(parts)} in {seconds:.1f} s", file=sys.stderr)


def _breakdown(counts: Counter[str]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"


def _fhir_import(args: argparse.Namespace) -> int:
    from streams import fhir

    pseudonymizer = _pseudonymizer()
    run = _Run(args, "resources")
    try:
        for where, item in _fhir_resources(args):
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
    finally:
        run.close("fhir-import")
    return 0


def _hl7_import(args: argparse.Namespace) -> int:
    from streams import hl7
    from streams.cli import UsageError

    pseudonymizer = _pseudonymizer()
    classes = tuple(c.strip() for c in args.inpatient_classes.split(",") if c.strip())
    try:
        zone = hl7.zone(args.timezone)
    except AdapterError as exc:
        raise UsageError(f"--timezone: {exc.detail}") from None
    run = _Run(args, "messages")
    try:
        for path in _files(args.input, (".hl7", ".txt", ".er7", ".adt"), args):
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {path}: {exc.strerror}") from None
            for line, message in hl7.split_messages(data):
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
    finally:
        run.close("hl7-import")
    return 0


def _fhir_export(args: argparse.Namespace) -> int:
    from streams import fhir

    run = _Run(args, "escalations")
    try:
        for number, obj in _json_lines(args.input):
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
    finally:
        run.close("fhir-export")
    return 0


def _questionnaire(args: argparse.Namespace) -> int:
    from streams import fhir

    out = _open_output(args.output)
    try:
        out.write(fhir.questionnaire_json())
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


# -- reading ---------------------------------------------------------------------------------


def _pseudonymizer():
    from streams.cli import UsageError
    from streams.pseudonym import PseudonymError, Pseudonymizer

    try:
        return Pseudonymizer.from_env()
    except PseudonymError as exc:
        raise UsageError(str(exc)) from None


def _files(name: str, extensions: tuple[str, ...], args: argparse.Namespace) -> list[Path]:
    """The input file, or the files of a directory with one of ``extensions``, sorted (but not
    the output or rejects file, should they be written into that directory)."""
    from streams.cli import UsageError

    path = Path(name)
    if path.is_dir():
        ours = {Path(n).resolve() for n in (args.output, args.rejects) if n and n != "-"}
        return sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in extensions and p.resolve() not in ours
        )
    if not path.is_file():
        raise UsageError(f"cannot read {name}: no such file or directory")
    return [path]


def _fhir_resources(
    args: argparse.Namespace,
) -> Iterator[tuple[Where, dict[str, Any] | AdapterError]]:
    """(where, resource) for every resource in the input; an AdapterError for text that is not
    a JSON object. A JSON file holds one resource, or a Bundle whose entries' resources count
    one by one (``entry N``); anything else is read as NDJSON, a resource a line."""
    from streams.cli import UsageError

    for path in _files(args.input, (".json", ".ndjson", ".jsonl"), args):
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        try:
            whole = orjson.loads(text)
        except orjson.JSONDecodeError:
            for number, obj in _json_lines(str(path), text):
                yield Where(str(path), number), obj
            continue
        if isinstance(whole, dict) and whole.get("resourceType") == "Bundle":
            for index, entry in enumerate(whole.get("entry") or [], start=1):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                yield (
                    Where(str(path), 1, index),
                    (
                        resource
                        if isinstance(resource, dict)
                        else AdapterError("fhir-invalid", "a Bundle entry without a resource")
                    ),
                )
        elif isinstance(whole, dict):
            yield Where(str(path), 1), whole
        else:
            yield Where(str(path), 1), AdapterError("fhir-invalid", "not a JSON object")


def _json_lines(
    name: str, text: bytes | None = None
) -> Iterator[tuple[int, dict[str, Any] | AdapterError]]:
    from streams.cli import UsageError

    if text is None:
        try:
            text = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, AdapterError("not-json", f"{exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield number, AdapterError("not-json", "a line is one JSON object")
            continue
        yield number, obj


def _open_output(name: str) -> IO[bytes]:
    from streams.cli import UsageError

    if name == "-":
        return sys.stdout.buffer
    try:
        return open(name, "wb")
    except OSError as exc:
        raise UsageError(f"cannot write {name}: {exc.strerror}") from None


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
