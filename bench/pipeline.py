"""The per-record work every Kafka pipeline of the benchmark does, outside any framework.

Shared by ``bench/raw_loop.py`` (confluent-kafka, the project's venv) and
``bench/quix_peer.py`` (Quix Streams, a separate venv): neither may import ``streams.worker``
(it imports faust, absent from the Quix venv); the worker's helpers they share live in
faust-free modules (``streams.formats.avro.cloudevent_headers``).
"""

from __future__ import annotations

import json
import sys
import time

from streams.clinical.escalations import Escalation
from streams.clinical.events import PatientEvent, event_from_json
from streams.formats.avro import decode_event, encode_escalation


def read_event(key: bytes | None, value: bytes) -> PatientEvent:
    """Decode (Avro SOE) and validate a record as the worker does; ValueError if it is bad."""
    event = event_from_json(decode_event(value))
    if (key or b"").decode() != event.patient_id:
        raise ValueError("the record key is not the event's patient_id")
    return event


def escalation_value(escalation: Escalation) -> bytes:
    return encode_escalation(escalation.to_json())


def started() -> None:
    """Tell the benchmark (stdout) that the first record arrived: it starts its CPU meter."""
    print("started", flush=True)


def report(result: dict) -> None:
    """The result, as one JSON line on stdout (the benchmark reads the last line)."""
    print(json.dumps(result), flush=True)


def say(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


now = time.time
