"""streams.worker.faust_patches: the pieces that can be checked without a broker (the rest is
checked on a real cluster by tests/integration: test_worker's restarts and test_faults)."""

from __future__ import annotations

import asyncio
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
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Transport

    assert faust_patches.apply() is True
    assert faust_patches.apply() is True  # idempotent: force_commit is wrapped once
    assert Transport._get_controller_node is faust_patches._get_controller_node
    assert Transport._really_create_topic.__wrapped__.__qualname__ == (
        "Transport._really_create_topic"  # faust's own, wrapped once
    )
    assert AIOKafkaConsumerThread._highwaters is faust_patches._highwaters
    assert Consumer.on_partitions_revoked is faust_patches._on_partitions_revoked
    assert Consumer.commit_and_end_transactions is faust_patches._commit_and_end_transactions
    assert Consumer.wait_empty is faust_patches._bounded_wait_empty
    ours = "_flushing_exclusive_commit.<locals>.force_commit"
    assert Consumer.force_commit.__qualname__ == ours
    assert Consumer.force_commit.__wrapped__.__qualname__ != ours  # not wrapped twice
