"""All of stepcare's settings, in one place.

Every setting is read from an environment variable named ``STEPCARE_<FIELD NAME IN CAPITALS>``
and has a documented default, so a worker, a test run and ``make run`` are configured the same way.
``stepcare settings`` prints the table below with the values in force.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "STEPCARE_"

# The Kafka lines the project supports, newest first. The first is the default broker: the newest
# line on which the whole suite passes. The smoke tests run on every line (tests/integration).
KAFKA_VERSIONS: tuple[str, ...] = ("4.4.0", "3.9.2")


GUARANTEES = ("at_least_once", "exactly_once")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _setting(default: Any, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class Settings:
    """stepcare's configuration. Field ``foo_bar`` is read from ``STEPCARE_FOO_BAR``."""

    bootstrap_servers: str = _setting(
        "127.0.0.1:9092", "Kafka bootstrap servers (comma-separated host:port)."
    )
    kafka_version: str = _setting(
        KAFKA_VERSIONS[0],
        "Apache Kafka version the project's broker script runs (3.9.x or >= 4.1).",
    )
    cache_dir: Path = _setting(
        Path(".cache"),
        "Git-ignored download cache: Kafka jars and the Maven repository live here.",
    )
    broker_run_dir: Path = _setting(
        Path(".run/kafka"), "Where the local broker keeps its data, logs and pid files."
    )
    broker_port: int = _setting(
        9092, "Client port of the local broker (node n uses this + 10*(n-1))."
    )
    broker_heap_mb: int = _setting(512, "JVM heap of each local broker node, in MiB.")
    log_level: str = _setting("INFO", "Log level of stepcare's own loggers.")

    # -- the worker (stepcare worker) ---------------------------------------------------------
    app_id: str = _setting(
        "stepcare", "Worker application id: the consumer group and the changelog topic prefix."
    )
    input_topic: str = _setting("stepcare.patient-events.v1", "Topic of patient events (input).")
    escalations_topic: str = _setting(
        "stepcare.escalations.v1", "Topic the worker publishes escalations to."
    )
    dead_letter_topic: str = _setting(
        "stepcare.patient-events.dlq.v1", "Topic for input that cannot be decoded or validated."
    )
    partitions: int = _setting(4, "Partitions of the topics the worker declares.")
    replication: int = _setting(1, "Replication factor of the topics the worker declares.")
    store: str = _setting("rocksdb://", "Table store of the patient states (rocksdb://).")
    data_dir: Path = _setting(
        Path(".run/worker"), "Worker data dir (RocksDB tables); one per worker process."
    )
    clock: str = _setting(
        "wall",
        "wall: timers also fire with wall time (a tick every tick_interval); "
        "event: only event time moves the clock (replay).",
    )
    tick_interval: int = _setting(60, "Seconds between wall-clock ticks (clock=wall).")
    max_event_age_days: int = _setting(
        365,
        "clock=wall: events dated more than this many days before the wall clock go to the "
        "dead-letter topic (invalid-event); 0 = no limit. Not applied with clock=event (replays).",
    )
    policy: str = _setting(
        "step-pc-2024", "Policy: a built-in name (step-pc-2024, early-pc) or a TOML file."
    )
    processing_guarantee: str = _setting(
        "at_least_once", "at_least_once (escalations deduplicated by id) or exactly_once."
    )
    web_host: str = _setting("127.0.0.1", "Address of the worker's web server (/metrics).")
    web_port: int = _setting(6066, "Port of the worker's web server.")
    security_protocol: str = _setting(
        "PLAINTEXT", "Broker connection: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: str = _setting("SCRAM-SHA-512", "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN.")
    sasl_username: str = _setting("", "SASL user name.")
    sasl_password: str = _setting("", "SASL password (or use sasl_password_file).")
    sasl_password_file: str = _setting("", "File holding the SASL password.")
    ssl_cafile: str = _setting("", "CA certificate (PEM) to verify the brokers.")
    ssl_certfile: str = _setting("", "Client certificate (PEM), for mutual TLS.")
    ssl_keyfile: str = _setting("", "Client private key (PEM), for mutual TLS.")

    def __post_init__(self) -> None:
        _choice("clock", self.clock, ("wall", "event"))
        _choice("processing_guarantee", self.processing_guarantee, GUARANTEES)
        _choice("security_protocol", self.security_protocol, SECURITY_PROTOCOLS)
        _choice("sasl_mechanism", self.sasl_mechanism, SASL_MECHANISMS)
        if not self.store.startswith(("rocksdb://", "memory://")):
            raise SettingsError(
                f"{env_name('store')}={self.store!r}: expected rocksdb:// or memory://"
            )
        if not 1 <= self.web_port <= 65535:
            raise SettingsError(f"{env_name('web_port')}={self.web_port}: expected 1-65535")
        if self.max_event_age_days < 0:
            raise SettingsError(
                f"{env_name('max_event_age_days')}={self.max_event_age_days}: must be >= 0"
            )
        for name in ("partitions", "replication", "tick_interval"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)}={getattr(self, name)}: must be >= 1")

    def sasl_secret(self) -> str:
        """The SASL password, from the setting or the file named by ``sasl_password_file``."""
        if self.sasl_password_file:
            try:
                return Path(self.sasl_password_file).read_text().strip()
            except OSError as exc:
                raise SettingsError(
                    f"{env_name('sasl_password_file')}: cannot read {exc.filename}: {exc.strerror}"
                ) from None
        return self.sasl_password

    def confluent_config(self) -> dict[str, str]:
        """Connection settings for confluent-kafka clients (producers, admin, consumers)."""
        config = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            config["security.protocol"] = self.security_protocol
        if self.security_protocol.startswith("SASL"):
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_secret()
        for key, value in (
            ("ssl.ca.location", self.ssl_cafile),
            ("ssl.certificate.location", self.ssl_certfile),
            ("ssl.key.location", self.ssl_keyfile),
        ):
            if value:
                config[key] = value
        return config

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); unset variables keep defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = env_name(field.name)
            if name not in environ:
                continue
            raw = environ[name]
            values[field.name] = _parse(name, raw, field.default)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting, in declaration order."""
        return [
            (env_name(f.name), str(f.default), f.metadata["doc"]) for f in dataclasses.fields(cls)
        ]


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _parse(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{name}={raw!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if isinstance(default, Path):
        return Path(raw)
    return raw


def _choice(field_name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SettingsError(
            f"{env_name(field_name)}={value!r}: expected one of {', '.join(allowed)}"
        )
