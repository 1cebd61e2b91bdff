"""The batched pipeline: :class:`Monitor` applies each batch of input records to its partitions'
engines and publishes what they decide.

A batch (``streams.worker.faust_patches.take_batches``: the records waiting, at most
``STEPCARE_BATCH_SIZE``, lingering ``STEPCARE_BATCH_LINGER_MS`` for more) is handled in input
order, one record after another, each patient's state read once (then from memory). Its outputs
are sent as they are decided; then, once for the whole batch:

- at least once: every escalation and dead letter is acknowledged by the broker (failures are
  sent again) *before* the states that remember them are written to the table and before the
  records are acknowledged (which lets faust commit their offsets), so a crash can repeat an
  escalation (same id) but never lose one;
- exactly once: the batch runs under the app's commit lock, so its outputs (sent in the
  transaction of their input partition), its table writes and its offsets are in one
  transaction, which never cuts a batch (``streams/worker/faust_patches.py``).

Each touched patient's state is written once per batch (one changelog record). A rebalance
during a batch drops the rest of it: nothing more is written or acknowledged, and its records
are delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import faust
from faust import streams as faust_streams
from faust.types import TP

from streams.clinical.escalations import Escalation
from streams.clinical.events import DAY_MS, EventError, EventType, event_from_json, format_time
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy
from streams.formats.avro import CodecError, cloudevent_headers, decode_event
from streams.formats.wire import registry_schema_id
from streams.kafka.deadletter import DEAD_LETTER_MARGIN, dead_letter_record, error_headers
from streams.kafka.registry import Framing, RegistryError
from streams.kafka.settings import Settings
from streams.worker.metrics import DEAD_LETTERED, EVENT_TYPES, Census, WorkerMetrics
from streams.worker.outputs import Output, Outputs
from streams.worker.states import _CLOCK_KEY, BufferedStates, Sealed, _partition_states

log = logging.getLogger("stepcare.worker")

CLOCK_SAVE = 3_600_000  # ms of event time between saves of a partition's clock
FUTURE_LIMIT = 86_400_000  # ms: live events dated later than this ahead of now are refused
# at_least_once: batches handled while earlier ones still wait for their outputs' acks (a bound
# on memory and on the work a crash repeats).
SEALED_BATCHES = 2
# A registry that cannot be asked about a new schema id: the record waits, asking again after
# these many seconds, doubling up to the most. The worker (one agent for all its partitions)
# waits with it: nothing is lost, nothing is reordered.
REGISTRY_RETRY = (1.0, 30.0)


class _Waiting(Exception):
    """A record cannot be handled yet (its schema id is not known, the registry unreachable)
    and a rebalance began: it and the rest of its batch are left for the next assignment."""


@dataclass
class Batch:
    """The records handled since the last flush, and what they sent."""

    events: list[Any] = field(default_factory=list)  # faust Events, in input order
    outputs: list[Output] = field(default_factory=list)
    last_event: dict[int, Any] = field(default_factory=dict)  # partition -> its last Event
    generation: int = 0  # Monitor.generation when it was sealed
    writes: list[tuple[int, BufferedStates, Sealed]] = field(default_factory=list)


class Monitor:
    """Applies each batch of input records to its partitions' engines and publishes what they
    decide."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        table: faust.Table,
        escalations: faust.TopicT,
        dead_letters: faust.TopicT,
        metrics: WorkerMetrics,
        outputs: Outputs,
        framing: Framing | None = None,
    ) -> None:
        self.metrics = metrics
        self.outputs = outputs
        self.framing = framing or Framing.writing_single_object()
        self.settings = settings
        self.policy = policy
        self.table = table
        self.escalations = escalations.get_topic_name()
        self.dead_letters = dead_letters.get_topic_name()
        self.wait_for_acks = settings.processing_guarantee == "at_least_once"
        # at_least_once with RocksDB: states and changelog written by stepcare, not faust's table.
        self.direct_writes = self.wait_for_acks and settings.store.startswith("rocksdb:")
        self.live = settings.clock == "wall"
        # ms; 0: no limit. Live only: a replay (clock=event) processes history of any age.
        self.max_age = settings.max_event_age_days * DAY_MS if self.live else 0
        self.engines: dict[int, PartitionEngine] = {}
        self.latest_event = 0  # ms
        self.saved_clock: dict[int, int] = {}  # partition -> the clock last written to the table
        self.states: dict[int, BufferedStates] = {}
        self.batch = Batch()
        # at_least_once: sealed batches waiting for their outputs' acks, in input order.
        self.sealed: asyncio.Queue[Batch] = asyncio.Queue(SEALED_BATCHES)
        self.generation = 0  # of the partition assignment: bumped by every rebalance
        # faust's flow control: False from the start of a rebalance to the end of its recovery.
        self.flowing: Callable[[], bool] = lambda: True

    def reset(self) -> None:
        """Forget in-memory engines; they are rebuilt from the (recovered) table on next use."""
        self.generation += 1  # records of the batch being handled are delivered again
        self.engines.clear()
        self.states.clear()
        self.batch = Batch()
        self.metrics.forget_partitions()

    async def handle_batch(self, events: list[Any]) -> None:
        """Handle a batch of input records, then make it safe (:meth:`flush`).

        A record is acknowledged (faust may then commit its offset) only with its batch:
        exactly_once at once, as the transaction holds the outputs, the states and the
        offsets; at_least_once once the broker has every output of the batch and its states
        are written. A rebalance meanwhile drops the rest of the batch, unacknowledged.
        """
        generation = self.generation
        batch = self.batch
        set_current = faust_streams._current_event.set
        flowing = self.flowing
        for event in events:
            if not flowing():
                # A rebalance began: the rest of the batch is left unacknowledged (delivered
                # again after it), what was handled is completed below, before the rebalance's
                # commit (exactly_once: that commit waits for this batch, which holds the lock;
                # the transactions it ends get nothing after it).
                break
            # faust's table reads take the partition from the current event: this record's
            # (without it, RocksDB is searched across partitions for the key).
            set_current(weakref.ref(event))
            try:
                await self._process(event.message)
            except _Waiting:
                break
            if self.generation != generation:
                return  # partitions reassigned: the records are delivered again
            batch = self.batch  # a new one if _process flushed the one before
            batch.events.append(event)
            batch.last_event[event.message.partition] = event
        self.metrics.last_processed.set(time.time())
        await self.flush()

    async def flush(self) -> None:
        """Close the batch: its records are acknowledged once safe, in input order.

        exactly_once: at once (the transaction holds everything; only refused dead letters
        are waited for). at_least_once: the batch is sealed (its states stay readable from
        memory) and handed to :meth:`acknowledge_in_order`, which waits for the broker's acks
        while the next batch is handled; at most :data:`SEALED_BATCHES` wait so.
        """
        batch, self.batch = self.batch, Batch()
        if not batch.events and not batch.outputs:
            return
        batch.generation = self.generation
        for partition in batch.last_event:
            states = self.states.get(partition)
            if states is not None:
                batch.writes.append((partition, states, states.seal()))
        if self.wait_for_acks:
            await self.sealed.put(batch)
            return
        if batch.outputs:
            await self._until_acked(batch.outputs)
        self._complete(batch)

    async def acknowledge_in_order(self) -> None:
        """at_least_once: for each sealed batch in turn, wait for its outputs' acks, then
        write its states and acknowledge its records (unless partitions moved meanwhile)."""
        while True:
            batch = await self.sealed.get()
            try:
                await self._acknowledge(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a defect: stop, rather than hold every later batch
                log.critical("a batch could not be completed: the worker stops (its records "
                             "are processed again at the next start)", exc_info=True)  # fmt: skip
                await self.table.app.crash(exc)
                raise
            finally:
                self.sealed.task_done()

    async def _acknowledge(self, batch: Batch) -> None:
        """One sealed batch: its outputs' acks, its states, then its records' acks."""
        if batch.generation != self.generation:
            return  # partitions reassigned since: its records are delivered again
        if batch.outputs:
            await self._until_acked(batch.outputs)
        if batch.generation != self.generation:
            return
        if self.direct_writes:
            await self._write_through_librdkafka(batch)
            if batch.generation != self.generation:
                return
        self._complete(batch)

    async def _write_through_librdkafka(self, batch: Batch) -> None:
        """at_least_once, RocksDB store: a safe batch's states into RocksDB (one write batch
        per partition) and its changelog records through the outputs' producer; once the
        broker has them, each partition's persisted changelog offset, once (faust's own
        path, per key: ``streams.worker.states.BufferedStates.write_rocksdb``). The records
        are acknowledged only after that, so faust commits no offset whose states the
        changelog does not have yet."""
        topic = self.table.changelog_topic.get_topic_name()
        records: list[Output] = []
        for partition, states, sealed in batch.writes:
            for key, value in states.write_rocksdb(sealed, partition):
                record = Output(topic, key, value, [], None, (partition, -1), partition)
                await self.outputs.send(record, topic, True)
                records.append(record)
        batch.writes = []  # written: _complete has nothing left to write
        if not records:
            return
        await self._until_acked(records)
        if batch.generation != self.generation:
            return  # the partitions may be gone: a persisted offset left behind is only lower
        last: dict[int, int] = {}
        for record in records:
            partition = cast(int, record.partition)
            last[partition] = max(last.get(partition, -1), record.offset)
        store = self.table.data
        for partition, offset in last.items():
            store.set_persisted_offset(TP(topic, partition), offset)

    def _complete(self, batch: Batch) -> None:
        """Write a safe batch's states to the table, then acknowledge its records."""
        for partition, states, sealed in batch.writes:
            with _as_current(batch.last_event[partition]):  # faust takes the partition from it
                states.write(sealed)
        self.metrics.publish_census()
        for event in batch.events:
            event.ack()

    async def settle(self) -> None:
        """Until every record handled so far is safe (its states in the table)."""
        await self.flush()
        if self.wait_for_acks:
            await self.sealed.join()

    async def _until_acked(self, outputs: list[Output]) -> None:
        """Wait for the broker's acks of a batch's outputs (see ``streams.worker.outputs``).

        exactly_once: a dead letter the broker refused stops the worker, the batch not
        acknowledged: the transaction would otherwise commit its offsets without the record
        (seen with a dead letter the topic refused); the next start handles it again.
        """
        error = await self.outputs.until_acknowledged(outputs)
        if error is not None:
            partition, offset = outputs[0].source
            log.critical(
                "partition %d offset %d: the broker refused its %s record (%s): the worker "
                "stops so that the event is not committed without it",
                partition, offset, outputs[0].topic, error,
            )  # fmt: skip
            await self.table.app.crash(error)
            raise error

    async def _process(self, message: Any) -> None:
        """Decode, apply and publish one record; the states it changes, staged for the batch."""
        metrics = self.metrics
        value = message.value
        try:
            schema_id = registry_schema_id(value)
            if schema_id is not None:  # registry framing: as single-object of its writer schema
                writers = self.framing.events
                if not writers.known(schema_id):
                    await self._look_up(schema_id)
                value = writers.single_object(value, schema_id)
            obj = decode_event(value)
        except CodecError as exc:
            await self.dead_letter(message, "unreadable", exc.reason, str(exc))
            return
        kind = obj.get("type") if obj.get("type") in EVENT_TYPES else "unreadable"
        try:
            event = event_from_json(obj)
        except EventError as exc:
            await self.dead_letter(message, kind, "invalid-event", str(exc))
            return
        try:
            key = message.key.decode() if message.key else ""
        except UnicodeDecodeError as exc:  # its message would quote a byte of the key
            detail = f"the record key is not UTF-8 (byte {exc.start + 1})"
            await self.dead_letter(message, kind, "invalid-event", detail)
            return
        if key != event.patient_id:
            detail = "the record key is not the event's patient_id (events of one patient "
            detail += "must share one key, or their order is lost)"
            await self.dead_letter(message, kind, "invalid-event", detail)
            return
        if self.live and event.occurred_at > time.time_ns() // 1_000_000 + FUTURE_LIMIT:
            # One event dated years ahead would move its partition's clock there for good and
            # fire every timer of its patients at once.
            detail = "occurred_at is more than a day ahead of the wall clock"
            await self.dead_letter(message, kind, "invalid-event", detail)
            return
        if self.max_age and event.occurred_at < time.time_ns() // 1_000_000 - self.max_age:
            # A survey dated decades back would make its patient's timers due at once, and one
            # feed replaying old history would flood the schedulers with stale visit requests.
            detail = (
                f"occurred_at is more than {self.settings.max_event_age_days} days before the "
                "wall clock (STEPCARE_MAX_EVENT_AGE_DAYS)"
            )
            await self.dead_letter(message, kind, "invalid-event", detail)
            return

        partition = message.partition
        engine = self.engines.get(partition)
        if engine is None:
            generation = self.generation
            await self.settle()  # the engine is rebuilt from the table: it must be complete
            if self.generation != generation:
                return  # partitions reassigned meanwhile: the record is delivered again
            engine = self._load_engine(partition)
        states = self.states[partition]
        try:
            processed = engine.process(event)
        except Exception as exc:  # a defect, not bad input: keep watching the other patients
            log.exception("engine failed on partition %d offset %d", partition, message.offset)
            self.engines.pop(partition, None)  # its clock and timer index may be half-updated
            states.discard()
            # Its type only: an exception's message can quote the data it failed on. The
            # traceback is in the worker's log, at this partition and offset.
            detail = f"{type(exc).__name__} in the engine (see the worker log)"
            await self.dead_letter(message, kind, "processing-error", detail)
            return
        if processed.escalations:
            try:
                await self.publish(processed.escalations, message)
            except Exception as exc:  # the broker refused them: keep the event, not the state
                log.exception("escalations not published (partition %d offset %d)",
                              partition, message.offset)  # fmt: skip
                self.engines.pop(partition, None)
                states.discard()
                detail = f"escalations not published: {type(exc).__name__}: {exc}"
                await self.dead_letter(message, kind, "processing-error", detail)
                return
        states.stage(metrics.census(partition))
        if (
            engine.clock is not None
            and engine.clock >= self.saved_clock.get(partition, 0) + CLOCK_SAVE
        ):
            # The clock is also implied by the states (fired timers are recorded in them), so
            # saving it now and then is enough, and spares a changelog record per event.
            states.raw[_CLOCK_KEY % partition] = engine.clock.to_bytes(8, "big", signed=True)
            self.saved_clock[partition] = engine.clock
        for suppressed in processed.suppressed:
            metrics.count(metrics.suppressed, str(suppressed))
        if event.type is EventType.CLOCK_TICK:
            metrics.ticks.inc()
            return
        metrics.count(metrics.events, kind, str(processed.outcome))
        metrics.event_lag.observe(max(0.0, time.time() - event.occurred_at / 1000))
        if event.occurred_at > self.latest_event:  # event-time progress never goes back
            self.latest_event = event.occurred_at
            metrics.last_event.set(event.occurred_at / 1000)

    async def _look_up(self, schema_id: int) -> None:
        """Learn a new registry schema id of the input (a blocking lookup, in a thread). If the
        registry cannot be asked, wait and ask again, the worker waiting with the record;
        :class:`_Waiting` if a rebalance begins meanwhile (the record is delivered again)."""
        loop = asyncio.get_running_loop()
        pause, most = REGISTRY_RETRY
        while True:
            try:
                await loop.run_in_executor(None, self._look_up_now, schema_id)
                return
            except RegistryError as exc:
                self.metrics.registry_errors.inc()
                log.warning(
                    "input schema id %d cannot be looked up (%s): the worker waits, asking "
                    "again in %.0f s", schema_id, exc, pause,
                )  # fmt: skip
            waited_until = time.monotonic() + pause
            while time.monotonic() < waited_until:
                if not self.flowing():
                    raise _Waiting
                await asyncio.sleep(0.2)
            pause = min(pause * 2, most)

    def _look_up_now(self, schema_id: int) -> None:
        self.framing.look_up(self.framing.events, schema_id, wait=False)

    async def publish(self, escalations: tuple[Escalation, ...], message: Any) -> None:
        now_ms = time.time_ns() // 1_000_000
        escalation_value = self.framing.escalation_value
        for escalation in escalations:
            await self._send(
                self.escalations,
                message,
                escalation.patient_id.encode(),
                escalation_value(escalation),
                cloudevent_headers(escalation),
                # The broker refuses a timestamp over an hour ahead of its clock (Kafka 4:
                # log.message.timestamp.after.max.ms): never later than now. ce_time keeps
                # the escalation's own time. Before 1970: the broker's time (as faust did).
                max(0, min(escalation.occurred_at, now_ms)) or None,
                on_ack=partial(self.metrics.escalation_acked, escalation.occurred_at),
            )
            self.metrics.count(self.metrics.escalations, str(escalation.kind))

    async def _send(
        self,
        topic: str,
        message: Any,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int | None = None,
        *,
        confirm: bool = False,
        on_ack: Callable[[float], None] | None = None,
    ) -> None:
        """Send a record caused by ``message``; the batch waits for its ack if need be
        (at_least_once: every record; exactly_once: only a ``confirm`` one, a dead letter)."""
        source = (message.partition, message.offset)
        output = Output(topic, key, value, headers, timestamp_ms, source, on_ack=on_ack)
        waited = await self.outputs.send(output, message.topic, confirm or self.wait_for_acks)
        if waited is not None:
            self.batch.outputs.append(waited)

    async def dead_letter(self, message: Any, kind: str, reason: str, detail: str) -> None:
        headers = message.headers or []
        own = error_headers(reason, detail, message.topic, message.partition, message.offset)
        limit = self.table.app.conf.producer_max_request_size - DEAD_LETTER_MARGIN
        key, value, headers = dead_letter_record(
            message.key,
            message.value,
            list(headers.items() if isinstance(headers, dict) else headers),
            own,
            limit,
        )
        log.warning(
            "dead letter: %s (partition %d offset %d)", reason, message.partition, message.offset
        )
        await self._send(self.dead_letters, message, key, value, headers, confirm=True)
        self.metrics.count(self.metrics.events, kind, DEAD_LETTERED)
        self.metrics.count(self.metrics.dead_letters, reason)

    def _load_engine(self, partition: int) -> PartitionEngine:
        """Rebuild a partition's engine from the table: its clock and its timer index."""
        started = time.monotonic()
        states = BufferedStates(self.table)
        engine = PartitionEngine(self.policy, states, index_states=False)
        clock = self.table.get(_CLOCK_KEY % partition)
        engine.clock = int.from_bytes(clock, "big", signed=True) if clock else None
        self.saved_clock[partition] = engine.clock or 0
        patients = 0
        census = Census()
        for patient_id, state in _partition_states(self.table, partition):
            engine.index(patient_id, state)
            census.add(state)
            patients += 1
        self.metrics.replace_census(partition, census)
        self.engines[partition] = engine
        self.states[partition] = states
        log.info(
            "partition %d: %d patients, clock %s, timer index rebuilt in %.2f s",
            partition,
            patients,
            format_time(engine.clock) if engine.clock is not None else "not started",
            time.monotonic() - started,
        )
        return engine


@contextlib.contextmanager
def _as_current(event: Any) -> Iterator[None]:
    """Table writes outside the agent: faust takes their partition from the current event."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)
