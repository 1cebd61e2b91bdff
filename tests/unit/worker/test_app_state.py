"""The worker's state handling: local tables survive only a clean stop (else they come back
from the changelog); at least once, states are written and events acknowledged only once the
broker has their outputs, in input order."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from streams.clinical.engine import PatientState
from streams.clinical.policy import resolve_policy
from streams.formats.state import decode_state
from streams.kafka.settings import Settings
from streams.worker import pipeline
from streams.worker.metrics import Census, WorkerMetrics
from streams.worker.pipeline import InFlight, Monitor
from streams.worker.runner import CLEAN_STOP, forget_unclean_state
from streams.worker.states import BufferedStates


def test_tables_left_by_a_crash_are_dropped(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables" / "patients-0.db"
    tables.mkdir(parents=True)
    assert forget_unclean_state(tmp_path) is True
    assert not (tmp_path / "v1" / "tables").exists()


def test_tables_after_a_clean_stop_are_kept_and_the_mark_is_taken_away(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables" / "patients-0.db"
    tables.mkdir(parents=True)
    (tmp_path / CLEAN_STOP).touch()
    assert forget_unclean_state(tmp_path) is False
    assert tables.exists()
    assert not (tmp_path / CLEAN_STOP).exists()  # a crash of this run will not look clean


def test_a_new_data_dir_has_nothing_to_drop(tmp_path: Path) -> None:
    assert forget_unclean_state(tmp_path) is False


# --- at least once: states are written, and events acknowledged, once their outputs are acked


class FakeEvent:
    """What the monitor uses of a faust Event: its message's place, and ack()."""

    def __init__(self, offset: int, acked: list[int]) -> None:
        self.message = SimpleNamespace(topic="events", partition=0, offset=offset)
        self._acked = acked

    def ack(self) -> bool:
        self._acked.append(self.message.offset)
        return True


class FakeTopic:
    """Topic.send's shape: the future of the broker's ack, which the test settles."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[None]] = []

    async def send(self, **record: object) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack


def monitor(table: dict[bytes, bytes]) -> Monitor:
    policy = resolve_policy(None)
    metrics = WorkerMetrics(CollectorRegistry(), policy)
    return Monitor(Settings(), policy, table, None, None, metrics)  # type: ignore[arg-type]


async def hand_over(watcher: Monitor, event: FakeEvent, staged: object) -> None:
    """What Monitor.handle does at least once after processing an event."""
    await watcher.in_flight.put(InFlight(event, watcher.generation, watcher.outputs, staged))


def step(care_step: int) -> PatientState:
    return PatientState(care_step=care_step, enrolled_at=0)


def test_a_staged_state_is_read_before_it_is_written_and_a_later_one_is_not_overwritten() -> None:
    table: dict[bytes, bytes] = {}
    states = BufferedStates(table)  # type: ignore[arg-type]
    states["p1"] = step(1)
    first = states.stage(Census())
    assert states["p1"] == step(1) and table == {}  # the next event of p1 sees its step
    states["p1"] = step(2)
    second = states.stage(Census())
    first.write()
    assert decode_state(table[b"p1"]) == step(1)
    assert states["p1"] == step(2)  # still the later, unwritten one
    second.write()
    assert decode_state(table[b"p1"]) == step(2) and states.unwritten == {}


def test_events_are_acknowledged_in_input_order_once_their_outputs_are_acked() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        table: dict[bytes, bytes] = {}
        watcher = monitor(table)
        topic, acked, seen = FakeTopic(), [], []
        acker = asyncio.ensure_future(watcher.acknowledge_in_order())
        states = BufferedStates(table)  # type: ignore[arg-type]
        for offset, patient in ((1, "p1"), (2, "p2")):
            event = FakeEvent(offset, acked)
            watcher.outputs = []
            await watcher._send(topic, event.message, key=b"k", value=b"v", headers=[])
            states[patient] = step(1)
            staged = states.stage(Census())
            await watcher.in_flight.put(
                InFlight(event, watcher.generation, watcher.outputs, staged)
            )
        await asyncio.sleep(0.01)
        seen.append(list(acked))  # nothing acked by the broker yet
        topic.acks[1].set_result(None)  # the second event's escalation first
        await asyncio.sleep(0.01)
        seen.append(list(acked))
        assert table == {}  # neither state written: the first event still waits
        topic.acks[0].set_result(None)
        await watcher.settle()
        acker.cancel()
        return acked, [*seen, sorted(key.decode() for key in table)]

    acked, seen = asyncio.run(scenario())
    assert seen == [[], [], ["p1", "p2"]]
    assert acked == [1, 2]


def test_an_output_the_broker_failed_is_sent_again_before_the_event_is_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "RESEND_PAUSE", 0.0)

    async def scenario() -> tuple[list[int], int]:
        watcher = monitor({})
        topic, acked = FakeTopic(), []
        acker = asyncio.ensure_future(watcher.acknowledge_in_order())
        event = FakeEvent(7, acked)
        watcher.outputs = []
        await watcher._send(topic, event.message, key=b"k", value=b"v", headers=[])
        await hand_over(watcher, event, None)
        topic.acks[0].set_exception(TimeoutError("no broker"))
        while len(topic.acks) < 2:
            await asyncio.sleep(0.001)
        assert acked == []
        topic.acks[1].set_result(None)
        await watcher.settle()
        acker.cancel()
        return acked, len(topic.acks)

    assert asyncio.run(scenario()) == ([7], 2)


def test_an_event_in_flight_across_a_rebalance_is_neither_written_nor_acknowledged() -> None:
    async def scenario() -> tuple[list[int], dict[bytes, bytes]]:
        table: dict[bytes, bytes] = {}
        watcher = monitor(table)
        topic, acked = FakeTopic(), []
        acker = asyncio.ensure_future(watcher.acknowledge_in_order())
        states = BufferedStates(table)  # type: ignore[arg-type]
        event = FakeEvent(3, acked)
        watcher.outputs = []
        await watcher._send(topic, event.message, key=b"k", value=b"v", headers=[])
        states["p1"] = step(1)
        staged = states.stage(Census())
        await hand_over(watcher, event, staged)
        await asyncio.sleep(0.01)
        watcher.reset()  # partitions reassigned: faust redelivers from the committed offset
        topic.acks[0].set_result(None)
        await watcher.settle()
        acker.cancel()
        return acked, table

    assert asyncio.run(scenario()) == ([], {})
