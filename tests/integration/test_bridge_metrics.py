"""A live bridge's /metrics on a real broker, after a known input: exact counts.

``stepcare bridge fhir-out`` (a Kafka-reading bridge) gets the example's 17 escalations and 3
records it refuses (2 not Avro, 1 of a kind it does not know), on a 2-partition topic;
``stepcare bridge mllp-in`` gets ADT messages over MLLP. Scraped once everything is on its
topics: published, dead_lettered by reason, ignored, ACKs by code, and the consumer lag 0 on
every partition (the group has committed all it read)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from hl7.client import MLLPClient

from streams.formats.avro import encode_escalation
from tests.integration.test_bridges import EXAMPLE_ESCALATIONS, WAIT, create_topics
from tests.integration.test_mllp import Listener, msa
from tests.integration.test_worker_metrics import scrape
from tests.integration.workers import REPO, free_port, read_topic
from tests.unit.interfaces.test_mllp import body


def values(metrics: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in metrics.items() if n == name}


def test_fhir_out_counts_exactly_what_it_published_and_dead_lettered(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    source, target, dlq = (f"{topic_name}.{t}" for t in ("esc", "fhir", "dlq"))
    create_topics(kafka_bootstrap, [source], partitions=2)
    escalations = [orjson.loads(line) for line in EXAMPLE_ESCALATIONS.read_text().splitlines()]
    refused = [b"not avro", b"neither",
               encode_escalation({**escalations[0], "kind": "VISIT_TELEPATHY_DUE"})]  # fmt: skip
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for n, value in enumerate([encode_escalation(e) for e in escalations] + refused):
        producer.produce(source, key=b"p-x", value=value, partition=n % 2)
    assert producer.flush(WAIT) == 0

    port = free_port()
    log = tmp_path / "fhir-out.log"
    command = [sys.executable, "-m", "streams.cli", "bridge", "fhir-out", "--from-topic", source,
               "--to-topic", target, "--dead-letter-topic", dlq, "--bootstrap-servers",
               kafka_bootstrap, "--group", f"bridge-{uuid.uuid4().hex}",
               "--metrics-port", str(port)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        deadline = time.monotonic() + WAIT
        while not {target, dlq} <= set(admin.list_topics(timeout=WAIT).topics):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)  # the bridge makes its topics at start: reading before sees none
        assert len(read_topic(kafka_bootstrap, target, expected=len(escalations))) == 17
        assert len(read_topic(kafka_bootstrap, dlq, expected=len(refused))) == 3
        deadline = time.monotonic() + WAIT
        while True:  # the lag is measured every 5 s
            metrics = scrape(str(port))
            lag = values(metrics, "stepcare_bridge_consumer_lag", "partition")
            if lag == {"0": 0, "1": 0} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0, log.read_text()
    assert values(metrics, "stepcare_bridge_records_total", "outcome") == {
        "published": 17, "ignored": 0, "dead_lettered": 3,
    }  # fmt: skip
    assert values(metrics, "stepcare_bridge_dead_letters_total", "reason") == {
        "not-single-object-encoding": 2, "escalation-unknown-kind": 1,
    }  # fmt: skip
    assert lag == {"0": 0, "1": 0}
    assert {dict(labels)["bridge"] for (_, labels) in metrics if dict(labels).get("bridge")} == {
        "fhir-out"
    }
    last = values(metrics, "stepcare_bridge_last_record_timestamp_seconds", "bridge")
    assert time.time() - 60 < last["fhir-out"] <= time.time()
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log.read_text()
    assert "p-x" not in str(list(metrics))  # no patient in a label


def test_mllp_in_counts_messages_and_acks(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    server = Listener(kafka_bootstrap, tmp_path, "--metrics-port", str(port))
    try:
        client = MLLPClient("127.0.0.1", server.port)
        client.socket.settimeout(WAIT)
        codes = []
        for name in ["adt-a01.hl7", "adt-a08.hl7", "malformed-no-evn.hl7", "adt-a03.hl7"]:
            codes.append(msa(client.send_message(body(name).decode()))[0])
        client.close()
        metrics = scrape(str(port))
    finally:
        assert server.stop() == 0
    assert codes == ["AA", "AA", "AE", "AA"]
    assert values(metrics, "stepcare_bridge_records_total", "outcome") == {
        "published": 2, "ignored": 1, "dead_lettered": 1,
    }  # fmt: skip
    assert values(metrics, "stepcare_bridge_dead_letters_total", "reason") == {"hl7-malformed": 1}
    assert values(metrics, "stepcare_mllp_acks_total", "code") == {"AA": 3, "AE": 1, "AR": 0}
    assert values(metrics, "stepcare_bridge_consumer_lag", "partition") == {}
