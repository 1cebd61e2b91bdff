"""What the Kafka benchmarks share: the broker, topics, logs, worker processes and their metrics.

Nothing here is a test; ``bench/run_all.py`` drives it. Every process started here is stopped
by its owner (``Broker``/``Worker`` are context managers, and the broker is started with
``die_with_parent`` so the kernel kills it if the benchmark itself is killed).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.devtools.cluster import Cluster
from streams.devtools.config import free_nodes
from streams.formats.avro import encode_event

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "bench" / ".data"
PARTITIONS = 4


def progress(message: str) -> None:
    """One progress line on stderr, with the time since the benchmark started."""
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


_STARTED = time.monotonic()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- broker and topics --------------------------------------------------------------------------


class Broker:
    """A single-node KRaft broker of the project's own (``streams.devtools.cluster``), on free
    ports."""

    def __init__(self, run_dir: Path, version: str, heap_mb: int = 512) -> None:
        cache = Path(os.environ.get("STEPCARE_CACHE_DIR", ROOT / ".cache"))
        self.cluster = Cluster(
            run_dir, version, free_nodes(1), cache_dir=cache, heap_mb=heap_mb,
            die_with_parent=True, report=progress,
        )  # fmt: skip
        self.bootstrap = ""

    def __enter__(self) -> Broker:
        self.bootstrap = self.cluster.start()
        return self

    def __exit__(self, *exc: object) -> None:
        progress("stopping the broker")
        self.cluster.stop()

    def create_topic(
        self, name: str, partitions: int = PARTITIONS, config: dict[str, str] | None = None
    ) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(name, partitions, 1, config=config or {"retention.ms": "-1"})]
        )
        for future in futures.values():
            future.result(timeout=60)


def producer(bootstrap: str, **extra: Any) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",  # as `stepcare publish` (and the Java client)
            "linger.ms": 20,
            "queue.buffering.max.messages": 1_000_000,
            **extra,
        }
    )


@dataclass(frozen=True, slots=True)
class EncodedLog:
    """A log as the worker reads it: (key, Avro SOE value, timestamp ms) per record."""

    records: list[tuple[bytes, bytes, int]]
    patients: int

    def __len__(self) -> int:
        return len(self.records)


def encode_jsonl(path: Path) -> EncodedLog:
    """Each JSONL event encoded like ``stepcare publish``: key = patient id, time = occurred_at."""
    records = []
    patients = set()
    with path.open("rb") as lines:
        for line in lines:
            obj = orjson.loads(line)
            value = encode_event(obj)
            patient = obj["patient_id"].encode()
            patients.add(patient)
            records.append((patient, value, _millis(obj["occurred_at"])))
    return EncodedLog(records, len(patients))


def _millis(text: str) -> int:
    from streams.clinical.events import parse_time

    return parse_time(text)


def publish(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes, int]]) -> list[int]:
    """Produce every record (acks=all), wait until the broker has them all; their partitions."""
    out = producer(bootstrap)
    partitions: list[int] = []

    def delivered(index: int) -> Callable[[Any, Any], None]:
        def report(error: Any, msg: Any) -> None:
            if error is not None:
                raise RuntimeError(f"publishing to {topic}: {error}")
            partitions[index] = msg.partition()

        return report

    for key, value, timestamp in records:
        partitions.append(-1)
        callback = delivered(len(partitions) - 1)
        while True:
            try:
                out.produce(topic, value=value, key=key, timestamp=timestamp, on_delivery=callback)
                break
            except BufferError:
                out.poll(0.05)
        if len(partitions) % 10_000 == 0:
            out.poll(0)
    if out.flush(120) != 0 or -1 in partitions:
        raise RuntimeError(f"publishing to {topic}: records left undelivered")
    return partitions


# -- stepcare worker processes ------------------------------------------------------------------


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(port: int, timeout: float = 2.0) -> dict[str, float]:
    """The worker's /metrics: metric name -> sum of its samples (only stepcare_* names)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as answer:
        text = answer.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("stepcare_") or line.startswith("stepcare_faust"):
            continue
        match = _SAMPLE.match(line)
        if match:
            sums[match[1]] = sums.get(match[1], 0.0) + float(match[3])
    return sums


def ready(port: int) -> bool:
    return ready_partitions(port) is not None


def ready_partitions(port: int) -> list[int] | None:
    """The partitions a ready worker owns (its /ready body), or None while it is not ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as answer:
            if answer.status != 200:
                return None
            return list(orjson.loads(answer.read()).get("partitions", []))
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Worker:
    """``stepcare worker`` as a real process (``python -m streams.cli worker``)."""

    def __init__(
        self,
        env: dict[str, str],
        data_dir: Path,
        log: Path,
        *,
        probe: Path | None = None,
        cprofile: Path | None = None,
    ) -> None:
        """``probe``: run ``bench/probe.py`` (stage breakdown to that JSON file) instead of the
        CLI; ``cprofile``: also cProfile the event loop (pstats file)."""
        self.port = free_port()
        self.data_dir = data_dir
        self.log = log
        environment = {
            **os.environ,
            **env,
            "STEPCARE_DATA_DIR": str(data_dir),
            "STEPCARE_WEB_PORT": str(self.port),
            "PYTHONPATH": str(ROOT),
        }
        command = [sys.executable, "-m", "streams.cli", "worker"]
        if probe or cprofile:
            command = [sys.executable, str(ROOT / "bench" / "probe.py")]
            environment["STEPCARE_BENCH_PROBE"] = str(probe or cprofile.with_suffix(".json"))
            if cprofile:
                environment["STEPCARE_BENCH_CPROFILE"] = str(cprofile)
        self.probe = Path(environment["STEPCARE_BENCH_PROBE"]) if probe or cprofile else None
        self.started = time.time()
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds from the process start until /ready answers 200 (partitions, tables)."""
        deadline = time.monotonic() + timeout
        while not ready(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}); see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker was not ready after {timeout:.0f} s; {self.log}")
            time.sleep(0.05)
        return time.time() - self.started

    def log_ready_after(self) -> float | None:
        """Seconds from the process start until faust logged "Worker ready" (log time, 1 ms)."""
        return self.log_after("Worker ready")

    def log_after(self, needle: str) -> float | None:
        """Seconds from the process start to the first faust log line containing ``needle``."""
        for line in self.log.read_text(errors="replace").splitlines():
            if needle in line:
                match = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
                if match:
                    moment = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
                    return moment + int(match[2]) / 1000 - self.started
        return None

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def events(self) -> int:
        return int(self.metrics().get("stepcare_events_total", 0))

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                progress(f"worker pid {self.proc.pid} did not stop in {timeout:.0f} s: killing it")
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def workers(
    count: int,
    env: dict[str, str],
    run_dir: Path,
    name: str,
    *,
    probe: bool = False,
    cprofile: bool = False,
) -> Iterator[list[Worker]]:
    """``count`` workers of one deployment (one app id), each with its own data dir and log."""
    started: list[Worker] = []
    try:
        for n in range(count):
            label = f"{name}-{n + 1}"
            started.append(
                Worker(
                    env, run_dir / f"{label}.data", run_dir / f"{label}.log",
                    probe=run_dir / f"{label}.stages.json" if probe else None,
                    cprofile=run_dir / f"{label}.prof" if cprofile else None,
                )
            )  # fmt: skip
        yield started
    finally:
        for worker in started:
            worker.stop()


def worker_env(
    bootstrap: str, app_id: str, input_topic: str, guarantee: str, **extra: str
) -> dict[str, str]:
    return {
        "STEPCARE_BOOTSTRAP_SERVERS": bootstrap,
        "STEPCARE_APP_ID": app_id,
        "STEPCARE_INPUT_TOPIC": input_topic,
        "STEPCARE_ESCALATIONS_TOPIC": f"{app_id}.escalations",
        "STEPCARE_DEAD_LETTER_TOPIC": f"{app_id}.dlq",
        "STEPCARE_PARTITIONS": str(PARTITIONS),
        "STEPCARE_CLOCK": "event",
        "STEPCARE_PROCESSING_GUARANTEE": guarantee,
        "STEPCARE_LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass(frozen=True, slots=True)
class Throughput:
    events: int  # events counted between the two measurement points
    seconds: float
    total: int  # every event processed

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def measure_throughput(
    group: list[Worker],
    total: int,
    timeout: float,
    settled: Callable[[], bool] | None = None,
) -> Throughput:
    """Events/s of ``group`` from the first processed event to the last of ``total``.

    Polls each worker's /metrics (``stepcare_events_total``) every 50 ms until the first
    event is counted (time and count taken then), then every 0.5 s until ``total`` are; the end
    is the largest ``stepcare_last_processed_timestamp_seconds`` (the wall time each worker
    took its last record). Start-up and recovery are not counted. With ``settled``, the first
    sample waits until it is true as well (several workers: until the rebalance is over), and
    only the events counted after it are in the rate.
    """
    deadline = time.monotonic() + timeout
    first_at, first_count = 0.0, 0
    while True:
        ok = settled is None or settled()
        counts = [_events(w) for w in group]
        now = time.time()
        if ok and sum(counts) > 0:
            first_at, first_count = now, sum(counts)
            break
        _check(group, deadline)
        time.sleep(0.05)
    last_report = time.monotonic()
    while True:
        counts = [_events(w) for w in group]
        if sum(counts) >= total:
            break
        _check(group, deadline)
        if time.monotonic() - last_report > 10:
            progress(f"  {sum(counts):,} of {total:,} events processed")
            last_report = time.monotonic()
        time.sleep(0.5)
    end = max(w.metrics().get("stepcare_last_processed_timestamp_seconds", 0.0) for w in group)
    return Throughput(total - first_count, end - first_at, sum(counts))


def _events(worker: Worker) -> int:
    try:
        return worker.events()
    except (urllib.error.URLError, OSError, ValueError):
        return 0  # not serving yet


def _check(group: list[Worker], deadline: float) -> None:
    for worker in group:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"a worker exited ({worker.proc.returncode}); see {worker.log}")
    if time.monotonic() > deadline:
        raise RuntimeError("timed out waiting for the workers; logs: " + ", ".join(
            str(w.log) for w in group))  # fmt: skip


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (as ``du -sb``: apparent sizes)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def du_blocks(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (as ``du -s``: blocks)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# -- CPU accounting (the machine may be shared: say how busy it was) ----------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core; idle and iowait excluded)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


@dataclass
class CpuWindow:
    """CPU use over a measurement: named processes of ours, and everything else on the machine."""

    seconds: float
    cores: dict[str, float]  # name -> average cores used
    others: float  # average cores used by processes not started by the benchmark
    used: dict[str, float]  # name -> CPU seconds

    def text(self) -> str:
        ours = ", ".join(f"{name} {value:.2f}" for name, value in self.cores.items())
        return f"{ours}; other processes {self.others:.2f} (cores, average)"


class CpuMeter:
    """Start with the pids to watch (alive until ``stop()``); ``stop()`` gives a
    :class:`CpuWindow`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.pids.setdefault("bench", os.getpid())
        self.wall = time.monotonic()
        self.busy = busy_seconds()
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> CpuWindow:
        seconds = time.monotonic() - self.wall
        used = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        busy = busy_seconds() - self.busy
        span = max(seconds, 1e-9)
        return CpuWindow(
            seconds,
            {name: value / span for name, value in used.items()},
            max(0.0, busy - sum(used.values())) / span,
            used,
        )


# -- synthetic logs of new patients -------------------------------------------------------------

SURVEY_AFTER_MS = 30 * 60_000  # the baseline form, half an hour after enrollment


def enrolled_event(patient_id: str, at_ms: int, event_id: str) -> dict[str, Any]:
    from streams.clinical.events import format_time

    return {"event_id": event_id, "patient_id": patient_id, "occurred_at": format_time(at_ms),
            "type": "ENROLLED", "source": "ehr"}  # fmt: skip


def enrollment_log(patients: int, seed: int, start_ms: int, prefix: str = "r") -> EncodedLog:
    """``patients`` new patients: each ENROLLED, then a complete FACT-L (its baseline) 30 min
    later; one enrollment per second, time-ordered. Every patient yields one escalation
    (``INITIAL_VISIT_DUE``) and a stored state with a baseline."""
    from random import Random

    import replay as offline  # bench/replay.py: its FACT-L response generator

    from streams.clinical.events import format_time

    rng = Random(seed)
    timed: list[tuple[int, int, dict[str, Any]]] = []
    for n in range(patients):
        patient_id = f"{prefix}-{n:07d}"
        at = start_ms + n * 1000
        timed.append((at, 0, enrolled_event(patient_id, at, f"{patient_id}-e")))
        total = min(max(round(rng.gauss(96, 15)), 40), 130)
        packed = offline.survey_responses(rng, total, 0)
        responses = {code: value for code, value in zip(offline.ITEM_ORDER, packed, strict=True)}
        survey_at = at + SURVEY_AFTER_MS
        timed.append((survey_at, 1, {
            "event_id": f"{patient_id}-s", "patient_id": patient_id,
            "occurred_at": format_time(survey_at), "type": "SURVEY_SUBMITTED", "source": "portal",
            "survey": {"instrument": "FACT-L", "version": "4", "responses": responses},
        }))  # fmt: skip
    timed.sort(key=lambda item: (item[0], item[1]))
    records = [(obj["patient_id"].encode(), encode_event(obj), at) for at, _, obj in timed]
    return EncodedLog(records, patients)


# -- a changelog written as the worker writes it (recovery benchmark) ----------------------------


class _RecordingTable:
    """What ``streams.worker.pipeline.Monitor`` needs of faust's table, recording every write in
    the changelog partition faust would send it to (the partition of the current event)."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.values: dict[bytes, bytes] = {}
        self.writes: dict[int, list[tuple[bytes, bytes]]] = {}
        self.data = _EmptyStore()  # a fresh worker: no states stored for any partition yet
        self.app = SimpleNamespace(conf=SimpleNamespace(producer_max_request_size=1_048_576))

    @staticmethod
    def _partition() -> int:
        from faust.streams import current_event

        return current_event().message.partition  # type: ignore[union-attr, no-any-return]

    def get(self, key: bytes, default: Any = None) -> Any:
        return self.values.get(self._partition().to_bytes(4, "big") + key, default)

    def __getitem__(self, key: bytes) -> bytes:
        return self.values[self._partition().to_bytes(4, "big") + key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        partition = self._partition()  # faust's: one RocksDB per partition
        self.values[partition.to_bytes(4, "big") + key] = value
        self.writes.setdefault(partition, []).append((key, value))


class _EmptyStore:
    data: dict[bytes, bytes] = {}  # noqa: RUF012 (never written)


class _InstantOutputs:
    """Outputs the broker acknowledges at once."""

    async def send(self, output: Any, input_topic: str, wait: bool) -> Any:
        return None

    async def until_acknowledged(self, outputs: list[Any]) -> None:
        return None


class _Event:
    """What the monitor uses of a faust Event."""

    def __init__(self, message: Any) -> None:
        self.message = message

    def ack(self) -> bool:
        return True


def worker_changelog(
    log: EncodedLog, partitions: list[int]
) -> dict[int, list[tuple[bytes, bytes]]]:
    """The records a worker writes to its table's changelog for ``log`` (published to
    ``partitions``), per partition and in order: the worker's own ``Monitor.handle_batch``
    (``streams.worker.pipeline``: engine, ``BufferedStates``, clock saves, one write per patient
    per batch) runs in this process over batches of ``STEPCARE_BATCH_SIZE`` records, with a
    table that records its writes and a producer that is acknowledged at once."""
    import asyncio
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from streams.clinical.policy import resolve_policy
    from streams.kafka.settings import Settings
    from streams.worker.metrics import WorkerMetrics
    from streams.worker.pipeline import Monitor

    # The memory store: states go through faust's table API, which the recording table is.
    settings = Settings.from_env({"STEPCARE_CLOCK": "event", "STEPCARE_STORE": "memory://"})
    policy = resolve_policy(settings.policy)
    table = _RecordingTable()
    topics = [SimpleNamespace(get_topic_name=lambda name=name: name) for name in ("esc", "dlq")]
    monitor = Monitor(
        settings, policy, table, *topics,  # type: ignore[arg-type]
        WorkerMetrics(CollectorRegistry(), policy), _InstantOutputs(),
    )  # fmt: skip

    async def drive() -> None:
        acknowledger = asyncio.ensure_future(monitor.acknowledge_in_order())
        batch: list[_Event] = []
        for offset, ((key, value, _), partition) in enumerate(
            zip(log.records, partitions, strict=True)
        ):
            message = SimpleNamespace(key=key, value=value, partition=partition, offset=offset,
                                      topic="input", headers=[])  # fmt: skip
            batch.append(_Event(message))
            if len(batch) == settings.batch_size:
                await monitor.handle_batch(batch)
                batch = []
        if batch:
            await monitor.handle_batch(batch)
        await monitor.settle()
        acknowledger.cancel()

    asyncio.run(drive())
    return table.writes


def write_changelog(
    broker: Broker,
    app_id: str,
    input_topic: str,
    changelog: dict[int, list[tuple[bytes, bytes]]],
) -> int:
    """Create ``<app_id>-patients-changelog`` (compacted, as faust does), write ``changelog``
    to it, and commit the app's consumer group at the end of ``input_topic`` (as the workers
    that processed it would have); the number of records written."""
    from confluent_kafka import Consumer, TopicPartition

    topic = f"{app_id}-patients-changelog"
    broker.create_topic(topic, config={"cleanup.policy": "compact"})
    out = producer(broker.bootstrap)
    count = 0
    for partition, records in changelog.items():
        for key, value in records:
            while True:
                try:
                    out.produce(topic, value=value, key=key, partition=partition)
                    break
                except BufferError:
                    out.poll(0.05)
            count += 1
    if out.flush(120) != 0:
        raise RuntimeError(f"writing {topic}: records left undelivered")
    group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": app_id,
                      "enable.auto.commit": False})  # fmt: skip
    try:
        ends = []
        for partition in range(PARTITIONS):
            _, high = group.get_watermark_offsets(TopicPartition(input_topic, partition), 30)
            ends.append(TopicPartition(input_topic, partition, high))
        group.commit(offsets=ends, asynchronous=False)
    finally:
        group.close()
    return count


def read_changelog(bootstrap: str, topic: str) -> dict[int, list[tuple[bytes, bytes]]]:
    """Every record of a changelog topic, per partition, in offset order."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{os.getpid()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})  # fmt: skip
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
        out: dict[int, list[tuple[bytes, bytes]]] = {}
        done: set[int] = set()
        deadline = time.monotonic() + 120
        while len(done) < len(metadata.partitions) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                continue
            out.setdefault(msg.partition(), []).append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


# -- py-spy profiles ------------------------------------------------------------------------------

_CATEGORIES = (
    # (category, test on (function, file) of the innermost frame), first match wins
    ("socket writes (asyncio transport -> loopback TCP to the broker)",
     lambda fn, path: path == "asyncio/selector_events.py" and "write" in fn),
    ("waiting in epoll (event loop idle)", lambda fn, path: fn == "EpollSelector.select"),
    ("stepcare code (streams/)", lambda fn, path: path.startswith("streams/")),
    ("RocksDB via faust's store", lambda fn, path: path.startswith("faust/stores/")),
    ("faust (streams, tables, topics, transport)", lambda fn, path: path.startswith("faust/")),
    ("mode (faust's service framework)", lambda fn, path: path.startswith("mode/")),
    ("aiokafka (protocol, producer, consumer)", lambda fn, path: path.startswith("aiokafka/")),
    ("prometheus_client", lambda fn, path: path.startswith("prometheus_client/")),
    ("aiohttp (web server: /metrics, /ready)", lambda fn, path: path.startswith("aiohttp/")),
    ("asyncio (event loop, futures, tasks)", lambda fn, path: path.startswith("asyncio/")),
    ("thread pool (lag probe executor, idle)",
     lambda fn, path: path.startswith("concurrent/futures/")),
)  # fmt: skip
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _frame(text: str) -> tuple[str, str]:
    """(function, file relative to site-packages / the stdlib / the project) of a py-spy frame."""
    match = _FRAME.match(text)
    if not match:
        return text, ""
    path = match[2]
    path = re.sub(r"^.*?site-packages/", "", path)
    path = re.sub(r"^.*?/lib/python3\.\d+/", "", path)
    path = path.removeprefix(f"{ROOT}/")
    return match[1], path


def summarize_py_spy(path: Path, top: int = 12) -> dict[str, Any]:
    """py-spy's raw (collapsed) samples: the share of samples by what the innermost Python
    frame is (C calls count in their Python caller), the share inside ``Monitor.handle`` (with
    what it calls), and the functions with the most own samples."""
    from collections import Counter

    total = 0
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    ours = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        function, where = frames[-1]
        total += n
        leaves[f"{function} ({where})"] += n
        for name, test in _CATEGORIES:
            if test(function, where):
                categories[name] += n
                break
        else:
            categories["other"] += n
        if any(fn == "Monitor.handle" for fn, _ in frames):
            ours += n
    share = lambda n: n / total if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "categories": [(name, share(n)) for name, n in categories.most_common()],
        "in_handle": share(ours),
        "top": [(name, share(n)) for name, n in leaves.most_common(top)],
    }
