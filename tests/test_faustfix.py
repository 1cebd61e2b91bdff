"""streams.faustfix: the pieces that can be checked without a broker (the rest is checked on
a real cluster by tests/integration: test_worker's restarts and test_faults)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import NodeNotReadyError

from streams import faustfix


class Owner:
    """The service faust passes in: ``wait`` runs the request and reports a stop."""

    log = SimpleNamespace(info=lambda *args: None)

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
    return asyncio.run(faustfix._get_controller_node(None, Owner(), client))


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


def test_apply_patches_faust_once() -> None:
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Transport

    assert faustfix.apply() is True
    assert faustfix.apply() is True  # idempotent: force_commit is wrapped once
    assert Transport._get_controller_node is faustfix._get_controller_node
    assert AIOKafkaConsumerThread._highwaters is faustfix._highwaters
    assert Consumer.on_partitions_revoked is faustfix._on_partitions_revoked
    assert Consumer.commit_and_end_transactions is faustfix._commit_and_end_transactions
    ours = "_flushing_exclusive_commit.<locals>.force_commit"
    assert Consumer.force_commit.__qualname__ == ours
    assert Consumer.force_commit.__wrapped__.__qualname__ != ours  # not wrapped twice
