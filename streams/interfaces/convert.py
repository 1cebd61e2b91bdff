"""The offline converters of ``stepcare bridge``: files in, files out.

:func:`fhir_import` (FHIR QuestionnaireResponses and the resources of the other events) and
:func:`hl7_import` (HL7 v2 ADT messages) write a PatientEvent log (JSONL); :func:`fhir_export`
writes an escalation log as FHIR transaction Bundles (NDJSON); :func:`questionnaire` writes the
FACT-L Questionnaire. Refused input is reported on stderr (and to a rejects file) and skipped,
or stops a strict run; a summary line ends each run. The formats: docs/integration.md,
"Hospital interfaces".
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from streams.errors import UsageError
from streams.interfaces.errors import AdapterError, Ignored, Where, breakdown

if TYPE_CHECKING:
    from streams.interfaces.fhir_events import FhirFeed
    from streams.interfaces.pseudonym import Pseudonymizer


@dataclass(frozen=True, slots=True)
class Files:
    """The files of a conversion: names, or ``-`` for stdin and stdout."""

    input: str
    output: str
    rejects: str | None = None  # also write the rejects here, as JSONL


class _Run:
    """Output, rejects and counts of one conversion: a context manager that commits the output
    (and rejects) files only if the conversion ends without an error (``streams.formats.files``).
    ``action`` and ``noun`` name the conversion and what it reads in its summary line."""

    def __init__(self, action: str, noun: str, files: Files, strict: bool) -> None:
        from streams.formats.files import refuse_same_file

        self.action, self.noun, self.files, self.strict = action, noun, files, strict
        self.read = self.written = 0
        self.rejected: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.started = time.monotonic()
        refuse_same_file([files.input], [files.output, files.rejects])
        self._outputs = contextlib.ExitStack()
        self.rejects: IO[bytes] | None = None

    def __enter__(self) -> _Run:
        from streams.formats.files import open_output

        with self._outputs as outputs:
            self.out = outputs.enter_context(open_output(self.files.output))
            if self.files.rejects:
                self.rejects = outputs.enter_context(open_output(self.files.rejects))
            self._outputs = outputs.pop_all()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._outputs.__exit__(*exc_info)  # commits the files, or drops them on an error
        if exc_info[0] is None:  # an error is its one line, without a summary of a lost output
            self.summarize()

    def write(self, obj: dict[str, Any]) -> None:
        self._write(self.out, self.files.output, orjson.dumps(obj) + b"\n")
        self.written += 1

    def _write(self, out: IO[bytes], name: str | None, data: bytes) -> None:
        from streams.formats.files import FileError

        try:
            out.write(data)
        except OSError as exc:  # not to be taken for an error reading the input
            where = "stdout" if name == "-" else name
            raise FileError(f"cannot write {where}: {exc.strerror}") from None

    def reject(self, where: Where, reason: str, detail: str) -> None:
        text = f"{where}: {reason}: {detail}"
        if self.strict:
            raise UsageError(text)
        self.rejected[reason] += 1
        print(text, file=sys.stderr)
        if self.rejects is not None:
            record: dict[str, Any] = {"file": where.file, "line": where.line}
            if where.entry is not None:
                record["entry"] = where.entry
            record |= {"reason": reason, "detail": detail}
            self._write(self.rejects, self.files.rejects, orjson.dumps(record) + b"\n")

    def ignore(self, ignored: Ignored) -> None:
        self.ignored[f"{ignored.reason} {ignored.detail}"] += 1

    def summarize(self) -> None:
        parts = [f"{self.read} {self.noun} read", f"{self.written} written"]
        rejected = sum(self.rejected.values())
        parts.append(f"{rejected} rejected" + breakdown(self.rejected))
        if self.ignored:
            parts.append(f"{sum(self.ignored.values())} ignored" + breakdown(self.ignored))
        seconds = time.monotonic() - self.started
        print(f"{self.action}: {', '.join(parts)} in {seconds:.1f} s", file=sys.stderr)


def fhir_import(
    files: Files,
    pseudonymizer: Pseudonymizer,
    *,
    fhir_base: str = "",
    source: str = "fhir",
    strict: bool = False,
    feed: FhirFeed | None = None,
) -> None:
    """FHIR resources (a directory, an NDJSON file, a JSON resource or Bundle) to a PatientEvent
    log: QuestionnaireResponses, EpisodeOfCare, Encounter, Patient, MedicationRequest and
    CarePlan (``streams.interfaces.fhir_events``); ``fhir_base`` resolves relative subject
    references. ``feed``, when given, says all of that (its ``fhir_base`` and ``source`` win)."""
    from streams.interfaces.fhir_events import FhirFeed, resource_to_event

    feed = feed or FhirFeed(fhir_base=fhir_base, source=source)
    paths = _input_files(files, (".json", ".ndjson", ".jsonl"))
    with _Run("fhir-import", "resources", files, strict) as run:
        for where, item in _fhir_resources(paths):
            run.read += 1
            if isinstance(item, AdapterError):
                run.reject(where, item.reason, item.detail)
                continue
            try:
                result = resource_to_event(item, pseudonymizer, feed)
            except AdapterError as exc:
                run.reject(where, exc.reason, exc.detail)
                continue
            if isinstance(result, Ignored):
                run.ignore(result)
            else:
                run.write(result)


def hl7_import(
    files: Files,
    pseudonymizer: Pseudonymizer,
    *,
    timezone: tzinfo,
    inpatient_classes: tuple[str, ...],
    identifier_type: str | None = None,
    source: str = "adt",
    strict: bool = False,
) -> None:
    """HL7 v2 ADT messages (a file, or a directory of files) to a PatientEvent log; the options
    are those of ``streams.interfaces.hl7.adt_to_event``."""
    from streams.interfaces import hl7

    paths = _input_files(files, (".hl7", ".txt", ".er7", ".adt"))
    with _Run("hl7-import", "messages", files, strict) as run:
        for path in paths:
            with _reading(path) as fo:
                for line, message in hl7.split_file(fo):
                    run.read += 1
                    try:
                        result = hl7.adt_to_event(
                            message,
                            pseudonymizer,
                            timezone=timezone,
                            inpatient_classes=inpatient_classes,
                            identifier_type=identifier_type,
                            source=source,
                        )
                    except AdapterError as exc:
                        run.reject(Where(str(path), line), exc.reason, exc.detail)
                        continue
                    if isinstance(result, Ignored):
                        run.ignore(result)
                    else:
                        run.write(result)


def fhir_export(files: Files, *, strict: bool = False) -> None:
    """An escalation log (JSONL) to FHIR transaction Bundles, one per line."""
    from streams.formats.files import numbered_lines
    from streams.interfaces import fhir

    with _reading(files.input) as fo, _Run("fhir-export", "escalations", files, strict) as run:
        for number, obj in _json_lines(numbered_lines(fo)):
            run.read += 1
            where = Where(files.input, number)
            if isinstance(obj, AdapterError):
                run.reject(where, obj.reason, obj.detail)
                continue
            try:
                bundle = fhir.escalation_to_bundle(obj)
            except AdapterError as exc:
                run.reject(where, exc.reason, exc.detail)
                continue
            run.write(bundle)


def questionnaire(output: str) -> None:
    """The FACT-L Questionnaire (item codes only) as FHIR JSON."""
    from streams.formats.files import write_output
    from streams.interfaces import fhir

    write_output(output, fhir.questionnaire_json())


def _input_files(files: Files, extensions: tuple[str, ...]) -> list[Path]:
    """The input file, or the files of a directory with one of ``extensions``, sorted (but not
    the output or rejects file, should they be written into that directory)."""
    from streams.formats.files import same_file

    name = files.input
    path = Path(name)
    if path.is_dir():
        ours = [n for n in (files.output, files.rejects) if n and n != "-"]
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
