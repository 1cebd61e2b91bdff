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
the damage: what came before it is written, the damage is reported, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from streams.codec import CodecError, is_avro_container, read_avro_stream, write_avro_log
from streams.events import EventError, PatientEvent, event_from_json, event_to_json

Format = Literal["jsonl", "avro"]
FORMATS: tuple[Format, ...] = ("jsonl", "avro")
_EXTENSIONS: dict[str, Format] = {
    ".avro": "avro",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
CORRUPT = "corrupt Avro data"  # how read_avro_stream reports damage that ends a container


class LogError(ValueError):
    """A log cannot be opened or written (the message names the file)."""


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


def read_objects(path: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(record number, JSON object) per record of a JSONL or Avro log; (number, reason) if bad.

    JSONL records are numbered by line (blank lines are skipped, not counted as records); Avro
    records from 1. A corrupt Avro block yields a reason starting ``corrupt Avro data`` and ends
    the iteration. ``LogError`` if the file cannot be opened or is not a PatientEvent container.
    """
    fmt = input_format(path)
    if fmt == "avro":
        try:
            with open(path, "rb") as fo:
                yield from read_avro_stream(fo)
        except CodecError as exc:
            raise LogError(f"{path}: {exc}") from None
        return
    try:
        source = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise LogError(f"cannot read {path}: {exc.strerror}") from None
    try:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield number, f"not JSON: {exc.msg} (column {exc.colno})"
                continue
            yield number, obj
    except UnicodeDecodeError as exc:
        raise LogError(f"{path}: not UTF-8 text ({exc.reason})") from None
    finally:
        if source is not sys.stdin:
            source.close()


def read_events(path: str) -> Iterator[tuple[int, PatientEvent | str]]:
    """(record number, validated event) per record; (number, reason) for a record that is not."""
    for number, obj in read_objects(path):
        if isinstance(obj, str):
            yield number, obj
            continue
        try:
            yield number, event_from_json(obj)
        except EventError as exc:
            yield number, str(exc)


# -- writing ---------------------------------------------------------------------------------


def output_format(path: str, fmt: str | None) -> Format:
    """``fmt`` if given, else by the extension of ``path`` (``-``: JSONL on stdout)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise LogError(f"unknown format {fmt!r} (jsonl or avro)")
        if fmt == "avro" and path == "-":
            raise LogError("Avro output needs a file (--output FILE.avro), not stdout")
        return fmt  # type: ignore[return-value]
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
    """Write JSON-rendering events (already canonical) as JSONL or Avro; returns the count."""
    if fmt == "avro":
        try:
            return write_avro_log(path, objs)
        except OSError as exc:
            raise LogError(f"cannot write {path}: {exc.strerror}") from None
    count = 0
    try:
        out = sys.stdout.buffer if path == "-" else open(path, "wb")  # noqa: SIM115
    except OSError as exc:
        raise LogError(f"cannot write {path}: {exc.strerror}") from None
    try:
        write = out.write
        for obj in objs:
            write(orjson.dumps(obj) + b"\n")
            count += 1
    finally:
        if path == "-":
            out.flush()
        else:
            out.close()
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
    from streams.cli import UsageError

    if args.input != "-" and args.output != "-" and _same_file(args.input, args.output):
        raise UsageError("--input and --output are the same file")
    started = time.monotonic()
    try:
        source_format = input_format(args.input)
        target_format = output_format(args.output, args.format)
    except LogError as exc:
        raise UsageError(str(exc)) from None
    rejected = 0
    corrupt: list[str] = []
    unreadable: list[str] = []

    def valid() -> Iterator[dict[str, Any]]:
        nonlocal rejected
        try:
            for number, item in read_events(args.input):
                if isinstance(item, str):
                    if item.startswith(CORRUPT):
                        corrupt.append(f"record {number}: {item}")
                        return
                    if args.strict:
                        raise UsageError(f"record {number}: {item}")
                    rejected += 1
                    print(f"record {number}: {item}", file=sys.stderr)
                    continue
                yield event_to_json(item)
        except LogError as exc:  # not a log at all (e.g. a container of other records)
            unreadable.append(str(exc))

    try:
        written = write_log(args.output, valid(), target_format)
    except LogError as exc:
        raise UsageError(str(exc)) from None
    if unreadable:
        if args.output != "-":
            Path(args.output).unlink(missing_ok=True)  # we made it: an empty shell is no log
        raise UsageError(unreadable[0])
    seconds = time.monotonic() - started
    print(
        f"converted {written} records ({source_format} -> {target_format}) in {seconds:.1f} s, "
        f"{rejected} rejected" + (f"; {corrupt[0]}: the rest is unreadable" if corrupt else ""),
        file=sys.stderr,
    )
    return 1 if corrupt else 0


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
