"""A PatientEvent log's format (JSONL or an Avro object container file), and its writer.

The input format is detected by content (an Avro container starts with the bytes ``Obj\\x01``;
anything else is read as JSONL, ``-`` is JSONL on stdin). The output format is given, or else
the output's extension: ``.avro`` is Avro, ``.jsonl``, ``.ndjson`` and ``.json`` are JSONL (``-``
is JSONL on stdout). ``stepcare convert`` is ``streams.cli.convert`` (docs/simulation.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import orjson

from streams.formats.avro import is_avro_container, write_avro_log
from streams.formats.files import FileError, open_output

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
