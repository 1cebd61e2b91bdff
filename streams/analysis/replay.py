"""Replay: a whole event log through one :class:`~streams.clinical.partition.PartitionEngine`.

``stepcare replay`` and the analysis commands read history through here, with exactly the
engine and partition driver the worker runs.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

import orjson

from streams.clinical.engine import Outcome
from streams.clinical.escalations import Escalation
from streams.clinical.events import EventType, PatientEvent
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy
from streams.errors import StepcareError
from streams.formats.logs import events_of_lines


@dataclass
class ReplaySummary:
    events: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    escalations: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def text(self, patients: int) -> str:
        outcomes = ", ".join(f"{self.outcomes[o]} {o}" for o in Outcome)
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.escalations.items())) or "none"
        line = (
            f"replayed {self.events} events for {patients} patients in {self.seconds:.1f} s "
            f"({outcomes}, {self.rejected} rejected); "
            f"{sum(self.escalations.values())} escalations ({kinds})"
        )
        if self.suppressed:
            line += "; suppressed: " + ", ".join(
                f"{n} {k}" for k, n in sorted(self.suppressed.items())
            )
        return line


class RejectedLine(StepcareError):
    """A log line that is not a valid event (raised only in strict mode)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")


def replay(
    lines: Iterable[str | dict],
    policy: Policy,
    output: IO[str],
    *,
    until: int | None = None,
    strict: bool = False,
    rejects: IO[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[ReplaySummary, PartitionEngine]:
    """Run a JSONL log through the engine in file order; escalations to ``output`` as JSONL.

    Bad lines are reported to ``rejects`` with their number and reason and skipped (with
    ``strict``, the first one raises :class:`RejectedLine`). ``until`` advances the clock at
    the end, firing the timers due before it. ``progress`` is told the line number now and
    then.
    """
    return replay_events(
        events_of_lines(lines), policy, output, until=until, strict=strict, rejects=rejects,
        progress=progress,
    )  # fmt: skip


def replay_events(
    records: Iterable[tuple[int, PatientEvent | str]],
    policy: Policy,
    output: IO[str],
    *,
    until: int | None = None,
    strict: bool = False,
    rejects: IO[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[ReplaySummary, PartitionEngine]:
    """:func:`replay` over (line number, event or reason) records (``streams.formats.files``)."""
    rejects = sys.stderr if rejects is None else rejects
    engine = PartitionEngine(policy)
    summary = ReplaySummary()
    started = time.monotonic()
    write = output.write
    process = engine.process
    outcomes, kinds = summary.outcomes, summary.escalations
    tick = EventType.CLOCK_TICK
    events = 0
    for number, item in records:
        if type(item) is str:
            if strict:
                raise RejectedLine(number, item)
            summary.rejected += 1
            rejects.write(f"line {number}: {item}\n")
            continue
        processed = process(item)
        if progress is not None and not number & 0x3FFF:  # every 16,384 lines
            progress(number)
        if item.type is not tick:
            events += 1
            outcomes[processed.outcome] += 1
        if processed.suppressed:
            summary.suppressed.update(processed.suppressed)
        if processed.escalations:
            write(render(processed.escalations, kinds))
    summary.events = events
    if until is not None:
        write(render(engine.advance_to(until), kinds))
    summary.seconds = time.monotonic() - started
    return summary, engine


def render(escalations: Iterable[Escalation], kinds: Counter[str]) -> str:
    """Escalations as JSONL lines (``canonical_json``), counted by kind in ``kinds``."""
    lines = []
    for escalation in escalations:
        kinds[escalation.kind] += 1
        lines.append(orjson.dumps(escalation.to_json(), option=orjson.OPT_APPEND_NEWLINE))
    return b"".join(lines).decode()


def canonical_json(obj: object) -> str:
    """Compact UTF-8 JSON, keys in their documented order: the byte-for-byte comparable form."""
    return orjson.dumps(obj).decode()
