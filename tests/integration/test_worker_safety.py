"""Issue 12 ("Safe to deploy"), the worker's part, on a real broker with real workers.

- its web server listens only where STEPCARE_WEB_HOST says and serves /metrics, /health and
  /ready, nothing of faust's (no table, no router, no statistics);
- a bad record whose dead letter would be bigger than the producer sends (huge key, thousands
  of headers, a huge header) is dead-lettered all the same, cut to fit, with its coordinates;
- SIGTERM stops the worker within its documented time;
- live events older than STEPCARE_MAX_EVENT_AGE_DAYS are dead-lettered;
- a producer cannot forge the worker's error.*/source.* headers.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from streams.clinical.events import DAY_MS, format_time
from streams.formats.avro import encode_event
from tests.integration.workers import Deployment, WorkerProcess, read_topic


def listening(port: int) -> set[tuple[str, int]]:
    """The (address, port) of every listening TCP socket on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for name, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(name).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            if width == 8:
                found.add((".".join(str(b) for b in words[0]), port))
            else:
                found.add((b"".join(words).hex(), port))
    return found


def get(port: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def enrolled(patient_id: str, event_id: str, at: str = "2024-03-05T09:00:00Z") -> dict:
    return {"event_id": event_id, "patient_id": patient_id, "occurred_at": at,
            "type": "ENROLLED"}  # fmt: skip


# -- 1. no patient data on the network -------------------------------------------------------------

FAUST_VIEWS = [
    "/table/patients/p-web-1/", "/table/patients/p-web-1", "/table/", "/table/patients/",
    "/router/", "/router/patients/p-web-1/", "/", "/stats/", "/assignment/", "/graph/",
    "/performance/", "/nothing-here/",
]  # fmt: skip


@pytest.mark.attack(
    "GET /table/patients/<id>/, /router/, /, /stats/, /graph/ ... from another interface, "
    "with WEB_BIND=0.0.0.0 and APP_WEB_*_ENABLED=1 in the worker's environment",
    "listens on STEPCARE_WEB_HOST only; every path but /metrics /health /ready is 404",
)
def test_the_web_server_listens_where_configured_and_serves_no_patient_data(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    stray = {f"APP_WEB_{name}_ENABLED": "1" for name in ("TABLES", "ROUTER", "STATS", "GRAPH")}
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path, WEB_BIND="0.0.0.0", **stray,
                            APP_WEB_METRICS_ENABLED="1")  # fmt: skip
    port = deployment.env["STEPCARE_WEB_PORT"]
    worker = deployment.worker("worker")
    try:
        deployment.publish([enrolled("p-web-1", "w-1")])
        assert len(deployment.escalations_read(expected=1)) == 1  # p-web-1 is in the table
        time.sleep(2)  # its state written (at_least_once: after the escalation's ack)
        sockets = listening(int(port))
        answers = {path: get(port, path)[0] for path in FAUST_VIEWS}
        own = {path: get(port, path) for path in ("/metrics", "/health", "/ready")}
    finally:
        assert worker.stop() == 0
    assert sockets == {("127.0.0.1", int(port))}
    assert answers == dict.fromkeys(FAUST_VIEWS, 404)
    assert {path: status for path, (status, _) in own.items()} == dict.fromkeys(own, 200)
    assert b"stepcare_events_total" in own["/metrics"][1]
    assert orjson.loads(own["/health"][1]) == {"status": "alive"}


# -- 3. one record cannot flood the schedulers ------------------------------------------------


@pytest.mark.attack(
    "live worker: ENROLLED dated year 0024, and one dated 400 days ago",
    "both dead-lettered (invalid-event, the age rule); no escalation; 300 days ago: applied",
)
def test_a_live_worker_dead_letters_events_older_than_the_age_limit(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    now = time.time_ns() // 1_000_000
    old = {
        "p-year-24": enrolled("p-year-24", "a-1", "0024-03-05T09:00:00Z"),
        "p-400-days": enrolled("p-400-days", "a-2", format_time(now - 400 * DAY_MS)),
    }
    recent = enrolled("p-300-days", "a-3", format_time(now - 300 * DAY_MS))
    deployment = Deployment(
        kafka_bootstrap, topic_name, tmp_path, STEPCARE_CLOCK="wall", STEPCARE_TICK_INTERVAL="1"
    )  # default STEPCARE_MAX_EVENT_AGE_DAYS
    worker = deployment.worker("worker")
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        for event in [*old.values(), recent]:
            producer.produce(deployment.input, key=event["patient_id"].encode(),
                             value=encode_event(event))  # fmt: skip
        assert producer.flush(30) == 0
        dead = read_topic(kafka_bootstrap, deployment.dead_letters, expected=2)
        escalations = [orjson.loads(e) for e in deployment.escalations_read(expected=2)]
        time.sleep(3)  # ticks every second: whatever the old events could cause has come
        escalations = [orjson.loads(e) for e in deployment.escalations_read()]
    finally:
        assert worker.stop() == 0
    by_key = {r.key().decode(): dict(r.headers()) for r in dead}
    assert len(dead) == 2 and by_key.keys() == old.keys()
    assert {h["error.reason"] for h in by_key.values()} == {b"invalid-event"}
    assert by_key["p-400-days"]["error.detail"] == (
        b"occurred_at is more than 365 days before the wall clock (STEPCARE_MAX_EVENT_AGE_DAYS)"
    )
    assert {e["patient_id"] for e in escalations} == {"p-300-days"}
    assert ("INITIAL_VISIT_DUE", recent["occurred_at"]) in {
        (e["kind"], e["occurred_at"]) for e in escalations
    }


# -- 2. nothing lost on a bad record ---------------------------------------------------------------

BIG = 1_200_000  # bytes: more than the worker's producer sends (1,000,000) and the broker's default
OWN_HEADERS = ["error.reason", "error.detail", "source.topic", "source.partition", "source.offset"]


def create_input_topic(bootstrap: str, deployment: Deployment, max_bytes: int) -> None:
    """The input topic, taking records up to ``max_bytes`` (the worker creates the others)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(deployment.input, Deployment.PARTITIONS, 1,
                     config={"max.message.bytes": str(max_bytes)})  # fmt: skip
    admin.create_topics([topic])[deployment.input].result(30)


def oversized_records() -> list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]]:
    """(name, key, value, headers) of bad records whose dead letters cannot be sent whole."""
    event = encode_event(enrolled("p-big", "b-1"))
    return [
        ("huge key", b"k" * BIG, event, []),  # the key is not the event's patient_id
        (
            "thousands of headers",
            b"p-big",
            b"not avro",
            [(f"trace-{i:05d}", b"t" * 200) for i in range(6000)],
        ),
        ("a huge header", b"p-big", b"not avro", [("a", b"x"), ("blob", b"h" * BIG), ("z", b"y")]),
        ("huge key, value and header", b"k" * BIG, b"v" * BIG, [("blob", b"h" * BIG)]),
        ("no key, a huge tombstone header", None, None, [("blob", b"h" * BIG)]),
        ("neither key nor value", None, None, [("trace", b"t")]),
    ]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.attack(
    "records the broker takes whose dead letter would exceed the producer's maximum request "
    "(1 MB key, 6000 headers, a 1 MB header)",
    "each dead-lettered with its coordinates, cut to fit and saying what was cut; the next "
    "valid events processed",
)
def test_a_bad_record_too_big_to_dead_letter_whole_is_dead_lettered_cut_to_fit(
    guarantee: str, kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path,
                            STEPCARE_PROCESSING_GUARANTEE=guarantee)  # fmt: skip
    create_input_topic(kafka_bootstrap, deployment, 8 * BIG)
    worker = deployment.worker("worker")
    bad = oversized_records()
    coordinates: list[tuple[int, int]] = []
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True,
                             "message.max.bytes": 8 * BIG})  # fmt: skip

        def delivered(error: KafkaError | None, msg: Any) -> None:
            assert error is None, error
            coordinates.append((msg.partition(), msg.offset()))

        for index, (_, key, value, headers) in enumerate(bad):
            producer.produce(deployment.input, key=key, value=value, headers=headers, partition=0,
                             on_delivery=delivered)  # fmt: skip
            after = enrolled(f"p-after-{index}", f"n-{index}")  # next on the same partition
            producer.produce(deployment.input, key=after["patient_id"].encode(), partition=0,
                             value=encode_event(after))  # fmt: skip
        assert producer.flush(60) == 0
        dead = read_topic(kafka_bootstrap, deployment.dead_letters, expected=len(bad))
        escalations = deployment.escalations_read(expected=len(bad))
        time.sleep(2)
        assert worker.alive(), worker.tail()
        more = read_topic(kafka_bootstrap, deployment.dead_letters)
        crashes = worker.log.read_text(errors="replace").count("Crashed reason=")
    finally:
        assert worker.stop() == 0
    assert crashes == 0
    assert len(more) == len(dead) == len(bad)
    assert {orjson.loads(e)["patient_id"] for e in escalations} == {
        f"p-after-{i}" for i in range(len(bad))
    }
    found = {}
    for record in dead:
        names = [name for name, _ in record.headers()]
        headers = dict(record.headers())
        assert names[:5] == OWN_HEADERS  # the worker's own first
        assert headers["source.topic"] == deployment.input.encode()
        where = (int(headers["source.partition"]), int(headers["source.offset"]))
        found[where] = (record, names, headers)
        assert (
            len(record.key() or b"")
            + len(record.value() or b"")
            + sum(len(n) + len(v or b"") for n, v in record.headers())
            < 1_000_000
        )
    assert sorted(found) == sorted(coordinates)
    by_name = {name: found[where] for (name, *_), where in zip(bad, coordinates, strict=True)}

    record, names, headers = by_name["huge key"]
    assert (record.key(), record.value()) == (None, bad[0][2])
    assert headers["error.reason"] == b"invalid-event"
    assert headers["error.cut"] == f"key ({BIG} bytes)".encode()

    record, names, headers = by_name["thousands of headers"]
    assert (record.key(), record.value()) == (b"p-big", b"not avro")
    assert headers["error.reason"] == b"not-single-object-encoding"
    kept = names[6:]
    assert 0 < len(kept) < 6000 and kept == [f"trace-{i:05d}" for i in range(len(kept))]
    cut = f"headers {len(kept) + 1}-6000 of 6000 ({(6000 - len(kept)) * 211} bytes)"
    assert headers["error.cut"] == cut.encode()

    record, names, headers = by_name["a huge header"]
    assert names[5:] == ["error.cut", "a", "z"]
    assert headers["error.cut"] == f"header 2 of 3 ({4 + BIG} bytes)".encode()

    record, names, headers = by_name["huge key, value and header"]
    assert (record.key(), record.value(), names[5:]) == (b"", None, ["error.cut"])
    cut = f"key ({BIG} bytes); value ({BIG} bytes); header 1 of 1 ({4 + BIG} bytes)"
    assert headers["error.cut"] == cut.encode()

    record, names, headers = by_name["no key, a huge tombstone header"]
    assert (record.key(), record.value(), names[5:]) == (b"", None, ["error.cut"])

    record, names, headers = by_name["neither key nor value"]
    assert (record.key(), record.value(), names[5:]) == (b"", None, ["trace"])


STOP_TIME = 30  # seconds: what README ("Stopping") promises for SIGTERM


def stop_in_time(worker: WorkerProcess) -> tuple[int | None, float]:
    """SIGTERM; the exit status (None: still running after STOP_TIME, then killed), seconds."""
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    try:
        status = worker.proc.wait(timeout=STOP_TIME)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        worker.proc.wait()
        status = None
    return status, time.monotonic() - started


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.attack(
    "the dead-letter topic refuses the dead letters (max.message.bytes=100); then SIGTERM",
    "at least once: resent, SIGTERM stops it within 30 s (exit 0); exactly once: the worker "
    "stops (exit 1); the record is dead-lettered after a restart",
)
def test_sigterm_stops_a_worker_whose_event_is_never_acknowledged(
    guarantee: str, kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path,
                            STEPCARE_PROCESSING_GUARANTEE=guarantee)  # fmt: skip
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    tiny = NewTopic(deployment.dead_letters, Deployment.PARTITIONS, 1,
                    config={"max.message.bytes": "100"})  # fmt: skip
    admin.create_topics([tiny])[deployment.dead_letters].result(30)
    worker = deployment.worker("first")
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        producer.produce(deployment.input, key=b"p-stuck", value=b"not avro", partition=1)
        assert producer.flush(30) == 0
        log = worker.log
        deadline = time.monotonic() + 60
        while b"dead letter: not-single-object-encoding" not in log.read_bytes():
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.5)
        time.sleep(3)  # the broker has refused it by now
        assert read_topic(kafka_bootstrap, deployment.dead_letters) == []
    finally:
        # exactly_once: the worker stopped by itself (its transaction would commit the event's
        # offset without the dead letter); at least once it sends it again until SIGTERM.
        stopped = worker.proc.poll()
        status, seconds = stop_in_time(worker)
    if guarantee == "exactly_once":
        assert (stopped, status) == (1, 1), (seconds, worker.tail())
        assert b"the broker refused its" in worker.log.read_bytes()
    else:
        assert (stopped, status) == (None, 0), (seconds, worker.tail())

    # Nothing lost: the record's offset was not committed; with the topic fixed it is dead-lettered.
    entry = ConfigEntry("max.message.bytes", "1048588",
                        incremental_operation=AlterConfigOpType.SET)  # fmt: skip
    fixed = ConfigResource("topic", deployment.dead_letters, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([fixed]).values():
        future.result(30)
    second = deployment.worker("second")
    try:
        dead = read_topic(kafka_bootstrap, deployment.dead_letters, expected=1, timeout=60)
    finally:
        assert second.stop() == 0
    assert [(r.key(), r.value(), dict(r.headers())["source.offset"]) for r in dead] == [
        (b"p-stuck", b"not avro", b"0")
    ]


# -- 9. dead letters cannot be spoofed ---------------------------------------------------------


@pytest.mark.attack(
    "a bad record carrying forged error.reason, error.detail, source.offset headers",
    "the dead letter's first headers are the worker's true ones; the forged ones follow, "
    "renamed original.*",
)
def test_forged_dead_letter_headers_are_renamed_behind_the_workers_own(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    forged = [("error.reason", b"none"), ("source.offset", b"999"), ("trace-id", b"t-1"),
              ("error.detail", b"all fine"), ("source.topic", b"elsewhere")]  # fmt: skip
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    worker = deployment.worker("worker")
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        producer.produce(deployment.input, key=b"p-forged", value=b"{}", headers=forged,
                         partition=2)  # fmt: skip
        assert producer.flush(30) == 0
        (dead,) = read_topic(kafka_bootstrap, deployment.dead_letters, expected=1)
    finally:
        assert worker.stop() == 0
    assert (dead.key(), dead.value()) == (b"p-forged", b"{}")
    assert dead.headers() == [
        ("error.reason", b"not-single-object-encoding"),
        (
            "error.detail",
            b"not Avro single-object encoding: 2 bytes, expected c301 first "
            b"(or 00: the registry framing)",
        ),
        ("source.topic", deployment.input.encode()),
        ("source.partition", b"2"),
        ("source.offset", b"0"),
        ("original.error.reason", b"none"),
        ("original.source.offset", b"999"),
        ("trace-id", b"t-1"),
        ("original.error.detail", b"all fine"),
        ("original.source.topic", b"elsewhere"),
    ]
