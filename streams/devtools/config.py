"""What each node of a local cluster is given: its ports and its configuration files.

A node is broker and controller at once (KRaft) on 127.0.0.1: a client port and, one above it,
a quorum port (:func:`default_nodes`, or :func:`free_nodes` for tests). Its
``server.properties`` is plain, or secured (:class:`Secured`): clients on SASL_SSL, the
controller and inter-broker listeners on loopback as SASL_PLAINTEXT with one PLAIN user, the
broker itself. Its log4j files (3.x: log4j 1, 4.x: Log4j 2) send the log to the node's folder.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.devtools.security import BROKER_PRINCIPAL, SCRAM_MECHANISM

LOG4J1 = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
"""

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
"""


@dataclass(frozen=True)
class Node:
    node_id: int
    client_port: int
    controller_port: int


def default_nodes(count: int, base_port: int = 9092) -> list[Node]:
    """Node n listens on ``base_port + 10*(n-1)`` for clients and one port above for the quorum."""
    return [
        Node(n, base_port + 10 * (n - 1), base_port + 10 * (n - 1) + 1) for n in range(1, count + 1)
    ]


def free_nodes(count: int) -> list[Node]:
    """Nodes on ports the kernel reports free right now (for tests that must not collide)."""
    sockets = []
    try:
        for _ in range(2 * count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        ports = [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
    return [Node(n + 1, ports[2 * n], ports[2 * n + 1]) for n in range(count)]


def server_properties(
    node: Node, nodes: list[Node], data_dir: Path, line: int, secured: Secured | None = None
) -> str:
    replication = min(3, len(nodes))
    min_isr = 2 if replication >= 3 else 1
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    props: dict[str, Any] = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
    }
    if secured is None:
        props |= {
            "listeners": f"PLAINTEXT://127.0.0.1:{node.client_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.client_port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        }
    else:
        props |= _secured_properties(node, secured)
    props |= {
        "log.dirs": str(data_dir),
        "num.partitions": 1,
        "default.replication.factor": replication,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replication,
        # Fewer internal partitions than the default 50 keep a test broker's first start quick.
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": 10,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
    }
    if line >= 4:
        props["share.coordinator.state.topic.replication.factor"] = replication
        props["share.coordinator.state.topic.min.isr"] = min_isr
    return "".join(f"{k}={v}\n" for k, v in props.items())


@dataclass(frozen=True)
class Secured:
    """What a secured node's server.properties needs beyond the plaintext layout."""

    internal_port: int
    keystore: Path
    secret: str
    super_users: tuple[str, ...]


def _secured_properties(node: Node, secured: Secured) -> dict[str, Any]:
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule required"
    jaas = (
        f'{plain} username="{BROKER_PRINCIPAL}" password="{secured.secret}" '
        f'user_{BROKER_PRINCIPAL}="{secured.secret}";'
    )
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    mech = SCRAM_MECHANISM.lower()
    return {
        "listeners": f"SASL_SSL://127.0.0.1:{node.client_port},"
        f"INTERNAL://127.0.0.1:{secured.internal_port},"
        f"CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{node.client_port},"
        f"INTERNAL://127.0.0.1:{secured.internal_port}",
        "inter.broker.listener.name": "INTERNAL",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,INTERNAL:SASL_PLAINTEXT,"
        "SASL_SSL:SASL_SSL",
        # Clients: TLS (a PEM file with the key, then the certificate chain) and SCRAM.
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"listener.name.sasl_ssl.{mech}.sasl.jaas.config": scram,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(secured.keystore),
        # The broker talking to itself, on loopback only: PLAIN with one user, the broker.
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.internal.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.internal.plain.sasl.jaas.config": jaas,
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": jaas,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": ";".join(f"User:{u}" for u in (BROKER_PRINCIPAL, *secured.super_users)),
        "allow.everyone.if.no.acl.found": "false",
    }
