"""A live worker's /metrics, /health and /ready after a known log: exact counts."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from streams.clinical.engine import Outcome
from streams.clinical.events import EventType, event_from_json, parse_time
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import builtin_policy
from streams.formats.avro import encode_event
from streams.worker.metrics import care_step_label
from tests.integration.workers import REPO, Deployment, read_topic

UNTIL = "2024-09-01T00:00:00Z"


def scrape(port: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def get(port: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def test_metrics_count_exactly_what_the_worker_did(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    lines = (REPO / "examples/three-patients.jsonl").read_text().splitlines()
    events = [orjson.loads(line) for line in lines if line.strip()]
    # What the engine does with each event, by type and outcome, and what it escalates.
    engine = PartitionEngine(builtin_policy("step-pc-2024"))
    outcomes: Counter[tuple[str, str]] = Counter()
    kinds: Counter[str] = Counter()
    for obj in events:
        processed = engine.process(event_from_json(obj))
        outcomes[obj["type"], str(processed.outcome)] += 1
        kinds.update(str(e.kind) for e in processed.escalations)
    kinds.update(str(e.kind) for e in engine.advance_to(parse_time(UNTIL)))
    steps = Counter(care_step_label(state) for state in engine.states.values())

    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    port = deployment.env["STEPCARE_WEB_PORT"]
    worker = deployment.worker("worker")
    try:
        assert get(port, "/health") == (200, {"status": "alive"})
        status, body = get(port, "/ready")
        assert status == 200 and body["recovered"] is True
        assert sorted(body["partitions"]) == list(range(Deployment.PARTITIONS))
        deployment.publish(events, until=UNTIL)
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(deployment.input, key=b"p-x", value=b"not avro")
        bad = encode_event({**events[1], "patient_id": "p-y", "type": "TELEPORTED"})
        producer.produce(deployment.input, key=b"p-y", value=bad)
        assert producer.flush(30) == 0
        read_topic(kafka_bootstrap, deployment.escalations, expected=sum(kinds.values()))
        read_topic(kafka_bootstrap, deployment.dead_letters, expected=2)
        deadline = time.monotonic() + 30
        while True:  # the lag gauge is measured every few seconds
            metrics = scrape(port)
            lag = sum(v for (n, _), v in metrics.items() if n == "stepcare_consumer_lag")
            if lag == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        assert worker.stop() == 0

    def value(name: str, **labels: str) -> float:
        return metrics[name, tuple(sorted(labels.items()))]

    for event_type in EventType:
        if event_type is EventType.CLOCK_TICK:
            continue
        for outcome in Outcome:
            expected = outcomes[str(event_type), str(outcome)]
            assert value("stepcare_events_total", type=event_type, outcome=outcome) == expected
    assert value("stepcare_events_total", type="unreadable", outcome="dead_lettered") == 2
    assert value("stepcare_dead_letters_total", reason="not-single-object-encoding") == 1
    assert value("stepcare_dead_letters_total", reason="invalid-event") == 1
    assert value("stepcare_dead_letters_total", reason="unknown-schema") == 0
    for kind, count in kinds.items():
        assert value("stepcare_escalations_total", kind=kind) == count
    assert value("stepcare_clock_ticks_total") == Deployment.PARTITIONS  # one --until per partition
    for step in ("not_enrolled", "1", "2", "ended"):
        assert value("stepcare_patients", care_step=step) == steps[step]
    assert value("stepcare_event_time_lag_seconds_count") == len(events)
    last = max(parse_time(e["occurred_at"]) for e in events) / 1000
    assert value("stepcare_last_event_timestamp_seconds") == last
    assert lag == 0
    assert value("stepcare_build_info", **{
        "version": "0.1.0", "faust_version": "0.15.3",
        "python_version": __import__("platform").python_version(),
        "policy_id": "step-pc-2024", "policy_version": "1",
    }) == 1  # fmt: skip
    assert not any("p-00" in str(labels) for (_, labels) in metrics)  # no patient in a label
