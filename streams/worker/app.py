"""The Faust worker: patient events in, escalations and dead letters out (DESIGN §1, §2, §6).

Read top to bottom:

1. ``build(settings)`` makes the Faust app: the three topics, the ``patients`` table (RocksDB,
   compacted changelog) holding each patient's engine state, and one agent with
   ``concurrency=1`` (faust #606: with more, a commit can pass an event still in flight).
2. The agent hands every record to :class:`Monitor`, which decodes it (or dead-letters it with
   its reason), runs it through the partition's :class:`~streams.clinical.partition.PartitionEngine`
   (the same engine as ``stepcare replay``), publishes the escalations and writes the changed
states. 3. With ``clock = "wall"`` a timer appends a ``CLOCK_TICK`` with the wall time to every
   input partition this worker owns, so timers fire in order with the events, as in a replay.

At least once: escalations are acknowledged by the broker *before* the states that remember
them are written to the table and the event's offset can be committed, so a crash can repeat an
escalation (same id) but never lose one. The agent does not wait for those acks: it handles the
next events while :meth:`Monitor.acknowledge_in_order` writes states and acknowledges events in
input order as the acks arrive. Exactly once: Faust's transactions make output, state and
offsets one atomic step (with the fixes in ``streams/faust_patches.py``, and every output sent in
its input partition's transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
import weakref
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from faust import streams as faust_streams
from faust.exceptions import ConsistencyError
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import TP
from faust.types.auth import CredentialsT
from faust.web.drivers import aiohttp as faust_aiohttp
from prometheus_client import REGISTRY

from streams.clinical.engine import PatientState
from streams.clinical.escalations import Escalation
from streams.clinical.events import DAY_MS, EventError, EventType, event_from_json, format_time
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy, resolve_policy
from streams.formats.avro import (
    CodecError,
    cloudevent_headers,
    decode_event,
    encode_escalation,
    encode_event,
)
from streams.formats.state import StateDecodeError, decode_state, encode_state
from streams.kafka.deadletter import DEAD_LETTER_MARGIN, dead_letter_record, error_headers
from streams.kafka.settings import Settings
from streams.worker import faust_patches
from streams.worker.metrics import DEAD_LETTERED, EVENT_TYPES, Census, WorkerMetrics

log = logging.getLogger("stepcare.worker")

TABLE = "patients"
# Reserved table keys (never a patient id: ids cannot start with NUL) for each partition's clock.
_CLOCK_KEY = b"\x00clock/%d"
CLOCK_SAVE = 3_600_000  # ms of event time between saves of a partition's clock
LAG_INTERVAL = 5.0  # seconds between consumer-lag measurements
FUTURE_LIMIT = 86_400_000  # ms: live events dated later than this ahead of now are refused
# at_least_once: events handled while earlier ones still wait for their outputs' acks (a bound
# on memory and on the work a crash repeats), and the pause before outputs the broker failed
# (after the producer's own retries) are sent again.
MAX_IN_FLIGHT = 1000
RESEND_PAUSE = 1.0  # seconds


def build(settings: Settings, policy: Policy | None = None) -> faust.App:
    """The worker's Faust app, configured from ``settings``."""
    policy = policy or resolve_policy(settings.policy)
    faust_patches.apply()  # faust 0.15.3 can lose an event waiting while a table recovers
    app = App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store=settings.store,
        datadir=str(settings.data_dir),
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # faust's own views (tables, router, stats, graph, /): off. MetricsOnlyWeb serves none
        # of them whatever these say; they keep faust's log and its `app.conf` truthful.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
    )
    app.stepcare_web = (settings.web_host, settings.web_port)
    events = app.topic(settings.input_topic, key_type=bytes, value_type=bytes)
    escalations = app.topic(settings.escalations_topic, key_type=bytes, value_type=bytes)
    dead_letters = app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes)
    patients = app.Table(
        TABLE,
        key_type=bytes,  # the patient id as UTF-8, as on the input topic
        value_type=bytes,  # streams.formats.state bytes
        partitions=settings.partitions,
        help="Each patient's engine state, and each partition's clock.",
    )
    metrics = WorkerMetrics(REGISTRY, policy)
    metrics.last_processed.set(time.time())  # "not since it started", rather than "since 1970"
    monitor = Monitor(settings, policy, patients, escalations, dead_letters, metrics)

    # exactly_once: no transaction commits half-way through an event (streams/faust_patches.py).
    exclusive = (
        faust_patches.commit_lock(app)
        if settings.processing_guarantee == "exactly_once"
        else contextlib.nullcontext()
    )

    @app.agent(events, concurrency=1)
    async def monitor_patients(stream: faust.StreamT) -> None:
        # Acknowledged by the monitor, in order, once every output of the event is.
        async for event in stream.noack().events():
            async with exclusive:
                await monitor.handle(event)

    if settings.processing_guarantee == "at_least_once":

        @app.task
        async def acknowledge() -> None:
            await monitor.acknowledge_in_order()

    @app.on_partitions_assigned.connect
    async def forget_engines(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        monitor.reset()

    def input_partitions() -> list[TP]:
        return sorted(tp for tp in app.consumer.assignment() if tp.topic == settings.input_topic)

    lag_probe = LagProbe(settings)

    @app.timer(LAG_INTERVAL, on_leader=False)
    async def measure_lag() -> None:
        owned = [tp.partition for tp in input_partitions()]
        lags = await asyncio.get_running_loop().run_in_executor(None, lag_probe.measure, owned)
        for partition in range(settings.partitions):
            metrics.consumer_lag.labels(str(partition)).set(lags.get(partition, 0))

    if settings.clock == "wall":
        ticker = Ticker(settings)

        @app.timer(float(settings.tick_interval), on_leader=False)
        async def tick() -> None:
            ticker.tick([tp.partition for tp in input_partitions()])  # only the ones it owns

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        """The process is alive and its event loop answers."""
        return web.json({"status": "alive"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        """Partitions assigned and tables recovered: the worker is watching its patients."""
        owned = [tp.partition for tp in input_partitions()] if app.consumer else []
        recovered = app.tables.recovery.completed.is_set()
        body = {"ready": bool(owned) and recovered, "partitions": owned, "recovered": recovered}
        return web.json(body, status=200 if body["ready"] else 503)

    # /metrics on the web port: stepcare's metrics (streams/worker/metrics.py) and Faust's own.
    setup_prometheus_sensors(
        app, pattern="/metrics", registry=REGISTRY, name_prefix="stepcare_faust"
    )
    return app


class MetricsOnlyWeb(faust_aiohttp.Web):
    """faust's aiohttp web server with none of faust's views, bound where the settings say.

    faust 0.15.3 (``faust/web/base.py`` ``Web._enabled_blueprints``) mounts blueprints by
    default: ``/table/<name>/<key>/`` serves any key of any table (here: any patient's state),
    ``/router/`` the cluster's topology, ``/`` a status or statistics page, ``/graph/`` the
    service tree. Each has an app setting, but faust's settings read environment variables
    *over* the values given to ``faust.App`` (``APP_WEB_TABLES_ENABLED``, ``WEB_BIND``, ...;
    ``faust/types/settings/base.py`` ``_init_settings``): so no blueprint at all here, and the
    socket is bound to STEPCARE_WEB_HOST:STEPCARE_WEB_PORT, not to ``conf.web_bind`` (whose
    default is 0.0.0.0). The worker's own pages (/metrics, /health, /ready) are added by
    :func:`build` with ``app.page``.
    """

    default_blueprints = ()
    production_blueprints = ()
    debug_blueprints = ()
    optional_blueprints = ()

    def _new_transport_tcp(self) -> Any:
        host, port = self.app.stepcare_web  # type: ignore[attr-defined]
        return faust_aiohttp.TCPSite(
            self._runner, host, port, ssl_context=self.app.conf.web_ssl_context
        )


class App(faust.App):
    """faust's App, with the web server of :class:`MetricsOnlyWeb`."""

    stepcare_web: tuple[str, int] = ("127.0.0.1", 6066)  # (host, port), set by build()

    def _new_web(self) -> Any:  # faust 0.15.3: ``App.web`` is ``_new_web()``, cached
        return MetricsOnlyWeb(self)


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


class LagProbe:
    """Consumer lag as Kafka sees it: end offset minus the group's committed offset."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.input_topic
        self.group = settings.app_id
        self.config = settings.confluent_config()
        self.consumer: Consumer | None = None

    def measure(self, partitions: list[int]) -> dict[int, int]:
        """Lag of each partition (this worker's); {} when the broker cannot be asked."""
        if not partitions:
            return {}
        try:
            if self.consumer is None:
                self.consumer = Consumer(
                    {**self.config, "group.id": self.group, "enable.auto.commit": False}
                )
            tps = [TopicPartition(self.topic, p) for p in partitions]
            committed = self.consumer.committed(tps, timeout=5)
            lags = {}
            for tp in committed:
                end = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
                start = tp.offset if tp.offset >= 0 else 0  # nothing committed yet: all of it
                lags[tp.partition] = max(0, end - start)
            return lags
        except KafkaException as exc:
            log.warning("consumer lag not measured: %s", exc.args[0].str())
            return {}


class Ticker:
    """Appends a wall-clock ``CLOCK_TICK`` to input partitions (clock = "wall")."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.input_topic
        self.producer = Producer({**settings.confluent_config(), "acks": "all"})

    def tick(self, partitions: list[int]) -> None:
        now = time.time_ns() // 1_000_000
        value = encode_event(
            {"event_id": "", "patient_id": "", "occurred_at": format_time(now),
             "type": "CLOCK_TICK"}
        )  # fmt: skip
        for partition in partitions:
            self.producer.produce(self.topic, key=b"", value=value, partition=partition,
                                  timestamp=now)  # fmt: skip
        self.producer.poll(0)


def _credentials(settings: Settings) -> CredentialsT | None:
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = settings.ssl_context()  # SettingsError naming the file's variable
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_secret(),
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )


class _Worker(faust.Worker):
    def _shutdown_loop(self) -> None:
        # Stopping on SIGTERM cancels the agents; faust can record that as the agent's crash
        # (seen with exactly_once), which would make a clean stop exit with status 1.
        if self._signal_stop_time and isinstance(self.crash_reason, asyncio.CancelledError):
            self.crash_reason = None
        super()._shutdown_loop()


# Libraries that log whole records at DEBUG (keys are patient ids; values are events, states
# and escalations): they stay at INFO whatever STEPCARE_LOG_LEVEL says, which sets the level of
# stepcare's own loggers only. No patient-level data ever reaches the worker's log.
QUIET_LIBRARIES = ("aiokafka", "faust", "mode", "kafka", "confluent_kafka", "rocksdict")


CLEAN_STOP = "clean-stop"  # in the data dir while no worker runs on it after a clean stop


def tables_dir(data_dir: Path) -> Path:
    """Where faust keeps the worker's RocksDB tables: <datadir>/v<app version>/tables."""
    return data_dir / "v1" / "tables"


def forget_unclean_state(data_dir: Path) -> bool:
    """After a crash, drop the local RocksDB tables so the state comes from the changelog.

    RocksDB is written at once while the changelog records are still in the producer's buffer:
    a worker killed in between leaves local states the changelog never got. Restarted on them,
    it would ignore the redelivered events as duplicates and never write those states.
    """
    marker = data_dir / CLEAN_STOP
    tables = tables_dir(data_dir)
    dropped = tables.exists() and not marker.exists()
    if dropped:
        shutil.rmtree(tables)
        log.warning("the last worker on %s did not stop cleanly: its tables are recovered "
                    "from the changelog", data_dir)  # fmt: skip
    marker.unlink(missing_ok=True)
    return dropped


_TABLE_DB = re.compile(rf"{TABLE}-(\d+)\.db")


def forget_stale_tables(settings: Settings) -> bool:
    """Drop the local RocksDB tables if they remember more of the changelog than it holds.

    That is a broker whose storage was reset (or a changelog topic deleted and made again)
    while this data dir kept its tables: faust would stop the worker with a ConsistencyError
    ("persisted offset ... higher than the last offset in that topic"). The changelog is the
    reference: the tables are dropped and recovered from it, as after an unclean stop.
    """
    tables = tables_dir(settings.data_dir)
    persisted = {}
    for path in sorted(tables.glob(f"{TABLE}-*.db")) if tables.is_dir() else ():
        match = _TABLE_DB.fullmatch(path.name)
        offset = _persisted_offset(path) if match else None
        if offset is not None:
            persisted[int(match.group(1))] = offset
    if not persisted:
        return False
    changelog = f"{settings.app_id}-{TABLE}-changelog"
    try:
        ends = _end_offsets(settings, changelog, sorted(persisted))
    except KafkaException as exc:  # faust's own check still stops a worker on stale tables
        log.warning("changelog offsets not checked: %s", exc.args[0].str())
        return False
    stale = sorted(p for p, offset in persisted.items() if offset >= ends.get(p, 0))
    if not stale:
        return False
    shutil.rmtree(tables)
    log.warning("the local tables of %s remember changelog records the broker does not have "
                "(%s partition %d: offset %d, end %d; was the broker's storage reset?): they "
                "are dropped and recovered from the changelog", settings.data_dir, changelog,
                stale[0], persisted[stale[0]], ends.get(stale[0], 0))  # fmt: skip
    return True


def _persisted_offset(path: Path) -> int | None:
    """The changelog offset faust recorded in one partition's RocksDB (None if unknown)."""
    from faust.stores.rocksdb import RocksDBOptions, Store

    try:
        db = RocksDBOptions().open(path)
    except Exception as exc:  # locked by a running worker, or damaged: faust will say so
        log.warning("cannot read %s: %s", path, exc)
        return None
    try:
        value = db.get(Store.offset_key)
        return int(value) if value is not None else None
    except ValueError:
        return None
    finally:
        db.close()


def _end_offsets(settings: Settings, topic: str, partitions: list[int]) -> dict[int, int]:
    """The end offset of each partition of ``topic`` (none of a topic that does not exist)."""
    consumer = Consumer({**settings.confluent_config(), "group.id": f"{settings.app_id}-check",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
            if p in metadata.partitions
        }
    finally:
        consumer.close()


def run(app: faust.App, settings: Settings) -> int:
    """Run the worker in this process until SIGTERM/SIGINT; the exit status of the worker."""
    forget_unclean_state(settings.data_dir)
    if settings.store.startswith("rocksdb://"):
        forget_stale_tables(settings)
    quiet = {name: {"level": "INFO"} for name in QUIET_LIBRARIES}
    worker = _Worker(
        app,
        loglevel=settings.log_level.upper(),
        quiet=True,
        logging_config={"merge": True, "loggers": quiet},
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        status = int(exc.code or 0)
    else:
        status = 0
    crashed = [getattr(service, "crash_reason", None) for service in (worker, app)]
    if any(isinstance(reason, ConsistencyError) for reason in crashed):
        # Stale tables forget_stale_tables could not see (no answer from the broker then).
        shutil.rmtree(tables_dir(settings.data_dir), ignore_errors=True)
        log.error("the local tables remembered changelog records the broker does not have: "
                  "they are dropped; start the worker again to recover them from the "
                  "changelog")  # fmt: skip
    if status == 0:
        (settings.data_dir / CLEAN_STOP).touch()
    return status
