"""Reprocessing through Kafka: a replay run reads the published history into its own topic,
and a subscriber's offsets can be moved back to a datetime to receive escalations again."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.analysis.replay import replay
from streams.clinical.events import parse_time
from streams.clinical.policy import builtin_policy
from streams.formats.avro import decode_escalation
from tests.integration.workers import REPO, Deployment, read_topic

EXAMPLE = REPO / "examples/three-patients.jsonl"
UNTIL = "2024-09-01T00:00:00Z"


def offline(policy: str) -> list[str]:
    output = io.StringIO()
    replay(
        EXAMPLE.read_text().splitlines(), builtin_policy(policy), output, until=parse_time(UNTIL)
    )
    return output.getvalue().splitlines()


def test_replay_runs_write_their_own_topic_with_what_offline_replay_writes(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    events = [orjson.loads(line) for line in EXAMPLE.read_text().splitlines()]
    live = deployment.worker("live")  # the production worker creates the topics and runs on
    try:
        deployment.publish(events, until=UNTIL)
        live_escalations = deployment.escalations_read(expected=len(offline("step-pc-2024")))
    finally:
        assert live.stop() == 0

    # An audit run with the same policy, and a what-if with the early-care policy.
    for run, policy in (("audit-1", "step-pc-2024"), ("what-if", "early-pc")):
        worker = deployment.worker(run, "--replay", run, "--policy", policy)
        try:
            topic = f"{deployment.escalations}.replay.{run}"
            expected = offline(policy)
            received = deployment.escalations_read(expected=len(expected), topic=topic)
        finally:
            assert worker.stop() == 0
        assert Counter(received) == Counter(expected)
        assert "stepcare-test" in (tmp_path / f"{run}.log").read_text()
    # Scheduling systems saw only the live run: nothing was added to the live topic.
    assert Counter(deployment.escalations_read()) == Counter(live_escalations)
    assert offline("early-pc") != offline("step-pc-2024")


def test_offsets_move_a_subscriber_back_to_a_datetime(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    worker = deployment.worker("live")
    try:
        deployment.publish([orjson.loads(line) for line in EXAMPLE.read_text().splitlines()],
                           until=UNTIL)  # fmt: skip
        escalations = deployment.escalations_read(expected=len(offline("step-pc-2024")))
    finally:
        assert worker.stop() == 0
    group = f"scheduling-{uuid.uuid4().hex[:6]}"
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([deployment.escalations])
    read = 0
    while read < len(escalations):  # the scheduling system has read (and committed) everything
        msg = consumer.poll(1)
        if msg is not None and msg.error() is None:
            read += 1
    consumer.commit(asynchronous=False)
    consumer.close()

    moment = "2024-06-01T00:00:00Z"
    command = [sys.executable, "-m", "streams.cli", "offsets", "--group", group,
               "--topic", deployment.escalations, "--to-datetime", moment]  # fmt: skip
    env = {**deployment.env}
    dry = subprocess.run(command, cwd=REPO, env=env | _path(), capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stderr
    assert committed(kafka_bootstrap, group, deployment.escalations) == end_offsets(
        kafka_bootstrap, deployment.escalations
    )
    done = subprocess.run([*command, "--execute"], cwd=REPO, env=env | _path(),
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr

    # Everything from the datetime on is delivered again (and deduplicated by escalation_id).
    offsets = committed(kafka_bootstrap, group, deployment.escalations)
    again = [
        decode_escalation(m.value())
        for m in read_topic(kafka_bootstrap, deployment.escalations)
        if m.offset() >= offsets[m.partition()]
    ]
    record_times = [m.timestamp()[1] for m in read_topic(kafka_bootstrap, deployment.escalations)]
    assert len(again) == sum(t >= parse_time(moment) for t in record_times)
    assert again and all(parse_time(e["occurred_at"]) >= parse_time(moment) for e in again)


def _path() -> dict[str, str]:
    import os

    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    partitions = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic).topics[topic]
    tps = [TopicPartition(topic, p) for p in partitions.partitions]
    # An empty partition has no committed offset (-1001): it is at its end, 0.
    result = {tp.partition: max(tp.offset, 0) for tp in consumer.committed(tps, timeout=30)}
    consumer.close()
    return result


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    partitions = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic).topics[topic]
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1]
        for p in partitions.partitions
    }
    consumer.close()
    return ends
