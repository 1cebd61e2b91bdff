"""The worker's ``patients`` table: its name, each partition's reserved clock key, and
:class:`BufferedStates`, the decoded states as the engine sees them, writes held until safe."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
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
# Decoded patient states kept in memory per partition (1.4 KB each on average, 3.6 KB at most
# on the bench cohort: ~30 MB per partition at the bound); beyond it the cache starts again.
MAX_CACHED = 20_000


@dataclass
class Sealed:
    """A closed batch's changes to one partition, written once its outputs are safe."""

    seq: int
    states: dict[str, PatientState]
    raw: dict[bytes, bytes]  # reserved keys (the partition's clock)


class BufferedStates(MutableMapping[str, PatientState]):
    """The table as the engine sees it: decoded states, writes held until they are safe.

    A record's changes stay in :attr:`pending` while it is processed; :meth:`stage` then makes
    them part of the batch (:attr:`batch`, read by the batch's next records); :meth:`seal`
    closes the batch (its states stay readable from :attr:`unwritten`), and :meth:`write` puts
    them in the table once its outputs are safe: each patient's state once per batch, however
    many of its records the batch held.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self.pending: dict[str, PatientState] = {}
        self.before: dict[str, PatientState | None] = {}  # for the census of the metrics
        self.batch: dict[str, PatientState] = {}  # staged, not yet in the table
        self.raw: dict[bytes, bytes] = {}  # reserved keys (the partition's clock) to write
        self.unwritten: dict[str, tuple[int, PatientState]] = {}  # sealed: id -> (seq, state)
        self.seq = 0
        # States as written to (or read from) the table, decoded: only this worker writes its
        # partitions, so they stay true until a rebalance drops this object. Measured: reading
        # RocksDB and decoding was the largest cost of a record after the engine.
        self.cache: dict[str, PatientState] = {}

    def __getitem__(self, patient_id: str) -> PatientState:
        state = self.pending.get(patient_id)
        if state is not None:
            return state
        state = self.batch.get(patient_id)
        if state is not None:
            return state
        sealed = self.unwritten.get(patient_id)
        if sealed is not None:
            return sealed[1]
        state = self.cache.get(patient_id)
        if state is not None:
            return state
        data = self.table.get(patient_id.encode())
        if data is None:
            raise KeyError(patient_id)
        state = decode_state(data)
        self._remember(patient_id, state)
        return state

    def _remember(self, patient_id: str, state: PatientState) -> None:
        if len(self.cache) >= MAX_CACHED:  # a bound on memory: start again
            self.cache.clear()
        self.cache[patient_id] = state

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

    def stage(self, census: Census) -> None:
        """The record's changes, part of the batch: from now on the state of its patients."""
        for patient_id, state in self.pending.items():
            census.change(self.before[patient_id], state)
        self.batch.update(self.pending)
        self.discard()

    def seal(self) -> Sealed:
        """Close the batch: its changes, to be written when safe; meanwhile read from memory."""
        self.seq += 1
        sealed = Sealed(self.seq, self.batch, self.raw)
        for patient_id, state in self.batch.items():
            self.unwritten[patient_id] = (self.seq, state)
        self.batch, self.raw = {}, {}
        return sealed

    def write(self, sealed: Sealed) -> None:
        """Write a sealed batch's states to the table (and so to its changelog)."""
        table = self.table
        remember = self._remember
        unwritten = self.unwritten
        for patient_id, state in sealed.states.items():
            table[patient_id.encode()] = encode_state(state)
            remember(patient_id, state)
            if unwritten[patient_id][0] == sealed.seq:  # no later batch changed it since
                del unwritten[patient_id]
        for key, value in sealed.raw.items():
            table[key] = value

    def write_rocksdb(self, sealed: Sealed, partition: int) -> list[tuple[bytes, bytes]]:
        """Write a sealed batch's states straight into the partition's RocksDB, in one write
        batch, bypassing faust's table; the (key, value) records its changelog must get.

        The caller sends those records to the changelog itself and records the persisted
        offset once they are acknowledged (at least once: ``Monitor``). faust's
        ``Table.__setitem__`` costs, per key, a changelog send through its producer buffer,
        a RocksDB put and, per changelog ack, another RocksDB put of the persisted offset.
        """
        from rocksdict import WriteBatch

        store = self.table.data
        records = [(patient_id.encode(), encode_state(state))
                   for patient_id, state in sealed.states.items()]  # fmt: skip
        records += sealed.raw.items()
        batch = WriteBatch(raw_mode=True)  # as faust opens its Rdicts (stores/rocksdb.py)
        key_index = store._key_index
        for key, value in records:
            batch.put(key, value)
            key_index[key] = partition
        store._db_for_partition(partition).write(batch)
        remember = self._remember
        unwritten = self.unwritten
        for patient_id, state in sealed.states.items():
            remember(patient_id, state)
            if unwritten[patient_id][0] == sealed.seq:
                del unwritten[patient_id]
        return records

    def discard(self) -> None:
        """Forget the changes of the record being processed (not staged)."""
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
