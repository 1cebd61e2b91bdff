"""A real Apache Kafka broker for development, demos and tests: no Docker, no tarball.

A cluster is one or three KRaft nodes (each broker and controller at once) on 127.0.0.1, run
from the jars of :mod:`streams.devtools.jars`, with its data, logs and a ``cluster.json`` state
file in a run folder, so ``stepcare broker stop`` in another process finds what ``stepcare
broker start`` left running. Its nodes' configuration: :mod:`streams.devtools.config`; a
secured node's users and ACLs: :mod:`streams.devtools.security`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streams.devtools.config import LOG4J1, LOG4J2, Node, Secured, server_properties
from streams.devtools.jars import (
    BrokerError,
    Reporter,
    fetch_jars,
    find_java,
    jars_dir,
    jvm_pids,
    kafka_line,
)
from streams.devtools.security import (
    BROKER_PRINCIPAL,
    SCRAM_MECHANISM,
    TLS_CERT,
    TLS_KEY,
    Security,
    grant_acls,
    quiet_logger,
    scram_credential,
)

STATE_FILE = "cluster.json"


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _cluster_id() -> str:
    # Kafka's Uuid.toString: url-safe base64 without padding; Kafka avoids a leading '-'.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the broker when the process that started it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class NodeState:
    node_id: int
    client_port: int
    controller_port: int
    pid: int | None = None
    internal_port: int | None = None  # secured: the broker's own loopback listener


class Cluster:
    """One or three KRaft nodes on loopback, managed through a run folder.

    ``start()`` formats fresh storage and waits until every broker has registered; ``stop()``
    sends SIGTERM, waits, and SIGKILLs what is left, so no JVM outlives it. With
    ``die_with_parent=True`` (the test fixture) the kernel also kills the JVMs if the starting
    process dies without running its teardown. With ``security`` (one node only) clients
    connect over SASL_SSL and ACLs are enforced (see :class:`Security`).
    """

    def __init__(
        self,
        run_dir: Path,
        version: str,
        nodes: list[Node],
        *,
        cache_dir: Path = Path(".cache"),
        heap_mb: int = 512,
        die_with_parent: bool = False,
        report: Reporter = print,
        security: Security | None = None,
    ) -> None:
        if len(nodes) not in (1, 3):
            raise BrokerError(f"a cluster has 1 or 3 nodes, not {len(nodes)}")
        if security is not None and len(nodes) != 1:
            raise BrokerError("a secured broker (--security sasl_ssl) is a single node")
        self.run_dir = run_dir.resolve()
        self.version = version
        self.line = kafka_line(version)
        self.nodes = [NodeState(n.node_id, n.client_port, n.controller_port) for n in nodes]
        self.cache_dir = cache_dir
        self.heap_mb = heap_mb
        self.die_with_parent = die_with_parent
        self.report = report
        self.cluster_id = ""
        self.security = security
        self.client_protocol = "SASL_SSL" if security else "PLAINTEXT"
        self._secret = ""  # the broker's own PLAIN password (secured only)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- naming -------------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.client_port}" for n in self.nodes)

    def admin_config(self) -> dict[str, Any]:
        """librdkafka settings of a client with every right on this cluster: plain, or, when
        secured, the broker's own identity on its loopback SASL_PLAINTEXT listener."""
        if self.client_protocol == "PLAINTEXT":
            return {"bootstrap.servers": self.bootstrap_servers}
        if not self._secret:  # a cluster loaded from its run folder
            props = (self.node_dir(self.nodes[0].node_id) / "server.properties").read_text()
            found = re.search(rf'user_{re.escape(BROKER_PRINCIPAL)}="([^"]+)"', props)
            self._secret = found[1] if found else ""
        return {
            "bootstrap.servers": ",".join(f"127.0.0.1:{n.internal_port}" for n in self.nodes),
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": BROKER_PRINCIPAL,
            "sasl.password": self._secret,
        }

    def node_dir(self, node_id: int) -> Path:
        return self.run_dir / f"node-{node_id}"

    def _node(self, node_id: int) -> NodeState:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise BrokerError(f"no node {node_id} in this cluster")

    # -- persistence --------------------------------------------------------------------------
    def _save(self) -> None:
        state = {
            "version": self.version,
            "cluster_id": self.cluster_id,
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.client_protocol,
            "nodes": [asdict(n) for n in self.nodes],
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path, report: Reporter = print) -> Cluster | None:
        """The cluster recorded in ``run_dir``, or None if nothing was started there."""
        path = run_dir / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        nodes = [Node(n["node_id"], n["client_port"], n["controller_port"]) for n in state["nodes"]]
        cluster = cls(run_dir, state["version"], nodes, report=report)
        cluster.cluster_id = state["cluster_id"]
        cluster.client_protocol = state.get("security_protocol", "PLAINTEXT")
        for saved, node in zip(state["nodes"], cluster.nodes, strict=True):
            node.pid = saved.get("pid")
            node.internal_port = saved.get("internal_port")
        return cluster

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 120.0, acls: list | None = None) -> str:
        """Format fresh storage, start every node, wait until all are registered, then create
        the ``acls`` (secured; see :func:`stepcare_acls`); the bootstrap servers."""
        existing = Cluster.load(self.run_dir, self.report)
        if existing and existing.running_pids():
            raise BrokerError(
                f"a broker from {self.run_dir} is already running at "
                f"{existing.bootstrap_servers}: stop it first (stepcare broker stop)"
            )
        for node in self.nodes:
            for port in (node.client_port, node.controller_port):
                if _port_in_use(port):
                    raise BrokerError(
                        f"port {port} on 127.0.0.1 is in use (another broker?): "
                        "choose others with --port or STEPCARE_BROKER_PORT"
                    )
        if acls and self.security is None:
            raise BrokerError("ACLs need a secured broker (--security sasl_ssl)")
        libs = fetch_jars(self.version, self.cache_dir, self.report)
        java = find_java()
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.security is not None:  # the broker's password and key are kept in here
            self.run_dir.chmod(0o700)
            self._secret = secrets.token_urlsafe(24)
            for node in self.nodes:
                node.internal_port = _free_port()
        for node in self.nodes:  # only what a previous start made: the run folder may be shared
            shutil.rmtree(self.node_dir(node.node_id), ignore_errors=True)
        self.cluster_id = _cluster_id()
        self._save()
        try:
            formatting = [self._format(java, libs, node) for node in self.nodes]
            for node, proc in zip(self.nodes, formatting, strict=True):
                out, _ = proc.communicate(timeout=120)
                if proc.returncode != 0:
                    raise BrokerError(
                        f"formatting node {node.node_id} failed: {out.decode()[-400:]}"
                    )
        finally:  # the SCRAM credentials were passed in a file: remove it
            for node in self.nodes:
                (self.node_dir(node.node_id) / "format.args").unlink(missing_ok=True)
        for node in self.nodes:
            self._launch(java, libs, node)
        self._save()
        try:
            self.wait_ready(timeout=max(1.0, timeout - (time.monotonic() - started)))
            grant_acls(self.admin_config(), acls or [])
        except BaseException:
            self.stop()
            raise
        secured = f" ({self.client_protocol}, {SCRAM_MECHANISM}, ACLs enforced)"
        self.report(
            f"Kafka {self.version} ({len(self.nodes)} node{'s' * (len(self.nodes) > 1)}) ready at "
            f"{self.bootstrap_servers}{secured if self.security else ''} in "
            f"{time.monotonic() - started:.1f} s"
        )
        return self.bootstrap_servers

    def start_node(self, node_id: int, timeout: float = 60.0) -> None:
        """Restart one stopped node on its existing storage (fault tests)."""
        node = self._node(node_id)
        if node.pid and _alive(node.pid, self.run_dir):
            raise BrokerError(f"node {node_id} is already running (pid {node.pid})")
        self._launch(find_java(), jars_dir(self.version, self.cache_dir), node)
        self._save()
        self.wait_ready(timeout=timeout)

    def stop_node(self, node_id: int, timeout: float = 30.0, *, kill: bool = False) -> None:
        """Stop one node (SIGTERM, or SIGKILL with ``kill``), keeping its storage."""
        node = self._node(node_id)
        if node.pid:
            self._terminate([node.pid], timeout, sig=signal.SIGKILL if kill else signal.SIGTERM)
        node.pid = None
        self._save()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node; SIGKILL whatever has not exited after ``timeout`` seconds."""
        pids = self.running_pids()
        if pids:
            self._terminate(pids, timeout)
        for node in self.nodes:
            node.pid = None
        if self.run_dir.exists():
            self._save()

    def running_pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid and _alive(n.pid, self.run_dir)]

    def wait_ready(self, timeout: float) -> None:
        """Wait until every running node is registered with the cluster (an AdminClient call)."""
        from confluent_kafka.admin import AdminClient

        expected = {n.node_id for n in self.nodes if n.pid}
        deadline = time.monotonic() + timeout
        admin = AdminClient({**self.admin_config(), "logger": quiet_logger()})
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            for node in self.nodes:
                proc = self._procs.get(node.node_id)
                if proc is not None and proc.poll() is not None:
                    raise BrokerError(
                        f"node {node.node_id} exited with status {proc.returncode} while starting; "
                        f"last log lines: {self._log_tail(node.node_id)}"
                    )
            try:
                metadata = admin.list_topics(timeout=2)
                registered = set(metadata.brokers)
                if expected <= registered:
                    return
                last_error = f"brokers registered: {sorted(registered)} of {sorted(expected)}"
            except Exception as exc:  # librdkafka raises KafkaException while the port is closed
                last_error = str(exc)
            time.sleep(0.3)
        raise BrokerError(
            f"Kafka at {self.bootstrap_servers} not ready after {timeout:.0f} s ({last_error}); "
            f"logs in {self.run_dir}"
        )

    # -- internals ----------------------------------------------------------------------------
    def _format(self, java: str, libs: Path, node: NodeState) -> subprocess.Popen[bytes]:
        ndir = self.node_dir(node.node_id)
        (ndir / "logs").mkdir(parents=True, exist_ok=True)
        nodes = [Node(n.node_id, n.client_port, n.controller_port) for n in self.nodes]
        secured = None
        scram: list[str] = []
        if self.security is not None:
            keystore = ndir / "keystore.pem"  # Kafka's PEM keystore: the key, then the chain
            _write_private(
                keystore,
                (self.security.tls_dir / TLS_KEY).read_text().strip()
                + "\n"
                + (self.security.tls_dir / TLS_CERT).read_text().strip()
                + "\n",
            )
            assert node.internal_port is not None
            secured = Secured(node.internal_port, keystore, self._secret, self.security.super_users)
            for name, password in self.security.users.items():
                scram += ["--add-scram", scram_credential(name, password)]
        props = server_properties(
            Node(node.node_id, node.client_port, node.controller_port),
            nodes,
            ndir / "data",
            self.line,
            secured,
        )
        _write_private(ndir / "server.properties", props)
        (ndir / "log4j.properties").write_text(LOG4J1)
        (ndir / "log4j2.properties").write_text(LOG4J2)
        args = ["format", "-t", self.cluster_id, "-c", str(ndir / "server.properties"), *scram]
        # StorageTool's parser (argparse4j) reads its arguments from @FILE, one a line: the
        # salted passwords never show on a command line (ps).
        argfile = ndir / "format.args"
        _write_private(argfile, "".join(f"{a}\n" for a in args))
        cmd = [
            java, "-Xmx256m", *self._log_flags(ndir), "-cp", f"{libs}/*",
            "kafka.tools.StorageTool", f"@{argfile}",
        ]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def _log_flags(self, ndir: Path) -> list[str]:
        return [
            f"-Dkafka.logs.dir={ndir / 'logs'}",
            f"-Dlog4j.configuration=file:{ndir / 'log4j.properties'}",
            f"-Dlog4j2.configurationFile={ndir / 'log4j2.properties'}",
        ]

    def _launch(self, java: str, libs: Path, node: NodeState) -> None:
        ndir = self.node_dir(node.node_id)
        cmd = [
            java, f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true", f"-Dstepcare.run.dir={self.run_dir}",
            *self._log_flags(ndir), "-cp", f"{libs}/*",
            "kafka.Kafka", str(ndir / "server.properties"),
        ]  # fmt: skip
        with open(ndir / "logs" / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it cleanly
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._procs[node.node_id] = proc
        node.pid = proc.pid

    def _terminate(self, pids: Iterable[int], timeout: float, sig: int = signal.SIGTERM) -> None:
        pids = [p for p in pids if _alive(p, self.run_dir)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            pids = [p for p in pids if _alive(p, self.run_dir)]
            if not pids:
                return
            time.sleep(0.1)
        for pid in pids:
            self.report(f"node pid {pid} did not stop within {timeout:.0f} s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while any(_alive(p, self.run_dir) for p in pids):
            self._reap()
            time.sleep(0.05)

    def _reap(self) -> None:
        for proc in self._procs.values():
            proc.poll()

    def _log_tail(self, node_id: int, lines: int = 5) -> str:
        ndir = self.node_dir(node_id) / "logs"
        text = ""
        for name in ("server.log", "stdout.log"):
            path = ndir / name
            if path.is_file():
                text += path.read_text(errors="replace")
        errors = [ln for ln in text.splitlines() if "ERROR" in ln or "Exception" in ln]
        return " | ".join((errors or text.splitlines())[-lines:])


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold a key or a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) broker JVM of this run folder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        return False
    # The pid may have been reused by another process: check that it is our JVM.
    return f"-Dstepcare.run.dir={run_dir}".encode() + b"\0" in cmdline


def broker_pids(run_dir: Path | None = None) -> list[int]:
    """Pids of every live broker JVM started by stepcare (of one run folder, if given)."""
    return jvm_pids(b"-Dstepcare.run.dir=", run_dir, also=b"kafka.Kafka")
