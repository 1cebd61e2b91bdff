"""A live worker under hostile input (issue "Hostile input"): garbage, huge records, times at
both ends of the calendar, a duplicate flood, out-of-order events, a tombstone and a record
without a key, interleaved with valid events. The worker keeps running and stays ready, every
bad record is in the dead-letter topic with its reason, every valid event is processed exactly
as ``stepcare replay`` processes its partition, and the metrics count every record once.

The defects found here (B9-B11) are fixed and pinned by the last test; see
tests/unit/cli/test_hostile.py for the others."""

from __future__ import annotations

import io
import random
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from streams.analysis.replay import replay
from streams.clinical.events import EventError, event_from_json, format_time, parse_time
from streams.clinical.policy import builtin_policy
from streams.formats.avro import CodecError, decode_event, encode_event
from streams.worker.metrics import DEAD_LETTER_REASONS
from tests.integration.workers import REPO, Deployment, read_topic
from tests.stories import form

PARTITIONS = Deployment.PARTITIONS
TIME_TRAVEL = 3  # the partition of the patients at both ends of the calendar, and only theirs
FAR_FUTURE = "9999-01-02T00:00:00Z"
TICKS = {0: "2024-09-01T00:00:00Z", 1: "2024-09-01T00:00:00Z", 2: "2024-09-01T00:00:00Z",
         TIME_TRAVEL: "9999-03-01T00:00:00Z"}  # fmt: skip
BROKER_MAX_MESSAGE_BYTES = 1_048_588  # message.max.bytes, the broker's default
WORKER_MAX_REQUEST_BYTES = 1_000_000  # faust's producer_max_request_size, the default


def ev(event_id: str, patient: str, at: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "patient_id": patient, "occurred_at": at, "type": kind, **extra}


def survey(event_id: str, patient: str, at: str, total: int) -> dict[str, Any]:
    responses = form(total)
    return ev(event_id, patient, at, "SURVEY_SUBMITTED",
              survey={"instrument": "FACT-L", "version": "4", "responses": responses})  # fmt: skip


def big_survey(size: int) -> dict[str, Any]:
    """A survey of about ``size`` bytes in Avro: a form and thousands of unknown item codes."""
    obj = survey("h-2", "p-huge", "2024-03-02T00:00:00Z", 100)
    obj["survey"]["responses"].update({f"Y{i:07d}": None for i in range((size - 600) // 10)})
    assert size - 1000 < len(encode_event(obj)) <= size
    return obj


def classify(key: bytes | None, value: bytes | None) -> str | None:
    """The dead-letter reason the worker must give this record, or None if it is valid."""
    try:
        obj = decode_event(value)  # type: ignore[arg-type]
    except CodecError as exc:
        return exc.reason
    try:
        event = event_from_json(obj)
        patient = key.decode() if key else ""
    except (EventError, UnicodeDecodeError):
        return "invalid-event"
    return None if patient == event.patient_id else "invalid-event"


class Sender:
    """Produces records to chosen partitions and remembers each one, in partition order."""

    def __init__(self, bootstrap: str, topic: str, **config: Any) -> None:
        self.topic = topic
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, **config}
        )
        self.records: list[tuple[int, bytes | None, bytes | None]] = []
        self.offsets: dict[int, tuple[int, int]] = {}  # record index -> (partition, offset)

    def send(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        index = len(self.records)

        def delivered(error: KafkaError | None, msg: Any) -> None:
            assert error is None, error
            self.offsets[index] = (msg.partition(), msg.offset())

        while True:
            try:
                self.producer.produce(self.topic, key=key, value=value, partition=partition,
                                      on_delivery=delivered)  # fmt: skip
                break
            except BufferError:
                self.producer.poll(0.1)
        self.records.append((partition, key, value))

    def event(self, partition: int, obj: dict[str, Any], times: int = 1) -> None:
        value = encode_event(obj)
        for _ in range(times):
            self.send(partition, obj["patient_id"].encode(), value)

    def ticks(self) -> None:
        """A CLOCK_TICK closes every partition, as `stepcare publish --until` does."""
        for partition, at in TICKS.items():
            self.send(partition, b"", encode_event(ev("", "", at, "CLOCK_TICK")))

    def flush(self) -> None:
        assert self.producer.flush(60) == 0


def offline(records: list[tuple[int, bytes | None, bytes | None]]) -> tuple[list[str], Counter]:
    """What ``stepcare replay`` writes for each partition's valid records, and their outcomes,
    partition by partition (each has its own engine and clock, as in the worker)."""
    policy = builtin_policy("step-pc-2024")
    escalations: list[str] = []
    outcomes: Counter[str] = Counter()
    for partition in range(PARTITIONS):
        lines = [
            orjson.dumps(decode_event(value)).decode()
            for p, key, value in records
            if p == partition and classify(key, value) is None
        ]
        output = io.StringIO()
        summary, _ = replay(lines, policy, output, rejects=io.StringIO())
        escalations += output.getvalue().splitlines()
        outcomes.update({str(k): v for k, v in summary.outcomes.items()})
    return escalations, outcomes


def get(port: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


_SAMPLE = re.compile(r"^(stepcare_\w+)(?:\{(.*)\})? (\S+)$")


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric ``name`` in a Prometheus text exposition."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match[1] == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            found.append((labels, float(match[3])))
    return found


def by_label(text: str, name: str, label: str) -> Counter[str]:
    """The samples of ``name`` summed by one label (zeros left out)."""
    sums: Counter[str] = Counter()
    for labels, value in samples(text, name):
        sums[labels[label]] += int(value)
    return +sums


def hostile_mix(sender: Sender, rng: random.Random) -> None:
    """Everything at once, bad records interleaved with good ones."""
    good = [orjson.loads(line) for line in (REPO / "examples/three-patients.jsonl").open()]
    home = {"p-001": 0, "p-002": 1, "p-003": 2}
    valid_header = encode_event(good[1])[:10]

    def garbage(n: int) -> None:
        for _ in range(n):
            key = rng.choice([None, b"", b"p-001", rng.randbytes(8)])
            kind = rng.randrange(4)
            if kind == 0:  # random bytes
                value = rng.randbytes(rng.randrange(0, 300))
            elif kind == 1:  # a valid header, a garbage body
                value = valid_header + rng.randbytes(rng.randrange(0, 120))
            elif kind == 2:  # an unknown fingerprint before a valid body
                value = b"\xc3\x01" + rng.randbytes(8) + encode_event(good[1])[10:]
            else:  # a valid event, damaged
                data = bytearray(encode_event(rng.choice(good)))
                data[rng.randrange(10, len(data))] = rng.randrange(256)
                value = bytes(data)
            sender.send(rng.randrange(PARTITIONS), key, value)

    # The example log, 200 records of garbage woven in; then the same patients' odd cases.
    assert len(good) == 24
    for obj in good:
        sender.event(home[obj["patient_id"]], obj)
        garbage(8)
    garbage(8)

    # A duplicate flood: the same event 500 times.
    sender.event(0, ev("flood-1", "p-flood", "2024-04-01T08:00:00Z", "ENROLLED"), times=500)
    # Out of order for one patient: enrolled after two later surveys, then an old one.
    for obj in [
        survey("o-3", "p-ooo", "2024-05-20T09:00:00Z", 85),
        ev("o-1", "p-ooo", "2024-05-01T09:00:00Z", "ENROLLED"),
        survey("o-4", "p-ooo", "2024-05-10T09:00:00Z", 110),
        survey("o-2", "p-ooo", "2024-04-20T09:00:00Z", 120),
        survey("o-5", "p-ooo", "2024-06-01T09:00:00Z", 95),
    ]:
        sender.event(1, obj)
    # A survey from year 1 for a new patient of an ordinary partition: held, clock untouched.
    sender.event(2, survey("old-1", "p-old", "0001-01-01T00:00:00Z", 90))
    # Both ends of the calendar, on a partition of their own: held, applied, ignored; the
    # partition's clock goes to year 9999. (An escalation dated there is defect B10, below.)
    # (The 2024 event first: a clock before 1970 crashes the agent, defect B11, below.)
    for obj in [
        ev("a-0", "p-ancient", "2024-01-01T00:00:00Z", "HOSPITAL_ADMITTED"),
        survey("a-1", "p-ancient", "0001-01-01T00:00:00Z", 100),
        ev("a-2", "p-ancient", "0001-01-05T00:00:00.001Z", "HOSPITAL_ADMITTED"),
        survey("f-1", "p-future", FAR_FUTURE, 100),
        ev("f-2", "p-future", "9999-01-01T00:00:00Z", "HOSPITAL_DISCHARGED"),
    ]:
        sender.event(TIME_TRAVEL, obj)
    # Huge surveys: 3000 unknown item codes; and one of just under 1 MB, the most that the
    # worker can dead-letter (a bigger one the broker takes is defect B9, below).
    huge = survey("h-1", "p-huge", "2024-03-02T00:00:00Z", 100)
    huge["survey"]["responses"].update({f"X{i}": i % 5 for i in range(3000)})
    sender.event(2, huge)
    sender.event(2, big_survey(990_000))
    # A tombstone, and a valid event without a key.
    sender.send(1, b"p-002", None)
    sender.send(0, None, encode_event(ev("nk-1", "p-nokey", "2024-03-03T00:00:00Z", "ENROLLED")))


def test_a_live_worker_survives_a_hostile_mix_and_processes_every_valid_event(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    port = deployment.env["STEPCARE_WEB_PORT"]
    worker = deployment.worker("worker")
    try:
        sender = Sender(kafka_bootstrap, deployment.input)
        hostile_mix(sender, random.Random(1))
        sender.ticks()
        sender.flush()

        # Bigger than the broker takes: the producer refuses it, saying why (also when told
        # to try: the broker refuses it then).
        value = encode_event(ev("h-3", "p-huge", "2024-03-02T00:00:00Z", "ENROLLED",
                                source="x" * BROKER_MAX_MESSAGE_BYTES))  # fmt: skip
        with pytest.raises(KafkaException) as refused:
            sender.producer.produce(deployment.input, key=b"p-huge", value=value, partition=2)
        insisting = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 2_000_000})
        errors: list[KafkaError] = []
        insisting.produce(deployment.input, key=b"p-huge", value=value, partition=2,
                          on_delivery=lambda error, msg: errors.append(error))  # fmt: skip
        assert insisting.flush(60) == 0

        bad = [(p, k or b"", v, reason) for p, k, v in sender.records
               if (reason := classify(k, v)) is not None]  # fmt: skip
        expected, outcomes = offline(sender.records)
        dead = read_topic(kafka_bootstrap, deployment.dead_letters, expected=len(bad))
        received = deployment.escalations_read(expected=len(expected))
        time.sleep(2)  # anything more would have come by now
        assert worker.alive(), worker.tail()
        ready = get(port, "/ready")
        metrics = get(port, "/metrics")[1]
        more = deployment.escalations_read()
    finally:
        assert worker.stop() == 0

    assert refused.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert "too large" in refused.value.args[0].str()
    assert [e.code() for e in errors] == [KafkaError.MSG_SIZE_TOO_LARGE]

    # -- the worker is alive and ready: it holds every partition
    assert ready[0] == 200, ready
    assert sorted(orjson.loads(ready[1])["partitions"]) == list(range(PARTITIONS))

    # -- every invalid record is in the dead-letter topic, as it came, with its reason
    reasons = Counter(r[3] for r in bad)
    assert reasons.keys() <= set(DEAD_LETTER_REASONS) - {"processing-error"}
    assert reasons["invalid-event"] >= 4 and sum(reasons.values()) >= 200, reasons
    assert len(dead) == len(bad)
    headers = [dict(r.headers()) for r in dead]
    assert Counter(
        (int(h["source.partition"]), r.key() or b"", r.value(), h["error.reason"].decode())
        for r, h in zip(dead, headers, strict=True)
    ) == Counter(bad)
    assert {h["source.topic"] for h in headers} == {deployment.input.encode()}
    assert len({(h["source.partition"], h["source.offset"]) for h in headers}) == len(bad)

    # -- every valid event was processed, as replay processes its partition
    assert Counter(received) == Counter(expected)
    assert Counter(more) == Counter(expected)  # nothing more came
    patients = {orjson.loads(line)["patient_id"] for line in expected}
    assert patients == {"p-001", "p-002", "p-003", "p-flood", "p-ooo"}

    # -- the metrics count every record once, with the outcomes replay gives
    ticks = sum(1 for _, k, v in sender.records
                if classify(k, v) is None and decode_event(v)["type"] == "CLOCK_TICK")  # fmt: skip
    assert ticks >= len(TICKS) - 1  # (one fix of B4 refuses the tick of year 9999)
    events = by_label(metrics, "stepcare_events_total", "outcome")
    assert sum(events.values()) == len(sender.records) - ticks
    assert events == outcomes + Counter({"dead_lettered": len(bad)})
    assert outcomes["duplicate"] >= 499 and outcomes["held"] >= 3
    assert by_label(metrics, "stepcare_dead_letters_total", "reason") == reasons
    assert samples(metrics, "stepcare_clock_ticks_total") == [({}, ticks)]
    # the far-future survey is the latest event the worker has seen (if it is valid: one fix of
    # defect B4 refuses events in the last years of the calendar); clock ticks do not count
    latest = max(parse_time(decode_event(v)["occurred_at"]) for _, k, v in sender.records
                 if k and classify(k, v) is None)  # fmt: skip
    far = encode_event(survey("f-1", "p-future", FAR_FUTURE, 100))
    assert latest == parse_time(FAR_FUTURE) or classify(b"p-future", far) == "invalid-event"
    last = samples(metrics, "stepcare_last_event_timestamp_seconds")
    assert last == [({}, latest / 1000)]


# -- Defects found by fuzzing, fixed (this test pins the fixes) ------------------------------------


def test_records_whose_output_kafka_refuses_neither_crash_the_agent_nor_vanish(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """Each record is applied (its escalation published) or dead-lettered, within seconds.

    B10: the broker refuses a record timestamp more than ``log.message.timestamp.after.max.ms``
    (1 h, Kafka 4) ahead of its clock, and ``Monitor.publish`` stamps each escalation with its
    ``occurred_at``: a feed whose clock is two hours fast (a local time sent as UTC) is enough.
    B11: ``Monitor.handle`` stores a partition's clock with ``int.to_bytes(8, "big")``, which
    refuses a clock before 1970. B9: the broker takes records up to 1,048,588 bytes; the
    worker's producer sends at most 1,000,000, so a bad record between the two cannot be
    dead-lettered. Each time ``Monitor.handle`` raises, faust restarts the agent five seconds
    later (no partition is processed meanwhile) and the record is skipped: its escalations
    (B10) or its dead letter (B9) never come, its metrics are not counted."""
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    worker = deployment.worker("worker")
    now = time.time_ns() // 1_000_000
    triggers = {  # partition: the record, and nothing after it on its partition
        0: ev("t-1", "p-fast-clock", format_time(now + 2 * 3600_000), "ENROLLED"),  # B10
        1: ev("t-2", "p-ancient", "0001-01-01T00:00:00Z", "ENROLLED"),  # B11
        3: ev("t-3", "p-future", "9999-01-01T00:00:00Z", "ENROLLED"),  # B10
    }
    try:
        sender = Sender(kafka_bootstrap, deployment.input,
                        **{"message.max.bytes": BROKER_MAX_MESSAGE_BYTES})  # fmt: skip
        for partition, obj in triggers.items():
            sender.event(partition, obj)
        big = big_survey(WORKER_MAX_REQUEST_BYTES + 30_000)  # B9
        sender.event(2, big)
        sender.event(2, ev("t-4", "p-after", "2024-06-01T00:00:00Z", "ENROLLED"))
        sender.flush()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            escalations = [orjson.loads(line) for line in deployment.escalations_read()]
            dead = read_topic(kafka_bootstrap, deployment.dead_letters)
            if len(escalations) + len(dead) >= 5:
                break
            time.sleep(1)
        crashes = re.findall(r"Crashed reason=(\w+)", worker.log.read_text(errors="replace"))
    finally:
        assert worker.stop() == 0

    published = {e["trigger_event_id"] for e in escalations}
    dead_offsets = {
        (int(dict(r.headers())["source.partition"]), int(dict(r.headers())["source.offset"]))
        for r in dead
    }
    offsets = {sender.records[i][2]: where for i, where in sender.offsets.items()}
    lost = [
        obj["event_id"] for obj in [*triggers.values(), big]
        if obj["event_id"] not in published and offsets[encode_event(obj)] not in dead_offsets
    ]  # fmt: skip
    problems = {"agent crashes": crashes, "neither published nor dead-lettered": lost}
    assert not crashes and not lost and "t-4" in published, problems
