"""A hospital's day through the live bridges, the worker and back out as FHIR (issue 16, item 6).

Every event of ``examples/three-patients.jsonl`` arrives the way a hospital's own systems send it,
and nothing arrives as a ready-made PatientEvent:

- enrolment and disenrolment: the palliative program's ``EpisodeOfCare`` (active, then finished);
- a new line of cancer treatment: a ``MedicationRequest`` (the first) or a ``CarePlan`` (the next);
- a palliative-care visit: a finished ``Encounter`` whose service type is palliative care;
- a FACT-L survey: a ``QuestionnaireResponse`` naming the site's own Questionnaire canonical;
- a death: the ``Patient`` with ``deceasedDateTime``, named by its MRN identifier;
- admissions and discharges: HL7 v2 ADT A01/A03, sent over MLLP by python-hl7's client to
  ``stepcare bridge mllp-in``, each ACKed AA only once Kafka has its event.

The FHIR resources go through ``stepcare bridge fhir-in``, the worker runs between the bridges,
``stepcare bridge fhir-out`` writes the escalations as transaction Bundles. The inputs are fed in
time order, each feed's run only once the one before is on the event topic, as in test_bridges.

Checked: the event topic holds exactly the log that the offline ``fhir-import`` and ``hl7-import``
make of the same inputs; the worker's escalations are exactly ``stepcare replay``'s on that log;
every Bundle fhir-out writes passes HAPI FHIR's validator with zero errors.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import groupby
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from streams.analysis.replay import canonical_json
from streams.cli import main
from streams.clinical.events import format_time, parse_time
from streams.formats.avro import decode_escalation, decode_event
from streams.interfaces import hl7
from streams.interfaces.pseudonym import SECRET_ENV, SECRET_FILE_ENV, Pseudonymizer
from streams.kafka.client import producer_config
from streams.kafka.settings import Settings
from tests.integration.test_bridges import (
    EXAMPLE_ESCALATIONS,
    TICK,
    Bridge,
    TopicCount,
    cohort,
    create_topics,
    normal,
)
from tests.integration.test_mllp import Listener, control_id, msa
from tests.integration.workers import Deployment, read_topic
from tests.unit.interfaces.test_fhir import MRN_SYSTEM, SECRET, as_adt, as_questionnaire_response

SITE_QUESTIONNAIRE = "https://fhir.hospital.example.org/Questionnaire/fact-l-site|4"
SNOMED = "http://snomed.info/sct"
PALLIATIVE = {"system": SNOMED, "code": "103735009", "display": "Palliative care (regime/therapy)"}
CHEMOTHERAPY = {"system": SNOMED, "code": "367336001", "display": "Chemotherapy"}
RADIOTHERAPY = {"system": SNOMED, "code": "108290001", "display": "Radiotherapy"}


def local(moment: str, hours: int = -4) -> str:
    """An instant in the hospital's local time, with its offset, as FHIR servers write it."""
    text = format_time(parse_time(moment) + hours * 3_600_000)[:-1]
    return f"{text}{hours:+03d}:00"


def mrn(event: dict[str, Any]) -> dict[str, Any]:
    return {"identifier": {"system": MRN_SYSTEM, "value": f"MRN-{event['patient_id']}"}}


def as_fhir(event: dict[str, Any], index: int, treatments: Counter[str]) -> dict[str, Any]:
    """An event of the cohort as the hospital's FHIR server holds it (ids are the source's)."""
    kind, pid, at = event["type"], event["patient_id"], event["occurred_at"]
    if kind == "SURVEY_SUBMITTED":
        return {**as_questionnaire_response(event, index), "questionnaire": SITE_QUESTIONNAIRE}
    if kind in ("ENROLLED", "DISENROLLED"):
        active = kind == "ENROLLED"
        enrolled = [e for e in cohort() if e["patient_id"] == pid and e["type"] == "ENROLLED"]
        start = at if active else enrolled[0]["occurred_at"]
        return {
            "resourceType": "EpisodeOfCare", "id": f"EOC-{pid}",
            "meta": {"versionId": "1" if active else "2"},
            "status": "active" if active else "finished",
            "type": [{"coding": [PALLIATIVE]}], "patient": mrn(event),
            "period": {"start": local(start)} | ({} if active else {"end": local(at)}),
        }  # fmt: skip
    if kind == "TREATMENT_CHANGED":
        treatments[pid] += 1
        if treatments[pid] == 1:
            return {
                "resourceType": "MedicationRequest", "id": f"MR-{event['event_id']}",
                "status": "active", "intent": "order", "category": [{"coding": [CHEMOTHERAPY]}],
                "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc",
                                                          "code": "L01FF02"}]},
                "subject": mrn(event), "authoredOn": local(at),
            }  # fmt: skip
        return {
            "resourceType": "CarePlan", "id": f"CP-{event['event_id']}", "status": "active",
            "intent": "plan", "category": [{"coding": [RADIOTHERAPY]}], "subject": mrn(event),
            "period": {"start": local(at)},
        }  # fmt: skip
    if kind == "PALLIATIVE_VISIT_COMPLETED":
        return {
            "resourceType": "Encounter", "id": f"ENC-{event['event_id']}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"},
            "serviceType": {"coding": [PALLIATIVE]}, "subject": mrn(event),
            "period": {"start": local(at), "end": local(at)},
        }  # fmt: skip
    if kind == "DECEASED":
        return {
            "resourceType": "Patient", "id": f"PAT-{pid}",
            "identifier": [{"system": MRN_SYSTEM, "value": f"MRN-{pid}"}],
            "deceasedDateTime": local(at),
        }  # fmt: skip
    raise AssertionError(f"no FHIR resource for {kind}")


def feeds() -> list[tuple[str, bytes, Any]]:
    """(feed, key, value) per event of the cohort, in time order: "fhir" values are resources
    (JSON) for the FHIR topic, "mllp" values ADT messages for the MLLP listener."""
    treatments: Counter[str] = Counter()
    out: list[tuple[str, bytes, Any]] = []
    for index, event in enumerate(cohort()):
        key = f"MRN-{event['patient_id']}".encode()
        if event["type"] in ("HOSPITAL_ADMITTED", "HOSPITAL_DISCHARGED"):
            out.append(("mllp", key, as_adt(event)))
        else:
            out.append(("fhir", key, orjson.dumps(as_fhir(event, index, treatments))))
    return out


FHIR_OPTIONS = (
    "--questionnaire-url", SITE_QUESTIONNAIRE, "--patient-identifier-system", MRN_SYSTEM
)  # fmt: skip


def offline_log(inputs: list[tuple[str, bytes, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """The same inputs through ``stepcare bridge fhir-import`` and ``hl7-import``, merged by
    time (stable): the event log the live bridges must write."""
    resources, adt = tmp_path / "resources.ndjson", tmp_path / "adt.hl7"
    resources.write_bytes(b"".join(v + b"\n" for feed, _, v in inputs if feed == "fhir"))
    adt.write_bytes(b"".join(hl7.mllp_frame(v) for feed, _, v in inputs if feed == "mllp"))
    log: list[dict[str, Any]] = []
    for action, source, options in (("fhir-import", resources, FHIR_OPTIONS),
                                    ("hl7-import", adt, ())):  # fmt: skip
        out = tmp_path / f"{action}.jsonl"
        command = ["bridge", action, "--strict", "--input", str(source), "--output", str(out)]
        assert main([*command, *options]) == 0
        log += [orjson.loads(line) for line in out.read_text().splitlines()]
    return sorted(log, key=lambda e: parse_time(e["occurred_at"]))


def test_a_hospital_day_through_the_live_bridges_gives_replays_escalations_and_valid_bundles(
    kafka_bootstrap: str,
    topic_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fhir_validator: Any,
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())  # for the offline imports, in this process
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    inputs = feeds()
    log = offline_log(inputs, tmp_path)
    # Every event of the cohort, from the hospital's own messages: same types, same times,
    # each patient under one pseudonym whichever system named them.
    pz = Pseudonymizer(SECRET)
    assert [(e["type"], e["occurred_at"], e["patient_id"]) for e in log] == [
        (e["type"], e["occurred_at"], pz.patient_id(MRN_SYSTEM, f"MRN-{e['patient_id']}"))
        for e in sorted(cohort(), key=lambda e: parse_time(e["occurred_at"]))
    ]
    replayed, merged = tmp_path / "replayed.jsonl", tmp_path / "merged.jsonl"
    merged.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in log))
    assert main(["replay", "--input", str(merged), "--output", str(replayed), "--until", TICK]) == 0
    expected = replayed.read_text().splitlines()
    assert len(expected) == len(EXAMPLE_ESCALATIONS.read_text().splitlines()) == 17

    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    fhir_topic = f"{topic_name}.fhir"
    bundles, bundle_dlq = f"{topic_name}.bundles", f"{topic_name}.bundles.dlq"
    create_topics(kafka_bootstrap, [fhir_topic])
    worker = deployment.worker("worker")  # creates the event, escalation and dead-letter topics
    to_events = ["--to-topic", deployment.input, "--dead-letter-topic", deployment.dead_letters]
    fhir_in = Bridge("fhir-in", kafka_bootstrap, tmp_path, "--from-topic", fhir_topic,
                     *to_events, *FHIR_OPTIONS)  # fmt: skip
    fhir_out = Bridge("fhir-out", kafka_bootstrap, tmp_path, "--from-topic",
                      deployment.escalations, "--to-topic", bundles, "--dead-letter-topic",
                      bundle_dlq, "--max-messages", str(len(expected)))  # fmt: skip
    mllp_in = Listener(kafka_bootstrap, tmp_path, *to_events,
                       env={"STEPCARE_PARTITIONS": str(Deployment.PARTITIONS)})  # fmt: skip
    producer = Producer(producer_config(Settings(), kafka_bootstrap))
    events = TopicCount(kafka_bootstrap, deployment.input)
    acks: list[list[str]] = []
    try:
        on_topic = 0
        for feed, run in groupby(inputs, key=lambda item: item[0]):
            messages = list(run)
            if feed == "fhir":
                for _, key, value in messages:
                    producer.produce(fhir_topic, key=key, value=value)
                assert producer.flush(30) == 0
            else:
                with mllp_in.client() as client:
                    acks += [msa(client.send_message(m)) for _, _, m in messages]
            on_topic += len(messages)
            events.wait_for(on_topic)
        deployment.publish([], until=TICK)  # an empty log: CLOCK_TICKs on every partition
        assert fhir_out.wait() == 0, fhir_out.text()  # --max-messages: every escalation
        stopped = {"fhir-in": fhir_in.stop(), "mllp-in": mllp_in.stop()}
        assert stopped == {"fhir-in": 0, "mllp-in": 0}, fhir_in.text() + mllp_in.text()
        assert worker.alive()
    finally:
        events.close()
        for process in (fhir_in.proc, fhir_out.proc, mllp_in.proc):
            if process.poll() is None:
                process.kill()
        assert worker.stop() == 0

    adt = [m for feed, _, m in inputs if feed == "mllp"]
    assert acks == [["AA", control_id(m), ""] for m in adt]
    assert read_topic(kafka_bootstrap, deployment.dead_letters) == []

    # The event topic holds exactly the offline log; the escalations are replay's, no more.
    on_events = [r for r in read_topic(kafka_bootstrap, deployment.input) if r.key()]
    assert Counter(canonical_json(decode_event(r.value())) for r in on_events) == Counter(
        normal(e) for e in log
    )
    received = read_topic(kafka_bootstrap, deployment.escalations)
    assert Counter(canonical_json(decode_escalation(r.value())) for r in received) == Counter(
        expected
    )

    # One Bundle per escalation, each valid for HAPI FHIR's validator: zero errors.
    written = [orjson.loads(r.value()) for r in read_topic(kafka_bootstrap, bundles)]
    assert len(written) == len(expected)
    assert {e["resourceType"] for e in written} == {"Bundle"}
    results = fhir_validator.validate(written)
    assert [(n, r.errors) for n, r in enumerate(results) if r.errors] == []
    assert read_topic(kafka_bootstrap, bundle_dlq) == []
    assert not re.search(rb"MRN-p-00\d", b"".join(r.value() for r in on_events + received))
