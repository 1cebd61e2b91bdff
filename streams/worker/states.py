"""The worker's ``patients`` table: its name, each partition's reserved clock key, and
:class:`BufferedStates`, the decoded states as the engine sees them, writes held until safe."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import faust

from streams.clinical.engine import PatientState
from streams.formats.state import StateDecodeError, decode_state, encode_state
from streams.kafka.settings import WORKER_TABLE
from streams.worker.metrics import Census

log = logging.getLogger("stepcare.worker")

TABLE = WORKER_TABLE
# Reserved table keys (never a patient id: ids cannot start with NUL) for each partition's clock.
_CLOCK_KEY = b"\x00clock/%d"


@dataclass
class Staged:
    """One event's table writes: the states it changed (and its partition's clock)."""

    owner: BufferedStates
    seq: int
    states: dict[str, PatientState]
    raw: dict[bytes, bytes] = field(default_factory=dict)  # reserved keys (the clock)

    def write(self) -> None:
        """Into the table (and so its changelog); then they are read from there."""
        self.owner.write(self)


class BufferedStates(MutableMapping[str, PatientState]):
    """The table as the engine sees it: decoded states, writes held until they are safe.

    An event's changes stay in :attr:`pending` while it is processed, then are staged
    (:meth:`stage`) and written to the table when the event's outputs are acknowledged
    (:meth:`write`). Staged states not yet written are read from :attr:`unwritten`, so the
    next events of a patient see them.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self.pending: dict[str, PatientState] = {}
        self.before: dict[str, PatientState | None] = {}  # for the census of the metrics
        self.unwritten: dict[str, tuple[int, PatientState]] = {}  # id -> (seq, state)
        self.seq = 0

    def __getitem__(self, patient_id: str) -> PatientState:
        state = self.pending.get(patient_id)
        if state is not None:
            return state
        staged = self.unwritten.get(patient_id)
        if staged is not None:
            return staged[1]
        data = self.table.get(patient_id.encode())
        if data is None:
            raise KeyError(patient_id)
        return decode_state(data)

    def get(self, patient_id: str, default: Any = None) -> Any:
        try:
            return self[patient_id]
        except KeyError:
            return default

    def __setitem__(self, patient_id: str, state: PatientState) -> None:
        if patient_id not in self.before:
            self.before[patient_id] = self.get(patient_id)
        self.pending[patient_id] = state

    def __delitem__(self, patient_id: str) -> None:
        raise NotImplementedError("patient states are never deleted")

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError("iterate a partition with _partition_states")

    def __len__(self) -> int:
        raise NotImplementedError

    def stage(self, census: Census) -> Staged:
        """The event's changes, to be written; from now on the state of its patients."""
        self.seq += 1
        for patient_id, state in self.pending.items():
            census.change(self.before[patient_id], state)
            self.unwritten[patient_id] = (self.seq, state)
        staged = Staged(self, self.seq, dict(self.pending))
        self.discard()
        return staged

    def write(self, staged: Staged) -> None:
        """Write staged changes to the table (and so to its changelog)."""
        table = self.table
        for patient_id, state in staged.states.items():
            table[patient_id.encode()] = encode_state(state)
            if self.unwritten[patient_id][0] == staged.seq:  # no later event changed it since
                del self.unwritten[patient_id]
        for key, value in staged.raw.items():
            table[key] = value

    def discard(self) -> None:
        self.pending.clear()
        self.before.clear()


def _partition_states(table: faust.Table, partition: int) -> Iterator[tuple[str, PatientState]]:
    """Every patient state stored for one partition (read once, when the engine is built)."""
    store = table.data
    if hasattr(store, "_db_for_partition"):  # RocksDB: one database per partition
        items = store._db_for_partition(partition).items()
    else:  # memory store (development): all partitions share one dict; see Settings.store
        items = store.data.items()
    for key, value in items:
        patient_id = key.decode() if isinstance(key, bytes) else key
        if patient_id.startswith(("\x00", "__faust")):  # clocks; faust's own offset record
            continue
        try:
            yield patient_id, decode_state(value)
        except StateDecodeError as exc:  # its timers are not indexed; its next event reports it
            log.error("partition %d: a stored state cannot be decoded: %s", partition, exc)
