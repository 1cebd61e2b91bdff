"""A secured local broker: SASL_SSL for clients, SCRAM users, and ACLs.

A single node can run **secured** (:class:`Security`): clients connect only over SASL_SSL
(TLS, SCRAM-SHA-512 users created when the storage is formatted), every request is checked by
the StandardAuthorizer with no access unless an ACL grants it, and :func:`stepcare_acls` gives
stepcare's three principals (worker, publisher, scheduler) the little each one needs. The
controller and inter-broker listeners stay on loopback as SASL_PLAINTEXT with one PLAIN user,
the broker itself, whose random password lives only in the run folder (mode 0700).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.devtools.jars import BrokerError
from streams.kafka.client import error_text
from streams.kafka.settings import Settings

SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 4096  # Kafka's minimum for SCRAM-SHA-512
BROKER_PRINCIPAL = "stepcare-broker"  # the broker's own PLAIN identity on its loopback listeners
TLS_CERT = "broker.pem"
TLS_KEY = "broker.key"
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
ACL_ROLES = ("worker", "publisher", "scheduler")


@dataclass(frozen=True)
class Security:
    """A secured single node: clients use SASL_SSL (TLS + SCRAM-SHA-512) and ACLs are enforced.

    ``tls_dir`` holds ``broker.pem`` (the broker's certificate, valid for 127.0.0.1, followed by
    its chain) and ``broker.key`` (its private key: unencrypted PKCS#8 PEM, ``BEGIN PRIVATE
    KEY``). ``users`` maps SCRAM-SHA-512 user names to passwords; they are written into the
    cluster metadata when the storage is formatted, so they exist before the first client
    connects. ``super_users`` bypass the ACLs (they create them); everyone else may do only
    what an ACL grants (``allow.everyone.if.no.acl.found=false``).
    """

    tls_dir: Path
    users: Mapping[str, str]
    super_users: tuple[str, ...] = ("admin",)

    def __post_init__(self) -> None:
        cert, key = self.tls_dir / TLS_CERT, self.tls_dir / TLS_KEY
        for path in (cert, key):
            if not path.is_file():
                raise BrokerError(
                    f"{path} is missing: --tls-dir needs {TLS_CERT} (the broker's certificate "
                    f"and chain) and {TLS_KEY} (its PKCS#8 private key)"
                )
        if "-----BEGIN CERTIFICATE-----" not in cert.read_text(errors="replace"):
            raise BrokerError(f"{cert} holds no PEM certificate")
        if not key.read_text(errors="replace").lstrip().startswith("-----BEGIN PRIVATE KEY-----"):
            raise BrokerError(
                f"{key} is not an unencrypted PKCS#8 key (BEGIN PRIVATE KEY); convert it: "
                f"openssl pkcs8 -topk8 -nocrypt -in OLD.key -out {key}"
            )
        if not self.users:
            raise BrokerError("a secured broker needs at least one SCRAM user (--users FILE)")
        for name, password in self.users.items():
            if not USER_NAME.fullmatch(name) or name == BROKER_PRINCIPAL:
                raise BrokerError(f"user name {name!r} is not allowed (letters, digits, ._@-)")
            if not password:
                raise BrokerError(f"user {name} has an empty password")
        for name in self.super_users:
            if name not in self.users:
                raise BrokerError(f"super user {name} is not one of the SCRAM users (--users)")


def read_users(path: Path) -> dict[str, str]:
    """SCRAM users from a file of ``name:password`` lines (blank lines and ``#`` comments
    skipped). Error messages name the line, never its content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerError(f"cannot read the users file {path}: {exc.strerror}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name.strip() or not password:
            raise BrokerError(f"{path} line {number}: expected name:password")
        if name.strip() in users:
            raise BrokerError(f"{path} line {number}: user {name.strip()} appears twice")
        users[name.strip()] = password
    return users


def security_from_options(
    protocol: str, tls_dir: Path | None, users_file: Path | None, super_users: Iterable[str]
) -> Security | None:
    """The ``stepcare broker start`` options as a :class:`Security` (None for plaintext)."""
    if protocol == "plaintext":
        if tls_dir or users_file:
            raise BrokerError("--tls-dir and --users need --security sasl_ssl")
        return None
    if tls_dir is None or users_file is None:
        raise BrokerError("--security sasl_ssl needs --tls-dir DIR and --users FILE")
    return Security(tls_dir.resolve(), read_users(users_file), tuple(super_users) or ("admin",))


def scram_credential(name: str, password: str, salt: bytes | None = None) -> str:
    """A ``kafka-storage format --add-scram`` argument carrying the salted password (RFC 5802
    Hi() = PBKDF2-HMAC-SHA-512), so the password itself never appears on a command line."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)
    b64 = base64.b64encode
    return (
        f"{SCRAM_MECHANISM}=[name={name},iterations={SCRAM_ITERATIONS},"
        f'salt="{b64(salt).decode()}",saltedpassword="{b64(salted).decode()}"]'
    )


def parse_acl_roles(values: Iterable[str], users: Iterable[str]) -> dict[str, str]:
    """``--acl ROLE=USER`` options as {role: user}; the user must be one of the SCRAM users."""
    roles: dict[str, str] = {}
    known = set(users)
    for value in values:
        role, sep, user = value.partition("=")
        if not sep or role not in ACL_ROLES:
            raise BrokerError(f"--acl {value!r}: expected ROLE=USER, ROLE one of {ACL_ROLES}")
        if user not in known:
            raise BrokerError(f"--acl {value}: {user} is not one of the SCRAM users (--users)")
        roles[role] = user
    return roles


def acls_from_options(settings: Settings, values: Iterable[str], security: Security | None) -> list:
    """The ``--acl ROLE=USER`` options of ``stepcare broker start`` as ACL bindings."""
    values = list(values)
    if not values:
        return []
    if security is None:
        raise BrokerError("--acl needs --security sasl_ssl")
    return stepcare_acls(settings, parse_acl_roles(values, security.users))


def stepcare_acls(
    settings: Settings, roles: Mapping[str, str], scheduler_group: str = "scheduling"
) -> list:
    """The ACL bindings (confluent-kafka ``AclBinding``) for stepcare's principals.

    ``worker`` (``stepcare worker``, Faust): read and write the input topic (it appends the
    wall-clock ``CLOCK_TICK``s there), write the escalation and dead-letter topics, create
    those three (the worker creates missing topics at start); read, write and create the
    topics prefixed ``<app id>-`` (its table changelogs); its consumer group ``<app id>``
    (read: join, commit, fetch offsets); and the transactional ids prefixed ``<app id>-``
    (write: used under ``exactly_once`` only). ``publisher`` (``stepcare publish``): write the
    input topic. ``scheduler`` (a scheduling-system subscriber): read the escalation topic, in
    consumer groups prefixed ``scheduler_group``. Describing a resource comes with reading or
    writing it; idempotent producers need only write on a topic (Kafka 3.0+). Nothing else
    (no cluster-level right, no deleting, no altering configs or ACLs).
    """
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    literal, prefixed = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    read, write, create = AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE
    topic, group, txn = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    app = settings.app_id
    grants = {
        "worker": [
            (topic, settings.input_topic, literal, (read, write, create)),
            (topic, settings.escalations_topic, literal, (write, create)),
            (topic, settings.dead_letter_topic, literal, (write, create)),
            (topic, f"{app}-", prefixed, (read, write, create)),
            (group, app, literal, (read,)),
            (txn, f"{app}-", prefixed, (write,)),
        ],
        "publisher": [(topic, settings.input_topic, literal, (write,))],
        "scheduler": [
            (topic, settings.escalations_topic, literal, (read,)),
            (group, scheduler_group, prefixed, (read,)),
        ],
    }
    return [
        AclBinding(kind, name, pattern, f"User:{user}", "*", op, AclPermissionType.ALLOW)
        for role, user in roles.items()
        for kind, name, pattern, ops in grants[role]
        for op in ops
    ]


def grant_acls(config: Mapping[str, Any], bindings: list, timeout: float = 30.0) -> None:
    """Create ACL bindings through an AdminClient of a super user (``config``)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if not bindings:
        return
    admin = AdminClient({**config, "logger": quiet_logger()})
    futures = admin.create_acls(bindings, request_timeout=timeout)
    for binding, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            raise BrokerError(
                f"cannot create the ACL {binding.operation.name} on "
                f"{binding.restype.name} {binding.name} for {binding.principal}: "
                f"{error_text(exc)}"
            ) from None


def quiet_logger() -> logging.Logger:
    quiet = logging.getLogger("stepcare.broker.admin")
    quiet.setLevel(logging.CRITICAL)
    return quiet
