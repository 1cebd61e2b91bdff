"""``stepcare bridge mllp-in`` on a real broker, fed by a real MLLP client (python-hl7's).

The listener runs as a process of the real CLI (``--port 0``: the port it took is in its start
line). Each test sends what an interface engine sends and checks the ACK of each message
(MSA-1, MSA-2 = the message's MSH-10) against what the topics hold as soon as the ACK is in:
events exactly as ``stepcare bridge hl7-import`` makes them offline from the same messages,
dead letters with their reason, nothing for a broken frame, AR when the broker cannot take the
record. No MRN or message content is in the listener's log.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import hl7 as python_hl7
import orjson
import pytest
import yaml
from confluent_kafka.admin import AdminClient
from hl7.client import MLLPClient

from streams.analysis.replay import canonical_json
from streams.cli import main
from streams.clinical.events import parse_time
from streams.formats.avro import decode_event
from streams.interfaces import hl7
from streams.interfaces.pseudonym import SECRET_ENV, SECRET_FILE_ENV
from tests.integration.test_bridges import HL7_DATA, cohort, normal
from tests.integration.workers import REPO, read_topic
from tests.unit.interfaces.test_fhir import SECRET, as_adt
from tests.unit.kafka.test_asyncapi import DOC_PATH, header_validator

WAIT = 30.0
VALID = ["adt-a01.hl7", "adt-a04.hl7", "adt-a03.hl7", "adt-a03-evn6.hl7", "adt-a03-expired.hl7"]
IGNORED = ["adt-a08.hl7", "oru-r01.hl7", "adt-a03-outpatient.hl7"]
REFUSED = ["malformed-no-evn.hl7", "malformed-no-authority.hl7", "malformed-bad-time.hl7"]


def sample(name: str) -> str:
    """A sample message as the client sends it: segments ending in CR."""
    return "\r".join(s for s in re.split(r"\r\n|\r|\n", (HL7_DATA / name).read_text()) if s) + "\r"


def control_id(message: str) -> str:
    return message.split("\r")[0].split("|")[9]


class Listener:
    """``stepcare bridge mllp-in`` as a process; its stderr in a log file."""

    def __init__(
        self, bootstrap: str, tmp_path: Path, *options: str, env: dict[str, str] | None = None
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.events, self.dead_letters = f"mllp-events-{suffix}", f"mllp-dlq-{suffix}"
        self.log = tmp_path / f"mllp-in-{suffix}.log"
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if k != SECRET_FILE_ENV}
        env |= {SECRET_ENV: SECRET.decode(), "PYTHONPATH": str(REPO), "STEPCARE_PARTITIONS": "3"}
        env |= extra
        command = [sys.executable, "-m", "streams.cli", "bridge", "mllp-in", "--port", "0",
                   "--bootstrap-servers", bootstrap, "--to-topic", self.events,
                   "--dead-letter-topic", self.dead_letters, *options]  # fmt: skip
        if "--metrics-port" not in options:  # no fixed port: tests may run side by side
            command += ["--metrics-port", "0"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + WAIT
        while not (found := re.search(r"listening on 127\.0\.0\.1:(\d+) ", self.text())):
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, f"not listening:\n{self.text()}"
            time.sleep(0.1)
        self.port = int(found[1])

    def client(self) -> MLLPClient:
        client = MLLPClient("127.0.0.1", self.port)
        client.socket.settimeout(WAIT)
        return client

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"mllp-in did not stop:\n{self.text()}") from None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def summary(self) -> str:
        return [line for line in self.text().splitlines() if " received, " in line][-1]


@pytest.fixture
def listener(kafka_bootstrap: str, tmp_path: Path) -> Any:
    started: list[Listener] = []

    def start(*options: str, env: dict[str, str] | None = None) -> Listener:
        started.append(Listener(kafka_bootstrap, tmp_path, *options, env=env))
        return started[-1]

    yield start
    for one in started:
        if one.proc.poll() is None:
            one.proc.kill()
            one.proc.wait()


def msa(ack: bytes) -> list[str]:
    """MSA-1 (code), MSA-2 (control id) and MSA-3 (text) of an ACK, read by python-hl7."""
    assert ack.startswith(b"\x0b") and ack.endswith(b"\x1c\r"), ack
    parsed = python_hl7.parse(ack[1:-2].decode())
    assert str(parsed.segment("MSH")[9]).startswith("ACK")
    segment = parsed.segment("MSA")
    return [str(segment[n]) if len(segment) > n else "" for n in (1, 2, 3)]


def test_messages_on_one_connection_get_aa_after_their_events_exactly_as_hl7_import(
    listener: Any, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())  # for hl7-import, in this process
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    bridge = listener()
    hospital = [as_adt(e) for e in cohort() if e["type"].startswith("HOSPITAL_")]
    messages = hospital + [sample(n) for n in VALID + IGNORED]
    with bridge.client() as client:
        acks = [msa(client.send_message(m)) for m in messages]
        # Each AA came after the broker's acknowledgement: the records are there already.
        records = read_topic(kafka_bootstrap, bridge.events)
    assert acks == [["AA", control_id(m), ""] for m in messages]

    offline_in, offline_out = tmp_path / "adt.hl7", tmp_path / "events.jsonl"
    offline_in.write_bytes(b"".join(hl7.mllp_frame(m) for m in messages))
    assert main(["bridge", "hl7-import", "--strict", "--input", str(offline_in),
                 "--output", str(offline_out)]) == 0  # fmt: skip
    offline = [orjson.loads(line) for line in offline_out.read_text().splitlines()]
    assert len(offline) == len(hospital) + len(VALID)

    live = [decode_event(r.value()) for r in records]
    assert sorted(canonical_json(e) for e in live) == sorted(normal(e) for e in offline)
    for record, event in zip(records, live, strict=True):
        assert record.key() == event["patient_id"].encode()
        assert record.timestamp()[1] == parse_time(event["occurred_at"])
    for patient in {e["patient_id"] for e in offline}:  # one patient's events in order
        assert [canonical_json(e) for e in live if e["patient_id"] == patient] == [
            normal(e) for e in offline if e["patient_id"] == patient
        ]
    assert read_topic(kafka_bootstrap, bridge.dead_letters) == []

    assert bridge.stop() == 0
    summary = bridge.summary()
    assert summary.startswith(
        f"bridge mllp-in: {len(messages)} received, {len(offline)} written to {bridge.events}, "
        "0 dead-lettered, 3 ignored (1 hl7-ignored-trigger ADT^A08, 1 hl7-not-adt ORU^R01, "
        "1 hl7-not-inpatient ADT^A03 patient class O), 0 refused (AR), 1 connections in "
    )
    assert "pseudonym secret ecc658fc" in bridge.text()
    assert "MRN" not in bridge.text() and "TESTPATIENT" not in bridge.text()


def test_a_refused_message_gets_ae_after_its_dead_letter(
    listener: Any, kafka_bootstrap: str
) -> None:
    bridge = listener()
    messages = [sample(n) for n in REFUSED]
    with bridge.client() as client:
        acks = [msa(client.send_message(m)) for m in messages]
        dead = read_topic(kafka_bootstrap, bridge.dead_letters)
    details = []
    for message in messages:
        with pytest.raises(hl7.AdapterError) as refused:
            hl7.adt_to_event(message, hl7_pseudonymizer())
        details.append(refused.value.detail)
    assert [a[:2] for a in acks] == [["AE", control_id(m)] for m in messages]
    assert [a[2] for a in acks] == [f"hl7-malformed: {d.replace('^', ' ')}" for d in details]
    # Dead letters have no key: they are spread over the partitions, in no order.
    assert sorted((d.value(), d.headers()[:3]) for d in dead) == sorted(
        (m.encode(), [("error.reason", b"hl7-malformed"), ("error.detail", d.encode()),
                      ("source.protocol", b"mllp")])
        for m, d in zip(messages, details, strict=True)
    )  # fmt: skip
    contract = header_validator(yaml.safe_load(DOC_PATH.read_text()), "BridgeDeadLetterHeaders")
    for record in dead:  # as docs/asyncapi.yaml describes a bridge's dead letter
        assert record.key() is None
        contract.validate({k: v.decode() for k, v in record.headers()})
    assert read_topic(kafka_bootstrap, bridge.events) == []
    assert bridge.stop() == 0
    assert "3 dead-lettered (3 hl7-malformed)" in bridge.summary()
    assert bridge.text().count("bridge mllp-in: dead letter: hl7-malformed (connection 1") == 3


def hl7_pseudonymizer() -> Any:
    from streams.interfaces.pseudonym import Pseudonymizer

    return Pseudonymizer(SECRET)


def test_a_connection_broken_mid_message_produces_nothing_and_the_next_client_is_served(
    listener: Any, kafka_bootstrap: str
) -> None:
    bridge = listener()
    whole = sample("adt-a01.hl7").encode()
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=WAIT) as raw:
        raw.sendall(b"\x0b" + whole[: len(whole) // 2])
        time.sleep(0.5)  # the listener has read the half frame
    with bridge.client() as client:
        assert msa(client.send_message(sample("adt-a03.hl7")))[0] == "AA"
    records = read_topic(kafka_bootstrap, bridge.events)
    event = hl7.adt_to_event(sample("adt-a03.hl7"), hl7_pseudonymizer())
    assert isinstance(event, dict)
    assert [canonical_json(decode_event(r.value())) for r in records] == [normal(event)]
    assert bridge.stop() == 0
    assert "2 connections (1 partial frame dropped) in " in bridge.summary()
    assert bridge.summary().startswith("bridge mllp-in: 1 received, 1 written")


def test_kafka_unable_to_take_the_record_gets_ar_never_aa(
    listener: Any, kafka_bootstrap: str
) -> None:
    bridge = listener("--delivery-timeout", "3")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.delete_topics([bridge.events])[bridge.events].result(WAIT)
    message = sample("adt-a01.hl7")
    with bridge.client() as client:
        code, control, text = msa(client.send_message(message))
    assert (code, control) == ("AR", control_id(message))
    assert text.startswith("not delivered to Kafka (") and text.endswith("send it again")
    assert bridge.stop() == 0
    assert re.search(r"0 written to \S+, 0 dead-lettered, 0 ignored, 1 refused \(AR\) \(1 ",
                     bridge.summary()), bridge.summary()  # fmt: skip


def test_a_broker_that_went_away_gets_ar_and_the_listener_still_stops_cleanly(
    tmp_path: Path,
) -> None:
    """Kafka unreachable: a broker of its own, stopped under the running listener."""
    from streams.devtools.cluster import Cluster, broker_pids
    from streams.devtools.config import free_nodes
    from streams.kafka.settings import Settings

    settings = Settings.from_env()
    cluster = Cluster(tmp_path / "kafka", settings.kafka_version, free_nodes(1),
                      cache_dir=settings.cache_dir, die_with_parent=True)  # fmt: skip
    cluster.start()
    try:
        bridge = Listener(cluster.bootstrap_servers, tmp_path, "--delivery-timeout", "3")
        try:
            with bridge.client() as client:
                assert msa(client.send_message(sample("adt-a01.hl7")))[0] == "AA"
                cluster.stop()
                message = sample("adt-a03.hl7")
                assert msa(client.send_message(message))[:2] == ["AR", control_id(message)]
            assert bridge.stop() == 0
        finally:
            if bridge.proc.poll() is None:
                bridge.proc.kill()
    finally:
        cluster.stop()
    assert broker_pids(cluster.run_dir) == []
    # librdkafka's own lines (reconnects) stay quiet: only the listener's lines.
    assert all(line.startswith(("bridge mllp-in: ", "created topics "))
               for line in bridge.text().splitlines()), bridge.text()  # fmt: skip
    expected = r": 2 received, 1 written to \S+, 0 dead-lettered, 0 ignored, 1 refused \(AR\) "
    assert re.search(expected + r"\(1 [^)]+\), 1 connections in ", bridge.summary())


def test_in_a_registry_framed_deployment_the_events_are_registry_framed(
    listener: Any, kafka_bootstrap: str, schema_registry_url: str
) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from streams.formats.wire import registry_header
    from streams.kafka.registry import reader_for
    from streams.kafka.settings import Settings

    env = {"STEPCARE_WIRE_FORMAT": "registry", "STEPCARE_SCHEMA_REGISTRY_URL": schema_registry_url}
    bridge = listener(env=env)
    messages = [sample(n) for n in VALID]
    with bridge.client() as client:
        assert [msa(client.send_message(m))[0] for m in messages] == ["AA"] * len(messages)
        records = read_topic(kafka_bootstrap, bridge.events)
    registry = SchemaRegistryClient({"url": schema_registry_url})
    schema_id = registry.get_latest_version(f"{bridge.events}-value").schema_id
    assert {r.value()[:5] for r in records} == {registry_header(schema_id)}
    decode = reader_for(Settings(schema_registry_url=schema_registry_url)).decode_event
    expected = [hl7.adt_to_event(m, hl7_pseudonymizer()) for m in messages]
    assert sorted(canonical_json(decode(r.value())) for r in records) == sorted(
        normal(e) for e in expected if isinstance(e, dict)
    )
    assert bridge.stop() == 0
