"""``make run``: a local broker, the topics, the worker, a demo cohort, escalations as they come.

Everything it starts it stops on Ctrl-C (or SIGTERM): the worker first, then the broker (only
if this command started it; a broker that was already running is reused and left running).
Logs go to ``.run/``; the terminal shows escalations and a summary by kind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.devtools.cluster import Cluster
from streams.devtools.config import default_nodes
from streams.devtools.demo import demo_cohort
from streams.devtools.registry import Registry
from streams.errors import StepcareError
from streams.formats.avro import CodecError
from streams.kafka.registry import RegistryError, reader_for
from streams.kafka.settings import Settings
from streams.kafka.topics import ensure_topics

RUN_DIR = Path(".run")
SUMMARY_EVERY = 10.0  # seconds


class DemoError(StepcareError, RuntimeError):
    """Something the demo needs did not start; the message says where to look."""


def run_demo(settings: Settings, patients: int, seed: int, tick_interval: int = 10) -> int:
    RUN_DIR.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    cluster = Cluster.load(settings.broker_run_dir, report=_say)
    own_broker = None
    own_registry: Registry | None = None
    worker: subprocess.Popen[bytes] | None = None
    consumer: Consumer | None = None
    try:
        if cluster is not None and cluster.running_pids():
            _say(f"reusing the broker running at {cluster.bootstrap_servers}")
        else:
            cluster = own_broker = Cluster(
                settings.broker_run_dir,
                settings.kafka_version,
                default_nodes(1, settings.broker_port),
                cache_dir=settings.cache_dir,
                heap_mb=settings.broker_heap_mb,
                die_with_parent=True,
                report=_say,
            )
            cluster.start()
            # A fresh broker has empty changelogs: a worker data dir from an older run would
            # hold states they no longer back.
            shutil.rmtree(settings.data_dir, ignore_errors=True)
        settings = dataclasses.replace(
            settings,
            bootstrap_servers=cluster.bootstrap_servers,
            clock="wall",
            tick_interval=tick_interval,
        )
        if settings.wire_format == "registry":
            own_registry = _local_registry(settings)
        created = ensure_topics(settings)
        _say(f"topics: created {', '.join(created)}" if created else "topics: all there")
        worker = _start_worker(settings)
        cohort = RUN_DIR / "demo-cohort.jsonl"
        events = demo_cohort(patients, seed, end_ms=time.time_ns() // 1_000_000)
        cohort.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        _say(f"demo cohort: {len(events)} events for {patients} patients in {cohort}")
        consumer = _tail_from_now(settings)
        publish = subprocess.run(
            [sys.executable, "-m", "streams.cli", "publish", "--input", str(cohort),
             "--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.input_topic],
            check=False,
        )  # fmt: skip
        if publish.returncode != 0:
            raise DemoError(f"stepcare publish failed (exit {publish.returncode})")
        _say(
            f"escalations below as they arrive; metrics: http://{settings.web_host}:"
            f"{settings.web_port}/metrics ; worker log: {RUN_DIR / 'worker.log'} ; Ctrl-C stops"
        )
        _follow(consumer, worker, reader_for(settings).decode_escalation)
        return 1  # _follow returns only if the worker died
    except KeyboardInterrupt:
        _say("stopping ...")
        return 0
    finally:
        if consumer is not None:
            consumer.close()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
        if own_broker is not None:
            own_broker.stop()
        if own_registry is not None:
            own_registry.stop()
        _say("stopped")


def _local_registry(settings: Settings) -> Registry | None:
    """The registry framing asked for: a registry started here if its URL is this host's and
    none answers there (stopped with the demo); None if one is already up, or is elsewhere."""
    url = urlsplit(settings.schema_registry_url)
    try:
        with socket.create_connection((url.hostname or "", url.port or 80), timeout=2):
            _say(f"schema registry: using {settings.schema_registry_url}")
            return None
    except OSError:
        pass
    if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
        raise DemoError(f"no schema registry answers at {settings.schema_registry_url}")
    registry = Registry(
        RUN_DIR / "registry", url.port, cache_dir=settings.cache_dir, die_with_parent=True,
        report=_say,
    )  # fmt: skip
    registry.start()
    return registry


def _start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    log = RUN_DIR / "worker.log"
    env = {
        **os.environ,
        "STEPCARE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "STEPCARE_CLOCK": settings.clock,
        "STEPCARE_TICK_INTERVAL": str(settings.tick_interval),
    }
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    _say(f"worker starting (log {log}) ...")
    deadline = time.monotonic() + 180
    while b"Worker ready" not in log.read_bytes():
        if worker.poll() is not None:
            raise DemoError(f"the worker exited with status {worker.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise DemoError(f"the worker did not become ready in 180 s; see {log}")
        time.sleep(0.3)
    _say("worker ready")
    return worker


def _tail_from_now(settings: Settings) -> Consumer:
    """A reader of the escalation topic from its current end (older runs are not shown)."""
    consumer = Consumer(
        {
            **settings.confluent_config(),
            "group.id": f"stepcare-demo-{os.getpid()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    topic = settings.escalations_topic
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    ends = [
        TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[1])
        for p in partitions
    ]
    consumer.assign(ends)
    return consumer


def _follow(
    consumer: Consumer,
    worker: subprocess.Popen[bytes],
    decode_escalation: Callable[[bytes], dict[str, Any]],
) -> None:
    kinds: Counter[str] = Counter()
    shown: Counter[str] = Counter()
    last_summary = time.monotonic()
    while worker.poll() is None:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            try:
                escalation = decode_escalation(msg.value())
            except (CodecError, RegistryError) as exc:
                _say(f"undecodable escalation record: {exc}")
                continue
            kinds[escalation["kind"]] += 1
            due = (escalation["due_by"] or "")[:10]
            print(
                f"{escalation['occurred_at']}  {escalation['kind']:<27} "
                f"{escalation['patient_id']:<10} due {due or '-':<10}  "
                f"{escalation['reason']['text']}",
                flush=True,
            )
        elif msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
            _say(f"consumer: {msg.error().str()}")
        if kinds != shown and time.monotonic() - last_summary > SUMMARY_EVERY:
            last_summary, shown = time.monotonic(), kinds.copy()
            total = sum(kinds.values())
            parts = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
            _say(f"--- {total} escalations so far: {parts}")
    _say(f"the worker exited with status {worker.returncode}; see {RUN_DIR / 'worker.log'}")


def _say(message: str) -> None:
    print(f"[stepcare] {message}", file=sys.stderr, flush=True)
