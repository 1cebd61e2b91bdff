"""The broker script's pure parts: which versions it accepts and how it lays out a cluster."""

from pathlib import Path

import pytest

from streams.broker import BrokerError, Node, _server_properties, default_nodes, kafka_line


@pytest.mark.parametrize(
    ("version", "line"), [("3.9.2", 3), ("3.9.1", 3), ("4.1.2", 4), ("4.4.0", 4)]
)
def test_supported_versions(version: str, line: int) -> None:
    assert kafka_line(version) == line


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("4.0.0", "4.0.x rejects JoinGroup v0/v1; use 4.1 or later"),
        ("3.8.1", "use 3.9.x or 4.1 and later"),
        ("latest", "not of the form X.Y.Z"),
    ],
)
def test_unsupported_versions_are_refused_with_the_reason(version: str, reason: str) -> None:
    with pytest.raises(BrokerError, match=reason):
        kafka_line(version)


def test_default_ports_step_by_ten_per_node() -> None:
    assert default_nodes(3, 9092) == [Node(1, 9092, 9093), Node(2, 9102, 9103), Node(3, 9112, 9113)]


def parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_single_node_uses_replication_one() -> None:
    node = Node(1, 9092, 9093)
    props = parse(_server_properties(node, [node], Path("/d"), 3))
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert "share.coordinator.state.topic.replication.factor" not in props  # a 4.x-only key


def test_three_nodes_replicate_three_ways_with_two_in_sync() -> None:
    nodes = default_nodes(3, 19092)
    props = parse(_server_properties(nodes[1], nodes, Path("/d"), 4))
    assert props["node.id"] == "2"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19102,CONTROLLER://127.0.0.1:19103"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113"
    )
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["share.coordinator.state.topic.replication.factor"] == "3"
