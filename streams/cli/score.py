"""``stepcare score``: FACT-L forms in (events, surveys or bare response maps), scores out."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from streams.cli.progress import report
from streams.clinical.events import EventType
from streams.clinical.scoring import ScoringError, score_fact_l
from streams.errors import UsageError
from streams.formats.files import Document, document_or_lines, open_input, open_output
from streams.kafka.settings import Settings

DESCRIPTION = (
    "One JSON object out per form in, in order; a form from an event carries the event's "
    "event_id and patient_id first. Events that are not surveys (ENROLLED, VISIT_*, ...) are "
    "skipped and counted in the summary line on stderr. Invalid input: exit 2."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("file", nargs="?", default="-", help="input file, or - for stdin")


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Score everything before writing anything: a bad object leaves stdout empty. The scores
    # wait in a temporary file, so memory does not grow with the input.
    source = open_input(args.file)
    try:
        with tempfile.TemporaryFile() as spool:
            found = document_or_lines(source, _json_document)
            if isinstance(found, Document):
                where = f"line {found.line}" if found.one_line else "input"
                objects: Iterable[tuple[str, Any]] = [(where, found.value)]
            else:
                objects = _json_objects(args.file, found)
            scored = skipped = 0
            for where, obj in objects:
                if _not_a_survey_event(obj):
                    skipped += 1
                    continue
                try:
                    scores = score_fact_l(_responses_of(obj))
                except ScoringError as exc:
                    raise UsageError(f"{where}: {exc}") from None
                spool.write(json.dumps(_ids_of(obj) | scores.as_dict()).encode() + b"\n")
                scored += 1
            spool.seek(0)
            with open_output("-") as out:
                shutil.copyfileobj(spool, out)
            report(f"scored {scored} {_plural(scored, 'form')}, skipped {skipped} "
                   f"non-survey {_plural(skipped, 'event')}")  # fmt: skip
    except OSError as exc:  # reading the input (writing stdout is reported by open_output)
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    finally:
        if args.file != "-":
            source.close()
    return 0


def _json_document(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _json_objects(name: str, lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[str, Any]]:
    """("line N", object) for each non-blank line of JSONL (lines end at ``\\n`` only)."""
    for number, raw in lines:
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"cannot read {name}: line {number} is not UTF-8 text") from None
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"line {number}: not JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # a huge integer literal; deep nesting
            raise UsageError(f"line {number}: not JSON ({exc})") from None


def _is_event(obj: Any) -> bool:
    return isinstance(obj, dict) and bool({"type", "event_id", "survey"} & obj.keys())


def _not_a_survey_event(obj: Any) -> bool:
    """A PatientEvent of another type than SURVEY_SUBMITTED, carrying no survey: skipped."""
    return (
        _is_event(obj)
        and "survey" not in obj
        and isinstance(obj.get("type"), str)
        and obj["type"] != EventType.SURVEY_SUBMITTED
    )


def _ids_of(obj: Any) -> dict[str, Any]:
    """The event_id and patient_id of an event (echoed on its output line); {} for a survey
    object (even wrapped as ``{"survey": ...}``) or a bare responses map."""
    if not (isinstance(obj, dict) and {"type", "event_id"} & obj.keys()):
        return {}
    return {"event_id": obj.get("event_id"), "patient_id": obj.get("patient_id")}


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


def _responses_of(obj: Any) -> Any:
    """The FACT-L responses in a PatientEvent, a ``survey`` object, or a bare responses map."""
    if not isinstance(obj, dict):
        raise ScoringError(f"expected a JSON object, got {type(obj).__name__}")
    if _is_event(obj):  # a PatientEvent
        survey = obj.get("survey")
        if not isinstance(survey, dict):
            raise ScoringError(f"event of type {obj.get('type')!r} carries no survey to score")
        obj = survey
    if "responses" in obj:  # a survey object
        instrument = obj.get("instrument", "FACT-L")
        if instrument != "FACT-L":
            raise ScoringError(f"instrument {instrument!r} is not FACT-L")
        obj = obj["responses"]
        if not isinstance(obj, dict):
            raise ScoringError("responses must be an object of item codes")
    return obj
