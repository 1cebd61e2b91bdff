"""Fault injection for the worker: a seeded plan of SIGKILLed workers and a restarted broker,
played against two ``stepcare worker`` processes in one consumer group on a three-node cluster
while a log is published in chunks, then the escalations compared with offline replay.

Used by ``test_faults.py``. The plan (chunk times, which worker dies when, how long it stays
down, whether it comes back on its data dir or a fresh one, which broker is stopped and for how
long) is drawn from one seed, so a run can be repeated; the moments are wall-clock moments, so
what the workers were doing at each kill varies a little from run to run. Everything that
happened is printed to stderr (``pytest -s``) with its time since the start. A worker that
exits by itself is restarted on its data dir and counted (:meth:`FaultRun.supervise`).
"""

from __future__ import annotations

import io
import itertools
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.analysis.replay import canonical_json, replay
from streams.clinical.policy import builtin_policy
from streams.devtools.cluster import Cluster
from streams.formats.avro import decode_escalation
from streams.kafka.client import producer_config
from streams.kafka.publish import LogSource, publish_log
from streams.kafka.settings import Settings
from tests.integration.workers import WorkerProcess, free_port

PARTITIONS = 4
WORKERS = ("a", "b")


def say(text: str) -> None:
    print(f"[faults] {text}", file=sys.__stderr__, flush=True)


# -- sizes and the plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    name: str
    patients: int
    weeks: int  # of the demo cohort: ~9.5 events per patient for 40 weeks
    chunks: int  # the log is published in this many chunks ...
    publish_seconds: float  # ... spread over this long
    kills: int  # worker SIGKILLs
    window: float  # faults happen in [0, window] seconds after the first chunk


SIZES = {
    "short": Size("short", patients=320, weeks=40, chunks=12, publish_seconds=24.0, kills=2,
                  window=30.0),
    "full": Size("full", patients=2200, weeks=40, chunks=40, publish_seconds=120.0, kills=4,
                 window=140.0),
}  # fmt: skip


@dataclass(frozen=True)
class Step:
    at: float  # planned seconds after the start of publishing
    action: str  # "kill", "restart", "broker-stop", "broker-start"
    target: str | int  # worker slot or broker node id
    fresh: bool = False  # restart on a new, empty data dir
    hard: bool = False  # broker: SIGKILL instead of SIGTERM


def make_plan(size: Size, seed: int) -> list[Step]:
    """Seeded faults: ``size.kills`` SIGKILLs (each followed by a restart) and one broker stop
    and start, interleaved in ``size.window`` seconds; kills at least 7 s apart."""
    rng = random.Random(seed)
    while True:
        kills = sorted(rng.uniform(2.0, size.window * 0.85) for _ in range(size.kills))
        if all(b - a >= 7.0 for a, b in itertools.pairwise(kills)):
            break
    steps: list[Step] = []
    fresh_choices = [rng.random() < 0.3 for _ in kills]
    if not any(fresh_choices):  # at least one recovery from the changelog alone
        fresh_choices[rng.randrange(len(fresh_choices))] = True
    for at, fresh in zip(kills, fresh_choices, strict=True):
        slot = rng.choice(WORKERS)
        steps.append(Step(at, "kill", slot))
        steps.append(Step(at + rng.uniform(0.5, 5.0), "restart", slot, fresh=fresh))
    stop = rng.uniform(size.window * 0.2, size.window * 0.6)
    node = rng.randint(1, 3)
    steps.append(Step(stop, "broker-stop", node, hard=size.name == "full"))
    steps.append(Step(stop + rng.uniform(4.0, 12.0), "broker-start", node))
    return sorted(steps, key=lambda s: s.at)


def chunks_of(events: list[dict], count: int) -> list[list[dict]]:
    per = -(-len(events) // count)
    return [events[i : i + per] for i in range(0, len(events), per)]


# -- the reference -------------------------------------------------------------------------------


def offline(events: list[dict], until_ms: int) -> list[str]:
    """``stepcare replay --until`` of the same log: the escalations the worker must publish."""
    output = io.StringIO()
    lines = [orjson.dumps(e).decode() for e in events]
    replay(lines, builtin_policy("step-pc-2024"), output, until=until_ms, rejects=io.StringIO())
    return output.getvalue().splitlines()


# -- reading topics ------------------------------------------------------------------------------


def _consumer(bootstrap: str, isolation: str, **extra: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fault-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            **extra,
        }
    )


def end_offsets(bootstrap: str, topic: str, isolation: str) -> dict[int, int]:
    """Each partition's end: the high watermark, or with read_committed the last stable offset
    (it stays behind the high watermark while a transaction is open on the partition)."""
    consumer = _consumer(bootstrap, isolation)
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in sorted(partitions)
        }
    finally:
        consumer.close()


def wait_no_open_transaction(bootstrap: str, topic: str, timeout: float) -> bool:
    """Wait until the last stable offset of every partition reaches its high watermark."""
    deadline = time.monotonic() + timeout
    while True:
        stable = end_offsets(bootstrap, topic, "read_committed")
        high = end_offsets(bootstrap, topic, "read_uncommitted")
        if stable == high:
            return True
        if time.monotonic() > deadline:
            say(f"{topic}: transactions still open: stable {stable}, high {high}")
            return False
        time.sleep(1.0)


def read_all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[Any]:
    """Every record of ``topic`` up to its end as of now (as ``isolation`` sees it)."""
    ends = end_offsets(bootstrap, topic, isolation)
    consumer = _consumer(bootstrap, isolation, **{"enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    records: list[Any] = []
    done = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 120
    try:
        while len(done) < len(ends):
            assert time.monotonic() < deadline, f"reading {topic}: stuck, ends {ends}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                position = consumer.position([TopicPartition(topic, msg.partition())])[0].offset
                if position >= ends[msg.partition()]:
                    done.add(msg.partition())
                continue
            records.append(msg)
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
    finally:
        consumer.close()
    return records


def escalation_lines(records: list[Any]) -> list[str]:
    return [canonical_json(decode_escalation(r.value())) for r in records]


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})  # fmt: skip
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


# -- comparing -----------------------------------------------------------------------------------


def _brief(line: str) -> tuple[str, str, str, str]:
    obj = orjson.loads(line)
    return obj["escalation_id"], obj["kind"], obj["patient_id"], obj["occurred_at"]


def diff_summary(
    expected: list[str], received: list[str], partition_of: dict[str, int] | None = None
) -> str:
    """What differs between two multisets of escalation lines, by kind, with examples."""
    want, got = Counter(expected), Counter(received)
    missing = want - got
    extra = got - want
    expected_ids = {_brief(line)[0] for line in want}
    duplicates = Counter({line: n for line, n in extra.items() if line in want})
    foreign = Counter({line: n for line, n in extra.items() if line not in want})
    same_id_other_content = [ln for ln in foreign if _brief(ln)[0] in expected_ids]
    out = [
        f"expected {len(expected)} escalations ({len(want)} distinct), received {len(received)} "
        f"({len(got)} distinct)",
        f"missing: {sum(missing.values())}; duplicates of expected lines: "
        f"{sum(duplicates.values())}; lines not in the offline output: {sum(foreign.values())} "
        f"({len(same_id_other_content)} with an expected id but other content)",
    ]
    for title, counter in (("missing", missing), ("duplicated", duplicates),
                           ("unexpected", foreign)):  # fmt: skip
        if not counter:
            continue
        by_kind = Counter()
        by_partition: Counter[int] = Counter()
        for line, n in counter.items():
            _, kind, patient, _ = _brief(line)
            by_kind[kind] += n
            if partition_of is not None:
                by_partition[partition_of.get(patient, -1)] += n
        out.append(f"  {title} by kind: {dict(by_kind.most_common())}")
        if partition_of is not None:
            out.append(f"  {title} by input partition: {dict(sorted(by_partition.items()))}")
        for line in sorted(counter, key=lambda ln: _brief(ln)[3])[:8]:
            eid, kind, patient, at = _brief(line)
            out.append(f"    {title}: {kind} {patient} at {at} id {eid} (x{counter[line]})")
    return "\n".join(out)


def input_partitions(bootstrap: str, topic: str) -> dict[str, int]:
    """Patient id -> input partition, from the input topic itself (for diff summaries)."""
    return {r.key().decode(): r.partition() for r in read_all(bootstrap, topic, "read_uncommitted")
            if r.key()}  # fmt: skip


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One of the two workers: its current process and its data dir."""

    name: str
    datadir: Path
    process: WorkerProcess | None = None
    incarnation: int = 0
    started_at: float = 0.0  # monotonic time of the current incarnation's start
    logs: list[Path] = field(default_factory=list)


class FaultRun:
    """Two workers in one group on ``cluster``, a publisher thread, and the fault plan."""

    def __init__(self, cluster: Cluster, tmp_path: Path, guarantee: str, **extra_env: str) -> None:
        self.cluster = cluster
        self.bootstrap = cluster.bootstrap_servers
        self.tmp_path = tmp_path
        tag = uuid.uuid4().hex[:8]
        self.input = f"faults.{tag}.events"
        self.escalations = f"faults.{tag}.escalations"
        self.dead_letters = f"faults.{tag}.dlq"
        self.app_id = f"stepcare-faults-{tag}"
        self.env = {
            "STEPCARE_BOOTSTRAP_SERVERS": self.bootstrap,
            "STEPCARE_APP_ID": self.app_id,
            "STEPCARE_INPUT_TOPIC": self.input,
            "STEPCARE_ESCALATIONS_TOPIC": self.escalations,
            "STEPCARE_DEAD_LETTER_TOPIC": self.dead_letters,
            "STEPCARE_PARTITIONS": str(PARTITIONS),
            "STEPCARE_REPLICATION": "3",
            "STEPCARE_CLOCK": "event",
            "STEPCARE_PROCESSING_GUARANTEE": guarantee,
            **extra_env,
        }
        self.slots = {name: Slot(name, tmp_path / f"data-{name}-0") for name in WORKERS}
        self.crashes: list[str] = []  # workers that exited without being killed
        self.startup_failures: list[str] = []  # ... before getting ready, a broker being down
        self.broker_down: list[list[float]] = []  # [stopped at, started at (or inf)]
        self.started = time.monotonic()
        self.t0 = self.started  # the start of publishing: the plan's times count from it
        self.timeline: list[str] = []
        self.publisher: threading.Thread | None = None
        self.publish_error: BaseException | None = None
        self.published = 0

    def note(self, text: str) -> None:
        line = f"+{time.monotonic() - self.started:6.1f}s {text}"
        self.timeline.append(line)
        say(line)

    # -- topics -----------------------------------------------------------------------------------
    def create_topics(self) -> None:
        """The worker's three topics as ``streams.kafka.topics.ensure_topics`` makes them (4
        partitions, replication 3, min ISR 2), but keeping every record whatever its timestamp.

        Records carry their event time as timestamp (``occurred_at``); this cohort's are months
        old, so with the broker's default ``retention.ms`` (7 days) a segment of the input or
        escalations topic is deleted as soon as it rolls and a retention check runs. A worker
        that lags (it was killed) then finds its committed offset out of range and skips to the
        new log start: events lost that no worker code can bring back. Seen in the first runs of
        this test; reported. The worker creates the topics only when they are missing.
        """
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        config = {"min.insync.replicas": "2", "retention.ms": "-1"}
        topics = [self.input, self.escalations, self.dead_letters]
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=PARTITIONS, replication_factor=3, config=config)
             for t in topics]
        )  # fmt: skip
        for future in futures.values():
            future.result(timeout=60)
        self.note(f"created {', '.join(topics)} (retention.ms=-1)")

    # -- workers ----------------------------------------------------------------------------------
    def start_worker(self, name: str, *, fresh: bool = False, wait: bool = True) -> None:
        slot = self.slots[name]
        slot.incarnation += 1
        if fresh:
            slot.datadir = self.tmp_path / f"data-{name}-{slot.incarnation}"
        env = {**self.env, "STEPCARE_WEB_PORT": str(free_port())}
        slot.process = WorkerProcess(env, slot.datadir, name=f"worker-{name}-{slot.incarnation}")
        slot.started_at = time.monotonic()
        slot.logs.append(slot.process.log)
        where = "a fresh data dir" if fresh else f"data dir {slot.datadir.name}"
        self.note(f"worker {name}#{slot.incarnation} started (pid {slot.process.proc.pid}) "
                  f"on {where}")  # fmt: skip
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 180.0) -> None:
        """Wait for faust's "Worker ready" in the current incarnation's log; a worker that
        crashes meanwhile is restarted (see :meth:`supervise`)."""
        deadline = time.monotonic() + timeout
        while True:
            slot = self.slots[name]
            assert slot.process is not None
            if b"Worker ready" in slot.process.log.read_bytes():
                self.note(f"worker {name}#{slot.incarnation} ready")
                return
            if not slot.process.alive():
                self.supervise()
                continue
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {name} not ready after {timeout:.0f} s; log {slot.process.log}:\n"
                    f"{slot.process.tail()}"
                )
            time.sleep(0.2)

    def supervise(self) -> None:
        """Restart (on its data dir) any worker that exited although nobody killed it, as a
        process supervisor would. Each exit is noted; it goes to ``crashes`` unless the worker
        never got ready and a broker was down meanwhile (``startup_failures``: faust cannot
        declare its changelog topic when the broker it takes for the controller is down)."""
        for name, slot in self.slots.items():
            if slot.process is None or slot.process.alive():
                continue
            status = slot.process.proc.returncode
            text = slot.process.log.read_text(errors="replace")
            lines = text.splitlines()
            crashed = [line for line in lines if "Crashed reason=" in line]
            errors = crashed or [line for line in lines if "[ERROR]" in line]
            reason = errors[-1][:400] if errors else "no error logged"
            what = f"worker {name}#{slot.incarnation} exited {status}: {reason}"
            starting = "Worker ready" not in text and not crashed  # not a recovery crash
            if starting and self.broker_was_down_since(slot.started_at):
                self.startup_failures.append(what)
                self.note(f"STARTUP FAILURE while a broker was down: {what}")
            else:
                self.crashes.append(what)
                self.note(f"CRASH: {what}")
            exits = len(self.crashes) + len(self.startup_failures)
            assert exits <= 6, "workers keep exiting:\n" + "\n".join(
                self.crashes + self.startup_failures
            )
            self.start_worker(name, wait=False)

    def broker_was_down_since(self, moment: float) -> bool:
        """Whether a broker was down at some time between ``moment`` and now."""
        return any(up > moment for _, up in self.broker_down)

    def kill_worker(self, name: str) -> None:
        slot = self.slots[name]
        assert slot.process is not None and slot.process.alive(), f"worker {name} is not running"
        slot.process.proc.send_signal(signal.SIGKILL)
        slot.process.proc.wait(timeout=30)
        self.note(f"worker {name}#{slot.incarnation} SIGKILLed")
        slot.process = None

    def stop_workers(self) -> dict[str, int | None]:
        """SIGTERM every running worker (SIGKILL after 60 s); their exit statuses."""
        statuses: dict[str, int | None] = {}
        for name, slot in self.slots.items():
            if slot.process is None:
                continue
            proc = slot.process.proc
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                statuses[name] = proc.wait(timeout=60)
            except Exception:  # whatever happens, nothing is left running
                proc.kill()
                proc.wait(timeout=30)
                statuses[name] = None
            slot.process = None
        return statuses

    # -- publishing -------------------------------------------------------------------------------
    def producer(self) -> Producer:
        config = producer_config(Settings(), self.bootstrap)  # murmur2_random, idempotent, all
        config["logger"] = _quiet_logger()
        return Producer(config)

    def publish(self, events: list[dict], producer: Producer, until: int | None = None) -> None:
        source = LogSource("line", ((n, e, 0) for n, e in enumerate(events, 1)), None, _nothing)
        err = io.StringIO()
        summary = publish_log(source, producer, self.input, until=until, where=self.bootstrap,
                              err=err)  # fmt: skip
        assert summary.failed == 0 and summary.rejected == 0, err.getvalue()
        self.published += summary.published

    def start_publishing(self, chunks: list[list[dict]], seconds: float) -> None:
        """Publish the chunks at evenly spaced moments over ``seconds``, in a thread."""
        gap = seconds / max(1, len(chunks) - 1)
        self.t0 = time.monotonic()

        def run() -> None:
            try:
                producer = self.producer()
                for index, chunk in enumerate(chunks):
                    _sleep_until(self.t0 + index * gap)
                    self.publish(chunk, producer)
                self.note(f"published all {self.published} events in {len(chunks)} chunks")
            except BaseException as exc:  # reported by join_publisher
                self.publish_error = exc

        self.publisher = threading.Thread(target=run, name="publisher", daemon=True)
        self.publisher.start()

    def join_publisher(self) -> None:
        assert self.publisher is not None
        self.publisher.join(timeout=300)
        assert not self.publisher.is_alive(), "the publisher did not finish"
        if self.publish_error is not None:
            raise AssertionError(f"publishing failed: {self.publish_error!r}")

    # -- the plan ---------------------------------------------------------------------------------
    def play(self, plan: list[Step]) -> None:
        for step in plan:
            while time.monotonic() < self.t0 + step.at:
                self.supervise()
                time.sleep(min(0.2, max(0.0, self.t0 + step.at - time.monotonic())))
            late = time.monotonic() - self.t0 - step.at
            self.note(f"step planned at +{step.at:.1f}s ({late:.1f}s late): {step.action} "
                      f"{step.target}{' fresh' if step.fresh else ''}"
                      f"{' SIGKILL' if step.hard else ''}")  # fmt: skip
            if step.action == "kill":
                name = str(step.target)
                if self.slots[name].process is not None:
                    self.wait_ready(name)  # kill a worker that got going, not one still starting
                self.kill_worker(name)
            elif step.action == "restart":
                self.start_worker(str(step.target), fresh=step.fresh, wait=False)
            elif step.action == "broker-stop":
                self.broker_down.append([time.monotonic(), float("inf")])
                self.cluster.stop_node(int(step.target), kill=step.hard)
                self.note(f"broker {step.target} stopped ({'SIGKILL' if step.hard else 'SIGTERM'})")
            elif step.action == "broker-start":
                self.cluster.start_node(int(step.target), timeout=120)
                self.broker_down[-1][1] = time.monotonic()
                self.note(f"broker {step.target} restarted and registered")
            else:
                raise AssertionError(step)

    def wait_caught_up(self, timeout: float) -> bool:
        """Wait until the group's committed offsets reach the end of every input partition."""
        deadline = time.monotonic() + timeout
        ends = end_offsets(self.bootstrap, self.input, "read_uncommitted")
        while True:
            committed = committed_offsets(self.bootstrap, self.app_id, self.input)
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                self.note(f"workers caught up: committed {committed} = end of input")
                return True
            self.supervise()
            if time.monotonic() > deadline:
                self.note(f"not caught up after {timeout:.0f} s: committed {committed}, end {ends}")
                return False
            time.sleep(1.0)

    def worker_logs(self) -> Iterator[Path]:
        for slot in self.slots.values():
            yield from slot.logs


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _nothing() -> None:
    return None


def _quiet_logger() -> Any:
    import logging

    logger = logging.getLogger("stepcare.faults.librdkafka")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger
