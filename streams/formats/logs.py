"""PatientEvent logs, JSONL or Avro object container files: the one reader and the one writer.

The input format is detected by content (an Avro container starts with the bytes ``Obj\\x01``;
anything else is read as JSONL, ``-`` is JSONL on stdin). The output format is given, or else
the output's extension: ``.avro`` is Avro, ``.jsonl``, ``.ndjson`` and ``.json`` are JSONL (``-``
is JSONL on stdout). ``stepcare convert`` is ``streams.cli.convert`` (docs/simulation.md). How
lines are split, numbered and rejected: :mod:`streams.formats.files`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from streams.clinical.events import EventError, event_from_json
from streams.formats.avro import (
    AVRO_CONTAINER_MAGIC,
    CodecError,
    is_avro_container,
    read_avro_stream,
    write_avro_log,
)
from streams.formats.files import (
    FileError,
    json_line,
    numbered_lines,
    open_input,
    open_output,
)

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


class LogReader:
    """The records of an event log: (number, JSON value, or a reason for a rejected record).

    Iterate it once. ``label`` is "line" (JSONL) or "record" (Avro); ``position`` the bytes read
    so far and ``total_bytes`` the file's size (None for stdin), for progress. A damaged Avro
    container raises :class:`FileError` where the damage is.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.fo = open_input(name)
        self.total_bytes: int | None = None
        self.position = 0
        self.avro = False
        if name != "-":
            try:
                found = os.fstat(self.fo.fileno())
                if stat.S_ISREG(found.st_mode):
                    self.total_bytes = found.st_size
                    self.avro = is_avro_container(self.fo)
                else:  # a FIFO, a process substitution: look without consuming
                    # open(name, "rb") is a BufferedReader, which peeks; IO[bytes] does not say so
                    self.avro = self.fo.peek(4)[:4] == AVRO_CONTAINER_MAGIC  # type: ignore[attr-defined]
            except OSError as exc:
                self.fo.close()
                raise FileError(f"cannot read {name}: {exc.strerror}") from None
        self.label = "record" if self.avro else "line"

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.name != "-":
            self.fo.close()

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self._avro() if self.avro else self._jsonl()

    def _jsonl(self) -> Iterator[tuple[int, Any]]:
        try:
            for number, line in numbered_lines(self.fo):
                self.position += len(line)
                if not line.strip():
                    continue
                value, reason = json_line(line)
                if reason is None and isinstance(value, str):  # a str is a reason, below
                    reason = "an event is a JSON object, not str"
                yield number, value if reason is None else reason
        except OSError as exc:
            raise FileError(f"cannot read {self.name}: {exc.strerror}") from None

    def _avro(self) -> Iterator[tuple[int, Any]]:
        try:
            for number, item in read_avro_stream(self.fo):
                if isinstance(item, str):  # nothing after damage can be read: no partial answer
                    raise FileError(f"{self.name}: record {number}: {item}")
                self.position = self.fo.tell()
                yield number, item
        except CodecError as exc:  # not a PatientEvent container at all
            raise FileError(f"{self.name}: {exc}") from None
        except OSError as exc:
            raise FileError(f"cannot read {self.name}: {exc.strerror}") from None


def read_objects(name: str) -> Iterator[tuple[int, Any]]:
    """(number, JSON value or reason) per record of a log; see :class:`LogReader`.

    The file is opened now (a missing file fails here, before any output is made)."""
    reader = LogReader(name)

    def records() -> Iterator[tuple[int, Any]]:
        with reader:
            yield from reader

    return records()


def events_of_lines(lines: Iterable[str | bytes | dict[str, Any]]) -> Iterator[tuple[int, Any]]:
    """(number, validated ``PatientEvent``) per line of an in-memory log, (number, reason) for a
    bad one. A line is JSONL text, or an already decoded object (an Avro container's record);
    blank lines are skipped but counted."""
    for number, line in enumerate(lines, start=1):
        if isinstance(line, dict):
            obj: Any = line
        elif not line.strip():
            continue
        else:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:  # json_line says why, in the words of every reader
                yield number, str(json_line(line)[1])
                continue
        try:
            yield number, event_from_json(obj)
        except EventError as exc:
            yield number, str(exc)


def read_events(name: str) -> Iterator[tuple[int, Any]]:
    """(number, validated ``PatientEvent``) per record of a log; (number, reason) if not one.

    The file is opened now (a missing file fails here, before any output is made)."""
    reader = LogReader(name)

    def events() -> Iterator[tuple[int, Any]]:
        with reader:
            if not reader.avro:
                yield from _jsonl_events(reader)
                return
            for number, obj in reader:
                try:
                    yield number, event_from_json(obj)
                except EventError as exc:
                    yield number, str(exc)

    return events()


def _jsonl_events(reader: LogReader) -> Iterator[tuple[int, Any]]:
    """``LogReader``'s JSONL records made events in one loop (replay's hot path: one generator
    and no call per line fewer than through ``read_objects``; the same records and reasons)."""
    loads = orjson.loads
    try:
        for number, line in numbered_lines(reader.fo):
            if not line.strip():
                continue
            try:
                obj = loads(line)
            except orjson.JSONDecodeError:
                yield number, str(json_line(line)[1])
                continue
            if type(obj) is str:
                yield number, "an event is a JSON object, not str"
                continue
            try:
                yield number, event_from_json(obj)
            except EventError as exc:
                yield number, str(exc)
    except OSError as exc:
        raise FileError(f"cannot read {reader.name}: {exc.strerror}") from None


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
