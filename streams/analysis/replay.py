"""Driving the engine over an ordered stream of events: the clock, the timer index, and replay.

:class:`PartitionEngine` is the one driver of the engine: ``stepcare replay`` runs a whole log
through one, and the Faust worker runs one per partition. Time is event time: the clock is the
largest ``occurred_at`` seen, and before an event is applied every timer with a deadline before
the clock fires, in deadline order across patients (ties: by patient id). Due timers are found
through an index ordered by deadline, never by scanning every patient.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import IO

import orjson

from streams.clinical.engine import (
    NEW_PATIENT,
    Escalation,
    Kind,
    Outcome,
    PatientState,
    advance,
    apply,
    next_deadline,
)
from streams.clinical.events import EventError, EventType, PatientEvent, event_from_json
from streams.clinical.policy import Policy
from streams.errors import StepcareError


@dataclass(frozen=True, slots=True)
class Processed:
    """What one input record did: its outcome, and the escalations to publish (timers first)."""

    outcome: Outcome
    escalations: tuple[Escalation, ...] = ()
    suppressed: tuple[Kind, ...] = ()


class PartitionEngine:
    """The engine for the patients of one partition (offline: of a whole log)."""

    def __init__(
        self,
        policy: Policy,
        states: MutableMapping[str, PatientState] | None = None,
        *,
        index_states: bool = True,
    ) -> None:
        """``index_states=False``: the caller indexes the states itself (see :meth:`index`)."""
        self.policy = policy
        self.states: MutableMapping[str, PatientState] = {} if states is None else states
        self.clock: int | None = None
        self._timers: list[tuple[int, str]] = []  # (deadline, patient id); stale entries skipped
        if index_states:
            for patient_id, state in self.states.items():
                self.index(patient_id, state)

    def process(self, event: PatientEvent) -> Processed:
        """Advance the clock to the event's time (firing due timers), then apply the event."""
        fired = self.advance_to(event.occurred_at)
        if event.type is EventType.CLOCK_TICK:
            return Processed(Outcome.APPLIED, fired)
        states = self.states
        state = states.get(event.patient_id, NEW_PATIENT)
        result = apply(state, event, self.policy)
        if result.state is not state:
            states[event.patient_id] = result.state
            if next_deadline(result.state) != next_deadline(state):
                self.index(event.patient_id, result.state)
        return Processed(result.outcome, fired + result.escalations, result.suppressed)

    def advance_to(self, moment: int) -> tuple[Escalation, ...]:
        """Move the clock to ``moment`` (never back) and fire every timer due before it."""
        if self.clock is not None and moment <= self.clock:
            moment = self.clock
        self.clock = moment
        timers = self._timers
        if not timers or timers[0][0] >= moment:
            return ()
        fired: list[Escalation] = []
        while timers and timers[0][0] < moment:
            deadline, patient_id = heapq.heappop(timers)
            state = self.states.get(patient_id, NEW_PATIENT)
            if next_deadline(state) != deadline:
                continue  # the patient's timers changed since this entry was indexed
            result = advance(state, deadline + 1, self.policy, patient_id, clock=moment)
            self.states[patient_id] = result.state
            fired.extend(result.escalations)
            self.index(patient_id, result.state)
        return tuple(fired)

    def index(self, patient_id: str, state: PatientState) -> None:
        """Put the patient's next deadline (if any) in the timer index."""
        deadline = next_deadline(state)
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, patient_id))


# -- offline replay -----------------------------------------------------------------------------


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


def read_log(lines: Iterable[str | dict]) -> Iterator[tuple[int, PatientEvent | str]]:
    """(line number, event) for each valid line, (line number, reason) for a bad one.

    A line is JSONL text, or an already decoded object (records of an Avro container log).
    """
    for number, line in enumerate(lines, start=1):
        try:
            if type(line) is dict:
                yield number, event_from_json(line)
            elif line.strip():
                yield number, event_from_json(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            yield number, f"not JSON: {exc.msg} (column {exc.colno})"
        except EventError as exc:
            yield number, str(exc)


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
        read_log(lines), policy, output, until=until, strict=strict, rejects=rejects,
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
    for number, item in records:
        if isinstance(item, str):
            if strict:
                raise RejectedLine(number, item)
            summary.rejected += 1
            rejects.write(f"line {number}: {item}\n")
            continue
        processed = engine.process(item)
        if progress is not None and not number & 0x3FFF:  # every 16,384 lines
            progress(number)
        if item.type is not EventType.CLOCK_TICK:
            summary.events += 1
            summary.outcomes[processed.outcome] += 1
        for kind in processed.suppressed:
            summary.suppressed[kind] += 1
        for escalation in processed.escalations:
            summary.escalations[escalation.kind] += 1
            write(canonical_json(escalation.to_json()) + "\n")
    if until is not None:
        for escalation in engine.advance_to(until):
            summary.escalations[escalation.kind] += 1
            write(canonical_json(escalation.to_json()) + "\n")
    summary.seconds = time.monotonic() - started
    return summary, engine


def canonical_json(obj: object) -> str:
    """Compact UTF-8 JSON, keys in their documented order: the byte-for-byte comparable form."""
    return orjson.dumps(obj).decode()
