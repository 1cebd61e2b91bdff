"""Fault injection (DESIGN §6): worker crashes and a broker restart lose no escalation, and with
exactly-once, read-committed subscribers see each one exactly once.

A three-node KRaft cluster (replication 3, min ISR 2) of this module's own, and two
``stepcare worker`` processes in one consumer group (4 partitions, event clock). A seeded demo
cohort is published in chunks (``stepcare publish``'s code: murmur2 keyed by patient,
idempotent, acks=all) while a seeded plan SIGKILLs a worker now and then (it comes back a few
seconds later on its data dir, or on a fresh one) and stops one broker, then starts it again. A
``CLOCK_TICK`` at END on every partition closes the clocks; once the group has committed the
whole input, the workers stop and the escalations topic is read with
``isolation.level=read_committed``:

- ``exactly_once``: exactly the multiset ``stepcare replay --until END`` writes for the same log,
  written in transactions;
- ``at_least_once``: every offline escalation, and nothing but repeats of them (same id, same
  content); the number of repeats is printed.

A worker that exits by itself is restarted, as a supervisor would, and fails the test at the
end, unless it exited before getting ready while a broker was down (reported, not failed).
The test creates the topics itself with ``retention.ms=-1`` (see
``FaultRun.create_topics``: with the broker's 7-day default, records stamped with months-old
event times are deleted under a lagging worker). ``exactly_once`` holds with the fixes in
``streams/worker/faust_patches.py`` (found by this test; each is described there).

Size (``STEPCARE_FAULTS``): ``short`` (default: 320 patients, ~3,100 events, 2 kills, one
broker stopped with SIGTERM; about a minute and a half per guarantee) or ``full`` (2,200
patients, ~20,800 events, 4 kills, one broker SIGKILLed); ``off`` skips them.
``STEPCARE_FAULTS_SEED`` changes the seed. ``pytest -s`` shows the timeline on stderr.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.clinical.events import parse_time
from streams.devtools.cluster import Cluster, broker_pids
from streams.devtools.config import free_nodes
from streams.devtools.demo import demo_cohort
from streams.kafka.settings import Settings
from tests.integration.faults import (
    SIZES,
    FaultRun,
    chunks_of,
    diff_summary,
    end_offsets,
    escalation_lines,
    input_partitions,
    make_plan,
    offline,
    read_all,
    say,
    wait_no_open_transaction,
)

END = "2025-06-01T00:00:00Z"
SIZE_NAME = os.environ.get("STEPCARE_FAULTS", "short")
SEED = int(os.environ.get("STEPCARE_FAULTS_SEED", "20261127"))

if SIZE_NAME not in (*SIZES, "off"):
    raise pytest.UsageError(f"STEPCARE_FAULTS={SIZE_NAME!r}: expected short, full or off")

pytestmark = [
    pytest.mark.skipif(SIZE_NAME == "off", reason="STEPCARE_FAULTS=off"),
    pytest.mark.timeout(900 if SIZE_NAME == "full" else 300),
]

# A crashed member keeps its partitions until the broker gives up on its session: faust's
# default is 60 s. 10 s (heartbeat 1 s) keeps each kill's pause short. faust reads these from
# the environment (they are faust settings, not stepcare ones).
FAST_FAILOVER = {"BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A three-node cluster of this module's own; no JVM of it outlives the module."""
    settings = Settings.from_env()
    cluster = Cluster(
        tmp_path_factory.mktemp("faults-kafka"),
        settings.kafka_version,
        free_nodes(3),
        cache_dir=settings.cache_dir,
        heap_mb=settings.broker_heap_mb,
        die_with_parent=True,
        report=lambda line: say(f"[broker] {line}"),
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(timeout=10)  # the last node's controlled shutdown waits for a quorum
        assert broker_pids(cluster.run_dir) == [], "a broker JVM outlived the tests"


@pytest.fixture
def three_nodes(cluster: Cluster) -> Cluster:
    """The cluster with its three nodes running (a failed test may have left one stopped)."""
    for node in cluster.nodes:
        if node.pid is None or node.pid not in cluster.running_pids():
            say(f"[broker] node {node.node_id} was down: starting it")
            cluster.start_node(node.node_id, timeout=120)
    return cluster


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_worker_kills_and_a_broker_restart(
    guarantee: str, three_nodes: Cluster, tmp_path: Path
) -> None:
    cluster = three_nodes
    bootstrap = cluster.bootstrap_servers
    size = SIZES[SIZE_NAME]
    began = time.monotonic()
    events = demo_cohort(size.patients, seed=SEED, end_ms=parse_time(END), weeks=size.weeks)
    expected = offline(events, parse_time(END))
    plan = make_plan(size, SEED)
    say(
        f"{guarantee}, size {size.name}, seed {SEED}: {len(events)} events, {size.patients} "
        f"patients, {len(expected)} escalations offline; plan (s after the first chunk):"
    )
    for step in plan:
        fresh = " (fresh data dir)" if step.fresh else ""
        say(f"  +{step.at:5.1f}s {step.action} {step.target}{fresh}{' (SIGKILL)' * step.hard}")

    run = FaultRun(cluster, tmp_path, guarantee, **FAST_FAILOVER)
    caught_up = False
    try:
        run.create_topics()  # retention.ms=-1: see FaultRun.create_topics
        run.start_worker("a", wait=False)
        run.start_worker("b", wait=False)
        run.wait_ready("a")
        run.wait_ready("b")
        run.start_publishing(chunks_of(events, size.chunks), size.publish_seconds)
        run.play(plan)
        run.join_publisher()
        for name, slot in run.slots.items():
            if slot.process is not None:
                run.wait_ready(name)
        run.publish([], run.producer(), until=parse_time(END))  # CLOCK_TICK on every partition
        run.note(f"CLOCK_TICK at {END} on every partition")
        caught_up = run.wait_caught_up(timeout=600 if size.name == "full" else 180)
    finally:
        statuses = run.stop_workers()
        run.note(f"workers stopped: exit statuses {statuses}")

    settled = wait_no_open_transaction(bootstrap, run.escalations, timeout=90)
    received = escalation_lines(read_all(bootstrap, run.escalations))
    everything = read_all(bootstrap, run.escalations, "read_uncommitted")
    # Transaction markers take offsets: the end offsets exceed the records by their number.
    markers = sum(end_offsets(bootstrap, run.escalations, "read_uncommitted").values())
    markers -= len(everything)
    dead = read_all(bootstrap, run.dead_letters)
    repeats = len(received) - len(set(received))
    run.note(
        f"read_committed: {len(received)} escalations ({len(set(received))} distinct, {repeats} "
        f"repeats); offline: {len(expected)}; records incl. aborted: {len(everything)}; "
        f"transaction markers: {markers}; dead letters: {len(dead)}; "
        f"worker crashes: {len(run.crashes)}; failed starts while a broker was down: "
        f"{len(run.startup_failures)}"
    )
    say(f"{guarantee} {size.name}: {time.monotonic() - began:.0f} s; logs in {tmp_path}")

    same = (
        Counter(received) == Counter(expected)
        if guarantee == "exactly_once"
        else set(received) == set(expected)
    )
    if not same:
        (tmp_path / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        (tmp_path / "expected.jsonl").write_text("".join(line + "\n" for line in expected))
        (tmp_path / "received.jsonl").write_text("".join(line + "\n" for line in received))
        summary = diff_summary(expected, received, input_partitions(bootstrap, run.input))
        say(summary)
        timeline = "\n".join(run.timeline)
        pytest.fail(
            f"{guarantee}: the escalations differ from offline replay\n{summary}\n"
            f"timeline:\n{timeline}\nworker logs: {[str(p) for p in run.worker_logs()]}; "
            f"events.jsonl, expected.jsonl and received.jsonl in {tmp_path}"
        )
    if guarantee == "exactly_once":
        assert markers > 0, "no transaction marker: escalations were not written in transactions"
    assert caught_up, "the workers never committed the whole input"
    assert settled, "a transaction on the escalations topic stayed open"
    assert dead == [], [dict(r.headers()) for r in dead[:3]]
    assert all(status == 0 for status in statuses.values()), statuses
    assert run.crashes == [], "workers exited by themselves:\n" + "\n".join(run.crashes)
    kinds = Counter(orjson.loads(line)["kind"] for line in expected)
    assert len(kinds) >= 7, kinds  # the log exercised (nearly) every kind
    say(f"{guarantee}: {repeats} repeated escalations")
