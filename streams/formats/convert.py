"""Convert a PatientEvent log between JSONL and an Avro object container file.

The input format is detected by content (an Avro container starts with the bytes ``Obj\\x01``;
anything else is read as JSONL, ``-`` is JSONL on stdin). The output format is ``--format``, or
else the output's extension: ``.avro`` is Avro, ``.jsonl``, ``.ndjson`` and ``.json`` are JSONL
(``-`` is JSONL on stdout).

Every record is validated as ``stepcare replay`` validates it (DESIGN §3: known type, RFC 3339
time, FACT-L responses that score). A record that is not a valid event is reported on stderr as
``record N: reason`` (N counts input records from 1; for JSONL it is the line number) and is not
written; the rest are converted in order and the command exits 0 with a summary. Written JSONL
is canonical (compact, keys in the documented order, times as ``...Z``), so JSONL -> Avro ->
JSONL gives back the same bytes for a canonical log. A corrupt Avro container cannot be read past
the damage: the command exits 2 with one line and writes nothing. The output is written to a
temporary file and renamed over ``--output`` at the end (``streams.formats.files``), so a failed run
leaves it as it was; ``--output`` may not be the input (the same file, by any name).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from streams.clinical.events import event_to_json
from streams.errors import UsageError
from streams.formats.avro import is_avro_container, write_avro_log
from streams.formats.files import FileError, open_output, read_events, refuse_same_file

__all__ = ["LogError", "input_format", "output_format", "read_events", "write_log"]

Format = Literal["jsonl", "avro"]
FORMATS: tuple[Format, ...] = ("jsonl", "avro")
_EXTENSIONS: dict[str, Format] = {
    ".avro": "avro",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
LogError = FileError  # a log that cannot be opened or written (the message names the file)


# -- reading ---------------------------------------------------------------------------------


def input_format(path: str) -> Format:
    """The format of an existing log, by content: Avro container magic, else JSONL."""
    if path == "-":
        return "jsonl"
    try:
        with open(path, "rb") as probe:
            return "avro" if is_avro_container(probe) else "jsonl"
    except OSError as exc:
        raise LogError(f"cannot read {path}: {exc.strerror}") from None


# -- writing ---------------------------------------------------------------------------------


def output_format(path: str, fmt: str | None) -> Format:
    """``fmt`` if given, else by the extension of ``path`` (``-``: JSONL on stdout)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise LogError(f"unknown format {fmt!r} (jsonl or avro)")
        if fmt == "avro" and path == "-":
            raise LogError("Avro output needs a file (--output FILE.avro), not stdout")
        return fmt
    if path == "-":
        return "jsonl"
    found = _EXTENSIONS.get(Path(path).suffix.lower())
    if found is None:
        raise LogError(
            f"cannot tell the format of {path} from its extension "
            "(.jsonl or .avro); give --format jsonl|avro"
        )
    return found


def write_log(path: str, objs: Iterable[dict[str, Any]], fmt: Format) -> int:
    """Write JSON-rendering events (already canonical) as JSONL or Avro; returns the count.

    Through :func:`streams.formats.files.open_output`: the file is replaced only if all went
    well."""
    with open_output(path) as out:
        if fmt == "avro":
            return write_avro_log(out, objs)
        count = 0
        write = out.write
        for obj in objs:
            write(orjson.dumps(obj) + b"\n")
            count += 1
        return count


# -- the command -----------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--input", required=True, help="JSONL or Avro log, or - for JSONL stdin")
    parser.add_argument("--output", required=True, help="file to write, or - for JSONL stdout")
    parser.add_argument(
        "--format", choices=FORMATS, help="output format (default: by the output's extension)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 2 on the first bad record")


def run(args: argparse.Namespace, settings: object) -> int:

    refuse_same_file([args.input], [args.output])
    started = time.monotonic()
    source_format = input_format(args.input)
    target_format = output_format(args.output, args.format)
    records = read_events(args.input)
    rejected = 0

    def valid() -> Iterator[dict[str, Any]]:
        nonlocal rejected
        for number, item in records:
            if isinstance(item, str):
                if args.strict:
                    raise UsageError(f"record {number}: {item}")
                rejected += 1
                print(f"record {number}: {item}", file=sys.stderr)
                continue
            yield event_to_json(item)

    written = write_log(args.output, valid(), target_format)
    seconds = time.monotonic() - started
    print(
        f"converted {written} records ({source_format} -> {target_format}) in {seconds:.1f} s, "
        f"{rejected} rejected",
        file=sys.stderr,
    )
    return 0
