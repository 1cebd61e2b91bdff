"""streams.worker.faust_patches: the pieces that can be checked without a broker (the rest is
checked on a real cluster by tests/integration: test_worker's restarts and test_faults)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import NodeNotReadyError

from streams.worker import faust_patches


class Owner:
    """The service faust passes in: ``wait`` runs the request and reports a stop."""

    log = SimpleNamespace(info=lambda *args: None, debug=lambda *args: None)
    should_stop = False

    async def wait(self, coro: Any, timeout: float) -> Any:
        return SimpleNamespace(result=await coro, stopped=False)


class Client:
    def __init__(self, nodes: list[int], down: set[int], controller: int) -> None:
        self.cluster = SimpleNamespace(brokers=lambda: [SimpleNamespace(nodeId=n) for n in nodes])
        self.down = down
        self.controller = controller
        self.asked: list[int] = []

    async def send(self, node_id: int, request: Any) -> Any:
        self.asked.append(node_id)
        if node_id in self.down:
            raise NodeNotReadyError(f"node {node_id} is not ready")
        return SimpleNamespace(controller_id=self.controller)


def controller(client: Client) -> int | None:
    return asyncio.run(faust_patches._get_controller_node(None, Owner(), client))


def test_the_controller_is_found_through_the_next_broker_when_the_first_is_down() -> None:
    client = Client([1, 2, 3], down={1}, controller=3)
    assert controller(client) == 3
    assert client.asked == [1, 2]


def test_the_first_broker_that_answers_is_asked_only() -> None:
    client = Client([1, 2, 3], down=set(), controller=2)
    assert controller(client) == 2
    assert client.asked == [1]


def test_with_every_broker_down_the_last_error_is_raised() -> None:
    client = Client([1, 2], down={1, 2}, controller=1)
    with pytest.raises(NodeNotReadyError, match="node 2"):
        controller(client)


class Creator:
    """faust's ``_really_create_topic``, failing ``failures`` times as when a broker is down."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, transport: Any, owner: Any, client: Any, topic: str) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise NodeNotReadyError("node 1 is not ready")


def create(creator: Creator, existing: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_pause(seconds: float) -> None:
        pass

    async def fetch_all_metadata() -> Any:
        return SimpleNamespace(topics=lambda: existing)

    monkeypatch.setattr(faust_patches.asyncio, "sleep", no_pause)
    client = SimpleNamespace(fetch_all_metadata=fetch_all_metadata)
    tolerant = faust_patches._tolerant_topic_creation(creator)
    asyncio.run(tolerant(None, Owner(), client, "app-patients-changelog"))


def test_an_existing_changelog_is_not_created_again(monkeypatch: pytest.MonkeyPatch) -> None:
    creator = Creator(failures=0)
    create(creator, {"app-patients-changelog"}, monkeypatch)
    assert creator.calls == 0


def test_creating_a_topic_while_a_broker_is_down_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creator = Creator(failures=2)
    create(creator, set(), monkeypatch)
    assert creator.calls == 3


def test_a_broker_down_for_good_fails_the_creation_in_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creator = Creator(failures=faust_patches.CREATE_ATTEMPTS)
    with pytest.raises(NodeNotReadyError):
        create(creator, set(), monkeypatch)
    assert creator.calls == faust_patches.CREATE_ATTEMPTS


def test_apply_patches_faust_once() -> None:
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Transport

    assert faust_patches.apply() is True
    assert faust_patches.apply() is True  # idempotent: force_commit is wrapped once
    assert Transport._get_controller_node is faust_patches._get_controller_node
    assert Transport._really_create_topic.__wrapped__.__qualname__ == (
        "Transport._really_create_topic"  # faust's own, wrapped once
    )
    assert AIOKafkaConsumerThread._highwaters is faust_patches._highwaters
    assert Recovery._seek_offsets is faust_patches._seek_offsets
    assert Consumer.on_partitions_revoked is faust_patches._on_partitions_revoked
    assert Consumer.commit_and_end_transactions is faust_patches._commit_and_end_transactions
    assert Consumer.wait_empty is faust_patches._bounded_wait_empty
    assert Consumer._drain_messages is faust_patches._drain_messages
    ours = "_flushing_exclusive_commit.<locals>.force_commit"
    assert Consumer.force_commit.__qualname__ == ours
    assert Consumer.force_commit.__wrapped__.__qualname__ != ours  # not wrapped twice


def test_a_standby_partition_added_mid_recovery_is_read_from_the_start() -> None:
    """The gen-4 assignment added standby 3 (offset None) while gen 3's recovery still ran."""
    from collections import Counter

    seeks: list[dict[str, int]] = []

    class Consumer:
        async def seek_wait(self, offsets: dict[str, int]) -> None:
            seeks.append(offsets)

    offsets: Counter[str] = Counter({"changelog-1": 41, "changelog-2": -1})
    offsets["changelog-3"] = None  # type: ignore[assignment]  # as faust's Recovery._add does
    tps = {"changelog-1", "changelog-2", "changelog-3"}
    asyncio.run(faust_patches._seek_offsets(None, Consumer(), tps, offsets, "standby"))
    assert seeks == [{"changelog-1": 41, "changelog-2": 0, "changelog-3": 0}]


# --- take_batches: the agent's records in batches, without faust's per-event iterator


class Message:
    def __init__(self, topic: str, offset: int, generation_id: int) -> None:
        self.topic, self.offset, self.generation_id = topic, offset, generation_id
        self.tracked = False


class Event:
    def __init__(self, offset: int, generation: int = 1, acked: list[int] | None = None) -> None:
        self.message = Message("events", offset, generation)
        self.acked = acked if acked is not None else []

    def ack(self) -> bool:
        self.acked.append(self.message.offset)
        return True


def fake_stream(queue: asyncio.Queue[Event]) -> Any:
    app = SimpleNamespace(
        consumer=SimpleNamespace(unacked=set()),
        topics=SimpleNamespace(acking_topics={"events"}),
        flow_control=SimpleNamespace(is_active=lambda: True),
        consumer_generation_id=1,
    )
    return SimpleNamespace(app=app, channel=SimpleNamespace(queue=queue))


def test_batches_take_what_waits_up_to_the_size_and_track_it_only_when_handed_over() -> None:
    async def scenario() -> tuple[list[list[int]], int, list[int]]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        stream = fake_stream(queue)
        acked: list[int] = []
        for offset in range(5):
            queue.put_nowait(Event(offset))
        queue.put_nowait(Event(5, generation=0, acked=acked))  # of an older assignment
        batches = faust_patches.take_batches(stream, max_events=3, linger=0.0)
        first = await anext(batches)
        tracked = len(stream.app.consumer.unacked)
        second = await anext(batches)
        sizes = [[e.message.offset for e in first], [e.message.offset for e in second]]
        await batches.aclose()
        return sizes, tracked, acked

    sizes, tracked, acked = asyncio.run(scenario())
    assert sizes == [[0, 1, 2], [3, 4]]  # the stale record is skipped...
    assert tracked == 3
    assert acked == []  # ...not acknowledged: the seek after the rebalance delivers it again


def test_a_batch_lingers_for_records_that_come_soon_after() -> None:
    async def scenario() -> list[int]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        batches = faust_patches.take_batches(fake_stream(queue), max_events=10, linger=0.5)
        queue.put_nowait(Event(0))
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, queue.put_nowait, Event(1))
        batch = await anext(batches)
        await batches.aclose()
        return [e.message.offset for e in batch]

    assert asyncio.run(scenario()) == [0, 1]


def test_without_linger_a_batch_is_what_waits_now() -> None:
    async def scenario() -> list[int]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        batches = faust_patches.take_batches(fake_stream(queue), max_events=10, linger=0.0)
        queue.put_nowait(Event(0))
        asyncio.get_running_loop().call_later(0.05, queue.put_nowait, Event(1))
        batch = await anext(batches)
        await batches.aclose()
        return [e.message.offset for e in batch]

    assert asyncio.run(scenario()) == [0]


# --- _drain_messages: a plain await when the delivery cannot wait


def test_a_delivery_may_wait_only_on_a_full_or_unknown_queue() -> None:
    full, room = asyncio.Queue(maxsize=1), asyncio.Queue(maxsize=2)
    full.put_nowait(1)
    room.put_nowait(1)
    conductor = SimpleNamespace(_tp_index={"a": [SimpleNamespace(queue=room)],
                                           "b": [SimpleNamespace(queue=full)]})  # fmt: skip
    assert faust_patches._queue_may_block(conductor, "a") is False
    assert faust_patches._queue_may_block(conductor, "b") is True
    assert faust_patches._queue_may_block(conductor, "c") is True  # no channel known


class Flag:
    def __init__(self, value: bool = False) -> None:
        self.value = value

    def is_set(self) -> bool:
        return self.value

    async def wait(self) -> None:
        await asyncio.Event().wait()


def test_drained_records_are_delivered_in_order_directly_unless_the_flow_is_suspended() -> None:
    async def scenario(suspended: bool) -> tuple[list[int], int]:
        delivered: list[int] = []
        careful: list[int] = []
        stopped = Flag()

        async def callback(message: Any) -> None:
            delivered.append(message.offset)

        async def records(timeout: float) -> Any:
            for offset in range(3):
                yield "tp", SimpleNamespace(offset=offset, topic="events")
            stopped.value = True

        class Consumer:
            _stopped = stopped
            should_stop = False
            suspend_flow = Flag(suspended)
            _commit_every = None
            consumer_stopped_errors = ()
            diag = SimpleNamespace(set_flag=lambda f: None, unset_flag=lambda f: None)
            app = SimpleNamespace(topics=SimpleNamespace(
                _tp_index={"tp": [SimpleNamespace(queue=asyncio.Queue())]},
                acks_enabled_for=lambda topic: True))  # fmt: skip
            log = SimpleNamespace(dev=print, info=print, exception=print)

            def __init__(self) -> None:
                self.callback = callback
                self.getmany = records
                self._read_offset: dict[str, int | None] = defaultdict(lambda: None)  # as faust

            async def sleep(self, seconds: float) -> None:
                await asyncio.sleep(seconds)

            async def wait_first(self, *coros: Any) -> None:
                careful.append(1)
                await coros[0]
                coros[1].close()

        await faust_patches._drain_messages(Consumer(), SimpleNamespace(_stopped=Flag()))
        return delivered, len(careful)

    assert asyncio.run(scenario(suspended=False)) == ([0, 1, 2], 0)
    assert asyncio.run(scenario(suspended=True)) == ([0, 1, 2], 3)  # faust's own path


def test_an_unexpected_faust_version_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import faust

    monkeypatch.setattr(faust, "__version__", "0.16.0")
    with pytest.raises(faust_patches.UnsupportedFaust, match=r"0\.15\.3, not 0\.16\.0"):
        faust_patches.apply()
