"""HL7 v2 ADT -> PatientEvent: admissions, discharges, deaths; time precedence; framing; ignored
and malformed messages; pseudonymous ids; the hl7-import command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.cli import main
from streams.clinical.events import event_from_json
from streams.interfaces import hl7
from streams.interfaces.errors import AdapterError, Ignored
from streams.interfaces.pseudonym import SECRET_ENV, Pseudonymizer

DATA = Path(__file__).resolve().parents[2] / "data" / "hl7"
SECRET = b"stepcare-test-secret-0123456789abcdef"
GHH = "urn:oid:2.999.1.1"
# Identifiers and personal data in the samples that must never reach an event.
SOURCE_IDS = (
    "MRN-900417",
    "MRN-900418",
    "900-41-7000",
    "V-20240405-77",
    "GHH2024",
    "LAB2024",
    "TESTPATIENT",
    "ALPHA",
    "BRAVO",
    "19480215",
    "EXAMPLE ST",
)


@pytest.fixture
def pz() -> Pseudonymizer:
    return Pseudonymizer(SECRET)


def read(name: str) -> str:
    return (DATA / name).read_text()


def event_id(pz: Pseudonymizer, control_id: str, sender: str = "EPICADT|GHH") -> str:
    return "hl7-" + pz.token("hl7", f"{sender}|{control_id}")


# -- mappings ---------------------------------------------------------------------------------


def test_an_inpatient_admission_maps_field_by_field(pz: Pseudonymizer) -> None:
    event = hl7.adt_to_event(read("adt-a01.hl7"), pz)
    assert event == {
        "event_id": event_id(pz, "GHH20240405221512000123"),
        "patient_id": pz.patient_id(GHH, "MRN-900417"),
        "occurred_at": "2024-04-06T02:00:00Z",  # PV1-44 22:00 -04:00 (not EVN-6, not EVN-2)
        "type": "HOSPITAL_ADMITTED",
        "source": "adt",
        "attributes": {"hl7_trigger": "A01", "patient_class": "I"},
    }
    event_from_json(event)


def test_a_registration_without_an_offset_is_read_in_the_site_zone(pz: Pseudonymizer) -> None:
    message = read("adt-a04.hl7")  # v2.3, EVN-2 20240402081500, no PV1-44, no EVN-6
    event = hl7.adt_to_event(message, pz, timezone="America/New_York", source="ehr-adt")
    assert event == {
        "event_id": event_id(pz, "GHH20240402081733000045"),
        "patient_id": pz.patient_id(GHH, "MRN-900418"),
        "occurred_at": "2024-04-02T12:15:00Z",  # 08:15 EDT
        "type": "HOSPITAL_ADMITTED",
        "source": "ehr-adt",
        "attributes": {"hl7_trigger": "A04", "patient_class": "E"},
    }
    assert hl7.adt_to_event(message, pz)["occurred_at"] == "2024-04-02T08:15:00Z"  # type: ignore[index]


def test_a_discharge_takes_its_time_from_pv1_45(pz: Pseudonymizer) -> None:
    event = hl7.adt_to_event(read("adt-a03.hl7"), pz)
    assert event == {
        "event_id": event_id(pz, "GHH20240409170244000311"),
        "patient_id": pz.patient_id(GHH, "MRN-900417"),
        "occurred_at": "2024-04-09T17:00:00Z",  # PV1-45 13:00 -04:00, not EVN-2 (17:02)
        "type": "HOSPITAL_DISCHARGED",
        "source": "adt",
        "attributes": {"hl7_trigger": "A03", "patient_class": "I"},
    }


def test_without_pv1_45_evn_6_comes_before_evn_2(pz: Pseudonymizer) -> None:
    event = hl7.adt_to_event(read("adt-a03-evn6.hl7"), pz)
    assert isinstance(event, dict)
    assert event["occurred_at"] == "2024-06-10T13:00:00Z"  # EVN-6 09:00 -04:00
    no_evn6 = read("adt-a03-evn6.hl7").replace("||||20240610090000-0400", "")
    event = hl7.adt_to_event(no_evn6, pz)
    assert event["occurred_at"] == "2024-06-10T13:45:00Z"  # type: ignore[index]  # EVN-2


def test_a_death_at_discharge_is_a_death_at_pid_29(pz: Pseudonymizer) -> None:
    event = hl7.adt_to_event(read("adt-a03-expired.hl7"), pz)
    assert event == {
        "event_id": event_id(pz, "GHH20240701071502000901"),
        "patient_id": pz.patient_id(GHH, "MRN-900417"),
        "occurred_at": "2024-07-01T06:00:00Z",  # PID-29 02:00 -04:00
        "type": "DECEASED",
        "source": "adt",
        "attributes": {"hl7_trigger": "A03", "patient_class": "I"},
    }
    # the disposition alone says it too; without PID-29 the discharge time is the time
    by_disposition = read("adt-a03-expired.hl7").replace("|20240701020000-0400|Y", "")
    event = hl7.adt_to_event(by_disposition, pz)
    assert isinstance(event, dict)
    assert (event["type"], event["occurred_at"]) == ("DECEASED", "2024-07-01T10:40:00Z")
    alive = by_disposition.replace("|20|", "|01|")
    assert hl7.adt_to_event(alive, pz)["type"] == "HOSPITAL_DISCHARGED"  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "reason", "detail"),
    [
        ("adt-a08.hl7", "hl7-ignored-trigger", "ADT^A08"),
        ("oru-r01.hl7", "hl7-not-adt", "ORU^R01"),
        ("adt-a03-outpatient.hl7", "hl7-not-inpatient", "ADT^A03 patient class O"),
    ],
)
def test_other_messages_are_ignored_with_a_reason(
    name: str, reason: str, detail: str, pz: Pseudonymizer
) -> None:
    assert hl7.adt_to_event(read(name), pz) == Ignored(reason, detail)


def test_the_inpatient_classes_are_a_setting(pz: Pseudonymizer) -> None:
    message = read("adt-a03-outpatient.hl7")
    event = hl7.adt_to_event(message, pz, inpatient_classes=("I", "O"))
    assert event["type"] == "HOSPITAL_DISCHARGED"  # type: ignore[index]
    no_class = message.replace("PV1|1|O|", "PV1|1||")
    assert hl7.adt_to_event(no_class, pz)["type"] == "HOSPITAL_DISCHARGED"  # type: ignore[index]


# -- patients ---------------------------------------------------------------------------------


def test_the_hl7_and_fhir_feeds_name_one_patient_alike(pz: Pseudonymizer) -> None:
    from streams.interfaces import fhir

    resource = json.loads((DATA.parent / "fhir" / "qr-complete.json").read_text())
    survey = fhir.questionnaire_response_to_event(resource, pz)
    admission = hl7.adt_to_event(read("adt-a01.hl7"), pz)
    assert admission["patient_id"] == survey["patient_id"]  # type: ignore[index]


def test_identifier_type_and_authority_mapping(pz: Pseudonymizer) -> None:
    message = read("adt-a01.hl7")
    by_ssn = hl7.adt_to_event(message, pz, identifier_type="SS")
    ssa = "urn:oid:2.16.840.1.113883.4.1"
    assert by_ssn["patient_id"] == pz.patient_id(ssa, "900-41-7000")  # type: ignore[index]
    with pytest.raises(AdapterError, match="PID-3 has no identifier of type 'PI'"):
        hl7.adt_to_event(message, pz, identifier_type="PI")
    # an authority known only by its namespace id, mapped to the system the FHIR feed uses
    local = message.replace("MRN-900417^^^GHH&2.999.1.1&ISO^MR", "MRN-900417^^^GHH^MR")
    assert hl7.adt_to_event(local, pz)["patient_id"] == pz.patient_id("GHH", "MRN-900417")  # type: ignore[index]
    mapped = hl7.adt_to_event(local, pz, authority_systems={"GHH": GHH})
    assert mapped["patient_id"] == pz.patient_id(GHH, "MRN-900417")  # type: ignore[index]


def test_escaped_identifiers_are_unescaped(pz: Pseudonymizer) -> None:
    message = read("adt-a01.hl7").replace("MRN-900417^", "MRN\\T\\900\\F\\417^")
    event = hl7.adt_to_event(message, pz)
    assert event["patient_id"] == pz.patient_id(GHH, "MRN&900|417")  # type: ignore[index]


def test_no_source_identifier_reaches_an_event(pz: Pseudonymizer) -> None:
    for path in [*sorted(DATA.glob("adt-*.hl7")), DATA / "mllp-capture.hl7"]:
        for _, message in hl7.split_messages(path.read_bytes()):
            result = hl7.adt_to_event(message, pz)
            text = json.dumps(result if isinstance(result, dict) else result.detail)
            assert not [source for source in SOURCE_IDS if source in text], path.name


def test_event_ids_are_the_message_control_ids_hashed(pz: Pseudonymizer) -> None:
    message = read("adt-a01.hl7")
    first = hl7.adt_to_event(message, pz)["event_id"]  # type: ignore[index]
    assert hl7.adt_to_event(message, pz)["event_id"] == first  # type: ignore[index]  # resent
    other_sender = message.replace("|EPICADT|GHH|", "|CERNADT|GHH|", 1)
    assert hl7.adt_to_event(other_sender, pz)["event_id"] != first  # type: ignore[index]
    assert "GHH20240405221512000123" not in first


# -- framing ----------------------------------------------------------------------------------


def test_mllp_frames_and_every_segment_separator_are_accepted(pz: Pseudonymizer) -> None:
    plain = read("adt-a01.hl7")
    expected = hl7.adt_to_event(plain, pz)
    segments = plain.strip().split("\n")
    for separator in ("\r", "\n", "\r\n"):
        text = separator.join(segments) + separator
        assert hl7.adt_to_event(text, pz) == expected
        assert hl7.adt_to_event(b"\x0b" + text.encode() + b"\x1c\r", pz) == expected
    assert hl7.adt_to_event(hl7.mllp_frame(plain), pz) == expected
    assert hl7.mllp_frame(plain).startswith(b"\x0bMSH|") and hl7.mllp_frame(plain).endswith(
        b"\r\x1c\r"
    )


def test_a_capture_splits_into_its_messages() -> None:
    capture = list(hl7.split_messages((DATA / "mllp-capture.hl7").read_bytes()))
    assert [line for line, _ in capture] == [1, 6]
    assert [m.split("|")[9] for _, m in capture] == [
        "GHH20240405221512000123",
        "GHH20240610094501000512",
    ]
    batch = (
        "FHS|^~\\&|EPICADT\nBHS|^~\\&|EPICADT\n"
        + read("adt-a01.hl7")
        + "\n"
        + read("adt-a03.hl7")
        + "BTS|2\nFTS|1\n"
    )
    assert [line for line, _ in hl7.split_messages(batch)] == [3, 8]
    assert [line for line, _ in hl7.split_messages("junk\n" + read("adt-a01.hl7"))] == [1, 2]


# -- malformed --------------------------------------------------------------------------------

MALFORMED = {
    "malformed-no-pid3.hl7": "PID-3 (patient identifier list) is empty",
    "malformed-evn2-date-only.hl7": "EVN-2 has no time of day (hours and minutes)",
    "malformed-no-control-id.hl7": "MSH-10 (message control id) is empty",
    "malformed-version-2.9.hl7": "MSH-12 (version id) is not a supported HL7 version",
    "malformed-no-msh.hl7": "a message starts with an MSH segment and its encoding characters",
    "malformed-no-authority.hl7": "PID-3 identifier has no assigning authority (CX-4)",
    "malformed-garbage-segment.hl7": "segment 4 does not start with a segment id (3 characters)",
    "malformed-no-evn.hl7": "ADT^A03 without an EVN segment",
    "malformed-bad-time.hl7": "PV1-45 is not an HL7 timestamp",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_every_malformed_sample_is_refused_precisely(name: str, pz: Pseudonymizer) -> None:
    with pytest.raises(AdapterError) as caught:
        hl7.adt_to_event(read(name), pz)
    assert caught.value.reason == "hl7-malformed"
    assert caught.value.detail.startswith(MALFORMED[name])
    assert not [source for source in SOURCE_IDS if source in caught.value.detail]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda m: "", "empty message"),
        (lambda m: m.replace("PV1|1|I|", "XYZ|1|I|"), "segment 4 (XYZ) is not an HL7 2.5.1"),
        (lambda m: m + "PID|2||MRN-1^^^GHH&2.999.1.1&ISO^MR\n", "needs one PID segment, it has 2"),
        (lambda m: m.replace("PV1|", "ZPV|"), "needs one PV1 segment, it has 0"),
        (lambda m: m + m, "more than one MSH segment"),
        (lambda m: "\x0b" + m + "\x1c\r\x0b" + m + "\x1c\r", "more than one MLLP frame"),
        (lambda m: m.replace("20240405220000-0400", "20240431220000-0400"), "PV1-44"),
        (lambda m: m.replace("ADT^A01^ADT_A01", ""), "MSH-9 (message type) is empty"),
        (lambda m: m.replace("|2.5.1|", "||"), "MSH-12 (version id) is empty"),
    ],
)
def test_broken_messages_are_refused_precisely(change: Any, detail: str, pz: Pseudonymizer) -> None:
    with pytest.raises(AdapterError) as caught:
        hl7.adt_to_event(change(read("adt-a01.hl7")), pz)
    assert caught.value.reason == "hl7-malformed" and detail in caught.value.detail, caught.value


def test_an_unknown_zone_is_a_configuration_error() -> None:
    with pytest.raises(AdapterError, match="unknown time zone 'Mars/Olympus'"):
        hl7.zone("Mars/Olympus")


# -- acknowledgements -------------------------------------------------------------------------


def test_an_ack_echoes_the_control_id_and_swaps_the_parties() -> None:
    ack = hl7.ack_message(read("adt-a01.hl7"), "AA", timestamp_ms=1_712_368_512_000)
    msh, msa = ack.rstrip("\r").split("\r")
    assert msh == (
        "MSH|^~\\&|STEPCARE|GHH|EPICADT|GHH|20240406015512+0000||ACK^A01^ACK|"
        "ACKGHH20240405221512|P|2.5.1"
    )
    assert msa == "MSA|AA|GHH20240405221512000123"
    rejected = hl7.ack_message("garbage", "AR", timestamp_ms=0, text="hl7-malformed: no MSH|x")
    assert rejected.split("\r")[1] == "MSA|AR||hl7-malformed: no MSH x"


@pytest.mark.parametrize(
    "message",
    [b"MSH-----BEGIN CERTIFICATE-----", b"MSH|||x|y", b"MSH|"],
    ids=["no encoding characters", "empty MSH-2", "MSH only"],
)
def test_an_msh_without_usable_encoding_characters_gets_a_plain_ack(message: str | bytes) -> None:
    ack = hl7.ack_message(message, "AE", timestamp_ms=0, text="hl7-malformed")
    assert ack == "MSH|^~\\&|||||19700101000000+0000||ACK|ACK|P|2.5\rMSA|AE||hl7-malformed\r"


# -- the command ------------------------------------------------------------------------------


def test_hl7_import_writes_events_and_reports_rejects(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    out, rejects = tmp_path / "events.jsonl", tmp_path / "rejects.jsonl"
    args = ["bridge", "hl7-import", "--input", str(DATA), "--output", str(out)]
    code = main([*args, "--rejects", str(rejects), "--timezone", "America/New_York"])
    assert code == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    for event in events:
        event_from_json(event)
    assert sorted(e["type"] for e in events) == sorted(
        ["HOSPITAL_ADMITTED"] * 3 + ["HOSPITAL_DISCHARGED"] * 3 + ["DECEASED"]
    )  # a01, a04, a03, a03-evn6, expired, and the capture's a01 and a03
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert {(Path(r["file"]).name, r["line"], r["reason"]) for r in records} == {
        (name, 1, "hl7-malformed") for name in MALFORMED
    }
    err = capsys.readouterr().err.splitlines()
    assert (
        f"{DATA / 'malformed-no-evn.hl7'}:1: hl7-malformed: ADT^A03 without an EVN segment" in err
    )
    assert err[-1].startswith(
        "hl7-import: 19 messages read, 7 written, 9 rejected (9 hl7-malformed), 3 ignored "
        "(1 hl7-ignored-trigger ADT^A08, 1 hl7-not-adt ORU^R01, "
        "1 hl7-not-inpatient ADT^A03 patient class O) in "
    )
    text = out.read_text() + rejects.read_text()
    assert not [source for source in SOURCE_IDS if source in text]


def test_hl7_import_refuses_an_unknown_zone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    code = main(["bridge", "hl7-import", "--input", str(DATA), "--output", str(tmp_path / "o"),
                 "--timezone", "Mars/Olympus"])  # fmt: skip
    assert code == 2
    assert "--timezone: unknown time zone 'Mars/Olympus'" in capsys.readouterr().err


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from("|^~\\&\r\n0129AZ-+. \x0b\x1c")),
        max_size=6,
    ),
    st.data(),
)
def test_no_message_breaks_the_adapter(edits: list[tuple[int, str]], data: st.DataObject) -> None:
    """Whatever arrives, the answer is an event, Ignored, or an AdapterError: never a crash."""
    message = list(read("adt-a03-expired.hl7"))
    for position, char in edits:
        position %= len(message) + 1
        if data.draw(st.booleans()):
            message.insert(position, char)
        elif message:
            del message[min(position, len(message) - 1)]
    try:
        result = hl7.adt_to_event("".join(message), Pseudonymizer(SECRET))
    except AdapterError as exc:
        assert exc.reason == "hl7-malformed"
    else:
        assert isinstance(result, Ignored) or event_from_json(result)


@pytest.mark.attack(
    "HL7 ADT with a malformed event time", "dead letter names the field, not the time"
)
@pytest.mark.parametrize("name", ["malformed-bad-time.hl7", "malformed-evn2-date-only.hl7"])
def test_a_dead_letter_detail_does_not_repeat_the_time(name: str, pz: Pseudonymizer) -> None:
    with pytest.raises(AdapterError) as caught:
        hl7.adt_to_event(read(name), pz)
    for value in ("2024-04-09 13:00", "20240405"):
        assert value not in caught.value.detail
