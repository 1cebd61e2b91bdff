"""All of stepcare's settings, in one place.

Every setting is read from an environment variable named ``STEPCARE_<FIELD NAME IN CAPITALS>``
and has a documented default, so a worker, a test run and ``make run`` are configured the same way.
``stepcare settings`` prints the table below with the values in force.

A dataclass read by hand on purpose: pydantic(-settings) was tried (issue 13) and took more lines
to say the same one-line errors (a translator of its errors, bounds read back from its metadata).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import ssl
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streams.clinical.files import read_small_file
from streams.errors import StepcareError

ENV_PREFIX = "STEPCARE_"

# The Kafka lines the project supports, newest first. The first is the default broker: the newest
# line on which the whole suite passes. The smoke tests run on every line (tests/integration).
KAFKA_VERSIONS: tuple[str, ...] = ("4.4.0", "3.9.2")


GUARANTEES = ("at_least_once", "exactly_once")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


WIRE_FORMATS = ("single-object", "registry")  # streams.formats.wire
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Kafka's topic names: these characters, at most 249 of them. The application id is the prefix
# of the topics faust makes: "<app_id>-__assignor-__leader" is the longest (20 more characters).
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_TOPIC_LENGTH = 249
MAX_APP_ID_LENGTH = MAX_TOPIC_LENGTH - len("-__assignor-__leader")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a replay run (stepcare worker --replay)
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")
# The worker's table (streams.worker.states.TABLE): its changelog is "<app_id>-patients-changelog",
# a name no configured topic may take.
WORKER_TABLE = "patients"
# stepcare's own FACT-L Questionnaire (streams.interfaces.fhir.QUESTIONNAIRE_URL).
FACT_L_QUESTIONNAIRE_URL = "https://stepcare.example.org/fhir/Questionnaire/fact-l"
_CANONICAL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s|,]+(\|[^\s|,]+)?")
SECRET_FILE_LIMIT = 1 << 20  # bytes read at most from a password, key or certificate file


class SettingsError(StepcareError, ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _setting(default: Any, doc: str, bounds: tuple[int, int] | None = None) -> Any:
    """A setting; an int setting has ``bounds`` (inclusive), checked when it is read."""
    metadata = {"doc": doc} if bounds is None else {"doc": doc, "bounds": bounds}
    return dataclasses.field(default=default, metadata=metadata)


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
        9092, "Client port of the local broker (node n uses this + 10*(n-1)).", (1, 65_500)
    )
    broker_heap_mb: int = _setting(
        512, "JVM heap of each local broker node, in MiB.", (128, 1_048_576)
    )
    log_level: str = _setting(
        "INFO", "Log level of stepcare's own loggers: DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )

    # -- the worker (stepcare worker) ---------------------------------------------------------
    app_id: str = _setting(
        "stepcare",
        "Worker application id: the consumer group and the changelog topic prefix "
        f"(letters, digits, '.', '_', '-'; at most {MAX_APP_ID_LENGTH}).",
    )
    input_topic: str = _setting("stepcare.patient-events.v1", "Topic of patient events (input).")
    escalations_topic: str = _setting(
        "stepcare.escalations.v1", "Topic the worker publishes escalations to."
    )
    dead_letter_topic: str = _setting(
        "stepcare.patient-events.dlq.v1",
        "Topic for input that cannot be decoded or validated (the three topics must differ).",
    )
    partitions: int = _setting(4, "Partitions of the topics the worker declares.", (1, 10_000))
    replication: int = _setting(1, "Replication factor of the topics the worker declares.", (1, 16))
    store: str = _setting("rocksdb://", "Table store of the patient states (rocksdb://).")
    data_dir: Path = _setting(
        Path(".run/worker"), "Worker data dir (RocksDB tables); one per worker process."
    )
    clock: str = _setting(
        "wall",
        "wall: timers also fire with wall time (a tick every tick_interval); "
        "event: only event time moves the clock (replay).",
    )
    tick_interval: int = _setting(60, "Seconds between wall-clock ticks (clock=wall).", (1, 86_400))
    max_event_age_days: int = _setting(
        365,
        "clock=wall: events dated more than this many days before the wall clock go to the "
        "dead-letter topic (invalid-event); 0 = no limit. Not applied with clock=event (replays).",
        (0, 36_500),
    )
    batch_size: int = _setting(
        2000,
        "Most input records the worker handles as one batch: their outputs are acknowledged, "
        "their states written and their offsets released together.",
        (1, 4096),
    )
    batch_linger_ms: int = _setting(
        20,
        "Milliseconds a batch waits for more records once the input has none waiting (a bound "
        "on the latency it adds; 0: never wait).",
        (0, 1000),
    )
    policy: str = _setting(
        "step-pc-2024", "Policy: a built-in name (step-pc-2024, early-pc) or a TOML file."
    )
    processing_guarantee: str = _setting(
        "at_least_once", "at_least_once (escalations deduplicated by id) or exactly_once."
    )
    web_host: str = _setting(
        "127.0.0.1",
        "Address of the worker's web server (/metrics): an IP address or a host name; the "
        "worker checks at start that it can listen there.",
    )
    web_port: int = _setting(6066, "Port of the worker's web server.", (1, 65_535))
    subscriber_groups: str = _setting(
        "",
        "Consumer groups of the escalations topic (scheduling systems) whose lag the worker "
        "exports (comma-separated; empty: none).",
    )
    subscriber_lag_interval: int = _setting(
        30, "Seconds between measurements of the subscribers' lag.", (1, 3_600)
    )
    security_protocol: str = _setting(
        "PLAINTEXT", "Broker connection: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: str = _setting("SCRAM-SHA-512", "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN.")
    sasl_username: str = _setting("", "SASL user name.")
    sasl_password: str = _setting("", "SASL password (or use sasl_password_file).")
    sasl_password_file: str = _setting(
        "", "File holding the SASL password (a warning if group or others can read it)."
    )
    ssl_cafile: str = _setting("", "CA certificate (PEM) to verify the brokers.")
    ssl_certfile: str = _setting("", "Client certificate (PEM), for mutual TLS.")
    ssl_keyfile: str = _setting(
        "", "Client private key (PEM), for mutual TLS (a warning if group or others can read it)."
    )

    # -- Avro framing on Kafka (DESIGN §3; streams.kafka.registry) ------------------------------
    wire_format: str = _setting(
        "single-object",
        "Framing of the records stepcare writes: single-object (no server needed) or registry "
        "(Confluent wire format, schemas in the registry at schema_registry_url). Input in "
        "either framing is always read.",
    )
    schema_registry_url: str = _setting(
        "",
        "Confluent-compatible schema registry (e.g. http://127.0.0.1:8081/apis/ccompat/v7 for "
        "`stepcare registry start`); needed by wire_format=registry and to read registry-framed "
        "input.",
    )
    schema_registry_username: str = _setting("", "Schema registry basic-auth user name.")
    schema_registry_password: str = _setting(
        "", "Schema registry basic-auth password (or use schema_registry_password_file)."
    )
    schema_registry_password_file: str = _setting(
        "", "File holding the schema registry password (a warning if group or others can read it)."
    )
    schema_registry_cafile: str = _setting("", "CA certificate (PEM) to verify the registry.")
    schema_registry_certfile: str = _setting(
        "", "Client certificate (PEM) for the registry, for mutual TLS."
    )
    schema_registry_keyfile: str = _setting(
        "", "Client private key (PEM) for the registry, for mutual TLS."
    )

    # -- hospital interfaces (stepcare bridge; streams.interfaces) ------------------------------
    fhir_questionnaire_urls: str = _setting(
        FACT_L_QUESTIONNAIRE_URL,
        "FACT-L Questionnaire canonicals a QuestionnaireResponse may name (comma-separated, "
        "each URL or URL|VERSION; bridge fhir-import and fhir-in, unless --questionnaire-url).",
    )

    def __post_init__(self) -> None:
        _choice("clock", self.clock, ("wall", "event"))
        _choice("wire_format", self.wire_format, WIRE_FORMATS)
        _check_registry_url(self.schema_registry_url)
        questionnaire_canonicals(self.fhir_questionnaire_urls, env_name("fhir_questionnaire_urls"))
        if self.wire_format == "registry" and not self.schema_registry_url:
            raise SettingsError(
                f"{env_name('wire_format')}=registry needs {env_name('schema_registry_url')}"
            )
        _choice("processing_guarantee", self.processing_guarantee, GUARANTEES)
        _choice("security_protocol", self.security_protocol, SECURITY_PROTOCOLS)
        _choice("sasl_mechanism", self.sasl_mechanism, SASL_MECHANISMS)
        if not self.store.startswith(("rocksdb://", "memory://")):
            raise SettingsError(
                f"{env_name('store')}={self.store!r}: expected rocksdb:// or memory://"
            )
        for field in dataclasses.fields(self):
            if "bounds" in field.metadata:
                low, high = field.metadata["bounds"]
                value = getattr(self, field.name)
                if not low <= value <= high:
                    raise SettingsError(f"{env_name(field.name)}={value}: expected {low}-{high}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(
                f"{env_name('log_level')}={self.log_level!r}: expected one of "
                f"{', '.join(LOG_LEVELS)}"
            )
        _check_bootstrap(self.bootstrap_servers)
        self.subscribers()  # a malformed list stops here
        _check_name("app_id", self.app_id, MAX_APP_ID_LENGTH)
        topics = ("input_topic", "escalations_topic", "dead_letter_topic")
        for name in topics:
            _check_name(name, getattr(self, name), MAX_TOPIC_LENGTH)
        # A worker reading its own output would loop forever on it (a dead letter dead-lettered
        # again, an escalation read as a malformed event).
        for i, first in enumerate(topics):
            for second in topics[i + 1 :]:
                if getattr(self, first) == getattr(self, second):
                    raise SettingsError(
                        f"{env_name(first)} and {env_name(second)} are both "
                        f"{getattr(self, first)!r}: the worker would read its own output"
                    )
        for name in topics:  # nor a topic faust makes for the worker itself
            if getattr(self, name) in (f"{self.app_id}-{WORKER_TABLE}-changelog",
                                       f"{self.app_id}-__assignor-__leader"):  # fmt: skip
                raise SettingsError(
                    f"{env_name(name)}={getattr(self, name)!r}: the name of a topic the worker "
                    "makes for itself"
                )
        try:
            if self.web_host != self.web_host.strip() or not self.web_host:
                raise ValueError
            _check_host(self.web_host)
        except ValueError:
            raise SettingsError(
                f"{env_name('web_host')}={self.web_host!r}: expected an IP address or a host name"
            ) from None

    def subscribers(self) -> tuple[str, ...]:
        """The consumer groups of ``subscriber_groups`` (none when it is empty)."""
        if not self.subscriber_groups.strip():
            return ()
        groups = tuple(part.strip() for part in self.subscriber_groups.split(","))
        for group in groups:
            if not group or len(group) > 255 or not group.isprintable():
                raise SettingsError(
                    f"{env_name('subscriber_groups')}={self.subscriber_groups[:80]!r}: expected "
                    "consumer group ids (printable, 1-255 characters), comma-separated"
                )
        return tuple(dict.fromkeys(groups))

    def sasl_secret(self) -> str:
        """The SASL password, from the setting or the file named by ``sasl_password_file``."""
        return self._password("sasl_password")

    def schema_registry_secret(self) -> str:
        """The registry password, from the setting or ``schema_registry_password_file``."""
        return self._password("schema_registry_password")

    def _password(self, field_name: str) -> str:
        """Setting ``field_name``, or the UTF-8 text of the file its ``_file`` setting names."""
        file_field = f"{field_name}_file"
        path = getattr(self, file_field)
        if not path:
            return str(getattr(self, field_name))
        data = read_setting_file(file_field, path, secret=True)
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SettingsError(f"{env_name(file_field)}: {path} is not UTF-8 text") from None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of the broker connection, from ``ssl_cafile``, ``ssl_certfile`` and
        ``ssl_keyfile``; a file that is missing or not PEM of its kind is named."""
        check_tls_files(self)
        context = ssl.create_default_context(cafile=self.ssl_cafile or None)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        return context

    def confluent_config(self) -> dict[str, str | int | float | bool]:
        """Connection settings for confluent-kafka clients (producers, admin, consumers);
        SettingsError naming the variable if a file it names cannot be used."""
        check_tls_files(self)
        config: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap_servers}
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
        """(variable, default, description) for every setting, in declaration order; an int
        setting's description ends with its bounds."""
        described = []
        for f in dataclasses.fields(cls):
            doc = f.metadata["doc"]
            if "bounds" in f.metadata:
                low, high = f.metadata["bounds"]
                doc = f"{doc} ({low}-{high})"
            described.append((env_name(f.name), str(f.default), doc))
        return described

    def for_replay(self, run: str) -> Settings:
        """A replay run's settings: a fresh consumer group (so it reads the input topic from its
        start), event-time clock, and its own output topics and data dir, so nothing it writes
        reaches the live escalation topic or disturbs a live worker's state; no subscriber lag."""
        if not RUN_NAME.fullmatch(run):
            raise SettingsError(f"--replay {run!r}: a run name is letters, digits, '.', '_' or '-'")

        def beside(topic: str) -> str:
            return f"{topic.removesuffix('.v1')}.replay.{run}"

        return dataclasses.replace(
            self,
            app_id=f"{self.app_id}-replay-{run}",
            escalations_topic=beside(self.escalations_topic),
            dead_letter_topic=beside(self.dead_letter_topic),
            data_dir=self.data_dir / f"replay-{run}",
            clock="event",
            # The scheduling systems read the live topic, not the run's: their lag on it would
            # be the run's whole output, and page someone.
            subscriber_groups="",
        )


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


def _check_bootstrap(value: str) -> None:
    """``host:port[,host:port...]``: no empty item, ports 1-65535."""
    name = env_name("bootstrap_servers")
    for item in value.split(","):
        host, colon, port = item.strip().rpartition(":")
        try:
            if not (colon and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError
            _check_host(host, brackets=True)
        except ValueError:
            raise SettingsError(
                f"{name}={value!r}: expected host:port[,host:port...] with ports 1-65535"
            ) from None


def _check_registry_url(value: str) -> None:
    """Empty, or http(s)://host[:port][/path]: no user info (the user name and password are
    settings of their own, kept out of logs), no query."""
    if not value:
        return
    try:
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc
            or parts.query or parts.fragment or any(c.isspace() for c in value)
        ):  # fmt: skip
            raise ValueError
        parts.port  # noqa: B018 (ValueError if it is not 0-65535)
        _check_host(parts.hostname)
    except ValueError:
        shown = "(not shown: it holds user info)" if "@" in value else repr(value[:120])
        raise SettingsError(
            f"{env_name('schema_registry_url')}={shown}: expected http(s)://host[:port]"
            "[/path] (no user name or password in it: they are settings of their own)"
        ) from None


def _check_host(host: str, *, brackets: bool = False) -> None:
    """A host name or an IP address (IPv6 in brackets if ``brackets``); ValueError if not."""
    if brackets and host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])
    elif not brackets and ":" in host:
        ipaddress.IPv6Address(host)
    elif re.fullmatch(r"[0-9.]+", host):  # digits and dots: an IPv4 address, not a name
        ipaddress.IPv4Address(host)
    elif not _HOST.fullmatch(host):
        raise ValueError(host)


def questionnaire_canonicals(value: str, name: str) -> tuple[str, ...]:
    """The canonicals of a comma-separated list (``URL`` or ``URL|VERSION`` each, an absolute
    URI); a SettingsError names ``name`` (the variable or option) and the rule."""
    entries = tuple(part.strip() for part in value.split(","))
    if not any(entries) or not all(entries):
        raise SettingsError(f"{name}: expected one or more canonical URLs, comma-separated")
    for entry in entries:
        if len(entry) > 1024 or not _CANONICAL.fullmatch(entry):
            raise SettingsError(
                f"{name}={entry[:80]!r}: expected an absolute URL, optionally |VERSION "
                f"(e.g. {FACT_L_QUESTIONNAIRE_URL}|4)"
            )
    return entries


def _check_name(field_name: str, value: str, limit: int) -> None:
    """A name Kafka accepts in a topic name (the app id prefixes topics and group ids)."""
    if not TOPIC_NAME.fullmatch(value) or value in (".", "..") or len(value) > limit:
        raise SettingsError(
            f"{env_name(field_name)}={value[:80]!r}: expected 1-{limit} letters, digits, "
            "'.', '_' or '-'"
        )


_WARNED: set[str] = set()


def warn_if_exposed(path: str | Path, variable: str) -> None:
    """One line on stderr (once per file) if group or others may read a secret file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and str(path) not in _WARNED:
        _WARNED.add(str(path))
        print(
            f"stepcare: warning: {variable} {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):o}); fix it with: chmod 600 {path}",
            file=sys.stderr,
            flush=True,
        )


def read_setting_file(field_name: str, path: str, *, secret: bool = False) -> bytes:
    """The bytes of the file a setting names; SettingsError naming the variable if unusable."""
    name = env_name(field_name)
    try:
        data = read_small_file(path, SECRET_FILE_LIMIT)
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    if secret:
        warn_if_exposed(path, name)
    return data


_PEM_KINDS = {
    "ssl_cafile": (b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    "ssl_certfile": (b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    "ssl_keyfile": (b"PRIVATE KEY-----", "a PEM private key"),
    "schema_registry_cafile": (b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    "schema_registry_certfile": (b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    "schema_registry_keyfile": (b"PRIVATE KEY-----", "a PEM private key"),
}


def check_tls_files(settings: Settings) -> None:
    """Each TLS file that is set can be read and holds PEM of its kind (the key file: a
    warning if group or others can read it)."""
    for field_name, (marker, kind) in _PEM_KINDS.items():
        path = getattr(settings, field_name)
        if not path:
            continue
        data = read_setting_file(field_name, path, secret=field_name.endswith("keyfile"))
        if marker not in data:
            raise SettingsError(f"{env_name(field_name)}: {path} does not hold {kind}")
        if field_name != "ssl_keyfile":
            try:
                ssl.create_default_context(cadata=data.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise SettingsError(
                    f"{env_name(field_name)}: {path} is not a valid PEM certificate "
                    f"({getattr(exc, 'reason', None) or exc})"
                ) from None
    if settings.ssl_certfile:  # the key: in its file, or with the certificate
        try:
            ssl.create_default_context().load_cert_chain(
                settings.ssl_certfile, settings.ssl_keyfile or None
            )
        except ssl.SSLError as exc:
            cert, key = settings.ssl_certfile, settings.ssl_keyfile
            if exc.reason == "KEY_VALUES_MISMATCH":
                problem = f"{key or cert} is not the key of the certificate {cert}"
            elif key:
                problem = f"{key} is not a usable PEM private key (encrypted?) ({exc.reason})"
            else:
                problem = f"{cert} holds no usable private key: set STEPCARE_SSL_KEYFILE"
            raise SettingsError(f"{env_name('ssl_keyfile')}: {problem}") from None
