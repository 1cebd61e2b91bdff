"""The live hospital bridges on a real broker, end to end (issue 8, "Bridges").

A small cohort (``examples/three-patients.jsonl``) arrives as a hospital sends it: its surveys as
FHIR QuestionnaireResponses, its admissions and discharges as MLLP-framed HL7 v2 ADT messages
(both keyed by the MRN, as an interface engine would), and its other events (enrolment,
treatment, visits, death) pseudonymized by another feed straight onto the event topic. Invalid
samples (``tests/data/fhir``, ``tests/data/hl7``) and messages to ignore come first. The bridges
run as ``stepcare bridge fhir-in|hl7-in|fhir-out`` processes through the real CLI, with a real
``stepcare worker`` (4 partitions, event clock) between them; ``stepcare publish --until`` with an
empty log closes the clocks at the end.

The inputs are fed in time order, each feed's run only once the previous one is on the event
topic, as they happen in a hospital: so the worker meets each partition's events in the order
``stepcare replay`` meets them in the time-merged log that the offline ``stepcare bridge
fhir-import`` and ``hl7-import`` write from the same inputs. The test then checks that the event
topic holds exactly that log; that the worker's escalations are exactly those of ``stepcare
replay`` on it; that ``fhir-out`` writes exactly ``escalation_to_bundle`` of each escalation, as a
valid R4 transaction Bundle with the escalation's headers; that every invalid input is in its
dead-letter topic, unchanged, with its reason; and that no source identifier (MRN, FHIR resource
id, MSH-10 control id, names) is in any byte of the event, escalation or Bundle topics, in a
dead letter's headers, or in a bridge's log.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from itertools import groupby
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from fhir.resources.R4B.bundle import Bundle

from streams.analysis.replay import canonical_json
from streams.cli import main
from streams.clinical.events import parse_time
from streams.formats.avro import decode_escalation, decode_event, encode_escalation, encode_event
from streams.interfaces import fhir, hl7
from streams.interfaces.live import FHIR_JSON, BridgeError, LiveBridge, fhir_in_record
from streams.interfaces.pseudonym import SECRET_ENV, SECRET_FILE_ENV, Pseudonymizer
from streams.kafka.client import producer_config
from streams.kafka.settings import Settings
from tests.integration.workers import REPO, Deployment, read_topic
from tests.unit.interfaces.test_fhir import (
    INVALID_SAMPLES,
    MRN_SYSTEM,
    SECRET,
    as_adt,
    as_questionnaire_response,
)
from tests.unit.interfaces.test_fhir import SOURCE_IDS as FHIR_SOURCE_IDS
from tests.unit.interfaces.test_hl7 import MALFORMED
from tests.unit.interfaces.test_hl7 import SOURCE_IDS as HL7_SOURCE_IDS
from tests.unit.kafka.test_asyncapi import DOC_PATH, header_validator

EXAMPLE = REPO / "examples" / "three-patients.jsonl"
EXAMPLE_ESCALATIONS = REPO / "examples" / "three-patients.escalations.jsonl"
TICK = "2024-09-01T00:00:00Z"  # the --until of the shipped example escalations
FHIR_DATA = REPO / "tests" / "data" / "fhir"
HL7_DATA = REPO / "tests" / "data" / "hl7"
IGNORED = {  # valid HL7 that maps to no event: counted, committed, not dead-lettered
    "adt-a08.hl7": "hl7-ignored-trigger ADT^A08",
    "oru-r01.hl7": "hl7-not-adt ORU^R01",
    "adt-a03-outpatient.hl7": "hl7-not-inpatient ADT^A03 patient class O",
}
NOT_JSON = b'{"resourceType": "QuestionnaireResponse", "id": '
WAIT = 30.0  # seconds for any one step


def cohort() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in EXAMPLE.read_text().splitlines()]


def source_ids(events: list[dict[str, Any]]) -> set[bytes]:
    """Every source identifier of the cohort's messages and of the samples: none may leave."""
    ids = {f"MRN-{e['patient_id']}" for e in events}
    ids |= {f"QR-{e['event_id']}" for e in events} | {f"CTRL-{e['event_id']}" for e in events}
    ids |= {"MRN-", "CTRL-", "QR-", *FHIR_SOURCE_IDS, *HL7_SOURCE_IDS}
    return {i.encode() for i in ids}


def feeds(pz: Pseudonymizer) -> list[tuple[str, bytes, Any]]:
    """(feed, key, value) per event of the cohort, in its (time) order: "fhir" and "hl7" values
    are what the hospital sends, "events" values PatientEvents another feed already made."""
    out: list[tuple[str, bytes, Any]] = []
    for index, event in enumerate(cohort()):
        mrn = f"MRN-{event['patient_id']}".encode()
        if event["type"] == "SURVEY_SUBMITTED":
            out.append(("fhir", mrn, orjson.dumps(as_questionnaire_response(event, index))))
        elif event["type"] in ("HOSPITAL_ADMITTED", "HOSPITAL_DISCHARGED"):
            out.append(("hl7", mrn, hl7.mllp_frame(as_adt(event))))
        else:
            patient_id = pz.patient_id(MRN_SYSTEM, mrn.decode())
            out.append(("events", patient_id.encode(), {**event, "patient_id": patient_id}))
    return out


def offline_log(inputs: list[tuple[str, bytes, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """The PatientEvent log of the same inputs, offline: ``stepcare bridge fhir-import`` and
    ``hl7-import``, plus the other feed's events, merged by time (stable)."""
    responses, adt = tmp_path / "responses.ndjson", tmp_path / "adt.hl7"
    responses.write_bytes(b"".join(v + b"\n" for feed, _, v in inputs if feed == "fhir"))
    adt.write_bytes(b"".join(v for feed, _, v in inputs if feed == "hl7"))
    log: list[dict[str, Any]] = []
    for action, source in (("fhir-import", responses), ("hl7-import", adt)):
        out = tmp_path / f"{action}.jsonl"
        assert (
            main(["bridge", action, "--strict", "--input", str(source), "--output", str(out)]) == 0
        )
        log += [orjson.loads(line) for line in out.read_text().splitlines()]
    log += [value for feed, _, value in inputs if feed == "events"]
    return sorted(log, key=lambda e: parse_time(e["occurred_at"]))


def offline_escalations(log: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    """What ``stepcare replay --until TICK`` writes for the log: canonical JSON lines."""
    path, out = tmp_path / "merged.jsonl", tmp_path / "replayed.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in log))
    assert main(["replay", "--input", str(path), "--output", str(out), "--until", TICK]) == 0
    return out.read_text().splitlines()


def normal(event: dict[str, Any]) -> str:
    """An event as the event topic renders it (empty optional parts left out)."""
    return canonical_json(decode_event(encode_event(event)))


def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions) for n in names])
    for future in futures.values():
        future.result(WAIT)


class TopicCount:
    """Reads every partition of a topic from its start; waits until it holds ``n`` records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                                  "enable.auto.commit": False})  # fmt: skip
        partitions = self.consumer.list_topics(topic, timeout=WAIT).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.count = 0

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.count < n:
            assert time.monotonic() < deadline, f"{self.topic}: {self.count} records, not {n}"
            msg = self.consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                self.count += 1

    def close(self) -> None:
        self.consumer.close()


class Bridge:
    """``stepcare bridge NAME`` as a process of the real CLI; its stderr in a log file."""

    def __init__(self, name: str, bootstrap: str, tmp_path: Path, *options: str) -> None:
        self.log = tmp_path / f"bridge-{name}.log"
        env = {k: v for k, v in os.environ.items() if k != SECRET_FILE_ENV}
        env |= {SECRET_ENV: SECRET.decode(), "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "streams.cli", "bridge", name, *options]
        if "--metrics-port" not in options:  # no fixed port: tests may run side by side
            command += ["--metrics-port", "0"]
        command += ["--bootstrap-servers", bootstrap, "--group", f"bridge-{uuid.uuid4().hex}"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"bridge did not stop:\n{self.text()}") from None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def summary(self) -> str:
        return [line for line in self.text().splitlines() if " read, " in line][-1]


def all_bytes(record: Any) -> bytes:
    headers = b"".join(k.encode() + v for k, v in record.headers() or [])
    return (record.key() or b"") + (record.value() or b"") + headers


def test_fhir_and_hl7_in_worker_and_fhir_out_agree_with_the_offline_pipeline(
    kafka_bootstrap: str,
    topic_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    inputs = feeds(Pseudonymizer(SECRET))
    log = offline_log(inputs, tmp_path)
    expected = offline_escalations(log, tmp_path)
    assert len(expected) == len(EXAMPLE_ESCALATIONS.read_text().splitlines()) == 17

    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    fhir_topic, hl7_topic = f"{topic_name}.fhir", f"{topic_name}.hl7"
    bundles, bundle_dlq = f"{topic_name}.bundles", f"{topic_name}.bundles.dlq"
    create_topics(kafka_bootstrap, [fhir_topic, hl7_topic])  # one feed, one ordered stream
    worker = deployment.worker("worker")  # creates the event, escalation and dead-letter topics
    to_events = ["--to-topic", deployment.input, "--dead-letter-topic", deployment.dead_letters]
    bridges = {
        "fhir-in": Bridge("fhir-in", kafka_bootstrap, tmp_path, "--from-topic", fhir_topic,
                          *to_events, "--report-every", "2"),
        "hl7-in": Bridge("hl7-in", kafka_bootstrap, tmp_path, "--from-topic", hl7_topic,
                         *to_events, "--timezone", "America/New_York"),
        "fhir-out": Bridge("fhir-out", kafka_bootstrap, tmp_path, "--from-topic",
                           deployment.escalations, "--to-topic", bundles, "--dead-letter-topic",
                           bundle_dlq, "--max-messages", str(len(expected) + 2)),
    }  # fmt: skip
    producer = Producer(producer_config(Settings(), kafka_bootstrap))
    events = TopicCount(kafka_bootstrap, deployment.input)
    try:
        # What must be refused or ignored comes first: it may not hold up the rest.
        invalid: dict[bytes, tuple[str, str, str]] = {}  # value: reason, detail, source topic
        for name, (reason, detail) in INVALID_SAMPLES.items():
            invalid[(FHIR_DATA / name).read_bytes()] = (reason, detail, fhir_topic)
        invalid[NOT_JSON] = ("not-json", "column", fhir_topic)
        for name, detail in MALFORMED.items():
            invalid[(HL7_DATA / name).read_bytes()] = ("hl7-malformed", detail, hl7_topic)
        for value, (_, _, topic) in invalid.items():
            producer.produce(topic, key=b"sample", value=value)
        for name in IGNORED:
            producer.produce(hl7_topic, key=b"sample", value=(HL7_DATA / name).read_bytes())
        assert producer.flush(WAIT) == 0

        # The cohort, in time order; a feed's run once the one before is on the event topic.
        topics = {"fhir": fhir_topic, "hl7": hl7_topic, "events": deployment.input}
        on_topic = 0
        for feed, run in groupby(inputs, key=lambda item: item[0]):
            for _, key, value in run:
                if feed == "events":
                    timestamp = parse_time(value["occurred_at"])
                    producer.produce(topics[feed], key=key, value=encode_event(value),
                                     timestamp=timestamp)  # fmt: skip
                else:
                    producer.produce(topics[feed], key=key, value=value)
                on_topic += 1
            assert producer.flush(WAIT) == 0
            events.wait_for(on_topic)
        deployment.publish([], until=TICK)  # an empty log: CLOCK_TICKs on every partition
        received = read_topic(kafka_bootstrap, deployment.escalations, expected=len(expected))

        # An escalation fhir-out cannot take: not Avro, and a kind it does not know.
        unknown = {**orjson.loads(expected[0]), "kind": "VISIT_TELEPATHY_DUE"}
        broken = [(b"not avro", "not-single-object-encoding"),
                  (encode_escalation(unknown), "escalation-unknown-kind")]  # fmt: skip
        for value, _ in broken:
            producer.produce(deployment.escalations, key=b"p-x", value=value)
        assert producer.flush(WAIT) == 0
        assert bridges["fhir-out"].wait() == 0, bridges["fhir-out"].text()  # --max-messages
        stopped = {name: bridges[name].stop() for name in ("fhir-in", "hl7-in")}
        assert stopped == {"fhir-in": 0, "hl7-in": 0}, [b.text() for b in bridges.values()]
        assert worker.alive()
    finally:
        events.close()
        for bridge in bridges.values():
            if bridge.proc.poll() is None:
                bridge.proc.kill()
        assert worker.stop() == 0

    # The event topic holds exactly the offline log: keys, record timestamps, content.
    on_events = [r for r in read_topic(kafka_bootstrap, deployment.input) if r.key()]
    assert Counter(canonical_json(decode_event(r.value())) for r in on_events) == Counter(
        normal(e) for e in log
    )
    for record in on_events:
        event = decode_event(record.value())
        assert record.key() == event["patient_id"].encode()
        assert record.timestamp()[1] == parse_time(event["occurred_at"])

    # The worker's escalations are those of stepcare replay on that log, and nothing more.
    escalations = [decode_escalation(r.value()) for r in received]
    assert Counter(canonical_json(e) for e in escalations) == Counter(expected)
    assert len(read_topic(kafka_bootstrap, deployment.escalations)) == len(expected) + len(broken)

    # fhir-out: one valid Bundle per escalation, escalation_to_bundle's, with its headers.
    contract = yaml.safe_load(DOC_PATH.read_text())  # the AsyncAPI headers schemas
    bundle_headers = header_validator(contract, "FhirBundleHeaders")
    dead_headers = header_validator(contract, "BridgeDeadLetterHeaders")
    by_value = {r.value(): r for r in received}
    out = read_topic(kafka_bootstrap, bundles)
    assert len(out) == len(expected)
    want = {f"bundle-{e['escalation_id']}": e for e in escalations}
    for record in out:
        bundle = orjson.loads(record.value())
        escalation = want.pop(bundle["id"])
        assert bundle == fhir.escalation_to_bundle(escalation)
        Bundle.model_validate(bundle)
        assert record.key() == escalation["patient_id"].encode()
        assert record.timestamp()[1] == parse_time(escalation["occurred_at"])
        headers = dict(record.headers())
        bundle_headers.validate({k: v.decode() for k, v in headers.items()})
        assert headers["ce_id"] == escalation["escalation_id"].encode()
        assert headers["content-type"] == FHIR_JSON.encode()
        source = by_value[encode_escalation(escalation)]
        assert {k: v for k, v in source.headers() if k != "content-type"} == {
            k: v for k, v in headers.items() if k != "content-type"
        }
    assert want == {}

    # Every refused input is in its dead-letter topic, byte for byte, with its reason.
    dead = read_topic(kafka_bootstrap, deployment.dead_letters)
    assert len(dead) == len(invalid)
    for record in dead:
        reason, detail, topic = invalid[record.value()]
        headers = {k: v.decode() for k, v in record.headers()}
        dead_headers.validate(headers)
        assert (headers["error.reason"], headers["source.topic"]) == (reason, topic)
        assert detail in headers["error.detail"]
        assert headers["source.partition"] == "0" and int(headers["source.offset"]) >= 0
        assert record.key() == b"sample"
    dead_bundles = read_topic(kafka_bootstrap, bundle_dlq)
    assert sorted(
        (r.value(), dict(r.headers())["error.reason"].decode()) for r in dead_bundles
    ) == (sorted(broken))
    for record in dead_bundles:
        dead_headers.validate({k: v.decode() for k, v in record.headers()})
        assert dict(record.headers())["source.topic"] == deployment.escalations.encode()

    # No source identifier anywhere downstream, nor in a dead letter's reason, nor in a log.
    secret_ids = source_ids(cohort())
    downstream = b"".join(
        all_bytes(r)
        for topic in (deployment.input, deployment.escalations, bundles)
        for r in read_topic(kafka_bootstrap, topic)
    )
    assert not [i for i in secret_ids if i in downstream]
    reasons = b"".join(v for r in dead for k, v in r.headers() if k.startswith("error."))
    assert not [i for i in secret_ids if i in reasons]
    for bridge in bridges.values():
        assert not [i for i in secret_ids if i.decode() in bridge.text()], bridge.text()

    # Counted, and said so: the summaries at the end.
    fhir_rejects = len([v for v in invalid.values() if v[2] == fhir_topic])
    surveys = sum(1 for feed, _, _ in inputs if feed == "fhir")
    adts = sum(1 for feed, _, _ in inputs if feed == "hl7")
    fhir_summary = bridges["fhir-in"].summary()
    assert fhir_summary.startswith(
        f"bridge fhir-in: {surveys + fhir_rejects} read, {surveys} written to "
        f"{deployment.input}, {fhir_rejects} dead-lettered ("
    )
    hl7_summary = bridges["hl7-in"].summary()
    hl7_read = adts + len(MALFORMED) + len(IGNORED)
    assert f"{hl7_read} read, {adts} written to {deployment.input}, " in hl7_summary
    assert f"{len(MALFORMED)} dead-lettered ({len(MALFORMED)} hl7-malformed)" in hl7_summary
    assert "3 ignored (" + ", ".join(f"1 {i}" for i in sorted(IGNORED.values())) in hl7_summary
    out_summary = bridges["fhir-out"].summary()
    assert out_summary.startswith(
        f"bridge fhir-out: {len(expected) + 2} read, {len(expected)} written to {bundles}, 2 "
        "dead-lettered (1 escalation-unknown-kind, 1 not-single-object-encoding)"
    )


def test_a_bridge_without_the_pseudonym_secret_stops_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    for name in ("fhir-in", "hl7-in"):
        # No broker is needed: the secret is checked before Kafka is.
        assert main(["bridge", name, "--bootstrap-servers", "127.0.0.1:1"]) == 2
        assert "no pseudonym secret" in capsys.readouterr().err


# -- the loop itself, without a broker: commit only what was acknowledged ------------------------


class FakeRecord:
    def __init__(self, offset: int, value: bytes | None, key: bytes = b"MRN-1") -> None:
        self._offset, self._value, self._key = offset, value, key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return [("origin", b"portal")]


class FakeConsumer:
    def __init__(self, values: list[bytes | None]) -> None:
        self.pending = [FakeRecord(n, v) for n, v in enumerate(values)]
        self.commits: list[list[tuple[str, int, int]]] = []
        self.closed = False

    def subscribe(self, topics: list[str]) -> None:
        assert topics == ["in"]

    def poll(self, timeout: float) -> FakeRecord | None:
        return self.pending.pop(0) if self.pending else None

    def consume(self, num_messages: int, timeout: float) -> list[FakeRecord]:
        taken, self.pending = self.pending[:num_messages], self.pending[num_messages:]
        return taken

    def assignment(self) -> list[TopicPartition]:
        return []  # the lag is not measured

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        self.commits.append([(o.topic, o.partition, o.offset) for o in offsets])

    def close(self) -> None:
        self.closed = True


class FakeError:
    def str(self) -> str:
        return "Broker: Message size too large"


class FakeProducer:
    """Acknowledges on flush, as the broker would; ``fail`` refuses every record."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.queued: list[tuple[str, dict[str, Any]]] = []
        self.acked: list[tuple[str, dict[str, Any]]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.queued.append((topic, kwargs))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        for topic, kwargs in self.queued:
            kwargs["on_delivery"](FakeError() if self.fail else None, None)
            if not self.fail:
                self.acked.append((topic, kwargs))
        self.queued = []
        return 0

    def __len__(self) -> int:
        return len(self.queued)


def run_bridge(
    values: list[bytes | None], producer: FakeProducer, monkeypatch: pytest.MonkeyPatch
) -> tuple[int | Exception, FakeConsumer, LiveBridge]:
    from functools import partial

    import confluent_kafka

    consumer = FakeConsumer(values)
    monkeypatch.setattr(confluent_kafka, "Consumer", lambda config: consumer)
    monkeypatch.setattr(confluent_kafka, "Producer", lambda config: producer)
    convert = partial(fhir_in_record, pseudonymizer=Pseudonymizer(SECRET))
    bridge = LiveBridge(
        "fhir-in", lambda value, headers: convert(value), source="in", target="out",
        dead_letters="dlq", consumer_config={}, producer_config={}, idle_timeout=0.01,
        err=io.StringIO(),
    )  # fmt: skip
    try:
        return bridge.run(), consumer, bridge
    except BridgeError as exc:
        return exc, consumer, bridge


def test_a_batch_is_committed_after_its_records_are_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    complete = (FHIR_DATA / "qr-complete.json").read_bytes()
    amended = (FHIR_DATA / "qr-amended.json").read_bytes()
    producer = FakeProducer()
    status, consumer, bridge = run_bridge([complete, amended, None, b"[1]"], producer, monkeypatch)
    assert status == 0 and consumer.closed
    assert consumer.commits == [[("in", 0, 4)]]  # the next offset to read, once, after the acks
    assert [topic for topic, _ in producer.acked] == ["out", "dlq", "dlq", "dlq"]
    event = producer.acked[0][1]
    assert decode_event(event["value"])["type"] == "SURVEY_SUBMITTED"
    assert event["key"] == decode_event(event["value"])["patient_id"].encode()
    assert event["timestamp"] == parse_time("2024-03-12T18:58:31Z")
    dead = [kwargs for topic, kwargs in producer.acked if topic == "dlq"]
    assert [d["value"] for d in dead] == [amended, None, b"[1]"]
    assert [dict(d["headers"])["error.reason"] for d in dead] == [
        b"fhir-status-amended",
        b"not-json",
        b"fhir-invalid",
    ]
    # stepcare's own headers first (streams/kafka/deadletter.py), then the record's
    assert all(d["key"] == b"MRN-1" and d["headers"][5] == ("origin", b"portal") for d in dead)
    assert [[name for name, _ in d["headers"][:5]] for d in dead] == [
        ["error.reason", "error.detail", "source.topic", "source.partition", "source.offset"]
    ] * 3
    assert bridge.summary().startswith("bridge fhir-in: 4 read, 1 written to out, 3 dead-lettered")


def test_nothing_is_committed_when_a_record_is_not_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    complete = (FHIR_DATA / "qr-complete.json").read_bytes()
    status, consumer, _ = run_bridge([complete], FakeProducer(fail=True), monkeypatch)
    assert isinstance(status, BridgeError) and "Message size too large" in str(status)
    assert consumer.commits == [] and consumer.closed


def test_a_defect_of_an_adapter_is_a_dead_letter_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.interfaces import fhir as fhir_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("MRN-1")  # its message is never shown: it could hold anything

    monkeypatch.setattr(fhir_module, "questionnaire_response_to_event", broken)
    producer = FakeProducer()
    status, consumer, bridge = run_bridge(
        [(FHIR_DATA / "qr-complete.json").read_bytes()], producer, monkeypatch
    )
    assert status == 0 and consumer.commits == [[("in", 0, 1)]]
    ((topic, kwargs),) = producer.acked
    headers = dict(kwargs["headers"])
    assert topic == "dlq" and headers["error.reason"] == b"processing-error"
    assert headers["error.detail"] == b"KeyError in the adapter"
    assert "MRN-1" not in bridge.err.getvalue()  # type: ignore[attr-defined]


@pytest.mark.attack(
    "a record for a live bridge with a 1.2 MB key and a forged error.reason header",
    "dead letter fits the producer (error.cut names the key), own headers first, forged renamed",
)
def test_a_dead_letter_of_a_bridge_always_fits_and_cannot_be_forged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import confluent_kafka

    from streams.kafka.deadletter import _record_size

    record = FakeRecord(0, b"[1]", key=b"k" * 1_200_000)
    record.headers = lambda: [("error.reason", b"none")]  # type: ignore[method-assign]
    consumer, producer = FakeConsumer([]), FakeProducer()
    consumer.pending = [record]
    monkeypatch.setattr(confluent_kafka, "Consumer", lambda config: consumer)
    monkeypatch.setattr(confluent_kafka, "Producer", lambda config: producer)
    bridge = LiveBridge(
        "fhir-in", lambda value, headers: fhir_in_record(value, Pseudonymizer(SECRET)),
        source="in", target="out", dead_letters="dlq", consumer_config={},
        producer_config={}, idle_timeout=0.01, err=io.StringIO(),
    )  # fmt: skip
    assert bridge.run() == 0 and consumer.commits == [[("in", 0, 1)]]
    ((topic, dead),) = producer.acked
    headers = dead["headers"]
    assert topic == "dlq" and dead["key"] is None and dead["value"] == b"[1]"
    assert headers[0] == ("error.reason", b"fhir-invalid")
    assert ("error.cut", b"key (1200000 bytes)") in headers
    assert headers[-1] == ("original.error.reason", b"none")
    assert [h for h in headers if h[0].startswith("source.")] == [
        ("source.topic", b"in"), ("source.partition", b"0"), ("source.offset", b"0")
    ]  # fmt: skip
    assert _record_size(dead["key"], dead["value"], headers) <= bridge.dead_letter_limit
