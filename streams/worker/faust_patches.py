"""Fixes for faust-streaming 0.15.3 defects that lose or repeat events, or stop a worker.

Call ``apply()`` once per process before the worker starts (before ``faust.App(...)`` is fine).
It patches: the recovery race described below and a seek of standby partitions a rebalance
added mid-recovery (:func:`_seek_offsets`) (every guarantee); five exactly_once defects
(section "exactly_once" further down); a stop (or rebalance) that waits for ever for an event
that is never acknowledged (section "stopping"); and a start-up that fails while one broker is
down (section "startup"). Each was found by a test in ``tests/integration`` on a real cluster.
Section "batches" holds what the worker's batched hot path needs of faust's internals: the
agent's records read in batches (:func:`take_batches`) and the fetcher's delivery without
per-record tasks (``_drain_messages``), each for a measured cost (``make bench``).

The bug: ``faust/tables/recovery.py`` ``Recovery.on_recovery_completed`` (and the no-table twin
``Recovery._resume_streams``) resumes the stream partitions *before* it awaits
``consumer.perform_seek()``. During changelog recovery faust had already resumed the flow
(``flow_control.resume()``, ``consumer.resume_flow()``), so while the seek waits on the broker, the
fetcher (``Consumer._drain_messages``) delivers the backlog from the stream partitions into the
agents' queues and moves ``Consumer._read_offset`` forward. Then:

1. ``perform_seek`` sets ``_read_offset[tp]`` back to the committed offset (e.g. 5) and rewinds
   aiokafka to it; the drain loop, still going through the batch it fetched before the seek,
   then sets ``_read_offset[tp]`` to a later offset (e.g. 6);
2. ``app.flow_control.resume()`` runs ``FlowControlEvent.clear()``, which empties every agent
   queue: an event delivered but not yet taken by the agent (offset 5) is thrown away;
3. the re-fetch after the rewind drops offset 5 in ``_drain_messages`` (``offset < r_offset``,
   "DROPPED MESSAGE ROFF") and delivers 6;
4. once 6 is acked, ``Consumer._new_offset`` lets the commit go from 5 to 7: its gap check is
   ``min(acked) - committed > 1`` (faust #606), so an unacked head offset 5 is not a gap.

Offset 5 is never processed, but it is committed. If the agent had already taken the events,
the rewind re-delivers them and they are processed twice instead.

A second, smaller defect that the reordering would otherwise expose: the fetcher passes the
consumer's *live* set of active partitions to ``AIOKafkaConsumerThread.getmany``
(``faust/transport/drivers/aiokafka.py``), and aiokafka's ``Fetcher.fetched_records`` treats an
empty set as "every partition". When recovery pauses the changelog partitions while a fetch is
waiting, the set becomes empty, the fetch hands back (and consumes) stream records, and
``Consumer.getmany`` discards them because their partitions are paused. With the seek after the
resume (stock faust) the seek rewinds over them; with the seek first they would only come back
after a restart. So ``getmany`` gets a copy of the set, taken when the fetch starts, and an empty
copy fetches nothing.

The fix: seek first, then resume the stream partitions. While ``perform_seek`` runs, the stream
partitions stay paused, as they were all through recovery, so nothing from them is delivered
before the seek. After the seek, ``resume_partitions``, ``flow_control.resume()`` and
``resume_flow()`` run with no ``await`` between them, so the queue clear drops nothing from a
stream partition. Nothing else changes: the same calls, the same seek (to the committed
offsets), the same generation check. It only costs the few milliseconds of the seek before the
backlog starts to flow.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from streams.errors import StepcareError

log = logging.getLogger(__name__)

#: The faust versions whose ``Recovery.on_recovery_completed``/``_resume_streams`` this module
#: re-implements. Other versions are left alone: check the source again before you add one.
PATCHED_VERSIONS = frozenset({"0.15.3"})

_MARK = "_stepcare_faustfix_applied"


class UnsupportedFaust(StepcareError):
    """The installed faust-streaming is not a version these patches were written for."""


async def _on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` from faust 0.15.3, with the seek before the resume."""
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    # This needs to happen if all goes well
    callback_coros = [
        asyncio.ensure_future(
            table.on_recovery_completed(
                self.actives_for_table[table],
                self.standbys_for_table[table],
            )
        )
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(
            f"Recovery rebalancing again app id "
            f"{self.app.consumer_generation_id} param {generation_id}"
        )
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    # stepcare: resumed only now, after the seek (faust resumes them before it).
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    self.log.dev("Resume stream partitions")
    self.app.flow_control.resume()
    consumer.resume_flow()
    # finally make sure the fetcher is running.
    await cast(Any, self.app)._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _resume_streams(self: Any, generation_id: int = 0) -> None:
    """``Recovery._resume_streams`` (apps without tables), with the seek before the resume."""
    app = self.app
    consumer = app.consumer
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        # stepcare: resumed only now, after the seek (faust resumes them before it).
        self.log.dev("Resume stream partitions")
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    else:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    # Resume partitions and start fetching.
    self.log.info("Resuming flow...")
    app.flow_control.resume()
    consumer.resume_flow()
    # finally make sure the fetcher is running.
    await cast(Any, app)._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


def _snapshot_getmany(original: Any) -> Any:
    async def getmany(self: Any, active_partitions: Any, timeout: float) -> Any:
        if active_partitions is not None:
            active_partitions = set(active_partitions)  # not the live set: see module docstring
            if not active_partitions:
                return {}
        return await original(self, active_partitions, timeout)

    getmany.__wrapped__ = original  # type: ignore[attr-defined]
    return getmany


async def _seek_offsets(self: Any, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
    """``Recovery._seek_offsets`` from faust 0.15.3; an offset not built yet reads from the start.

    A rebalance that lands while a recovery waits for its active changelogs adds the new
    assignment's standby partitions with offset None (``Recovery._add``) before that recovery
    goes on to seek *every* standby partition; aiokafka refuses None ("Offset must be a positive
    integer") and the Recovery service crashes the worker (seen in test_faults, exactly_once,
    after a broker restart). None means nothing is known of the partition, as faust's -1 does:
    both read from the start. The recovery the rebalance started seeks them again properly.
    """
    new_offsets = {}
    for tp in tps:
        offset = offsets[tp]
        new_offsets[tp] = 0 if offset is None or offset == -1 else offset
    await consumer.seek_wait(new_offsets)


def apply() -> bool:
    """Patch faust's ``Recovery`` class in place; idempotent. Returns True if patched.

    Raises :class:`UnsupportedFaust` on a faust version this was not written for, so an
    upgrade cannot silently run with (or without) a stale copy of faust code: re-check every
    patch against the new source (each names what it copies), then update ``PATCHED_VERSIONS``.
    """
    import faust
    from faust.tables.recovery import Recovery
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if faust.__version__ not in PATCHED_VERSIONS:
        raise UnsupportedFaust(
            f"stepcare's fixes to faust (streams/worker/faust_patches.py) are written for "
            f"faust-streaming {', '.join(sorted(PATCHED_VERSIONS))}, not {faust.__version__}: "
            "install the version pinned in pyproject.toml"
        )
    if getattr(Recovery, _MARK, False):
        return True
    Recovery.on_recovery_completed = _on_recovery_completed  # type: ignore[method-assign]
    Recovery._resume_streams = _resume_streams  # type: ignore[method-assign]
    Recovery._seek_offsets = _seek_offsets  # type: ignore[method-assign]
    AIOKafkaConsumerThread.getmany = _snapshot_getmany(  # type: ignore[method-assign]
        AIOKafkaConsumerThread.getmany
    )
    _apply_exactly_once_fixes()
    _apply_startup_fixes()
    _apply_fetch_fix()
    setattr(Recovery, _MARK, True)
    log.debug("faustfix: seek before resuming stream partitions; fetch a copy of the active set")
    return True


# --- exactly_once ------------------------------------------------------------------------------
#
# Found by tests/integration/test_faults.py (SIGKILLed workers and a broker restart under
# ``processing_guarantee="exactly_once"``); each fix below names the defect it removes. The
# worker itself (streams/worker/pipeline.py) also sends its escalations and dead letters in the
# transaction of the input partition they come from, and holds ``commit_lock`` while it handles an
# event.


def commit_lock(app: Any) -> asyncio.Lock:
    """The app's lock between handling one event and committing a transaction.

    faust commits (``Consumer.force_commit``, a timer every ``broker_commit_interval``) while
    the agent may be half-way through an event: its escalations sent, its table writes still in
    faust's producer buffer. Committing then puts part of the event in one transaction and the
    rest in the next, and a crash in between keeps the first half only.
    """
    lock = getattr(app, "_stepcare_commit_lock", None)
    if lock is None:
        lock = asyncio.Lock()
        app._stepcare_commit_lock = lock
    return cast(asyncio.Lock, lock)


async def _highwaters(self: Any, partitions: Any) -> Any:
    """``AIOKafkaConsumerThread._highwaters``, asking the broker in both guarantees.

    faust 0.15.3 takes the changelog highwaters of an exactly_once recovery from aiokafka's
    cached ``last_stable_offset``, which is None (faust reads -1) until a fetch response for
    the partition arrived in the current assignment: after a rebalance, recovery then either
    thinks there is nothing to read or raises ConsistencyError (the worker crash-loops).
    ``end_offsets`` asks the broker (ListOffsets), which answers with the last stable offset
    for a read_committed consumer, the high watermark otherwise (faust's at_least_once path).
    """
    consumer = self._ensure_consumer()
    return await consumer.end_offsets(partitions)


def _flushing_exclusive_commit(original: Any) -> Any:
    async def force_commit(
        self: Any, topics: Any = None, start_new_transaction: bool = True
    ) -> Any:
        if not self.in_transaction:
            return await original(self, topics, start_new_transaction=start_new_transaction)
        async with commit_lock(self.app):
            # The table's changelog writes wait in faust's producer buffer (``send_soon``):
            # without this flush they land in the *next* transaction, aborted if the worker
            # dies, while this one commits the offsets of the events that made them.
            await self.app.producer.flush()
            return await original(self, topics, start_new_transaction=start_new_transaction)

    force_commit.__wrapped__ = original  # type: ignore[attr-defined]
    return force_commit


async def _commit_and_end_transactions(self: Any) -> None:
    """``Consumer.commit_and_end_transactions`` (on a revoke) that really commits.

    faust's version calls ``commit()``, which returns without committing when a periodic
    commit is in flight: the transaction then stays open across the rebalance while the
    partitions are rewound to the committed offsets, and their events are processed into it
    a second time.
    """
    await self.maybe_wait_for_commit_to_finish()
    await self.force_commit(start_new_transaction=False)


async def _on_partitions_revoked(self: Any, revoked: Any) -> None:
    """``Consumer.on_partitions_revoked`` with the revoke-time commit *before* the revoked
    partitions' acked offsets are forgotten.

    faust 0.15.3 forgets them first, then calls the app's handler (stop the flow, wait for
    the agents, commit and end the transactions): that commit finds nothing to commit, and the
    work since the last periodic commit stays in an open transaction while the partitions are
    rewound (and processed twice into it). Same steps, other order.
    """
    from faust.utils.tracing import traced_from_parent_span

    span = self.app._start_span_from_rebalancing("on_partitions_revoked")
    traced = traced_from_parent_span(span)
    with span:
        await traced(self._on_partitions_revoked, partitions=revoked)(revoked)
        if self._active_partitions is not None:
            self._active_partitions.difference_update(revoked)
        self._paused_partitions.difference_update(revoked)
        for tp in revoked:
            self._gap.pop(tp, None)
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._read_offset.pop(tp, None)
            self._committed_offset.pop(tp, None)


# --- stopping -----------------------------------------------------------------------------------

#: Seconds a stopping worker (or a rebalance) waits for the events it is handling to be
#: acknowledged; after that their offsets stay uncommitted and they are handled again later.
STOP_WAIT = 15.0


async def _bounded_wait_empty(self: Any) -> None:
    """``Consumer.wait_empty`` from faust 0.15.3 that gives up after :data:`STOP_WAIT` seconds.

    faust waits, on stop and on every rebalance (``App._consumer_wait_empty``), until every
    message an agent took is acked, with no time limit. A message is never acked if its agent
    crashed on it (faust's supervisor restarts the agent with the next message) or if its
    outputs cannot be delivered (the broker refuses a dead letter: streams/worker/pipeline.py sends
    it again every second): the worker then ignores SIGTERM for ever (found by
    tests/integration/test_worker_safety.py). Giving up is safe: only acked offsets are
    committed, so the events not acked are delivered again, to this worker or another.
    """
    from faust.utils.tracing import traced_from_parent_span

    deadline = time.monotonic() + STOP_WAIT
    wait_count = 0
    T = traced_from_parent_span()
    while not self.should_stop and self._unacked_messages:
        if time.monotonic() >= deadline:
            self.log.warning(
                "wait_empty: %d events still not acknowledged after %.0f s: not waiting any "
                "longer (their offsets stay uncommitted; they are processed again)",
                len(self._unacked_messages),
                STOP_WAIT,
            )
            break
        wait_count += 1
        if not wait_count % 10:
            self.log.warning("wait_empty: waiting for %d events", len(self._unacked_messages))
        gc.collect()
        await T(self.commit)()
        if not self._unacked_messages:
            break
        await T(self._wait_for_ack)(timeout=1)
        self._clean_unacked_messages()
    await T(self.commit_and_end_transactions)()


# --- startup while a broker is down -----------------------------------------------------------


async def _get_controller_node(
    self: Any, owner: Any, client: Any, timeout: int = 30000
) -> int | None:
    """``Transport._get_controller_node`` that asks the next broker when one is down.

    faust 0.15.3 asks only the first broker of the cluster metadata which node is the
    controller (to declare a topic at startup, e.g. the table's changelog), so a worker that
    starts while that broker is down exits with NodeNotReadyError although the cluster serves.
    """
    from aiokafka.errors import KafkaError
    from faust.exceptions import NotReady
    from faust.transport.drivers import aiokafka as driver

    nodes = [broker.nodeId for broker in client.cluster.brokers()]
    if any(node_id is None for node_id in nodes):
        raise NotReady("Not connected to Kafka Broker")
    failure: Exception = Exception("Controller node not found")
    for node_id in nodes:
        request = (
            driver.MetadataRequest_v1([])
            if driver._AIOKAFKA_HAS_API_VERSION
            else driver.MetadataRequest([])
        )
        try:
            wait_result = await owner.wait(client.send(node_id, request), timeout=timeout)
        except KafkaError as exc:  # this broker is down: the next one knows the controller too
            owner.log.info("Broker %r did not answer (%r): asking the next one", node_id, exc)
            failure = exc
            continue
        if wait_result.stopped:
            owner.log.info("Shutting down - skipping creation.")
            return None
        return cast(int, wait_result.result.controller_id)
    raise failure


CREATE_ATTEMPTS = 10  # a stopped broker's session expires within seconds (KRaft: 9 s default)


def _tolerant_topic_creation(original: Any) -> Any:
    async def _really_create_topic(
        self: Any, owner: Any, client: Any, topic: str, *args: Any, **kwargs: Any
    ) -> None:
        """``Transport._really_create_topic`` that does not fail because one broker is down.

        faust declares the table's changelog at every start. It skips an existing topic only if
        its client's metadata cache already lists it, and otherwise sends CreateTopics to the
        node the metadata names as controller, which in KRaft is any broker believed alive,
        possibly one just stopped: the worker exits with NodeNotReadyError. Here the topic's
        existence is asked of the cluster first (any broker that answers), and a request that
        meets a broker that is not ready is tried again, a second apart.
        """
        from aiokafka.errors import KafkaError, NodeNotReadyError

        try:
            if topic in (await client.fetch_all_metadata()).topics():
                owner.log.debug("Topic %r exists, skipping creation.", topic)
                return
        except KafkaError as exc:  # the request below reports what is wrong
            owner.log.info("Cluster metadata not read (%r): creating topic %r", exc, topic)
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                return cast(None, await original(self, owner, client, topic, *args, **kwargs))
            except NodeNotReadyError as exc:
                if attempt == CREATE_ATTEMPTS or owner.should_stop:
                    raise
                owner.log.info("Creating topic %r: %r; trying again", topic, exc)
                await asyncio.sleep(1.0)

    _really_create_topic.__wrapped__ = original  # type: ignore[attr-defined]
    return _really_create_topic


def _apply_startup_fixes() -> None:
    from faust.transport.drivers.aiokafka import Transport

    Transport._get_controller_node = _get_controller_node  # type: ignore[method-assign]
    Transport._really_create_topic = _tolerant_topic_creation(  # type: ignore[method-assign]
        Transport._really_create_topic
    )


def _apply_exactly_once_fixes() -> None:
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]
    Consumer.force_commit = _flushing_exclusive_commit(  # type: ignore[method-assign]
        Consumer.force_commit
    )
    Consumer.commit_and_end_transactions = (  # type: ignore[method-assign]
        _commit_and_end_transactions
    )
    Consumer.on_partitions_revoked = _on_partitions_revoked  # type: ignore[method-assign]
    Consumer.wait_empty = _bounded_wait_empty  # type: ignore[method-assign]


# --- batches: the agent's records without faust's per-event path ------------------------------
#
# Read from faust 0.15.3 (``faust/streams.py`` ``Stream._py_aiter``, ``take_events``;
# ``faust/transport/consumer.py`` ``Consumer._drain_messages``). Measured with ``make bench``
# (docs/benchmarks.md): see there for what each of the two below pays.


async def take_batches(stream: Any, max_events: int, linger: float) -> AsyncIterator[list[Any]]:
    """The agent's input events in batches of at most ``max_events``, in arrival order.

    A batch is every event waiting in the agent's queue, up to ``max_events``; when the queue
    runs dry it waits at most ``linger`` seconds for more. Nothing is acknowledged here: the
    caller acknowledges each event (``event.ack()``) once its outputs are safe.

    Why not faust's own iteration: ``Stream.__aiter__`` spends per event a loop turn
    (``sleep(0)``), sensors, a context variable and an acknowledgement of the previous event;
    ``Stream.take_events`` acknowledges every buffered event in a ``finally`` even when the
    body raised (at least once would lose them) and refuses table writes in its body
    (faust-streaming #497). This reads the queue the conductor fills for the agent's stream
    and keeps, per event, what ``Stream._py_aiter`` does that matters: an event of an older
    consumer generation, or delivered while flow control is suspended (a rebalance), is
    skipped (faust also acknowledges it: not here, see below); every other is tracked as not
    yet acknowledged, so that faust commits no offset past it and a stop or a rebalance waits
    for it.
    """
    app = stream.app
    queue = stream.channel.queue
    consumer = app.consumer
    unacked = consumer.unacked
    acking_topics = app.topics.acking_topics
    flow_control = app.flow_control
    loop = asyncio.get_running_loop()
    while True:
        batch: list[Any] = []
        try:
            event = await queue.get()
        except StopAsyncIteration:  # faust ends the channel's iteration: the worker stops
            return
        deadline = loop.time() + linger
        while True:
            message = event.message
            if flow_control.is_active() and message.generation_id == app.consumer_generation_id:
                batch.append(event)
            # Else dropped, not acknowledged (faust's iterator acknowledges the events it skips,
            # which lets a commit pass them): never tracked, it holds up no stop, and the seek
            # after the rebalance delivers it again.
            if len(batch) >= max_events:
                break
            if not queue.empty():
                event = queue.get_nowait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
            except StopAsyncIteration:
                return  # the worker stops: the batch is delivered again to the next one
        if batch:
            # Tracked only now: a stop while it lingers waits for no event it holds.
            for event in batch:
                message = event.message
                if message.topic in acking_topics and not message.tracked:
                    message.tracked = True
                    unacked.add(message)
            yield batch


def _queue_may_block(conductor: Any, tp: Any) -> bool:
    """Whether delivering a record of ``tp`` could wait: a queue it goes to is full, or its
    channels are not known (then faust's own careful path is taken)."""
    channels = conductor._tp_index.get(tp)
    if not channels:
        return True
    return any(channel.queue.full() for channel in channels)


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover
    """``Consumer._drain_messages`` from faust 0.15.3, delivering a record with a plain await
    when the delivery cannot wait.

    faust delivers every fetched record through ``self.wait_first(callback(message),
    self.suspend_flow.wait())`` so that a rebalance (``suspend_flow``) interrupts a delivery
    stuck on a full agent queue. In mode that is four tasks, an ``asyncio.wait`` and three
    cancellations per record (~27 µs here; faust-streaming #229 reports a deadlock at the same
    call). The conductor's callback only waits when a destination queue is full
    (``transport/conductor.py``: ``put_nowait_enhanced`` otherwise), so when the flow is not
    suspended and no destination queue of the partition is full it is awaited directly; any
    other record takes faust's path. The rest is faust's loop, unchanged.
    """
    from faust.transport.consumer import CONSUMER_FETCHING

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    suspended = self.suspend_flow.is_set
    conductor = self.app.topics

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if suspended() or _queue_may_block(conductor, tp):
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:  # stepcare: cannot wait, so no tasks around it
                            await callback(message)
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r", offset)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


def _apply_fetch_fix() -> None:
    from faust.transport.consumer import Consumer

    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
