"""The project's schema registry script: it starts what it says, on loopback only, leaves nothing
running behind, and is a registry stock clients (confluent-kafka's) work with, rules included."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.devtools.registry import PID_FILE, free_port, registry_pids
from streams.formats.avro import SCHEMA_DIR

REPO = Path(__file__).resolve().parents[2]
EXTERNAL_REGISTRY = os.environ.get("STEPCARE_TEST_REGISTRY_URL")
PATIENT_EVENT = (SCHEMA_DIR / "org.stepcare.PatientEvent.avsc").read_text(encoding="utf-8")


def stepcare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], cwd=REPO, capture_output=True, text=True
    )


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on (IPv4-mapped IPv6
    addresses shown as IPv4), from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_address, hex_port = local.split(":")
            raw = bytes.fromhex(hex_address)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address: ipaddress.IPv4Address | ipaddress.IPv6Address
            if len(raw) == 4:
                address = ipaddress.IPv4Address(raw)
            else:
                address = ipaddress.IPv6Address(raw)
                address = address.ipv4_mapped or address
            found.add((str(address), int(hex_port, 16)))
    return found


def test_registry_command_starts_reports_and_stops(tmp_path: Path) -> None:
    run_dir = tmp_path / "registry"
    port = free_port()
    url = f"http://127.0.0.1:{port}/apis/ccompat/v7"

    started = stepcare("registry", "start", "--port", str(port), "--run-dir", str(run_dir))
    assert started.returncode == 0, started.stderr
    try:
        assert started.stdout == f"{url}\n"
        pid = int((run_dir / PID_FILE).read_text())
        assert registry_pids(run_dir) == [pid]
        assert json.loads((run_dir / "registry.json").read_text()) == {
            "pid": pid,
            "port": port,
            "version": "3.0.9",
        }
        status = stepcare("registry", "status", "--run-dir", str(run_dir))
        assert status.returncode == 0
        assert status.stdout == f"Apicurio Registry 3.0.9 running at {url} (pid {pid})\n"

        assert listening_addresses(pid) == {("127.0.0.1", port)}, "loopback only, one port"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as ready:
            assert ready.status == 200

        again = stepcare("registry", "start", "--port", str(port), "--run-dir", str(run_dir))
        assert again.returncode == 2
        assert again.stderr == (
            f"stepcare: a schema registry from {run_dir} is already running at {url}: "
            "stop it first (stepcare registry stop)\n"
        )
        assert registry_pids(run_dir) == [pid]
    finally:
        stopped = stepcare("registry", "stop", "--run-dir", str(run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stderr == f"stopped the schema registry at {url}\n"
    assert registry_pids(run_dir) == []
    assert not (run_dir / PID_FILE).exists()
    status = stepcare("registry", "status", "--run-dir", str(run_dir))
    assert (status.returncode, status.stdout) == (1, f"not running ({run_dir})\n")

    twice = stepcare("registry", "stop", "--run-dir", str(run_dir))
    assert (twice.returncode, twice.stdout) == (0, "")
    assert twice.stderr == f"no schema registry running from {run_dir}\n"


def test_stopping_a_registry_that_never_ran_is_clean(tmp_path: Path) -> None:
    result = stepcare("registry", "stop", "--run-dir", str(tmp_path))
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == f"no schema registry running from {tmp_path}\n"


def test_a_stale_pid_file_names_no_registry_and_kills_nothing(tmp_path: Path) -> None:
    """A pid file outlives its JVM and the pid is reused: stop must not kill the new owner."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = {"pid": bystander.pid, "port": free_port(), "version": "3.0.9"}
        (tmp_path / "registry.json").write_text(json.dumps(state))
        (tmp_path / PID_FILE).write_text(f"{bystander.pid}\n")
        status = stepcare("registry", "status", "--run-dir", str(tmp_path))
        assert (status.returncode, status.stdout) == (1, f"not running ({tmp_path})\n")
        stopped = stepcare("registry", "stop", "--run-dir", str(tmp_path))
        assert stopped.returncode == 0
        assert stopped.stderr == f"no schema registry running from {tmp_path}\n"
        assert bystander.poll() is None, "the bystander is still running"
    finally:
        bystander.kill()
        bystander.wait()


def test_registry_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = stepcare("registry", "start", "--port", str(port), "--run-dir", str(tmp_path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"stepcare: port {port} on 127.0.0.1 is in use (another registry?): "
        "choose another with --port\n"
    )
    assert registry_pids(tmp_path) == []


# -- a stock client against it -----------------------------------------------------------------


def event() -> dict[str, object]:
    """A PatientEvent as confluent-kafka's Avro serdes take and give it (no real patient)."""
    return {
        "event_id": "e-17",
        "patient_id": "p-001",
        "occurred_at": datetime(2024, 3, 1, 9, 30, 0, 125_000, tzinfo=UTC),
        "type": "SURVEY_SUBMITTED",
        "source": "portal",
        "survey": {
            "instrument": "FACT-L",
            "version": "4",
            "responses": {"GP1": 1, "GP2": 0, "GE2": None},
        },
        "attributes": {"site": "A"},
    }


def changed(**field_changes: dict[str, object] | None) -> str:
    """The PatientEvent schema with its top-level fields changed (None removes one) or added."""
    schema = json.loads(PATIENT_EVENT)
    fields = {f["name"]: f for f in schema["fields"]}
    for name, field in field_changes.items():
        if field is None:
            del fields[name]
        else:
            fields[name] = {"name": name, **field}
    schema["fields"] = list(fields.values())
    return json.dumps(schema)


def test_confluent_clients_round_trip_and_backward_is_enforced(
    schema_registry_url: str, topic_name: str
) -> None:
    client = SchemaRegistryClient({"url": schema_registry_url})
    subject = f"{topic_name}-value"
    context = SerializationContext(topic_name, MessageField.VALUE)

    framed = AvroSerializer(client, PATIENT_EVENT)(event(), context)
    assert framed is not None and framed[0] == 0, "Confluent framing: magic byte 0"
    schema_id = int.from_bytes(framed[1:5], "big")
    assert client.get_versions(subject) == [1]
    assert client.get_latest_version(subject).schema_id == schema_id
    assert AvroDeserializer(client)(framed, context) == event()
    registered = PATIENT_EVENT.strip()  # the text AvroSerializer registers (it strips it)
    assert client.register_schema(subject, Schema(registered, "AVRO")) == schema_id
    assert client.lookup_schema(subject, Schema(registered, "AVRO")).schema_id == schema_id

    # PUT /config/<subject>; the client hands back the body, which Apicurio words its own way
    # (Confluent's registry answers {"compatibility": ...}).
    assert client.set_compatibility(subject, "BACKWARD") == {"compatibilityLevel": "BACKWARD"}
    assert client.get_compatibility(subject) == "BACKWARD"

    required = changed(ward={"type": "string"})  # new readers cannot read old records
    retyped = changed(source={"type": ["null", "int"], "default": None})
    for incompatible in (required, retyped):
        assert not client.test_compatibility(subject, Schema(incompatible, "AVRO"))
        with pytest.raises(SchemaRegistryError) as refused:
            client.register_schema(subject, Schema(incompatible, "AVRO"))
        assert refused.value.http_status_code == 409
    assert client.get_versions(subject) == [1]

    optional = changed(ward={"type": ["null", "string"], "default": None})
    new_id = client.register_schema(subject, Schema(optional, "AVRO"))
    assert new_id != schema_id
    assert client.get_versions(subject) == [1, 2]
    reader = AvroDeserializer(client, optional)
    assert reader(framed, context) == {**event(), "ward": None}, "v1 record, v2 reader"


@pytest.mark.skipif(
    bool(EXTERNAL_REGISTRY), reason="the global rule is how stepcare starts its own registry"
)
def test_the_global_rule_refuses_incompatible_schemas_on_any_subject(
    schema_registry_url: str, topic_name: str
) -> None:
    """No per-subject config here: -Dapicurio.rules.global.compatibility=BACKWARD refuses the
    change, though the ccompat API's GET /config still reports Apicurio's default, NONE."""
    client = SchemaRegistryClient({"url": schema_registry_url})
    subject = f"{topic_name}-value"
    client.register_schema(subject, Schema(PATIENT_EVENT, "AVRO"))
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(changed(ward={"type": "string"}), "AVRO"))
    assert refused.value.http_status_code == 409
    assert client.get_compatibility() == "NONE"


@pytest.mark.skipif(bool(EXTERNAL_REGISTRY), reason="a property of Apicurio Registry 3.0.9")
def test_the_registry_compares_schema_text_not_its_canonical_form(
    schema_registry_url: str, topic_name: str
) -> None:
    """Unlike Confluent's registry, Apicurio's ccompat API does not canonicalize: the same schema
    as another text (a trailing newline) is a new version with a new id. Register one text per
    schema (the one the serializer uses)."""
    client = SchemaRegistryClient({"url": schema_registry_url})
    subject = f"{topic_name}-value"
    first = client.register_schema(subject, Schema(PATIENT_EVENT.strip(), "AVRO"))
    second = client.register_schema(subject, Schema(PATIENT_EVENT.strip() + "\n", "AVRO"))
    assert second != first
    assert client.get_versions(subject) == [1, 2]
