from pathlib import Path

import pytest

from streams.settings import KAFKA_VERSIONS, Settings, SettingsError


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
