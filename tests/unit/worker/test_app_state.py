"""The worker's state handling: local tables survive only a clean stop (else they come back
from the changelog); at least once, a batch's states are written and its records acknowledged
only once the broker has every output of the batch, in input order."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.clinical.engine import PatientState
from streams.clinical.policy import resolve_policy
from streams.formats.avro import encode_event
from streams.formats.state import decode_state
from streams.kafka.settings import Settings
from streams.worker import outputs
from streams.worker.metrics import Census, WorkerMetrics
from streams.worker.outputs import DeliveredOutputs, TransactionalOutputs
from streams.worker.pipeline import Monitor
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


# --- at least once: a batch's states are written, and its records acknowledged, only once the
# broker has every output of the batch


def enrolled(patient: str, day: int) -> bytes:
    return encode_event(
        {
            "event_id": f"e-{patient}-{day}",
            "patient_id": patient,
            "type": "ENROLLED",
            "occurred_at": f"2024-01-{day:02d}T09:00:00Z",
        }
    )


class FakeEvent:
    """What the monitor uses of a faust Event: its message, and ack()."""

    def __init__(self, offset: int, acked: list[int], patient: str = "p1", day: int = 1) -> None:
        self.message = SimpleNamespace(
            topic="events",
            partition=0,
            offset=offset,
            key=patient.encode(),
            value=enrolled(patient, day),
            headers=[],
        )
        self._acked = acked

    def ack(self) -> bool:
        self._acked.append(self.message.offset)
        return True


class FakeBroker:
    """confluent-kafka's Producer as ``DeliveredOutputs`` uses it: each record waits until the
    test sets its fate (None: acknowledged; else the error), reported by the next flush."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None]] = []
        self.callbacks: dict[int, Callable[[object, object], None]] = {}
        self.fates: dict[int, object] = {}

    def produce(self, topic: str, *, key: bytes | None = None, on_delivery: Any = None,
                **record: object) -> None:  # fmt: skip
        self.callbacks[len(self.records)] = on_delivery
        self.records.append((topic, key))

    def poll(self, timeout: float) -> int:
        served = [i for i in self.callbacks if i in self.fates]
        for index in served:  # the broker's offset of each: 40 + its index
            message = SimpleNamespace(offset=lambda index=index: 40 + index)
            self.callbacks.pop(index)(self.fates.pop(index), message)
        time.sleep(0.002)
        return len(served)


class FakeTable(dict[bytes, bytes]):
    """The table's mapping (faust's memory store: one dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = SimpleNamespace(data=self)


def monitor(table: FakeTable) -> tuple[Monitor, FakeBroker]:
    policy = resolve_policy(None)
    metrics = WorkerMetrics(CollectorRegistry(), policy)
    topics = [SimpleNamespace(get_topic_name=lambda name=name: name) for name in ("esc", "dlq")]
    broker = FakeBroker()
    sent = DeliveredOutputs.__new__(DeliveredOutputs)
    sent.producer = broker
    settings = Settings(clock="event", store="memory://")  # faust's table path
    return Monitor(settings, policy, table, *topics, metrics, sent), broker  # type: ignore[arg-type]


def step(care_step: int) -> PatientState:
    return PatientState(care_step=care_step, enrolled_at=0)


def test_a_batch_state_is_read_by_the_next_record_and_written_once() -> None:
    table = FakeTable()
    states = BufferedStates(table)  # type: ignore[arg-type]
    states["p1"] = step(1)
    states.stage(Census())
    assert states["p1"] == step(1) and table == {}  # the next record of p1 sees its step
    states["p1"] = step(2)
    states.stage(Census())
    states["p2"] = step(1)
    states.discard()  # a record that failed: its change is forgotten
    sealed = states.seal()
    assert states["p1"] == step(2) and table == {}  # sealed, not yet written: still read
    states.write(sealed)
    assert {k: decode_state(v) for k, v in table.items()} == {b"p1": step(2)}
    assert states.batch == {} and states.unwritten == {} and states["p1"] == step(2)


def test_a_sealed_state_written_late_does_not_hide_a_later_one() -> None:
    table = FakeTable()
    states = BufferedStates(table)  # type: ignore[arg-type]
    states["p1"] = step(1)
    states.stage(Census())
    first = states.seal()
    states["p1"] = step(2)
    states.stage(Census())
    second = states.seal()
    states.write(first)
    assert decode_state(table[b"p1"]) == step(1)
    assert states["p1"] == step(2)  # still the later, unwritten one
    states.write(second)
    assert decode_state(table[b"p1"]) == step(2) and states.unwritten == {}


async def handled(watcher: Monitor, events: list[FakeEvent]) -> None:
    """What the worker does with a batch at least once: handle it, and (beside) acknowledge."""
    acker = asyncio.ensure_future(watcher.acknowledge_in_order())
    try:
        await watcher.handle_batch(events)
        await watcher.settle()
    finally:
        acker.cancel()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def test_a_batch_is_acknowledged_in_input_order_once_every_output_is_acked() -> None:
    async def scenario() -> tuple[list[int], list[object]]:
        table = FakeTable()
        watcher, broker = monitor(table)
        acked: list[int] = []
        seen: list[object] = []
        events = [FakeEvent(1, acked, "p1"), FakeEvent(2, acked, "p2")]
        handling = asyncio.ensure_future(handled(watcher, events))
        await until(lambda: len(broker.records) == 2)  # one ENROLLED escalation each
        seen.append(list(broker.records))
        broker.fates[1] = None  # the second record's escalation first
        await asyncio.sleep(0.02)
        seen.append((list(acked), dict(table)))  # nothing written, nothing acknowledged
        broker.fates[0] = None
        await handling
        return acked, [*seen, sorted(key for key in table if not key.startswith(b"\0"))]

    acked, seen = asyncio.run(scenario())
    assert seen == [[("esc", b"p1"), ("esc", b"p2")], ([], {}), [b"p1", b"p2"]]
    assert acked == [1, 2]


def test_an_output_the_broker_failed_is_sent_again_before_the_batch_is_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outputs, "RESEND_PAUSE", 0.0)

    async def scenario() -> tuple[list[int], int]:
        table = FakeTable()
        watcher, broker = monitor(table)
        acked: list[int] = []
        handling = asyncio.ensure_future(handled(watcher, [FakeEvent(7, acked)]))
        await until(lambda: len(broker.records) == 1)
        broker.fates[0] = "Local: Message timed out"
        await until(lambda: len(broker.records) == 2)  # sent again
        assert acked == [] and b"p1" not in table
        broker.fates[1] = None
        await handling
        return acked, len(broker.records)

    assert asyncio.run(scenario()) == ([7], 2)


def test_a_batch_in_flight_across_a_rebalance_is_neither_written_nor_acknowledged() -> None:
    async def scenario() -> tuple[list[int], FakeTable]:
        table = FakeTable()
        watcher, broker = monitor(table)
        acked: list[int] = []
        handling = asyncio.ensure_future(handled(watcher, [FakeEvent(3, acked)]))
        await until(lambda: len(broker.records) == 1)
        watcher.reset()  # partitions reassigned: faust redelivers from the committed offset
        broker.fates[0] = None
        await handling
        return acked, table

    assert asyncio.run(scenario()) == ([], {})


def test_a_batch_writes_each_patient_once_with_its_last_state() -> None:
    async def scenario() -> dict[bytes, PatientState]:
        table = FakeTable()
        watcher, broker = monitor(table)
        acked: list[int] = []
        # Enrolled, then enrolled again a day later (a duplicate enrolment: no new state).
        events = [FakeEvent(1, acked, "p1", 1), FakeEvent(2, acked, "p2", 1),
                  FakeEvent(3, acked, "p1", 2)]  # fmt: skip
        writes: list[bytes] = []
        original = FakeTable.__setitem__

        def record(self: FakeTable, key: bytes, value: bytes) -> None:
            writes.append(key)
            original(self, key, value)

        FakeTable.__setitem__ = record  # type: ignore[method-assign]
        try:
            handling = asyncio.ensure_future(handled(watcher, events))
            await until(lambda: len(broker.records) == 2)
            broker.fates.update({0: None, 1: None})
            await handling
        finally:
            FakeTable.__setitem__ = original  # type: ignore[method-assign]
        assert acked == [1, 2, 3]
        # Each patient once, however many records; and the partition's clock (first save).
        assert sorted(writes) == [b"\0clock/0", b"p1", b"p2"]
        return {k: decode_state(v) for k, v in table.items() if not k.startswith(b"\0")}

    states = asyncio.run(scenario())
    assert states[b"p1"].care_step == states[b"p2"].care_step == 1


# --- exactly once: the batch is acknowledged at once, unless the broker refused a dead letter


class FakeApp:
    """faust's app as TransactionalOutputs and the monitor use it."""

    def __init__(self) -> None:
        self.conf = SimpleNamespace(id="app", producer_max_request_size=1_048_576)
        self.assignor = SimpleNamespace(group_for_topic=lambda topic: 0)
        self.sent: list[tuple[str, str]] = []  # (topic, transactional id)
        self.acks: list[asyncio.Future[None]] = []
        self.crashed: list[BaseException] = []
        self.producer = self

    async def send(self, topic: str, *record: object, transactional_id: str) -> object:
        self.sent.append((topic, transactional_id))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack

    async def crash(self, error: BaseException) -> None:
        self.crashed.append(error)


def exactly_once_monitor(table: FakeTable, app: FakeApp) -> Monitor:
    policy = resolve_policy(None)
    metrics = WorkerMetrics(CollectorRegistry(), policy)
    topics = [SimpleNamespace(get_topic_name=lambda name=name: name) for name in ("esc", "dlq")]
    table.app = app  # type: ignore[attr-defined]
    settings = Settings(clock="event", processing_guarantee="exactly_once", store="memory://")
    return Monitor(settings, policy, table, *topics, metrics,  # type: ignore[arg-type]
                   TransactionalOutputs(app))  # fmt: skip


def test_exactly_once_a_batch_is_acknowledged_without_waiting_for_its_escalations() -> None:
    async def scenario() -> tuple[list[int], list[tuple[str, str]], list[bytes]]:
        table, app = FakeTable(), FakeApp()
        watcher = exactly_once_monitor(table, app)
        acked: list[int] = []
        await watcher.handle_batch([FakeEvent(1, acked, "p1"), FakeEvent(2, acked, "p2")])
        return acked, app.sent, sorted(k for k in table if not k.startswith(b"\0"))

    acked, sent, written = asyncio.run(scenario())
    assert acked == [1, 2] and written == [b"p1", b"p2"]
    assert sent == [("esc", "app-0-0"), ("esc", "app-0-0")]  # the input partition's transaction


def test_exactly_once_a_refused_dead_letter_stops_the_worker_with_the_batch_unacknowledged() -> (
    None
):
    async def scenario() -> tuple[list[int], list[BaseException], str]:
        table, app = FakeTable(), FakeApp()
        watcher = exactly_once_monitor(table, app)
        acked: list[int] = []
        broken = FakeEvent(1, acked, "p1")
        broken.message.value = b"not avro"
        handling = asyncio.ensure_future(watcher.handle_batch([broken, FakeEvent(2, acked, "p2")]))
        await until(lambda: len(app.acks) == 1)  # the dead letter (then p2 waits: see settle)
        app.acks[0].set_exception(RuntimeError("record too large"))
        with pytest.raises(RuntimeError) as raised:
            await handling
        return acked, app.crashed, str(raised.value)

    acked, crashed, error = asyncio.run(scenario())
    assert acked == [] and error == "record too large"
    assert [str(e) for e in crashed] == ["record too large"]


# --- at least once with RocksDB: states and changelog written by stepcare, offsets recorded


def test_with_rocksdb_a_batch_is_one_write_its_changelog_acked_then_its_offset_recorded(
    tmp_path: Path,
) -> None:
    from rocksdict import Options, Rdict

    db = Rdict(str(tmp_path / "patients-0.db"), options=Options(raw_mode=True))
    persisted: list[tuple[str, int, int]] = []
    table = FakeTable()
    table.data = SimpleNamespace(  # faust's RocksDB store, as write_rocksdb uses it
        _key_index={},
        _db_for_partition=lambda partition: db,
        set_persisted_offset=lambda tp, offset: persisted.append((*tp, offset)),
    )
    table.changelog_topic = SimpleNamespace(get_topic_name=lambda: "app-patients-changelog")
    policy = resolve_policy(None)
    broker = FakeBroker()
    sent = DeliveredOutputs.__new__(DeliveredOutputs)
    sent.producer = broker
    topics = [SimpleNamespace(get_topic_name=lambda name=name: name) for name in ("esc", "dlq")]
    watcher = Monitor(Settings(clock="event"), policy, table, *topics,  # type: ignore[arg-type]
                      WorkerMetrics(CollectorRegistry(), policy), sent)  # fmt: skip

    async def scenario() -> list[int]:
        acked: list[int] = []
        events = [FakeEvent(1, acked, "p1"), FakeEvent(2, acked, "p2")]
        handling = asyncio.ensure_future(handled(watcher, events))
        await until(lambda: len(broker.records) == 2)
        broker.fates.update({0: None, 1: None})  # the escalations
        await until(lambda: len(broker.records) == 5)  # p1, p2 and the clock: the changelog
        assert db.get(b"p1") is not None and persisted == [] and acked == []
        broker.fates.update({2: None, 3: None, 4: None})
        await handling
        return acked

    assert asyncio.run(scenario()) == [1, 2]
    assert [topic for topic, _ in broker.records[2:]] == ["app-patients-changelog"] * 3
    assert sorted(key for _, key in broker.records[2:]) == [b"\0clock/0", b"p1", b"p2"]
    assert persisted == [("app-patients-changelog", 0, 44)]  # the last changelog offset
    assert decode_state(db[b"p1"]).care_step == 1
    db.close()


def test_a_rebalance_that_begins_mid_batch_leaves_the_rest_of_it_unacknowledged() -> None:
    async def scenario() -> tuple[list[int], list[tuple[str, bytes | None]]]:
        table = FakeTable()
        watcher, broker = monitor(table)
        acked: list[int] = []
        flows = iter([True, False])  # faust suspends the flow after the first record
        watcher.flowing = lambda: next(flows, False)
        events = [FakeEvent(1, acked, "p1"), FakeEvent(2, acked, "p2")]
        handling = asyncio.ensure_future(handled(watcher, events))
        await until(lambda: len(broker.records) == 1)
        broker.fates[0] = None
        await handling
        return acked, broker.records

    acked, records = asyncio.run(scenario())
    assert acked == [1]  # p2's record is delivered again after the rebalance
    assert records == [("esc", b"p1")]


# --- the SLO histogram: an escalation is observed once, when the broker has acknowledged it

TRIGGER = 1_704_099_600.0  # 2024-01-01T09:00:00Z, the ENROLLED events' occurred_at


def delays(watcher: Monitor) -> tuple[float | None, float | None, float | None]:
    metrics = watcher.metrics
    samples = {
        sample.name: sample.value
        for metric in (metrics.escalation_delay, metrics.late_triggers)
        for family in metric.collect()
        for sample in family.samples
    }
    return (
        samples["stepcare_escalation_delay_seconds_count"],
        samples["stepcare_escalation_delay_seconds_sum"],
        samples["stepcare_escalations_late_trigger_total"],
    )


def test_at_least_once_an_escalation_is_observed_when_its_ack_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outputs, "RESEND_PAUSE", 0.0)
    clock = {"now": TRIGGER + 40}
    monkeypatch.setattr(outputs, "time", SimpleNamespace(time=lambda: clock["now"]))

    async def scenario() -> list[tuple[float | None, float | None, float | None]]:
        watcher, broker = monitor(FakeTable())
        seen = []
        handling = asyncio.ensure_future(handled(watcher, [FakeEvent(7, [])]))
        await until(lambda: len(broker.records) == 1)
        broker.fates[0] = "Local: Message timed out"  # failed: not observed
        await until(lambda: len(broker.records) == 2)
        seen.append(delays(watcher))
        clock["now"] = TRIGGER + 42
        broker.fates[1] = None
        await handling
        seen.append(delays(watcher))
        return seen

    assert asyncio.run(scenario()) == [(0, 0, 0), (1, 42, 0)]


def test_exactly_once_an_escalation_is_observed_when_acknowledged_in_its_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outputs, "time", SimpleNamespace(time=lambda: TRIGGER + 86_401))

    async def scenario() -> list[tuple[float | None, float | None, float | None]]:
        app = FakeApp()
        watcher = exactly_once_monitor(FakeTable(), app)
        await watcher.handle_batch([FakeEvent(1, [], "p1"), FakeEvent(2, [], "p2")])
        seen = [delays(watcher)]  # acknowledged batch, escalations not yet acked: nothing
        app.acks[0].set_result(None)
        app.acks[1].set_exception(RuntimeError("aborted"))  # never observed
        await asyncio.sleep(0)
        seen.append(delays(watcher))
        return seen

    # Acked over 24 h after its trigger: a late trigger, not an observation.
    assert asyncio.run(scenario()) == [(0, 0, 0), (0, 0, 1)]
