"""``stepcare bridge fhir-in`` on a real broker with every FHIR resource type it takes (issue 16).

The examples of examples/fhir (EpisodeOfCare, Encounter, Patient, MedicationRequest, CarePlan) and
a QuestionnaireResponse naming a site's own Questionnaire canonical (``--questionnaire-url``) go
through the real CLI: the event topic holds exactly the events ``resource_to_event`` gives for
them, keyed by the pseudonymous patient id; a valid resource that is no event is counted and
committed, not dead-lettered; refused resources are in the dead-letter topic, unchanged, with
their reason; no source identifier is on any topic or in the bridge's log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from streams.formats.avro import decode_event
from streams.interfaces.fhir_events import FhirFeed, resource_to_event
from streams.interfaces.pseudonym import SECRET_ENV, SECRET_FILE_ENV, Pseudonymizer
from streams.kafka.client import producer_config
from streams.kafka.settings import Settings
from tests.integration.test_bridges import WAIT, Bridge, all_bytes, create_topics, normal
from tests.integration.workers import read_topic
from tests.unit.interfaces.test_fhir_events import (
    EXAMPLES,
    MRN_SYSTEM,
    SECRET,
    SITE,
    SOURCE_IDS,
    _edit,
    _response,
)


def test_fhir_in_maps_every_resource_type_and_dead_letters_with_reasons(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    pz = Pseudonymizer(SECRET)
    feed = FhirFeed(questionnaires=(SITE,), patient_identifier_system=MRN_SYSTEM)
    resources: list[dict[str, Any]] = [
        json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))
    ]
    resources.append(_response(SITE + "|4"))
    expected = [resource_to_event(r, pz, feed) for r in resources]
    assert all(isinstance(e, dict) for e in expected)
    ignored = orjson.dumps(_edit("episode-of-care-active.json", status="waitlist"))
    refused = {
        orjson.dumps(
            _edit("patient-deceased.json", deceasedDateTime=None, deceasedBoolean=True)
        ): "fhir-deceased-without-time",
        orjson.dumps(_edit("encounter-inpatient-discharged.json", period=None)): (
            "fhir-missing-time"
        ),
        orjson.dumps(_response("http://example.org/Questionnaire/other")): (
            "fhir-unknown-questionnaire"
        ),
        b'{"resourceType": "Encounter", ': "not-json",
    }

    source, events, dead = (f"{topic_name}.fhir", f"{topic_name}.events", f"{topic_name}.dlq")
    create_topics(kafka_bootstrap, [source, events, dead])
    producer = Producer(producer_config(Settings(), kafka_bootstrap))
    values = [orjson.dumps(r) for r in resources] + [ignored, *refused]
    for value in values:
        producer.produce(source, key=b"MRN-900417", value=value)
    assert producer.flush(WAIT) == 0
    bridge = Bridge(
        "fhir-in", kafka_bootstrap, tmp_path, "--from-topic", source, "--to-topic", events,
        "--dead-letter-topic", dead, "--max-messages", str(len(values)),
        "--questionnaire-url", SITE, "--patient-identifier-system", MRN_SYSTEM,
    )  # fmt: skip
    assert bridge.wait() == 0, bridge.text()

    written = read_topic(kafka_bootstrap, events, expected=len(expected), timeout=WAIT)
    assert [normal(decode_event(r.value())) for r in written] == [
        normal(e) for e in expected if isinstance(e, dict)
    ]
    assert {r.key() for r in written} == {pz.patient_id(MRN_SYSTEM, "MRN-900417").encode()}
    letters = read_topic(kafka_bootstrap, dead, expected=len(refused), timeout=WAIT)
    got = {r.value(): dict(r.headers())["error.reason"].decode() for r in letters}
    assert got == refused
    summary = bridge.summary()
    assert f"{len(values)} read, {len(expected)} written" in summary
    assert "4 dead-lettered" in summary
    assert "1 ignored (1 fhir-ignored-status EpisodeOfCare status waitlist)" in summary

    downstream = b"".join(all_bytes(r) for r in written)
    downstream += b"".join(k.encode() + v for r in letters for k, v in r.headers() or [])
    downstream += bridge.text().encode()
    assert not [s for s in SOURCE_IDS if s.encode() in downstream]
