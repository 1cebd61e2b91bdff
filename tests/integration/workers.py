"""Helpers for worker tests: ``stepcare worker`` as a real process, and topic readers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.analysis.replay import canonical_json
from streams.formats.avro import decode_escalation

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FaustProcess:
    """A Faust worker process whose output goes to ``log``; ready once faust says so."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait for faust's "Worker ready": partitions assigned and tables recovered."""
        deadline = time.monotonic() + timeout
        while b"Worker ready" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker not ready; log: {self.log}\n{self.tail()}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"worker did not stop; log: {self.log}") from None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class WorkerProcess(FaustProcess):
    """``stepcare worker`` through the real CLI, configured by STEPCARE_* variables."""

    def __init__(
        self, env: dict[str, str], datadir: Path, name: str = "worker", args: tuple[str, ...] = ()
    ) -> None:
        super().__init__(
            [sys.executable, "-m", "streams.cli", "worker", *args],
            {**env, "STEPCARE_DATA_DIR": str(datadir)},
            datadir.parent / f"{name}.log",
        )


class Deployment:
    """One worker deployment on the test broker: its own app id, topics and settings."""

    PARTITIONS = 4

    def __init__(self, bootstrap: str, topic_name: str, tmp_path: Path, **extra: str) -> None:
        self.bootstrap = bootstrap
        self.tmp_path = tmp_path
        self.input = f"{topic_name}.events"
        self.escalations = f"{topic_name}.escalations"
        self.dead_letters = f"{topic_name}.dlq"
        self.env = {
            "STEPCARE_BOOTSTRAP_SERVERS": bootstrap,
            "STEPCARE_APP_ID": f"stepcare-test-{uuid.uuid4().hex[:8]}",
            "STEPCARE_INPUT_TOPIC": self.input,
            "STEPCARE_ESCALATIONS_TOPIC": self.escalations,
            "STEPCARE_DEAD_LETTER_TOPIC": self.dead_letters,
            "STEPCARE_PARTITIONS": str(self.PARTITIONS),
            "STEPCARE_CLOCK": "event",
            "STEPCARE_WEB_PORT": str(free_port()),
            **extra,
        }

    def worker(self, name: str, *args: str) -> WorkerProcess:
        worker = WorkerProcess(self.env, self.tmp_path / name, name=name, args=args)
        worker.wait_ready()
        return worker

    def publish(self, events: list[dict], *, until: str | None = None) -> str:
        """Publish through the real ``stepcare publish``; its stderr (report and summary)."""
        log = self.tmp_path / f"publish-{uuid.uuid4().hex[:6]}.jsonl"
        log.write_text("".join(orjson.dumps(e).decode() + "\n" for e in events))
        command = [sys.executable, "-m", "streams.cli", "publish", "--input", str(log)]
        command += ["--topic", self.input, "--bootstrap-servers", self.bootstrap]
        if until:
            command += ["--until", until]
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**os.environ, **self.env},  # the deployment's framing and registry too
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stderr

    def escalations_read(self, expected: int | None = None, topic: str | None = None) -> list[str]:
        """The escalations on the topic, as canonical JSON lines (duplicates kept)."""
        records = read_topic(self.bootstrap, topic or self.escalations, expected=expected)
        return [canonical_json(decode_escalation(r.value())) for r in records]


def read_topic(
    bootstrap: str, topic: str, expected: int | None = None, timeout: float = 120.0
) -> list:
    """Records of every partition of ``topic`` (read_committed), up to the end offsets as of
    now, or, with ``expected``, until that many arrived (or the timeout passed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": expected is None,
        }
    )
    metadata = consumer.list_topics(topic, timeout=30).topics[topic]
    partitions = sorted(metadata.partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if expected is None and len(at_end) == len(partitions):
                break
            if expected is not None and len(records) >= expected:
                break
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition())
                continue
            assert msg.error() is None, msg.error()
            records.append(msg)
    finally:
        consumer.close()
    return records
