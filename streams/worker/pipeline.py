"""The per-record pipeline: :class:`Monitor` applies each input record to its partition's engine
and publishes what it decides.

At least once: escalations are acknowledged by the broker *before* the states that remember
them are written to the table and the event's offset can be committed, so a crash can repeat an
escalation (same id) but never lose one. The agent does not wait for those acks: it handles the
next events while :meth:`Monitor.acknowledge_in_order` writes states and acknowledges events in
input order as the acks arrive. Exactly once: Faust's transactions make output, state and
offsets one atomic step (with the fixes in ``streams/worker/faust_patches.py``, and every output
sent in its input partition's transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import faust
from faust import streams as faust_streams

from streams.clinical.escalations import Escalation
from streams.clinical.events import DAY_MS, EventError, EventType, event_from_json, format_time
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy
from streams.formats.avro import CodecError, cloudevent_headers, decode_event, encode_escalation
from streams.kafka.deadletter import DEAD_LETTER_MARGIN, dead_letter_record, error_headers
from streams.kafka.settings import Settings
from streams.worker.metrics import DEAD_LETTERED, EVENT_TYPES, Census, WorkerMetrics
from streams.worker.states import _CLOCK_KEY, BufferedStates, Staged, _partition_states

log = logging.getLogger("stepcare.worker")

CLOCK_SAVE = 3_600_000  # ms of event time between saves of a partition's clock
FUTURE_LIMIT = 86_400_000  # ms: live events dated later than this ahead of now are refused
# at_least_once: events handled while earlier ones still wait for their outputs' acks (a bound
# on memory and on the work a crash repeats), and the pause before outputs the broker failed
# (after the producer's own retries) are sent again.
MAX_IN_FLIGHT = 1000
RESEND_PAUSE = 1.0  # seconds


class Monitor:
    """Applies each input record to its partition's engine and publishes what it decides."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        table: faust.Table,
        escalations: faust.TopicT,
        dead_letters: faust.TopicT,
        metrics: WorkerMetrics,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.policy = policy
        self.table = table
        self.escalations = escalations
        self.dead_letters = dead_letters
        self.wait_for_acks = settings.processing_guarantee == "at_least_once"
        self.live = settings.clock == "wall"
        # ms; 0: no limit. Live only: a replay (clock=event) processes history of any age.
        self.max_age = settings.max_event_age_days * DAY_MS if self.live else 0
        self.engines: dict[int, PartitionEngine] = {}
        self.latest_event = 0  # ms
        self.saved_clock: dict[int, int] = {}  # partition -> the clock last written to the table
        self.states: dict[int, BufferedStates] = {}
        self.outputs: list[Output] = []  # sent for the event being handled
        # at_least_once: handled events waiting for their outputs' acks, in input order.
        self.in_flight: asyncio.Queue[InFlight] = asyncio.Queue(MAX_IN_FLIGHT)
        self.generation = 0  # of the partition assignment: bumped by every rebalance

    def reset(self) -> None:
        """Forget in-memory engines; they are rebuilt from the (recovered) table on next use."""
        self.generation += 1  # events still in flight from before are redelivered, not written
        self.engines.clear()
        self.states.clear()
        self.metrics.forget_partitions()

    async def handle(self, event: Any) -> None:
        """Handle one input record; acknowledge it once its outputs are safe.

        The acknowledgement lets faust commit the record's offset. exactly_once: at once, as
        the transaction holds the outputs, the states and the offset. at_least_once: the
        states are written (so the changelog remembers the escalations) and the record is
        acknowledged only when the broker has every output the record caused, in input order,
        by :meth:`acknowledge_in_order`; meanwhile the next records are handled, reading the
        states not yet written from memory.
        """
        self.outputs = []
        staged = await self._process(event.message)
        if not self.wait_for_acks:
            if staged is not None:
                staged.write()
            event.ack()
            return
        await self.in_flight.put(InFlight(event, self.generation, self.outputs, staged))

    async def acknowledge_in_order(self) -> None:
        """at_least_once: write the states, then acknowledge, of each event once acked."""
        while True:
            item = await self.in_flight.get()
            try:
                if item.generation != self.generation:
                    continue  # partitions reassigned since: the event is delivered again
                await self._until_acked(item)
                if item.generation != self.generation:
                    continue
                if item.staged is not None:
                    with _as_current(item.event):  # faust takes the partition from it
                        item.staged.write()
                item.event.ack()
            finally:
                self.in_flight.task_done()

    async def _until_acked(self, item: InFlight) -> None:
        """Wait for the broker's acks of an event's outputs; send again what it failed."""
        while item.outputs:
            results = await asyncio.gather(*(out.ack for out in item.outputs),
                                           return_exceptions=True)  # fmt: skip
            failed = [out for out, result in zip(item.outputs, results, strict=True)
                      if isinstance(result, BaseException)]  # fmt: skip
            if not failed:
                return
            if any(isinstance(result, asyncio.CancelledError) for result in results):
                raise asyncio.CancelledError  # the producer is stopping: so is the worker
            message = item.event.message
            log.error("%d outputs of partition %d offset %d not acknowledged (%s): sending "
                      "them again", len(failed), message.partition, message.offset,
                      next(r for r in results if isinstance(r, BaseException)))  # fmt: skip
            await asyncio.sleep(RESEND_PAUSE)
            for out in failed:
                out.ack = await out.topic.send(**out.record)

    async def settle(self) -> None:
        """Until every handled event's states are in the table (at_least_once)."""
        if self.wait_for_acks:
            await self.in_flight.join()

    async def _process(self, message: Any) -> Staged | None:
        """Decode, apply and publish one record; the table writes it makes, staged."""
        metrics = self.metrics
        metrics.last_processed.set(time.time())
        try:
            obj = decode_event(message.value)
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
            await self.settle()  # the engine is rebuilt from the table: it must be complete
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
        staged = states.stage(metrics.census(partition))
        metrics.publish_census()
        if (
            engine.clock is not None
            and engine.clock >= self.saved_clock.get(partition, 0) + CLOCK_SAVE
        ):
            # The clock is also implied by the states (fired timers are recorded in them), so
            # saving it now and then is enough, and spares a changelog record per event.
            staged.raw[_CLOCK_KEY % partition] = engine.clock.to_bytes(8, "big", signed=True)
            self.saved_clock[partition] = engine.clock
        for suppressed in processed.suppressed:
            metrics.count(metrics.suppressed, str(suppressed))
        if event.type is EventType.CLOCK_TICK:
            metrics.ticks.inc()
            return staged
        metrics.count(metrics.events, kind, str(processed.outcome))
        metrics.event_lag.observe(max(0.0, time.time() - event.occurred_at / 1000))
        if event.occurred_at > self.latest_event:  # event-time progress never goes back
            self.latest_event = event.occurred_at
            metrics.last_event.set(event.occurred_at / 1000)
        return staged

    async def publish(self, escalations: tuple[Escalation, ...], message: Any) -> None:
        for escalation in escalations:
            await self._send(
                self.escalations,
                message,
                key=escalation.patient_id.encode(),
                value=encode_escalation(escalation.to_json()),
                headers=cloudevent_headers(escalation),
                # The broker refuses a timestamp over an hour ahead of its clock (Kafka 4:
                # log.message.timestamp.after.max.ms): never later than now. ce_time keeps
                # the escalation's own time.
                timestamp=max(0, min(escalation.occurred_at, time.time_ns() // 1_000_000)) / 1000,
            )
            self.metrics.count(self.metrics.escalations, str(escalation.kind))

    async def _send(
        self,
        topic: faust.TopicT,
        message: Any,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp: float | None = None,
        confirm: bool = False,
    ) -> None:
        """Send a record caused by ``message``.

        at_least_once: remembered in :attr:`outputs`, so that the event is acknowledged only
        once the broker has it. exactly_once: in the transaction of ``message``'s input
        partition, the one that commits its offset and its table writes. (faust's
        ``topic.send`` would pick the transaction of the *destination* partition, which this
        worker does not consume: no transaction at all, so a crash would repeat the record.)
        With ``confirm`` (dead letters, exactly_once), it waits for the broker's ack and stops
        the worker if the broker refused the record.
        """
        if self.wait_for_acks:
            record = {"key": key, "value": value, "headers": headers, "timestamp": timestamp}
            self.outputs.append(Output(topic, record, await topic.send(**record)))
            return
        app = self.table.app
        group = app.assignor.group_for_topic(message.topic)
        ack = await app.producer.send(
            topic.get_topic_name(),
            key,
            value,
            None,
            timestamp,
            headers,
            transactional_id=f"{app.conf.id}-{group}-{message.partition}",
        )
        if confirm:
            try:
                await ack
            except Exception as exc:
                # The transaction would still commit the event's offset without the record
                # (seen with a dead letter the topic refused): stop the worker instead, with
                # the event not acknowledged; the next start handles it again.
                log.critical(
                    "partition %d offset %d: the broker refused its %s record (%s): the worker "
                    "stops so that the event is not committed without it",
                    message.partition, message.offset, topic.get_topic_name(), exc,
                )  # fmt: skip
                await app.crash(exc)
                raise

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
        await self._send(
            self.dead_letters, message, key=key, value=value, headers=headers, confirm=True
        )
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


@dataclass
class Output:
    """A record sent for an input event (at_least_once), kept until the broker has it."""

    topic: faust.TopicT
    record: dict[str, Any]  # Topic.send's arguments: to send it again if the broker failed it
    ack: Any  # the future of its acknowledgement


@dataclass
class InFlight:
    """A handled event whose outputs are not all acknowledged yet (at_least_once)."""

    event: Any  # faust's Event
    generation: int  # Monitor.generation when it was handled
    outputs: list[Output]
    staged: Staged | None  # the table writes it made, held until the outputs are acked


@contextlib.contextmanager
def _as_current(event: Any) -> Iterator[None]:
    """Table writes outside the agent: faust takes their partition from the current event."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)
