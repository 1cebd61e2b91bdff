"""`docs/asyncapi.yaml`: valid AsyncAPI 3.0.0 that says what DESIGN §2, §3 and §6 say.

The document is validated against the official AsyncAPI 3.0.0 JSON Schema (vendored, offline:
`tests/data/README.md`), and then checked where that schema cannot look: every channel address
is a topic of the contract, every `$ref` resolves (internal ones to an object in the document,
external ones to an Avro schema in `schemas/` that fastavro parses), every operation uses its own
channel's messages, and the headers and examples agree with the schemas and the shipped example.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DOC_PATH = REPO / "docs" / "asyncapi.yaml"
OFFICIAL_SCHEMA = REPO / "tests" / "data" / "asyncapi-3.0.0.schema.json"
DESIGN = REPO.parent / "shared" / "DESIGN.md"  # beside the checkout, where present

# DESIGN §2, and the replay topics of `stepcare replay` through Kafka.
TOPICS = {
    "stepcare.patient-events.v1",
    "stepcare.escalations.v1",
    "stepcare.patient-events.dlq.v1",
}
# The hospital interfaces' topics (streams/interfaces/live.py): stepcare's bridges, beside DESIGN
# §2.
BRIDGE_TOPICS = {
    "stepcare.fhir.questionnaire-responses.v1",
    "stepcare.hl7v2.adt.v1",
    "stepcare.escalations.fhir.v1",
    "stepcare.escalations.fhir.dlq.v1",
}
REPLAY_PATTERN = "stepcare.escalations.replay.{run}"
DLQ_REASONS = {"not-single-object-encoding", "unknown-schema", "malformed-avro", "invalid-event"}
AVRO_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(OFFICIAL_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def refs(node: Any, path: str = "#") -> Iterator[tuple[str, str]]:
    """Every ``$ref`` in ``node``, with the JSON pointer of the object that holds it."""
    if isinstance(node, dict):
        if "$ref" in node:
            yield path, node["$ref"]
        for key, value in node.items():
            yield from refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from refs(value, f"{path}/{i}")


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """The object an internal ``#/...`` reference points to (KeyError if none)."""
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def load_avsc(ref: str) -> dict[str, Any]:
    path = (DOC_PATH.parent / ref.split("#", 1)[0]).resolve()
    assert path.is_relative_to(REPO), f"{ref} points outside the repository"
    assert path.is_file(), f"{ref}: no such file ({path})"
    return fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))


def test_is_asyncapi_3_0_0(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "stepcare"
    assert doc["info"]["version"]
    assert doc["info"]["description"].strip()
    assert doc["defaultContentType"] == "application/avro"


def test_valid_against_the_official_asyncapi_3_0_0_json_schema(
    doc: dict[str, Any], validator: jsonschema.Draft7Validator
) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
        for e in validator.iter_errors(doc)
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        (("operations", "sendEscalations"), "action", "publish"),  # AsyncAPI 2 wording
        (("channels", "escalations", "bindings", "kafka"), "partitionCount", 6),
        (("components", "messages", "Escalation", "bindings", "kafka"), "bindingVersion", "9"),
        (("servers", "local"), "url", "kafka://127.0.0.1:9092"),  # AsyncAPI 2 field
    ],
)
def test_the_official_schema_catches_a_broken_document(
    doc: dict[str, Any], validator: jsonschema.Draft7Validator, where: tuple, key: str, value: Any
) -> None:
    broken = copy.deepcopy(doc)
    node = broken
    for part in where:
        node = node[part]
    node[key] = value
    assert list(validator.iter_errors(broken)), "the validation would not notice mistakes"


def test_channel_addresses_are_the_contract_topics(doc: dict[str, Any]) -> None:
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses == TOPICS | BRIDGE_TOPICS | {REPLAY_PATTERN}
    for channel in doc["channels"].values():
        topic = channel["bindings"]["kafka"].get("topic")
        assert topic in (None, channel["address"])
    replay = next(c for c in doc["channels"].values() if c["address"] == REPLAY_PATTERN)
    assert set(replay["parameters"]) == {"run"}


def test_the_bridge_topics_are_those_of_the_bridges() -> None:
    from streams.interfaces import live
    from streams.kafka.settings import Settings

    assert {
        live.FHIR_RESPONSES_TOPIC,
        live.HL7_ADT_TOPIC,
        live.FHIR_BUNDLES_TOPIC,
        live.FHIR_BUNDLES_DLQ_TOPIC,
    } == BRIDGE_TOPICS
    settings = Settings()  # the topics the bridges share with the worker, by default
    assert {live.PATIENT_EVENTS_TOPIC, live.PATIENT_EVENTS_DLQ_TOPIC} == {
        settings.input_topic,
        settings.dead_letter_topic,
    }
    assert settings.escalations_topic == live.ESCALATIONS_TOPIC
    assert not BRIDGE_TOPICS & TOPICS


def test_the_contract_topics_are_those_of_design_section_2() -> None:
    if not DESIGN.is_file():
        pytest.skip(f"{DESIGN} is not beside this checkout")
    text = DESIGN.read_text(encoding="utf-8")
    section = text.split("## 2. Topics", 1)[1].split("\n## ", 1)[0]
    table_topics = set(re.findall(r"^\| `([a-z0-9.-]+)` \|", section, flags=re.MULTILINE))
    assert table_topics == TOPICS


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    found = list(refs(doc))
    assert found
    external = set()
    for where, ref in found:
        if ref.startswith("#"):
            try:
                target = resolve(doc, ref)
            except (KeyError, IndexError, ValueError):
                pytest.fail(f"{where}: {ref} does not resolve")
            assert isinstance(target, dict), f"{where}: {ref} is not an object"
        else:
            assert not re.match(r"^[a-z]+://", ref), f"{where}: {ref} is not a file in the repo"
            assert ref.endswith(".avsc"), f"{where}: {ref} is not an Avro schema"
            load_avsc(ref)  # exists inside the repository and parses
            external.add(ref)
    assert external == {
        "../schemas/org.stepcare.PatientEvent.avsc",
        "../schemas/org.stepcare.Escalation.avsc",
    }


def test_every_operation_uses_its_own_channel_and_messages(doc: dict[str, Any]) -> None:
    actions = set()
    for name, operation in doc["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        assert re.fullmatch(r"#/channels/[A-Za-z0-9_.-]+", channel_ref), channel_ref
        channel = resolve(doc, channel_ref)
        assert operation["messages"], name
        for message in operation["messages"]:
            # AsyncAPI 3: an operation's messages are a subset of its channel's messages.
            assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
            assert resolve(doc, message["$ref"]) in channel["messages"].values()
        actions.add((channel["address"], operation["action"]))
    # From stepcare's point of view (the worker and the bridges).
    assert actions == {
        ("stepcare.patient-events.v1", "receive"),  # the worker
        ("stepcare.escalations.v1", "send"),
        ("stepcare.patient-events.dlq.v1", "send"),
        (REPLAY_PATTERN, "send"),
        ("stepcare.fhir.questionnaire-responses.v1", "receive"),  # bridge fhir-in
        ("stepcare.hl7v2.adt.v1", "receive"),  # bridge hl7-in
        ("stepcare.patient-events.v1", "send"),  # both
        ("stepcare.escalations.v1", "receive"),  # bridge fhir-out
        ("stepcare.escalations.fhir.v1", "send"),
        ("stepcare.escalations.fhir.dlq.v1", "send"),
    }
    # Every message of every channel is used by some operation.
    used = {m["$ref"] for op in doc["operations"].values() for m in op["messages"]}
    for name, channel in doc["channels"].items():
        for message in channel["messages"]:
            assert f"#/channels/{name}/messages/{message}" in used, (name, message)


def test_avro_messages_reference_their_record_schema(doc: dict[str, Any]) -> None:
    expected = {
        "PatientEvent": "org.stepcare.PatientEvent",
        "Escalation": "org.stepcare.Escalation",
        "PatientEventRegistry": "org.stepcare.PatientEvent",
        "EscalationRegistry": "org.stepcare.Escalation",
    }
    for name, full_name in expected.items():
        message = doc["components"]["messages"][name]
        assert message["contentType"] == "application/avro"
        assert message["payload"]["schemaFormat"] == AVRO_FORMAT
        schema = load_avsc(message["payload"]["schema"]["$ref"])
        assert schema["name"] == full_name
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
    dead_letter = doc["components"]["messages"]["DeadLetter"]
    assert dead_letter["bindings"]["kafka"]["key"]["type"] == "string"


def test_both_framings_are_described_for_every_avro_channel(doc: dict[str, Any]) -> None:
    """DESIGN §3: single-object encoding (no registry: no schema id binding) and the registry
    framing (Confluent: the id in the payload, subjects by topic name), each Avro message in
    both, on every channel and in every operation that carries it."""
    from streams.kafka.registry import SUBJECT_SUFFIX

    messages = doc["components"]["messages"]
    pairs = {"PatientEvent": "PatientEventRegistry", "Escalation": "EscalationRegistry"}
    for single, registry in pairs.items():
        assert not {"schemaIdLocation", "schemaIdPayloadEncoding"} & set(
            messages[single]["bindings"]["kafka"]
        )
        binding = messages[registry]["bindings"]["kafka"]
        assert (binding["schemaIdLocation"], binding["schemaIdPayloadEncoding"]) == (
            "payload",
            "confluent",
        )
        assert binding["schemaLookupStrategy"] == "TopicNameStrategy" and SUBJECT_SUFFIX == "-value"
        assert messages[registry]["payload"] == messages[single]["payload"]
        assert messages[registry]["headers"] == messages[single]["headers"]
        for name, channel in doc["channels"].items():
            refs_here = {m["$ref"] for m in channel["messages"].values()}
            if f"#/components/messages/{single}" in refs_here:
                assert f"#/components/messages/{registry}" in refs_here, name
        for name, operation in doc["operations"].items():
            # an operation's message -> its channel's message -> the component
            targets = {resolve(doc, m["$ref"])["$ref"] for m in operation["messages"]}
            if f"#/components/messages/{single}" in targets:
                assert f"#/components/messages/{registry}" in targets, name
    description = doc["info"]["description"]
    assert "`C3 01`" in description and "`00`" in description and "-value" in description


def test_servers_local_broker_and_a_secured_one(doc: dict[str, Any]) -> None:
    servers = doc["servers"]
    assert servers["local"]["host"] == "127.0.0.1:9092"
    assert servers["local"]["protocol"] == "kafka"
    secured = [s for s in servers.values() if s.get("security")]
    assert secured and secured[0]["protocol"] == "kafka-secure"
    kinds = {resolve(doc, s["$ref"])["type"] for s in secured[0]["security"]}
    assert kinds <= {"scramSha256", "scramSha512"} and kinds


def header_validator(doc: dict[str, Any], name: str) -> jsonschema.Draft7Validator:
    # The schema by reference, in a document that has the components: its own $refs resolve.
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def millis(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def as_avro(escalation: dict[str, Any]) -> dict[str, Any]:
    """The JSON rendering (DESIGN §3) as the Avro record: timestamps as datetimes."""
    return {
        **escalation,
        "occurred_at": millis(escalation["occurred_at"]),
        "due_by": millis(escalation["due_by"]),
    }


def contract_headers(escalation: dict[str, Any]) -> dict[str, str]:
    return {
        "ce_id": escalation["escalation_id"],
        "ce_type": f"org.stepcare.escalation.{escalation['kind']}",
        "ce_source": f"stepcare/{escalation['policy_id']}",
        "ce_time": escalation["occurred_at"],
        "ce_specversion": "1.0",
        "content-type": "application/avro",
    }


def test_escalation_headers_schema_accepts_every_shipped_escalation(doc: dict[str, Any]) -> None:
    headers = header_validator(doc, "EscalationHeaders")
    lines = (REPO / "examples" / "three-patients.escalations.jsonl").read_text().splitlines()
    for line in lines:
        escalation = json.loads(line)
        headers.validate(contract_headers(escalation))
    assert not headers.is_valid({**contract_headers(json.loads(lines[0])), "ce_specversion": "2"})
    assert not headers.is_valid({"ce_id": "x"})


def test_escalation_example_agrees_with_schema_and_headers(doc: dict[str, Any]) -> None:
    message = doc["components"]["messages"]["Escalation"]
    schema = load_avsc(message["payload"]["schema"]["$ref"])
    for example in message["examples"]:
        payload = example["payload"]
        assert fastavro.validate(as_avro(payload), schema, strict=True)
        header_validator(doc, "EscalationHeaders").validate(example["headers"])
        assert example["headers"] == contract_headers(payload)


def test_patient_event_example_agrees_with_schema(doc: dict[str, Any]) -> None:
    message = doc["components"]["messages"]["PatientEvent"]
    schema = load_avsc(message["payload"]["schema"]["$ref"])
    for example in message["examples"]:
        event = {**example["payload"], "occurred_at": millis(example["payload"]["occurred_at"])}
        assert fastavro.validate(event, schema, strict=True)


def test_dead_letter_headers(doc: dict[str, Any]) -> None:
    schema = doc["components"]["schemas"]["DeadLetterHeaders"]
    assert set(schema["properties"]["error.reason"]["enum"]) == DLQ_REASONS
    assert set(schema["required"]) == {
        "error.reason",
        "error.detail",
        "source.topic",
        "source.partition",
        "source.offset",
    }
    headers = header_validator(doc, "DeadLetterHeaders")
    for example in doc["components"]["messages"]["DeadLetter"]["examples"]:
        headers.validate(example["headers"])


def test_describes_deduplication_and_ordering(doc: dict[str, Any]) -> None:
    text = doc["info"]["description"]
    assert "escalation_id" in text and "deduplicate" in text.lower()
    assert "read_committed" in text and "at least once" in text
    assert "patient_id" in text and "in order" in text


# -- the hospital interfaces (stepcare bridge) ---------------------------------------------------

SECRET = b"stepcare-asyncapi-example-secret-0123456789"


def adapter_reasons() -> set[str]:
    """Every dead-letter reason the bridges can give, read from the code: the FHIR and HL7
    adapters' (``AdapterError("reason", ...)``, a refused status), the codec's, the bridge's."""
    from streams.formats.avro import Reason
    from streams.interfaces import convert, fhir, fhir_events, hl7, live

    found: set[str] = set()
    for module in (fhir, fhir_events, hl7, convert, live):
        text = Path(str(module.__file__)).read_text(encoding="utf-8")
        found |= set(re.findall(r'AdapterError\(\s*"([a-z0-9-]+)"', text))
    found |= {f"fhir-status-{status}" for status in fhir._STATUS_DETAIL}
    found |= {hl7.MALFORMED, hl7.DEATH_WITHOUT_TIME, live.PROCESSING_ERROR}
    found |= set(typing.get_args(Reason))
    found.discard("hl7-config")  # a bad --timezone: a usage error, not a dead letter
    return found


def test_bridge_dead_letter_reasons_are_every_reason_the_adapters_give(
    doc: dict[str, Any],
) -> None:
    schema = doc["components"]["schemas"]["BridgeDeadLetterHeaders"]
    assert set(schema["properties"]["error.reason"]["enum"]) == adapter_reasons()
    # Where from: the worker's headers (topic, partition, offset), or an MLLP message's.
    from_topic, from_mllp = schema["oneOf"]
    assert set(schema["required"]) | set(from_topic["required"]) == set(
        doc["components"]["schemas"]["DeadLetterHeaders"]["required"]
    )
    assert from_mllp["required"] == ["source.protocol"]
    headers = header_validator(doc, "BridgeDeadLetterHeaders")
    for example in doc["components"]["messages"]["BridgeDeadLetter"]["examples"]:
        headers.validate(example["headers"])
    assert not headers.is_valid({**example["headers"], "error.reason": "invalid-event"})


def test_fhir_and_hl7_messages_say_their_content_type(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    for name in ("FhirQuestionnaireResponse", "FhirClinicalResource", "FhirBundle"):
        assert messages[name]["contentType"] == "application/fhir+json"
        payload = messages[name]["payload"]
        assert payload["type"] == "object" and payload["description"].strip()
        assert "schemaFormat" not in payload  # an AsyncAPI (JSON) Schema, not Avro
    assert messages["Hl7AdtMessage"]["contentType"] == "x-application/hl7-v2+er7"
    assert messages["Hl7AdtMessage"]["payload"]["type"] == "string"
    assert messages["BridgeDeadLetter"]["contentType"] == "application/octet-stream"
    channels = {c["address"]: c for c in doc["channels"].values()}
    for address in BRIDGE_TOPICS:
        assert channels[address]["bindings"]["kafka"]["topic"] == address


def test_the_questionnaire_response_example_maps_to_a_survey(doc: dict[str, Any]) -> None:
    from streams.interfaces import fhir
    from streams.interfaces.pseudonym import Pseudonymizer

    for example in doc["components"]["messages"]["FhirQuestionnaireResponse"]["examples"]:
        event = fhir.questionnaire_response_to_event(example["payload"], Pseudonymizer(SECRET))
        assert event["type"] == "SURVEY_SUBMITTED"
        assert event["survey"]["responses"] == {"GP1": 1, "GP2": 0}


def test_the_clinical_resource_example_maps_to_an_enrolment(doc: dict[str, Any]) -> None:
    from streams.interfaces.fhir_events import resource_to_event
    from streams.interfaces.pseudonym import Pseudonymizer

    for example in doc["components"]["messages"]["FhirClinicalResource"]["examples"]:
        event = resource_to_event(example["payload"], Pseudonymizer(SECRET))
        assert isinstance(event, dict) and event["type"] == "ENROLLED"


def test_the_adt_example_maps_to_a_discharge(doc: dict[str, Any]) -> None:
    from streams.interfaces import hl7
    from streams.interfaces.pseudonym import Pseudonymizer

    for example in doc["components"]["messages"]["Hl7AdtMessage"]["examples"]:
        event = hl7.adt_to_event(example["payload"], Pseudonymizer(SECRET))
        assert isinstance(event, dict)
        assert (event["type"], event["occurred_at"]) == (
            "HOSPITAL_DISCHARGED",
            "2024-04-09T17:00:00Z",
        )


def test_the_bundle_example_is_the_bundle_of_the_escalation_example(doc: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle

    from streams.interfaces import fhir

    escalation = doc["components"]["messages"]["Escalation"]["examples"][0]
    (example,) = doc["components"]["messages"]["FhirBundle"]["examples"]
    assert example["payload"] == fhir.escalation_to_bundle(escalation["payload"])
    Bundle.model_validate(example["payload"])
    headers = header_validator(doc, "FhirBundleHeaders")
    headers.validate(example["headers"])
    assert example["headers"] == {**escalation["headers"], "content-type": "application/fhir+json"}
    assert not headers.is_valid(escalation["headers"])  # content-type application/avro
