"""Security: a secured broker (TLS + SASL/SCRAM-SHA-512, ACLs enforced) on which each of
stepcare's principals can do its own part and nothing else, clear one-line errors for a wrong
password or a missing ACL, and no patient data in the worker's logs even at DEBUG.

The secured broker is this module's own (in pytest's temp folder), with a throwaway CA and
broker certificate made here with ``openssl``; it is stopped when the module ends.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.devtools.cluster import Cluster, broker_pids
from streams.devtools.config import free_nodes
from streams.devtools.security import Security, grant_acls, stepcare_acls
from streams.kafka.settings import Settings
from tests.integration.workers import Deployment, WorkerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "three-patients.jsonl"
EXPECTED = REPO / "examples" / "three-patients.escalations.jsonl"
UNTIL = "2024-09-01T00:00:00Z"
SETTINGS = Settings.from_env()
# The names the secured deployment uses: the defaults (the broker is this module's own).
NAMES = Settings()
ROLES = {"worker": "stepcare", "publisher": "publisher", "scheduler": "scheduler"}
SCHEDULER_GROUP = "scheduling-ward-7"  # the scheduler may use groups prefixed "scheduling"


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def make_tls(folder: Path) -> Path:
    """A throwaway CA (ca.pem) and a broker certificate for 127.0.0.1 signed by it
    (broker.pem, with broker.key: unencrypted PKCS#8), valid for one day."""
    folder.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=stepcare test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "broker.key", "-out", "broker.csr", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", "broker.pem",
            cwd=folder)  # fmt: skip
    return folder


@dataclass
class SecuredKafka:
    bootstrap: str
    ca: Path
    secrets_dir: Path
    passwords: dict[str, str]

    def password_file(self, user: str, password: str | None = None) -> Path:
        path = self.secrets_dir / f"{user}-{secrets.token_hex(3)}.password"
        path.write_text((password or self.passwords[user]) + "\n")
        path.chmod(0o600)
        return path

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        """The STEPCARE_* settings of one principal (the password in a file)."""
        return {
            "STEPCARE_BOOTSTRAP_SERVERS": self.bootstrap,
            "STEPCARE_APP_ID": NAMES.app_id,
            "STEPCARE_INPUT_TOPIC": NAMES.input_topic,
            "STEPCARE_ESCALATIONS_TOPIC": NAMES.escalations_topic,
            "STEPCARE_DEAD_LETTER_TOPIC": NAMES.dead_letter_topic,
            "STEPCARE_PARTITIONS": "4",
            "STEPCARE_CLOCK": "event",
            "STEPCARE_WEB_PORT": str(free_port()),
            "STEPCARE_LOG_LEVEL": "INFO",
            "STEPCARE_SECURITY_PROTOCOL": "SASL_SSL",
            "STEPCARE_SASL_MECHANISM": "SCRAM-SHA-512",
            "STEPCARE_SASL_USERNAME": user,
            "STEPCARE_SASL_PASSWORD": "",
            "STEPCARE_SASL_PASSWORD_FILE": str(self.password_file(user, password)),
            "STEPCARE_SSL_CAFILE": str(self.ca),
            "STEPCARE_SSL_CERTFILE": "",
            "STEPCARE_SSL_KEYFILE": "",
        }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test CA")
    root = tmp_path_factory.mktemp("secured")
    tls = make_tls(root / "tls")
    passwords = {user: secrets.token_urlsafe(12) for user in ("admin", *ROLES.values())}
    cluster = Cluster(
        root / "kafka",
        SETTINGS.kafka_version,
        free_nodes(1),
        cache_dir=SETTINGS.cache_dir,
        die_with_parent=True,
        report=lambda line: print(f"[secured broker] {line}", file=sys.__stderr__, flush=True),
        security=Security(tls, passwords, super_users=("admin",)),
    )
    try:
        bootstrap = cluster.start()
        admin = {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "admin",
            "sasl.password": passwords["admin"],
            "ssl.ca.location": str(tls / "ca.pem"),
        }
        # As the super user, over TLS: what each principal may do (see stepcare_acls).
        grant_acls(admin, stepcare_acls(NAMES, ROLES, scheduler_group="scheduling"))
        secrets_dir = root / "secrets"
        secrets_dir.mkdir(mode=0o700)
        yield SecuredKafka(bootstrap, tls / "ca.pem", secrets_dir, passwords)
    finally:
        cluster.stop()
    assert broker_pids(cluster.run_dir) == []


def stepcare(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STEPCARE_", "KAFKA_"))}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def expected_ids() -> list[str]:
    return sorted(json.loads(line)["escalation_id"] for line in EXPECTED.read_text().splitlines())


def test_publisher_worker_and_scheduler_each_do_their_part(
    secured: SecuredKafka, tmp_path: Path
) -> None:
    worker = WorkerProcess(secured.env("stepcare"), tmp_path / "worker")
    try:
        worker.wait_ready(timeout=60)
        published = stepcare(
            secured.env("publisher"), "publish", "--input", str(EXAMPLE), "--until", UNTIL
        )
        assert published.returncode == 0, published.stderr
        assert "0 not delivered" in published.stderr

        clean = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        scheduler = {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "scheduler",
            "KAFKA_SASL_PASSWORD": secured.passwords["scheduler"],
            "KAFKA_SSL_CA_LOCATION": str(secured.ca),
        }
        subscriber = subprocess.run(
            [sys.executable, str(REPO / "examples" / "subscriber.py"),
             "--bootstrap-servers", secured.bootstrap, "--group", SCHEDULER_GROUP,
             "--state", str(tmp_path / "bookings.sqlite"),
             "--max-messages", str(len(expected_ids())), "--idle-timeout", "30"],
            env={**clean, **scheduler}, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert subscriber.returncode == 0, subscriber.stderr
        booked = [json.loads(line) for line in subscriber.stdout.splitlines()]
        assert sorted(b["escalation_id"] for b in booked) == expected_ids()
        assert worker.alive(), worker.tail()
    finally:
        if worker.alive():
            worker.stop()
    log = worker.log.read_text()
    assert "AuthorizationFailed" not in log and "Authorization failed" not in log, worker.tail()


def test_publish_with_a_wrong_password_is_one_line_naming_authentication(
    secured: SecuredKafka,
) -> None:
    started = time.monotonic()
    done = stepcare(
        secured.env("publisher", password="not-the-password"),
        "publish", "--input", str(EXAMPLE),
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "authentication" in done.stderr.lower(), done.stderr
    assert time.monotonic() - started < 10  # at once, not after the metadata timeout


def test_publish_without_a_write_acl_is_one_line_naming_authorization(
    secured: SecuredKafka,
) -> None:
    done = stepcare(secured.env("scheduler"), "publish", "--input", str(EXAMPLE))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "authorization" in done.stderr.lower(), done.stderr


def test_worker_with_a_wrong_password_exits_with_one_line_naming_authentication(
    secured: SecuredKafka, tmp_path: Path
) -> None:
    env = {**secured.env("stepcare", password="not-the-password")}
    env["STEPCARE_DATA_DIR"] = str(tmp_path / "worker")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STEPCARE_", "KAFKA_"))}
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"], cwd=REPO, env={**clean, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = worker.communicate(timeout=15)  # no retrying: it stops at once
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert "authentication" in err.lower(), err


# -- no patient data in the worker's logs --------------------------------------------------------

ITEM_CODE = re.compile(r"\b(G[PSEF]\d|B[15]|C[26]|L[1-5])\b")


def patient_data_in(text: str, events: list[dict], escalations: list[dict]) -> list[str]:
    """What of the example's patient-level data appears in ``text``."""
    found = []
    for patient in sorted({e["patient_id"] for e in events}):
        if patient in text:
            found.append(f"patient id {patient}")
    if ITEM_CODE.search(text):
        found.append(f"FACT-L item code {ITEM_CODE.search(text)[0]}")
    if "responses" in text:
        found.append("a responses map")
    for escalation in escalations:  # reasons carry scores and baselines
        if escalation["reason"]["text"] in text:
            found.append(f"the reason of {escalation['escalation_id']}")
    return found


def test_the_worker_logs_no_patient_data_at_debug(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    events = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    escalations = [json.loads(line) for line in EXPECTED.read_text().splitlines()]
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path, STEPCARE_LOG_LEVEL="DEBUG")
    worker = deployment.worker("worker")
    try:
        deployment.publish(events, until=UNTIL)
        assert len(deployment.escalations_read(expected=len(escalations))) == len(escalations)
    finally:
        worker.stop()
    log = worker.log.read_text(errors="replace")
    assert "[DEBUG]" in log  # DEBUG was in force (asyncio's "Using selector" at least)
    assert patient_data_in(log, events, escalations) == []
