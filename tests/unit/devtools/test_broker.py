"""The broker script's pure parts: which versions it accepts and how it lays out a cluster."""

import base64
import hashlib
from pathlib import Path

import pytest

from streams import cli
from streams.devtools.config import Node, Secured, default_nodes, server_properties
from streams.devtools.jars import BrokerError, kafka_line
from streams.devtools.security import (
    Security,
    parse_acl_roles,
    read_users,
    scram_credential,
    stepcare_acls,
)
from streams.kafka.settings import Settings


@pytest.mark.parametrize(
    ("version", "line"), [("3.9.2", 3), ("3.9.1", 3), ("4.1.2", 4), ("4.4.0", 4)]
)
def test_supported_versions(version: str, line: int) -> None:
    assert kafka_line(version) == line


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("4.0.0", "4.0.x rejects JoinGroup v0/v1; use 4.1 or later"),
        ("3.8.1", "use 3.9.x or 4.1 and later"),
        ("latest", "not of the form X.Y.Z"),
    ],
)
def test_unsupported_versions_are_refused_with_the_reason(version: str, reason: str) -> None:
    with pytest.raises(BrokerError, match=reason):
        kafka_line(version)


def test_default_ports_step_by_ten_per_node() -> None:
    assert default_nodes(3, 9092) == [Node(1, 9092, 9093), Node(2, 9102, 9103), Node(3, 9112, 9113)]


def parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_single_node_uses_replication_one() -> None:
    node = Node(1, 9092, 9093)
    props = parse(server_properties(node, [node], Path("/d"), 3))
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert "share.coordinator.state.topic.replication.factor" not in props  # a 4.x-only key


def test_three_nodes_replicate_three_ways_with_two_in_sync() -> None:
    nodes = default_nodes(3, 19092)
    props = parse(server_properties(nodes[1], nodes, Path("/d"), 4))
    assert props["node.id"] == "2"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19102,CONTROLLER://127.0.0.1:19103"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113"
    )
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["share.coordinator.state.topic.replication.factor"] == "3"


# -- the secured single node (TLS + SCRAM-SHA-512, ACLs) ------------------------------------------

KEY = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
USERS = {"admin": "a-secret", "stepcare": "s-secret", "publisher": "p", "scheduler": "q"}


def tls_dir(tmp_path: Path, key: str = KEY, cert: str = CERT) -> Path:
    (tmp_path / "broker.key").write_text(key)
    (tmp_path / "broker.pem").write_text(cert)
    return tmp_path


def test_a_secured_node_takes_clients_only_over_sasl_ssl_and_enforces_acls() -> None:
    node = Node(1, 19092, 19093)
    secured = Secured(19094, Path("/run/keystore.pem"), "s3cret", ("admin",))
    props = parse(server_properties(node, [node], Path("/d"), 4, secured))
    assert props["listeners"] == (
        "SASL_SSL://127.0.0.1:19092,INTERNAL://127.0.0.1:19094,CONTROLLER://127.0.0.1:19093"
    )
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:19092,INTERNAL://127.0.0.1:19094"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:SASL_PLAINTEXT,INTERNAL:SASL_PLAINTEXT,SASL_SSL:SASL_SSL"
    )
    assert "PLAINTEXT://" not in props["listeners"]
    assert props["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["ssl.keystore.type"] == "PEM"
    assert props["ssl.keystore.location"] == "/run/keystore.pem"
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert (
        'user_stepcare-broker="s3cret"' in props["listener.name.controller.plain.sasl.jaas.config"]
    )
    assert props["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert props["super.users"] == "User:stepcare-broker;User:admin"
    assert props["allow.everyone.if.no.acl.found"] == "false"


def test_a_scram_credential_carries_the_salted_password_not_the_password() -> None:
    salt = b"0123456789abcdef"
    credential = scram_credential("stepcare", "correct horse", salt=salt)
    salted = hashlib.pbkdf2_hmac("sha512", b"correct horse", salt, 4096)
    assert credential == (
        "SCRAM-SHA-512=[name=stepcare,iterations=4096,"
        f'salt="{base64.b64encode(salt).decode()}",'
        f'saltedpassword="{base64.b64encode(salted).decode()}"]'
    )
    assert "correct horse" not in credential


def test_users_file_lines_are_name_colon_password(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# SCRAM users\nadmin:a:b=c\n\nstepcare: spaced \n")
    assert read_users(users) == {"admin": "a:b=c", "stepcare": " spaced "}
    users.write_text("admin:x\nno password here\n")
    with pytest.raises(BrokerError, match=r"line 2: expected name:password$"):
        read_users(users)


def test_security_needs_a_pkcs8_key_and_super_users_among_the_users(tmp_path: Path) -> None:
    assert Security(tls_dir(tmp_path), USERS).super_users == ("admin",)
    rsa = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"
    with pytest.raises(BrokerError, match="not an unencrypted PKCS#8 key"):
        Security(tls_dir(tmp_path, key=rsa), USERS)
    with pytest.raises(BrokerError, match="super user root is not one of the SCRAM users"):
        Security(tls_dir(tmp_path), USERS, super_users=("root",))
    with pytest.raises(BrokerError, match="'stepcare-broker' is not allowed"):
        Security(tls_dir(tmp_path), {**USERS, "stepcare-broker": "x"})
    (tmp_path / "broker.pem").unlink()
    with pytest.raises(BrokerError, match=r"broker\.pem is missing"):
        Security(tmp_path, USERS)


def test_each_principal_gets_only_its_own_acls() -> None:
    from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType

    settings = Settings()
    roles = {"worker": "stepcare", "publisher": "publisher", "scheduler": "scheduler"}
    bindings = stepcare_acls(settings, roles)
    assert {b.permission_type for b in bindings} == {AclPermissionType.ALLOW}
    assert {b.host for b in bindings} == {"*"}
    granted = {
        (
            b.principal,
            b.restype.name,
            b.name + ("*" if b.resource_pattern_type == ResourcePatternType.PREFIXED else ""),
            b.operation.name,
        )
        for b in bindings
    }
    assert AclOperation.ALL.name not in {g[3] for g in granted}
    worker = {g[1:] for g in granted if g[0] == "User:stepcare"}
    assert worker == {
        ("TOPIC", "stepcare.patient-events.v1", "READ"),
        ("TOPIC", "stepcare.patient-events.v1", "WRITE"),  # wall-clock ticks
        ("TOPIC", "stepcare.patient-events.v1", "CREATE"),
        ("TOPIC", "stepcare.escalations.v1", "WRITE"),
        ("TOPIC", "stepcare.escalations.v1", "CREATE"),
        ("TOPIC", "stepcare.patient-events.dlq.v1", "WRITE"),
        ("TOPIC", "stepcare.patient-events.dlq.v1", "CREATE"),
        ("TOPIC", "stepcare-*", "READ"),  # the table changelogs
        ("TOPIC", "stepcare-*", "WRITE"),
        ("TOPIC", "stepcare-*", "CREATE"),
        ("GROUP", "stepcare", "READ"),
        ("TRANSACTIONAL_ID", "stepcare-*", "WRITE"),  # exactly_once
    }
    assert {g[1:] for g in granted if g[0] == "User:publisher"} == {
        ("TOPIC", "stepcare.patient-events.v1", "WRITE")
    }
    assert {g[1:] for g in granted if g[0] == "User:scheduler"} == {
        ("TOPIC", "stepcare.escalations.v1", "READ"),
        ("GROUP", "scheduling*", "READ"),
    }


def test_acl_options_name_a_role_and_a_known_user() -> None:
    assert parse_acl_roles(["worker=stepcare"], USERS) == {"worker": "stepcare"}
    with pytest.raises(BrokerError, match="ROLE one of"):
        parse_acl_roles(["auditor=stepcare"], USERS)
    with pytest.raises(BrokerError, match="nobody is not one of the SCRAM users"):
        parse_acl_roles(["publisher=nobody"], USERS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-dir", "/tmp"], "--tls-dir and --users need --security sasl_ssl"),
        (["--security", "sasl_ssl"], "--security sasl_ssl needs --tls-dir DIR and --users FILE"),
        (["--acl", "worker=stepcare"], "--acl needs --security sasl_ssl"),
        (["--security", "sasl_ssl", "--nodes", "3", "TLS"], "a secured broker"),
    ],
)
def test_broker_start_refuses_inconsistent_security_options_in_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "TLS" in args:
        users = tmp_path / "users"
        users.write_text("admin:x\n")
        args = [a for a in args if a != "TLS"]
        args += ["--tls-dir", str(tls_dir(tmp_path)), "--users", str(users)]
    status = cli.main(["broker", "start", "--run-dir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()  # refused before anything started
