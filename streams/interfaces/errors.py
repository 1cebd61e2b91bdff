"""What a hospital adapter says of an input it does not turn into a patient event.

An :class:`~streams.errors.AdapterError` refuses it (dead letter, rejects report); an
:class:`Ignored` drops valid input that maps to no event (counted). :class:`Where` names a
rejected input in a file; :func:`breakdown` counts them by reason for a summary line. The
adapters (``fhir``, ``hl7``), the converters and the bridges share these.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from streams.errors import AdapterError

__all__ = ["AdapterError", "Ignored", "Where", "breakdown"]


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


def breakdown(counts: Counter[str]) -> str:
    """`` (2 hl7-malformed, 1 not-json)`` for a summary line; nothing when there are no counts."""
    if not counts:
        return ""
    return " (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"
