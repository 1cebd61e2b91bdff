"""The partition driver: the clock and the timer index of one partition's patients.

:class:`PartitionEngine` is the one driver of the engine: ``stepcare replay`` runs a whole log
through one, and the Faust worker runs one per partition. Time is event time: the clock is the
largest ``occurred_at`` seen, and before an event is applied every timer with a deadline before
the clock fires, in deadline order across patients (ties: by patient id). Due timers are found
through an index ordered by deadline, never by scanning every patient.
"""

from __future__ import annotations

import heapq
from collections.abc import MutableMapping
from typing import NamedTuple

from streams.clinical.engine import (
    NEW_PATIENT,
    Outcome,
    PatientState,
    advance,
    apply,
    next_deadline,
)
from streams.clinical.escalations import Escalation, Kind
from streams.clinical.events import EventType, PatientEvent
from streams.clinical.policy import Policy


class Processed(NamedTuple):
    """What one input record did: its outcome, and the escalations to publish (timers first).

    A NamedTuple, not a frozen dataclass: made for every record, it is 1 us cheaper so."""

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
        new = result.state
        if new is not state:
            states[event.patient_id] = new
            # Most events change only what the state remembers (its recent events, totals):
            # the timers, which depend on nothing else, are then compared no further (-2 us).
            if (
                new.request is not state.request
                or new.survey_due != state.survey_due
                or new.care_step != state.care_step
                or new.ended != state.ended
            ) and next_deadline(new) != next_deadline(state):
                self.index(event.patient_id, new)
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
