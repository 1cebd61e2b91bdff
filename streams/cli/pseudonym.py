"""``stepcare pseudonym``: MRNs in, the pseudonymous patient ids the bridges give them out.

For an integration team (a scheduling system's lookup table from ``patient_id`` back to the
MRN): one identifier a line on stdin or ``--input FILE``, one ``MRN<TAB>patient_id`` line out
(``--ids-only``: the id alone; ``--json``: JSON lines). The id is
:meth:`~streams.interfaces.pseudonym.Pseudonymizer.patient_id` of ``--system`` and the line,
with the secret the bridges read (STEPCARE_PSEUDONYM_SECRET_FILE or STEPCARE_PSEUDONYM_SECRET).
The input is streamed: memory does not grow with it. Lines that cannot be an identifier (blank,
too long, control characters, surrounding whitespace, not UTF-8) are counted and skipped; the
one summary line on stderr gives their line numbers, never their content. Exit 0, or 2 with
``--strict`` when any line was rejected (or without a secret). See docs/integration.md,
"Pseudonymous ids and the secret".
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator
from typing import IO

import orjson

from streams.errors import UsageError
from streams.kafka.settings import Settings

MAX_LINE_BYTES = 256  # an identifier longer than this is refused (MRNs are a few dozen bytes)
SHOWN_LINES = 10  # line numbers named in the summary, per reason
_SKIP = 1 << 16  # bytes read at a time past the end of an over-long line

BLANK = "blank"
TOO_LONG = "too long"
CONTROL = "control character"
WHITESPACE = "surrounding whitespace"
NOT_UTF8 = "not UTF-8"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--system",
        required=True,
        help="the identifiers' issuer, spelt as the bridges see it (e.g. urn:oid:2.16.840.1."
        "113883.3.42 for an HL7 ISO authority, https://fhir.example.org/Patient for FHIR ids)",
    )
    parser.add_argument("--input", default="-", help="a file of identifiers, one a line (- stdin)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--ids-only", action="store_true", help="write the ids alone, one a line")
    shape.add_argument(
        "--json", action="store_true", help='write {"mrn": ..., "patient_id": ...} lines'
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 2 if any line was rejected (after the rest)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.interfaces.pseudonym import PseudonymError, Pseudonymizer, fingerprint

    if not args.system or "|" in args.system:
        raise UsageError("--system: a non-empty issuer without '|'")
    try:
        pseudonymizer = Pseudonymizer.from_env()
    except PseudonymError as exc:
        raise UsageError(str(exc)) from None
    written = 0
    rejected: Counter[str] = Counter()
    shown: dict[str, list[int]] = {}
    out = sys.stdout
    with _open(args.input) as stream:
        for number, value in lines(stream):
            if isinstance(value, Rejected):
                rejected[value.reason] += 1
                numbers = shown.setdefault(value.reason, [])
                if len(numbers) < SHOWN_LINES:
                    numbers.append(number)
                continue
            patient_id = pseudonymizer.patient_id(args.system, value)
            if args.ids_only:
                out.write(patient_id + "\n")
            elif args.json:
                out.write(orjson.dumps({"mrn": value, "patient_id": patient_id}).decode() + "\n")
            else:
                out.write(f"{value}\t{patient_id}\n")
            written += 1
    summary = f"{_plural(written, 'id')} (pseudonym secret {fingerprint(pseudonymizer)})"
    if rejected:
        parts = []
        for reason, count in sorted(rejected.items()):
            named = ", ".join(map(str, shown[reason]))
            more = ", ..." if count > len(shown[reason]) else ""
            parts.append(f"{count} {reason}: line{'s' if count > 1 else ''} {named}{more}")
        summary += f", {_plural(sum(rejected.values()), 'line')} rejected ({'; '.join(parts)})"
    if rejected and args.strict:
        out.flush()
        raise UsageError(f"pseudonym: {summary}")
    print(f"stepcare pseudonym: {summary}", file=sys.stderr)
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


class Rejected:
    """A line that is no identifier, and why (never what it held)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def lines(stream: IO[bytes]) -> Iterator[tuple[int, str | Rejected]]:
    """(line number from 1, identifier or :class:`Rejected`) for each line of ``stream``,
    read a bounded piece at a time. A line ends with LF or CRLF; the last may have neither."""
    number = 0
    while line := stream.readline(MAX_LINE_BYTES + 2):
        number += 1
        if not line.endswith(b"\n") and len(line) == MAX_LINE_BYTES + 2:
            while (rest := stream.readline(_SKIP)) and not rest.endswith(b"\n"):
                pass  # the rest of an over-long line, read and dropped
            yield number, Rejected(TOO_LONG)
            continue
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        yield number, _identifier(line)


def _identifier(line: bytes) -> str | Rejected:
    if len(line) > MAX_LINE_BYTES:
        return Rejected(TOO_LONG)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(NOT_UTF8)
    if not text.strip():
        return Rejected(BLANK)
    if any(unicodedata.category(c) == "Cc" for c in text):  # tabs too: they would split a row
        return Rejected(CONTROL)
    if text != text.strip():  # ids are exact strings: " 123" is not the MRN 123
        return Rejected(WHITESPACE)
    return text


class _open:
    """The input as a binary stream: stdin for ``-``, else the file (a usage error if not)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.file: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if self.name == "-":
            return sys.stdin.buffer
        try:
            self.file = open(self.name, "rb")  # closed in __exit__
        except OSError as exc:
            raise UsageError(f"--input: cannot read {self.name}: {exc.strerror}") from None
        return self.file

    def __exit__(self, *_: object) -> None:
        if self.file is not None:
            self.file.close()
