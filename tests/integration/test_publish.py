"""`stepcare publish` (DESIGN §8) through the real command, against a real broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.analysis.replay import canonical_json
from streams.clinical.events import parse_time
from streams.formats.avro import decode_event, write_avro_log
from streams.kafka.publish import PublishSummary, TokenBucket

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "three-patients.jsonl"
LINES = EXAMPLE.read_text().splitlines()
UNTIL = "2024-09-01T00:00:00Z"
NOT_JSON = '{"event_id": "e-99", "patient_id":'
OUT_OF_RANGE = json.dumps(
    {"event_id": "e-98", "patient_id": "p-001", "occurred_at": "2024-03-02T00:00:00Z",
     "type": "SURVEY_SUBMITTED", "survey": {"instrument": "FACT-L", "responses": {"GP1": 7}}}
)  # fmt: skip


def create_topic(bootstrap: str, name: str, partitions: int, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
    admin.create_topics([topic])[name].result(timeout=30)


def topic_exists(bootstrap: str, name: str) -> bool:
    return name in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics


def publish(bootstrap: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "streams.cli",
        "publish",
        "--bootstrap-servers",
        bootstrap,
        *args,
    ]
    return subprocess.run(cmd, input=stdin, capture_output=True, cwd=REPO, timeout=120, check=False)


def read_partitions(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Message]]:
    """Every record of every partition, up to the end offsets, in partition order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}"})
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
        for p in range(partitions)
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: dict[int, list[Message]] = {p: [] for p in range(partitions)}
    try:
        while sum(map(len, records.values())) < sum(ends.values()):
            msg = consumer.poll(10)
            assert msg is not None, f"read {records} of {ends}"
            assert msg.error() is None, msg.error()
            records[msg.partition()].append(msg)
    finally:
        consumer.close()
    return records


def _by_patient(lines: list[str]) -> dict[str, list[str]]:
    """Canonical JSON of each valid line, per patient, in file order."""
    out: dict[str, list[str]] = {}
    for line in lines:
        obj = orjson.loads(line)
        out.setdefault(obj["patient_id"], []).append(canonical_json(obj))
    return out


def _check_published_example(bootstrap: str, topic: str) -> list[Message]:
    """The topic holds exactly the example's events, as the contract says; returns them."""
    records = read_partitions(bootstrap, topic, 4)
    everything = [m for msgs in records.values() for m in msgs]
    assert len(everything) == len(LINES)

    seen: dict[str, list[str]] = {}
    for partition, msgs in records.items():
        for msg in msgs:
            event = decode_event(msg.value())
            assert msg.key() == event["patient_id"].encode()
            assert msg.timestamp() == (TIMESTAMP_CREATE_TIME, parse_time(event["occurred_at"]))
            # the partition aiokafka (the worker) and the Java client would pick
            assert partition == DefaultPartitioner()(msg.key(), [0, 1, 2, 3], [0, 1, 2, 3])
            seen.setdefault(event["patient_id"], []).append(canonical_json(event))
    assert seen == _by_patient(LINES)  # same events, each patient's in file order
    return everything


def _summary(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.startswith("published ")][-1]


def test_publish_sends_the_valid_events_and_reports_the_bad_lines(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, 4)
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join([*LINES[:3], NOT_JSON, *LINES[3:10], OUT_OF_RANGE, *LINES[10:]]))

    done = publish(kafka_bootstrap, "--input", str(log), "--topic", topic_name)

    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert lines[0].startswith("line 4: not JSON: ")
    assert lines[1] == "line 12: item GP1: the response is outside 0-4"
    assert re.fullmatch(
        rf"published 24 events to {re.escape(topic_name)} in \d+\.\d s \(\d+ events/s\); "
        r"2 rejected, 0 not delivered",
        lines[2],
    )
    assert len(lines) == 3
    _check_published_example(kafka_bootstrap, topic_name)


def test_publish_reads_stdin_and_avro_containers_alike(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    log = tmp_path / "log.avro"
    write_avro_log(log, [orjson.loads(line) for line in LINES])
    for suffix, args, stdin in [
        ("avro", ["--input", str(log)], None),
        ("stdin", ["--input", "-"], EXAMPLE.read_bytes()),
    ]:
        topic = f"{topic_name}.{suffix}"
        create_topic(kafka_bootstrap, topic, 4)

        done = publish(kafka_bootstrap, *args, "--topic", topic, stdin=stdin)

        assert done.returncode == 0, done.stderr
        assert _summary(done.stderr.decode()).startswith(f"published 24 events to {topic} in ")
        _check_published_example(kafka_bootstrap, topic)


def test_until_appends_one_clock_tick_to_every_partition(
    kafka_bootstrap: str, topic_name: str
) -> None:
    create_topic(kafka_bootstrap, topic_name, 4)

    done = publish(
        kafka_bootstrap, "--input", str(EXAMPLE), "--topic", topic_name, "--until", UNTIL
    )

    assert done.returncode == 0, done.stderr
    assert _summary(done.stderr.decode()).endswith("; CLOCK_TICK on 4 partitions")
    records = read_partitions(kafka_bootstrap, topic_name, 4)
    tick = {"event_id": "", "patient_id": "", "occurred_at": UNTIL, "type": "CLOCK_TICK"}
    for msgs in records.values():
        ticks = [m for m in msgs if decode_event(m.value())["type"] == "CLOCK_TICK"]
        assert len(ticks) == 1
        assert msgs[-1] is ticks[0]  # after every event of the log
        assert decode_event(ticks[0].value()) == tick
        assert ticks[0].key() == b""
        assert ticks[0].timestamp() == (TIMESTAMP_CREATE_TIME, parse_time(UNTIL))
    assert sum(map(len, records.values())) == len(LINES) + 4


def test_a_missing_topic_is_one_line_and_exit_2_and_is_not_created(
    kafka_bootstrap: str, topic_name: str
) -> None:
    done = publish(kafka_bootstrap, "--input", str(EXAMPLE), "--topic", topic_name)

    assert done.returncode == 2
    assert done.stderr.decode() == (
        f"stepcare: topic {topic_name} does not exist at {kafka_bootstrap} "
        "(publish does not create it)\n"
    )
    assert not topic_exists(kafka_bootstrap, topic_name)


def test_strict_stops_at_the_first_bad_line_with_exit_2(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, 4)
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join([*LINES[:3], OUT_OF_RANGE, *LINES[3:]]))

    done = publish(kafka_bootstrap, "--input", str(log), "--topic", topic_name, "--strict")

    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert lines[0].startswith(f"published 3 events to {topic_name} in ")
    assert lines[0].endswith("; 1 rejected, 0 not delivered")
    assert lines[1:] == ["stepcare: line 4: item GP1: the response is outside 0-4"]
    records = read_partitions(kafka_bootstrap, topic_name, 4)
    assert sum(map(len, records.values())) == 3


def test_a_record_the_broker_refuses_is_reported_and_exits_1(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    # The broker refuses timestamps more than an hour ahead of its clock.
    create_topic(kafka_bootstrap, topic_name, 1, **{"message.timestamp.after.max.ms": "3600000"})
    future = json.dumps(
        {"event_id": "e-x", "patient_id": "p-001", "occurred_at": "2099-01-01T00:00:00Z",
         "type": "ENROLLED"}
    )  # fmt: skip
    log = tmp_path / "log.jsonl"
    log.write_text(future + "\n")

    done = publish(kafka_bootstrap, "--input", str(log), "--topic", topic_name)

    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert lines[0].startswith("line 1: not delivered: ")
    assert lines[1].endswith("; 0 rejected, 1 not delivered")
    assert lines[1].startswith(f"published 0 events to {topic_name}")
    assert lines[2].startswith("stepcare: 1 records not delivered (1 x ")
    assert len(lines) == 3


def test_rate_limits_events_per_second(kafka_bootstrap: str, topic_name: str) -> None:
    create_topic(kafka_bootstrap, topic_name, 4)

    done = publish(kafka_bootstrap, "--input", str(EXAMPLE), "--topic", topic_name, "--rate", "40")

    assert done.returncode == 0, done.stderr
    seconds = float(re.search(r" in (\d+\.\d) s ", _summary(done.stderr.decode()))[1])
    assert 0.5 <= seconds < 5  # 24 events, a burst of 4, then 40/s: at least 0.5 s
    _check_published_example(kafka_bootstrap, topic_name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "tomorrow"], "stepcare: --until: timestamp is not RFC 3339 (e.g. "),
        (["--rate", "0"], "stepcare: --rate: 0 is not a positive number of events/s"),
        (["--input", "/nonexistent.jsonl"], "stepcare: cannot read /nonexistent.jsonl: "),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = publish("127.0.0.1:1", "--input", str(EXAMPLE), *args)

    assert done.returncode == 2
    assert done.stderr.decode().startswith(message)
    assert done.stderr.decode().count("\n") == 1


# -- the parts, without a broker ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(40, clock=clock)  # burst: 4

    assert [bucket.take() for _ in range(4)] == [0.0] * 4
    assert bucket.take() == pytest.approx(1 / 40)
    assert bucket.take() == pytest.approx(2 / 40)  # waits add up while the caller sleeps
    clock.now += 2 / 40
    assert bucket.take() == pytest.approx(1 / 40)
    clock.now += 10  # idle: the bucket refills to its burst, not more
    assert [bucket.take() for _ in range(4)] == [0.0] * 4
    assert bucket.take() > 0


def test_token_bucket_of_a_slow_rate_sends_one_at_a_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, clock=clock)

    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="rate must be more than 0"):
        TokenBucket(0)


def test_the_summary_line() -> None:
    summary = PublishSummary("t", published=24, rejected=2, seconds=0.5, ticks=4)
    assert summary.text() == (
        "published 24 events to t in 0.5 s (48 events/s); 2 rejected, 0 not delivered; "
        "CLOCK_TICK on 4 partitions"
    )


def test_from_and_to_publish_only_a_time_range(kafka_bootstrap: str, topic_name: str) -> None:
    create_topic(kafka_bootstrap, topic_name, 2)
    since, before = "2024-03-01T00:00:00Z", "2024-04-15T00:00:00Z"
    inside = [
        json.loads(line) for line in LINES
        if parse_time(since) <= parse_time(json.loads(line)["occurred_at"]) < parse_time(before)
    ]  # fmt: skip
    assert 0 < len(inside) < len(LINES)

    done = publish(
        kafka_bootstrap, "--input", str(EXAMPLE), "--topic", topic_name,
        "--from", since, "--to", before,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert _summary(done.stderr.decode()).endswith(
        f"; {len(LINES) - len(inside)} outside the time range"
    )
    records = read_partitions(kafka_bootstrap, topic_name, 2)
    published = sorted(decode_event(m.value())["event_id"] for ms in records.values() for m in ms)
    assert published == sorted(e["event_id"] for e in inside)


@pytest.mark.attack(
    "publish a log with a 2 MB event in the middle",
    "that line rejected (number, size); every other event published; exit 0",
)
def test_an_event_too_large_for_the_broker_is_rejected_and_the_rest_published(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, 4)
    huge = orjson.loads(LINES[0])
    huge |= {"event_id": "e-huge", "attributes": {"note": "x" * 2_000_000}}
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join([*LINES[:5], json.dumps(huge), *LINES[5:]]) + "\n")

    done = publish(kafka_bootstrap, "--input", str(log), "--topic", topic_name)

    assert done.returncode == 0, done.stderr
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"line 6: event too large for the broker \(\d{7} bytes encoded, the producer's limit "
        r"is 1000000\): not published",
        lines[0],
    )
    assert re.fullmatch(
        rf"published {len(LINES)} events to {re.escape(topic_name)} in \d+\.\d s "
        r"\(\d+ events/s\); 1 rejected, 0 not delivered",
        lines[1],
    )
    _check_published_example(kafka_bootstrap, topic_name)


@pytest.mark.attack("publish a truncated Avro container", "exit 2, one line naming the record")
def test_a_damaged_container_stops_publish_with_one_line(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, 4)
    whole = tmp_path / "whole.avro"
    write_avro_log(whole, [orjson.loads(line) for line in LINES] * 40)
    cut = tmp_path / "cut.avro"
    cut.write_bytes(whole.read_bytes()[:-300])

    done = publish(kafka_bootstrap, "--input", str(cut), "--topic", topic_name)

    assert done.returncode == 2, done.stderr
    err = done.stderr.decode()
    assert err.count("\n") == 1
    assert re.fullmatch(
        rf"stepcare: {re.escape(str(cut))}: record \d+: corrupt Avro data: .*\n", err
    )
