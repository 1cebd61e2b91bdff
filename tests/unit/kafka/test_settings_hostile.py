"""Settings and start-up under hostile or mistaken configuration (issue 12, "Safe to deploy").

Every mistake is refused with one line ``stepcare: ...`` and exit status 2, never a traceback:
values checked when the settings are read (streams/kafka/settings.py), files checked when they are
used, and the worker's own checks before faust starts (``stepcare worker`` as a real process;
none of these needs a broker: they all come before the worker connects).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.cli import main
from streams.interfaces.pseudonym import SECRET_ENV, SECRET_FILE_ENV, PseudonymError, Pseudonymizer
from streams.kafka.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "three-patients.jsonl"
SECRET = b"stepcare-test-secret-0123456789abcdef"
DLQ_IS_INPUT = (
    "STEPCARE_INPUT_TOPIC and STEPCARE_DEAD_LETTER_TOPIC are both 'x.events': the worker "
    "would read its own output"
)


def one_line(err: str) -> str:
    """The single line of ``err``, which must be ``stepcare: ...`` with no traceback."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("stepcare: ")
    return lines[0].removeprefix("stepcare: ")


# -- values, checked when the settings are read ---------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STEPCARE_LOG_LEVEL": "BOGUS"},
         "STEPCARE_LOG_LEVEL='BOGUS': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ({"STEPCARE_PARTITIONS": "99999999999"},
         "STEPCARE_PARTITIONS=99999999999: expected 1-10000"),
        ({"STEPCARE_PARTITIONS": "10001"}, "STEPCARE_PARTITIONS=10001: expected 1-10000"),
        ({"STEPCARE_REPLICATION": "17"}, "STEPCARE_REPLICATION=17: expected 1-16"),
        ({"STEPCARE_TICK_INTERVAL": "86401"}, "STEPCARE_TICK_INTERVAL=86401: expected 1-86400"),
        ({"STEPCARE_BROKER_PORT": "70000"}, "STEPCARE_BROKER_PORT=70000: expected 1-65500"),
        ({"STEPCARE_BROKER_HEAP_MB": "-1"}, "STEPCARE_BROKER_HEAP_MB=-1: expected 128-1048576"),
        ({"STEPCARE_APP_ID": "a/b c"},
         "STEPCARE_APP_ID='a/b c': expected 1-229 letters, digits, '.', '_' or '-'"),
        ({"STEPCARE_APP_ID": "a" * 230},
         f"STEPCARE_APP_ID={'a' * 80!r}: expected 1-229 letters, digits, '.', '_' or '-'"),
        ({"STEPCARE_APP_ID": ""}, "STEPCARE_APP_ID='': expected 1-229 letters"),
        ({"STEPCARE_INPUT_TOPIC": ".."}, "STEPCARE_INPUT_TOPIC='..': expected 1-249 letters"),
        ({"STEPCARE_ESCALATIONS_TOPIC": "esc\u00e9"}, "STEPCARE_ESCALATIONS_TOPIC='esc\u00e9'"),
        ({"STEPCARE_INPUT_TOPIC": "x.events", "STEPCARE_DEAD_LETTER_TOPIC": "x.events"},
         DLQ_IS_INPUT),
        ({"STEPCARE_ESCALATIONS_TOPIC": "x", "STEPCARE_DEAD_LETTER_TOPIC": "x"},
         "STEPCARE_ESCALATIONS_TOPIC and STEPCARE_DEAD_LETTER_TOPIC are both 'x'"),
        ({"STEPCARE_INPUT_TOPIC": "x", "STEPCARE_ESCALATIONS_TOPIC": "x"},
         "STEPCARE_INPUT_TOPIC and STEPCARE_ESCALATIONS_TOPIC are both 'x'"),
        ({"STEPCARE_INPUT_TOPIC": "stepcare-patients-changelog"},
         "STEPCARE_INPUT_TOPIC='stepcare-patients-changelog': the name of a topic the worker "
         "makes for itself"),
        ({"STEPCARE_APP_ID": "w", "STEPCARE_DEAD_LETTER_TOPIC": "w-__assignor-__leader"},
         "STEPCARE_DEAD_LETTER_TOPIC='w-__assignor-__leader': the name of a topic the worker"),
        ({"STEPCARE_WEB_HOST": "256.1.1.1"},
         "STEPCARE_WEB_HOST='256.1.1.1': expected an IP address or a host name"),
        ({"STEPCARE_WEB_HOST": ""}, "STEPCARE_WEB_HOST='': expected an IP address"),
        ({"STEPCARE_WEB_HOST": "a b"}, "STEPCARE_WEB_HOST='a b': expected an IP address"),
    ],
)  # fmt: skip
@pytest.mark.attack("a setting out of range, malformed or looping", "exit 2, one line naming it")
def test_a_bad_value_is_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "value",
    ["a:1,,b:2", "a:1,", "", "kafka-1", "kafka-1:0", "kafka-1:65536", "kafka-1:9092x",
     ":9092", "256.0.0.1:9092", "kafka://k:9092", "[::1]", "[zz]:9092", "a b:9092",
     "k:\u0661\u0662"],
)  # fmt: skip
@pytest.mark.attack("a malformed STEPCARE_BOOTSTRAP_SERVERS", "exit 2, one line naming it")
def test_a_malformed_bootstrap_list_is_refused(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"STEPCARE_BOOTSTRAP_SERVERS": value})
    assert str(caught.value) == (
        f"STEPCARE_BOOTSTRAP_SERVERS={value!r}: expected host:port[,host:port...] with "
        "ports 1-65535"
    )


@pytest.mark.parametrize(
    "env",
    [
        {"STEPCARE_BOOTSTRAP_SERVERS": "kafka-1:9092, kafka-2.example.org:19092,10.0.0.3:1"},
        {"STEPCARE_BOOTSTRAP_SERVERS": "[::1]:9092,kafka_3:65535"},
        {"STEPCARE_LOG_LEVEL": "debug"},
        {"STEPCARE_WEB_HOST": "::1"},
        {"STEPCARE_WEB_HOST": "0.0.0.0"},
        {"STEPCARE_WEB_HOST": "worker-1.example.org"},
        {"STEPCARE_APP_ID": "a" * 229, "STEPCARE_PARTITIONS": "10000"},
        {"STEPCARE_INPUT_TOPIC": "t" * 249, "STEPCARE_REPLICATION": "16"},
    ],
)
def test_good_values_are_accepted(env: dict[str, str]) -> None:
    Settings.from_env(env)


def test_every_whole_number_setting_is_bounded_and_the_bounds_are_documented() -> None:
    documented = {name: doc for name, _, doc in Settings.describe()}
    for field in dataclasses.fields(Settings):
        if field.type == "int":
            low, high = field.metadata["bounds"]
            assert documented["STEPCARE_" + field.name.upper()].endswith(f" ({low}-{high})")
    assert documented["STEPCARE_PARTITIONS"].endswith("(1-10000)")


def test_a_replay_run_whose_app_id_grows_too_long_is_refused_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPCARE_APP_ID", "a" * 220)
    assert main(["worker", "--replay", "run1"]) == 2
    assert one_line(capsys.readouterr().err).startswith(
        f"STEPCARE_APP_ID={'a' * 80!r}: expected 1-229"
    )


@pytest.mark.parametrize(
    "command",
    [["settings"], ["topics"], ["score", str(EXAMPLE)], ["replay", "--input", str(EXAMPLE)],
     ["broker", "status"], ["simulate", "--patients", "1", "--output", "-"]],
)  # fmt: skip
def test_every_command_reports_a_bad_setting_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    monkeypatch.setenv("STEPCARE_LOG_LEVEL", "BOGUS")
    assert main(command) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err).startswith("STEPCARE_LOG_LEVEL='BOGUS'")


# -- files a setting names ----------------------------------------------------------------------


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key (openssl), key mode 600."""
    key, cert = folder / "client.key", folder / "client.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=stepcare-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield path


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return make_cert(tmp_path)


def test_good_tls_files_make_a_context_and_a_client_config(tls: tuple[Path, Path]) -> None:
    cert, key = tls
    settings = Settings.from_env({"STEPCARE_SECURITY_PROTOCOL": "SSL",
                                  "STEPCARE_SSL_CAFILE": str(cert),
                                  "STEPCARE_SSL_CERTFILE": str(cert),
                                  "STEPCARE_SSL_KEYFILE": str(key)})  # fmt: skip
    settings.ssl_context()
    assert settings.confluent_config()["ssl.key.location"] == str(key)


@pytest.mark.parametrize("variable", ["CAFILE", "CERTFILE", "KEYFILE"])
@pytest.mark.parametrize("content", ["missing", "garbage", "pem-garbage", "device", "fifo"])
@pytest.mark.attack(
    "STEPCARE_SSL_*FILE missing, not PEM, garbage PEM, /dev/zero or a FIFO",
    "exit 2, one line naming the variable",
)
def test_a_bad_tls_file_is_named(
    tmp_path: Path, tls: tuple[Path, Path], fifo: Path, variable: str, content: str
) -> None:
    cert, key = tls
    bad = tmp_path / "bad.pem"
    if content == "garbage":
        bad.write_bytes(os.urandom(300))
    elif content == "pem-garbage":
        kind = "PRIVATE KEY" if variable == "KEYFILE" else "CERTIFICATE"
        bad.write_text(f"-----BEGIN {kind}-----\nAAAAgarbage\n-----END {kind}-----\n")
    elif content == "device":
        bad = Path("/dev/zero")
    elif content == "fifo":
        bad = fifo
    if bad.exists() and bad.is_file():
        bad.chmod(0o600)
    env = {"STEPCARE_SECURITY_PROTOCOL": "SSL", "STEPCARE_SSL_CAFILE": str(cert),
           "STEPCARE_SSL_CERTFILE": str(cert), "STEPCARE_SSL_KEYFILE": str(key),
           f"STEPCARE_SSL_{variable}": str(bad)}  # fmt: skip
    settings = Settings.from_env(env)
    for use in (settings.ssl_context, settings.confluent_config):
        with pytest.raises(SettingsError) as caught:
            use()
        message = str(caught.value)
        assert message.startswith(f"STEPCARE_SSL_{variable}")
        assert "\n" not in message


def test_a_key_that_is_not_the_certificate_s_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = make_cert(tmp_path / "a")
    _, other_key = make_cert(tmp_path / "b")
    settings = Settings.from_env({"STEPCARE_SSL_CERTFILE": str(cert),
                                  "STEPCARE_SSL_KEYFILE": str(other_key)})  # fmt: skip
    for use in (settings.ssl_context, settings.confluent_config):
        with pytest.raises(SettingsError) as caught:
            use()
        assert str(caught.value) == (
            f"STEPCARE_SSL_KEYFILE: {other_key} is not the key of the certificate {cert}"
        )


@pytest.mark.attack("STEPCARE_SASL_PASSWORD_FILE is /dev/zero, a FIFO or not UTF-8",
                    "exit 2, one line naming the variable")  # fmt: skip
def test_a_bad_password_file_is_named(tmp_path: Path, fifo: Path) -> None:
    binary = tmp_path / "password"
    binary.write_bytes(b"\xff\xfe secret")
    binary.chmod(0o600)
    for path, reason in ((Path("/dev/zero"), "/dev/zero is not a regular file"),
                         (fifo, f"{fifo} is not a regular file"),
                         (binary, f"{binary} is not UTF-8 text")):  # fmt: skip
        settings = Settings.from_env({"STEPCARE_SASL_PASSWORD_FILE": str(path)})
        with pytest.raises(SettingsError) as caught:
            settings.sasl_secret()
        assert str(caught.value) == f"STEPCARE_SASL_PASSWORD_FILE: {reason}"


def test_read_small_file_reads_at_most_its_limit(tmp_path: Path) -> None:
    from streams.clinical.files import read_small_file

    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    assert read_small_file(path, 11) == b"x" * 11
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        read_small_file(path, 10)


# -- secret files readable by others: a warning -------------------------------------------------


def _secret_file(tmp_path: Path, mode: int, data: bytes = SECRET, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_secret_file_readable_by_others_is_warned_about(
    tmp_path: Path, tls: tuple[Path, Path], capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    cert, key = tls
    key.chmod(mode)
    password = _secret_file(tmp_path, mode, b"hunter2\n", "password")
    pseudonym = _secret_file(tmp_path, mode)
    Pseudonymizer.from_env({SECRET_FILE_ENV: str(pseudonym)})
    settings = Settings.from_env({"STEPCARE_SECURITY_PROTOCOL": "SASL_SSL",
                                  "STEPCARE_SASL_PASSWORD_FILE": str(password),
                                  "STEPCARE_SSL_CERTFILE": str(cert),
                                  "STEPCARE_SSL_KEYFILE": str(key)})  # fmt: skip
    settings.confluent_config()
    settings.confluent_config()  # once per file, however often it is read
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"stepcare: warning: {variable} {path} is readable by group or others (mode {mode:o}); "
        f"fix it with: chmod 600 {path}"
        for variable, path in (
            (SECRET_FILE_ENV, pseudonym),
            ("STEPCARE_SSL_KEYFILE", key),
            ("STEPCARE_SASL_PASSWORD_FILE", password),
        )
    ]


def test_a_private_secret_file_is_not_warned_about(
    tmp_path: Path, tls: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = tls
    password = _secret_file(tmp_path, 0o600, b"hunter2\n", "password")
    Pseudonymizer.from_env({SECRET_FILE_ENV: str(_secret_file(tmp_path, 0o400))})
    Settings.from_env({"STEPCARE_SECURITY_PROTOCOL": "SASL_SSL",
                       "STEPCARE_SASL_PASSWORD_FILE": str(password),
                       "STEPCARE_SSL_CAFILE": str(cert),  # a certificate: not a secret
                       "STEPCARE_SSL_CERTFILE": str(cert),
                       "STEPCARE_SSL_KEYFILE": str(key)}).confluent_config()  # fmt: skip
    assert capsys.readouterr().err == ""


# -- the pseudonym secret -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "fifo", "huge"])
@pytest.mark.attack("a pseudonym secret file that is /dev/zero, a FIFO or huge",
                    "exit 2, one line; nothing read past 4 KiB")  # fmt: skip
def test_an_endless_or_huge_secret_file_is_refused(tmp_path: Path, fifo: Path, kind: str) -> None:
    path = {"device": Path("/dev/zero"), "fifo": fifo, "huge": tmp_path / "huge"}[kind]
    if kind == "huge":
        path.write_bytes(b"s" * 4097)
        path.chmod(0o600)
    with pytest.raises(PseudonymError) as caught:
        Pseudonymizer.from_env({SECRET_FILE_ENV: str(path)})
    reason = "is larger than 4,096 bytes" if kind == "huge" else "is not a regular file"
    assert str(caught.value) == f"{SECRET_FILE_ENV}: {path} {reason}"


@pytest.mark.attack(
    "a pseudonym secret that is not UTF-8 (file or variable)",
    "its bytes are the secret: the file and the variable give the same ids",
)
def test_a_secret_that_is_not_utf8_is_its_bytes(tmp_path: Path) -> None:
    raw = b"\xff\xfe" + SECRET
    path = _secret_file(tmp_path, 0o600, raw)
    from_file = Pseudonymizer.from_env({SECRET_FILE_ENV: str(path)})
    # os.environ holds bytes that are not UTF-8 as surrogate escapes (PEP 383).
    from_variable = Pseudonymizer.from_env({SECRET_ENV: os.fsdecode(raw)})
    expected = Pseudonymizer(raw).patient_id("urn:oid:2.999", "MRN-1")
    assert from_file.patient_id("urn:oid:2.999", "MRN-1") == expected
    assert from_variable.patient_id("urn:oid:2.999", "MRN-1") == expected


def test_a_bridge_with_an_endless_secret_file_exits_2_with_one_line(tmp_path: Path) -> None:
    done = _run(["bridge", "fhir-import", "--input", str(EXAMPLE), "--output", "-"],
                {SECRET_FILE_ENV: "/dev/zero"}, tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert one_line(done.stderr) == f"{SECRET_FILE_ENV}: /dev/zero is not a regular file"


# -- policy files -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["binary", "latin1", "not-toml", "huge", "device", "fifo"])
@pytest.mark.attack("replay --policy binary/non-UTF-8/non-TOML/huge file, /dev/zero, a FIFO",
                    "exit 2, one line")  # fmt: skip
def test_a_policy_file_that_is_not_a_policy_is_one_line(
    tmp_path: Path, fifo: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "policy.toml"
    reasons = {
        "binary": (b"\x00\x01\xc3\x28\xff" * 50, f"{path}: not a policy (not UTF-8 text)"),
        "latin1": ('policy_id = "caf\u00e9"\n'.encode("latin-1"),
                   f"{path}: not a policy (not UTF-8 text)"),
        "not-toml": (b"\x00\x01\x02", f"{path}: not valid TOML ("),
        "huge": (b"# " + b"x" * 70_000 + b"\n", f"policy {path} is larger than 65,536 bytes"),
    }  # fmt: skip
    if kind == "device":
        path, message = Path("/dev/zero"), "policy /dev/zero is not a regular file"
    elif kind == "fifo":
        path, message = fifo, f"policy {fifo} is not a regular file"
    else:
        data, message = reasons[kind]
        path.write_bytes(data)
    status = main(["replay", "--input", str(EXAMPLE), "--policy", str(path)])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert one_line(err).startswith(message)


# -- simulate, demo cohort, explain -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--start", "9899-06-26T00:00:00Z", "--accrual-weeks", "1"],
     ["--start", "9899-01-01T00:00:00Z"], ["--start", "9999-12-31T00:00:00Z"],
     ["--weeks", "1e300"], ["--weeks", "inf"], ["--accrual-weeks", "inf"]],
)  # fmt: skip
@pytest.mark.attack("simulate --start so late (or --weeks so long) that events pass 9899",
                    "exit 2, one line; nothing written")  # fmt: skip
def test_simulate_refuses_a_cohort_past_the_event_time_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    output = tmp_path / "sim.jsonl"
    status = main(["simulate", "--patients", "3", "--output", str(output), *args])
    out, err = capsys.readouterr()
    assert (status, out, output.exists()) == (2, "", False)
    assert re.fullmatch(
        r"--start \S+ with \S+ weeks of accrual and \S+ of follow-up would end after "
        r"9900-01-01T00:00:00Z, the latest time an event may have: start earlier or simulate "
        r"fewer weeks",
        one_line(err),
    )


def test_simulate_accepts_the_latest_start_that_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "sim.jsonl"
    args = ["--start", "9899-06-24T00:00:00Z", "--accrual-weeks", "1", "--patients", "300"]
    assert main(["simulate", *args, "--output", str(output)]) == 0
    capsys.readouterr()
    last = max(orjson.loads(line)["occurred_at"] for line in output.read_text().splitlines())
    assert "9899-06-24" < last < "9900-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--weeks", "1000000000"], "--weeks must be 1-520"),
     (["--weeks", "0"], "--weeks must be 1-520"),
     (["--weeks", "520", "--end", "0001-06-01T00:00:00Z"],
      "--end 0001-06-01T00:00:00Z: the cohort's events must lie within 0001-01-01 and "
      "9900-01-01T00:00:00Z"),
     (["--end", "9999-01-01T00:00:00Z"],
      "--end 9999-01-01T00:00:00Z: the cohort's events must lie within 0001-01-01 and "
      "9900-01-01T00:00:00Z")],
)  # fmt: skip
@pytest.mark.attack("demo cohort --weeks 1000000000 (or an --end out of range)",
                    "exit 2, one line (at most 520 weeks)")  # fmt: skip
def test_demo_cohort_is_bounded(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status = main(["demo", "cohort", "--patients", "1", *args])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert one_line(err) == message


def test_demo_cohort_of_the_longest_span_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "cohort", "--patients", "2", "--weeks", "520"]) == 0
    events = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events and all(e["patient_id"].startswith("demo-") for e in events)


@pytest.mark.attack("explain --png of a patient id with $...$ (matplotlib mathtext)",
                    "the id is drawn as text; exit 0")  # fmt: skip
def test_explain_png_draws_dollars_in_a_patient_id_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patient = "p-$x^$\\frac"
    log = tmp_path / "log.jsonl"
    log.write_text(EXAMPLE.read_text().replace('"p-001"', orjson.dumps(patient).decode()))
    png = tmp_path / "chart.png"
    status = main(["explain", "--input", str(log), "--patient", patient, "--png", str(png)])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    assert out.startswith(f"Patient {patient}")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- bridges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topics",
    [["--from-topic", "a", "--dead-letter-topic", "a"], ["--from-topic", "a", "--to-topic", "a"],
     ["--to-topic", "b", "--dead-letter-topic", "b"]],
)  # fmt: skip
@pytest.mark.attack("a live bridge whose dead-letter (or output) topic is its input",
                    "exit 2, one line, before it connects")  # fmt: skip
def test_a_bridge_reading_its_own_output_is_refused(tmp_path: Path, topics: list[str]) -> None:
    env = {SECRET_ENV: SECRET.decode(), "STEPCARE_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    done = _run(["bridge", "fhir-in", *topics], env, tmp_path)
    assert done.returncode == 2
    assert re.fullmatch(r"bridge fhir-in: the topics to read \(\S+\), to write \(\S+\) and of "
                        r"dead letters \(\S+\) must differ", one_line(done.stderr))  # fmt: skip


# -- the worker's start (a real process) --------------------------------------------------------


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STEPCARE_")}
    base["STEPCARE_CACHE_DIR"] = os.environ.get("STEPCARE_CACHE_DIR", str(REPO / ".cache"))
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], cwd=cwd, capture_output=True, text=True,
        env={**base, "PYTHONPATH": str(REPO), **env}, timeout=120,
    )  # fmt: skip


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _worker_cases(tmp_path: Path, busy_port: int, tls: tuple[Path, Path]) -> dict:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(os.urandom(200))
    garbage.chmod(0o600)
    cert, _ = tls
    return {
        "log level": ({"STEPCARE_LOG_LEVEL": "BOGUS"},
                      "STEPCARE_LOG_LEVEL='BOGUS': expected one of DEBUG, INFO, WARNING, "
                      "ERROR, CRITICAL"),
        "partitions": ({"STEPCARE_PARTITIONS": "99999999999"},
                       "STEPCARE_PARTITIONS=99999999999: expected 1-10000"),
        "bootstrap": ({"STEPCARE_BOOTSTRAP_SERVERS": "k:9092,,k2:9092"},
                      "STEPCARE_BOOTSTRAP_SERVERS='k:9092,,k2:9092': expected "
                      "host:port[,host:port...] with ports 1-65535"),
        "app id": ({"STEPCARE_APP_ID": "a/b c"},
                   "STEPCARE_APP_ID='a/b c': expected 1-229 letters, digits, '.', '_' or '-'"),
        "dead letters = input": ({"STEPCARE_INPUT_TOPIC": "x.events",
                                  "STEPCARE_DEAD_LETTER_TOPIC": "x.events"}, DLQ_IS_INPUT),
        "web port in use": ({"STEPCARE_WEB_PORT": str(busy_port)},
                            f"cannot listen on 127.0.0.1:{busy_port} (STEPCARE_WEB_HOST, "
                            "STEPCARE_WEB_PORT): Address already in use"),
        "web host 256.1.1.1": ({"STEPCARE_WEB_HOST": "256.1.1.1"},
                               "STEPCARE_WEB_HOST='256.1.1.1': expected an IP address or a "
                               "host name"),
        "web host not here": ({"STEPCARE_WEB_HOST": "192.0.2.1"},
                              "cannot listen on 192.0.2.1:6066 (STEPCARE_WEB_HOST, "
                              "STEPCARE_WEB_PORT): Cannot assign requested address"),
        "web host unknown": ({"STEPCARE_WEB_HOST": "no-such-host.invalid"},
                             "cannot resolve the web host 'no-such-host.invalid' "
                             "(STEPCARE_WEB_HOST, STEPCARE_WEB_PORT): "),
        "data dir under a file": ({"STEPCARE_DATA_DIR": str(a_file / "worker")},
                                  f"cannot write in the data dir {a_file / 'worker'} "
                                  "(STEPCARE_DATA_DIR): Not a directory"),
        "data dir in /proc": ({"STEPCARE_DATA_DIR": "/proc/stepcare-worker"},
                              "cannot write in the data dir /proc/stepcare-worker "
                              "(STEPCARE_DATA_DIR): No such file or directory"),
        "cafile missing": ({"STEPCARE_SSL_CAFILE": str(tmp_path / "none.pem")},
                           f"STEPCARE_SSL_CAFILE: cannot read {tmp_path / 'none.pem'}: No such "
                           "file or directory"),
        "cafile garbage": ({"STEPCARE_SSL_CAFILE": str(garbage)},
                           f"STEPCARE_SSL_CAFILE: {garbage} does not hold a PEM certificate"),
        "certfile /dev/zero": ({"STEPCARE_SSL_CERTFILE": "/dev/zero"},
                               "STEPCARE_SSL_CERTFILE: /dev/zero is not a regular file"),
        "keyfile garbage": ({"STEPCARE_SSL_CERTFILE": str(cert),
                             "STEPCARE_SSL_KEYFILE": str(garbage)},
                            f"STEPCARE_SSL_KEYFILE: {garbage} does not hold a PEM private key"),
        "key of another cert": ({"STEPCARE_SECURITY_PROTOCOL": "SSL",
                                 "STEPCARE_SSL_CERTFILE": str(cert),
                                 "STEPCARE_SSL_KEYFILE": str(_other_key(tmp_path))},
                                "STEPCARE_SSL_KEYFILE: "),
        "password file missing": ({"STEPCARE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                   "STEPCARE_SASL_PASSWORD_FILE": str(tmp_path / "pw")},
                                  f"STEPCARE_SASL_PASSWORD_FILE: cannot read {tmp_path / 'pw'}: "
                                  "No such file or directory"),
    }  # fmt: skip


def _other_key(tmp_path: Path) -> Path:
    (tmp_path / "other").mkdir(exist_ok=True)
    return make_cert(tmp_path / "other")[1]


WORKER_CASES = [
    "log level", "partitions", "bootstrap", "app id", "dead letters = input", "web port in use",
    "web host 256.1.1.1", "web host not here", "web host unknown", "data dir under a file",
    "data dir in /proc", "cafile missing", "cafile garbage", "certfile /dev/zero",
    "keyfile garbage", "key of another cert", "password file missing",
]  # fmt: skip


@pytest.mark.parametrize("case", WORKER_CASES)
@pytest.mark.attack("stepcare worker with a bad setting, a busy port, an unusable data dir or "
                    "TLS file", "exit 2, one line, before it connects to Kafka")  # fmt: skip
def test_the_worker_refuses_to_start_with_one_line(
    tmp_path: Path, busy_port: int, tls: tuple[Path, Path], case: str
) -> None:
    env, message = _worker_cases(tmp_path, busy_port, tls)[case]
    # A broker nobody listens on: each check must come before the worker connects.
    env = {"STEPCARE_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STEPCARE_DATA_DIR": str(tmp_path / "w"),
           **env}  # fmt: skip
    done = _run(["worker"], env, tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(message)
