"""The two consumers of docs/integration.md, "Wire format" (kept in ``examples/`` and included
there verbatim: ``tests/ops/test_docs.py``), run as a hospital team would run them: copied out
of the repository, each in its own process, against a real broker and a real schema registry.
Each prints exactly the escalations stepcare wrote, in its framing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from streams.formats.avro import encode_escalation
from streams.kafka.registry import framing_for
from streams.kafka.settings import Settings
from tests.integration.test_broker_smoke import create_topic

REPO = Path(__file__).resolve().parents[2]
ESCALATIONS = REPO / "examples" / "three-patients.escalations.jsonl"
SCHEMA = REPO / "schemas" / "org.stepcare.Escalation.avsc"


def escalations() -> list[dict[str, Any]]:
    return [json.loads(line) for line in ESCALATIONS.read_text().splitlines() if line.strip()]


def printed(escalation: dict[str, Any]) -> str:
    """What the examples print: id, kind, and due_by as the datetime Avro gives (or None)."""
    due_by = escalation["due_by"]
    due = None if due_by is None else datetime.fromisoformat(due_by.replace("Z", "+00:00"))
    return f"{escalation['escalation_id']} {escalation['kind']} {due}"


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[str]) -> None:
    create_topic(bootstrap, topic)
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in zip(keys, values, strict=True):
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def run_example(name: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    copy = tmp_path / name
    shutil.copy(REPO / "examples" / name, copy)
    return subprocess.run(
        [sys.executable, str(copy), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_documented_consumers_read_what_stepcare_writes_in_each_framing(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, schema_registry_url: str
) -> None:
    records = escalations()
    keys = [e["patient_id"] for e in records]
    expected = [printed(e) for e in records]
    assert len(expected) == 17

    single = f"{topic_name}.soe"
    produce(kafka_bootstrap, single, [encode_escalation(e) for e in records], keys)
    registry = f"{topic_name}.registry"
    settings = Settings(wire_format="registry", schema_registry_url=schema_registry_url)
    framing = framing_for(settings, events_topic=f"{topic_name}.in", escalations_topic=registry)
    header = framing.escalation_header  # 00 + the id stepcare registered under <topic>-value
    produce(kafka_bootstrap, registry, [encode_escalation(e, header) for e in records], keys)

    shutil.copy(SCHEMA, tmp_path / SCHEMA.name)
    soe = run_example("consume_single_object.py", tmp_path, kafka_bootstrap, single, SCHEMA.name)
    assert soe.returncode == 0, soe.stderr
    assert soe.stdout.splitlines() == expected

    stock = run_example("consume_registry.py", tmp_path, kafka_bootstrap, registry,
                        schema_registry_url)  # fmt: skip
    assert stock.returncode == 0, stock.stderr
    assert stock.stdout.splitlines() == expected

    # The single-object consumer refuses the other framing rather than skip it (a topic of
    # its own: the examples' group has read the others).
    mixed = f"{topic_name}.mixed"
    produce(kafka_bootstrap, mixed, [encode_escalation(records[0], header)], keys[:1])
    other = run_example("consume_single_object.py", tmp_path, kafka_bootstrap, mixed,
                        SCHEMA.name)  # fmt: skip
    assert (other.returncode, other.stdout) == (1, "")
    assert other.stderr == f"offset 0: not {SCHEMA.name} in single-object encoding\n"
