import re
from pathlib import Path

import pytest

from streams.kafka.settings import KAFKA_VERSIONS, Settings, SettingsError


def test_defaults_apply_when_nothing_is_set() -> None:
    settings = Settings.from_env({})
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka_version == KAFKA_VERSIONS[0]
    assert settings.cache_dir == Path(".cache")
    assert settings.broker_port == 9092


def test_variables_with_the_prefix_override_defaults() -> None:
    settings = Settings.from_env(
        {"STEPCARE_BROKER_PORT": "19092", "STEPCARE_CACHE_DIR": "/tmp/c", "BROKER_PORT": "1"}
    )
    assert settings.broker_port == 19092
    assert settings.cache_dir == Path("/tmp/c")


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(
        SettingsError, match=r"STEPCARE_BROKER_PORT='ninety': expected a whole number"
    ):
        Settings.from_env({"STEPCARE_BROKER_PORT": "ninety"})


def test_every_setting_is_documented() -> None:
    described = Settings.describe()
    assert [name for name, _, _ in described][:2] == [
        "STEPCARE_BOOTSTRAP_SERVERS",
        "STEPCARE_KAFKA_VERSION",
    ]
    assert all(doc.endswith(".") or doc.endswith(")") for _, _, doc in described)


def test_the_readme_settings_table_lists_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `STEPCARE_")]
    listed = {
        name for row in rows for name in re.findall(r"`(STEPCARE_[A-Z_]+)`", row.split("|")[1])
    }
    assert listed == {name for name, _, _ in Settings.describe()}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STEPCARE_CLOCK", "lunar", "STEPCARE_CLOCK='lunar': expected one of wall, event"),
        ("STEPCARE_PROCESSING_GUARANTEE", "maybe", "expected one of at_least_once, exactly_once"),
        ("STEPCARE_SECURITY_PROTOCOL", "TLS", "expected one of PLAINTEXT, SSL"),
        ("STEPCARE_STORE", "redis://", "STEPCARE_STORE='redis://': expected rocksdb://"),
        ("STEPCARE_PARTITIONS", "0", "STEPCARE_PARTITIONS=0: expected 1-10000"),
        ("STEPCARE_WEB_PORT", "70000", "STEPCARE_WEB_PORT=70000: expected 1-65535"),
        ("STEPCARE_MAX_EVENT_AGE_DAYS", "-1", "STEPCARE_MAX_EVENT_AGE_DAYS=-1: expected 0-36500"),
    ],
)
def test_worker_settings_are_checked_when_read(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({variable: value})


def test_the_live_event_age_limit_defaults_to_a_year_and_0_lifts_it() -> None:
    assert Settings().max_event_age_days == 365
    assert Settings.from_env({"STEPCARE_MAX_EVENT_AGE_DAYS": "0"}).max_event_age_days == 0


def test_client_config_carries_tls_and_sasl(tmp_path: Path) -> None:
    from tests.unit.kafka.test_settings_hostile import make_cert

    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    ca, _ = make_cert(tmp_path)  # the files are checked: a real certificate
    settings = Settings.from_env(
        {
            "STEPCARE_BOOTSTRAP_SERVERS": "kafka-1:9093",
            "STEPCARE_SECURITY_PROTOCOL": "SASL_SSL",
            "STEPCARE_SASL_USERNAME": "stepcare",
            "STEPCARE_SASL_PASSWORD_FILE": str(secret),
            "STEPCARE_SSL_CAFILE": str(ca),
        }
    )
    assert settings.confluent_config() == {
        "bootstrap.servers": "kafka-1:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "stepcare",
        "sasl.password": "s3cret",
        "ssl.ca.location": str(ca),
    }
    assert Settings.from_env({}).confluent_config() == {"bootstrap.servers": "127.0.0.1:9092"}


def test_a_missing_password_file_is_named() -> None:
    settings = Settings.from_env({"STEPCARE_SASL_PASSWORD_FILE": "/nonexistent/pw"})
    with pytest.raises(SettingsError, match="STEPCARE_SASL_PASSWORD_FILE: cannot read"):
        settings.sasl_secret()


def test_stepcare_settings_never_prints_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    monkeypatch.setenv("STEPCARE_SASL_PASSWORD", "hunter2")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "STEPCARE_SASL_PASSWORD=(set, not shown)" in out


# -- the registry framing (issue 15) ------------------------------------------------------------


def test_the_wire_format_is_single_object_by_default_and_registry_needs_a_url() -> None:
    assert Settings().wire_format == "single-object"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"STEPCARE_WIRE_FORMAT": "registry"})
    assert str(caught.value) == "STEPCARE_WIRE_FORMAT=registry needs STEPCARE_SCHEMA_REGISTRY_URL"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"STEPCARE_WIRE_FORMAT": "confluent"})
    assert str(caught.value) == (
        "STEPCARE_WIRE_FORMAT='confluent': expected one of single-object, registry"
    )
    url = "http://127.0.0.1:8081/apis/ccompat/v7"
    settings = Settings.from_env(
        {"STEPCARE_WIRE_FORMAT": "registry", "STEPCARE_SCHEMA_REGISTRY_URL": url}
    )
    assert (settings.wire_format, settings.schema_registry_url) == ("registry", url)


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8081",
        "ftp://registry",
        "http://",
        "http://user:secret@registry:8081",
        "http://registry:99999",
        "http://registry:8081/apis?x=1",
        "http://reg istry",
        "http://-bad-/",
    ],
)
def test_a_registry_url_that_is_not_http_host_port_path_is_refused(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"STEPCARE_SCHEMA_REGISTRY_URL": url})
    message = str(caught.value)
    shown = "(not shown: it holds user info)" if "@" in url else repr(url)
    assert message.startswith(f"STEPCARE_SCHEMA_REGISTRY_URL={shown}: expected http(s)://")
    assert "secret" not in message
    assert "\n" not in message


def test_registry_client_config_carries_basic_auth_and_tls(tmp_path: Path) -> None:
    from streams.kafka.registry import client_config
    from tests.unit.kafka.test_settings_hostile import make_cert

    secret = tmp_path / "password"
    secret.write_text("r3g\n")
    secret.chmod(0o600)
    ca, _ = make_cert(tmp_path)
    settings = Settings.from_env(
        {
            "STEPCARE_SCHEMA_REGISTRY_URL": "https://registry.hospital:8443/apis/ccompat/v7",
            "STEPCARE_SCHEMA_REGISTRY_USERNAME": "stepcare",
            "STEPCARE_SCHEMA_REGISTRY_PASSWORD_FILE": str(secret),
            "STEPCARE_SCHEMA_REGISTRY_CAFILE": str(ca),
        }
    )
    config = client_config(settings)
    assert config["url"] == "https://registry.hospital:8443/apis/ccompat/v7"
    assert config["basic.auth.user.info"] == "stepcare:r3g"
    assert config["ssl.ca.location"] == str(ca)


def test_subscriber_groups_are_a_comma_separated_list() -> None:
    assert Settings().subscribers() == ()
    assert Settings(subscriber_groups=" sched-a, sched.b ,sched-a").subscribers() == (
        "sched-a",
        "sched.b",
    )
    for bad in ("a,,b", "a,", "a,\tb\x00"):
        with pytest.raises(SettingsError) as raised:
            Settings(subscriber_groups=bad)
        assert str(raised.value).startswith("STEPCARE_SUBSCRIBER_GROUPS=")


def test_a_replay_run_has_its_own_topics_and_group_and_no_subscribers() -> None:
    live = Settings(app_id="stepcare", subscriber_groups="scheduling")
    run = live.for_replay("audit-2026")
    assert (run.app_id, run.escalations_topic, run.dead_letter_topic, run.clock) == (
        "stepcare-replay-audit-2026",
        "stepcare.escalations.replay.audit-2026",
        "stepcare.patient-events.dlq.replay.audit-2026",
        "event",
    )
    assert run.input_topic == live.input_topic
    assert run.subscribers() == () and live.subscribers() == ("scheduling",)
