"""The schema registry (Confluent API): stepcare's subjects, schema ids, and both framings.

The worker, ``stepcare publish``, the bridges and ``make run`` get their :class:`Framing` from
:func:`framing_for`: with ``STEPCARE_WIRE_FORMAT=registry`` it registers the current schemas
under ``<topic>-value`` (if they are not there yet), sets BACKWARD compatibility on those
subjects, and writes ``00`` + schema id + body; with ``single-object`` (the default) it needs no
server. Input in either framing is always read; registry ids are looked up (and remembered)
through confluent-kafka's ``SchemaRegistryClient`` when a registry URL is set.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from streams.clinical.escalations import Escalation
from streams.errors import StepcareError
from streams.formats import avro
from streams.formats.avro import CodecError, RecordCodec
from streams.formats.wire import (
    REGISTRY,
    SINGLE_OBJECT,
    RegistryWriters,
    registry_header,
    registry_schema_id,
)
from streams.kafka.settings import Settings, check_tls_files, env_name

log = logging.getLogger(__name__)

COMPATIBILITY = "BACKWARD"
SUBJECT_SUFFIX = "-value"  # Confluent's TopicNameStrategy: the value schema of topic T
REQUEST_TIMEOUT = 5.0  # seconds per HTTP request
# Lookups of schema ids not seen before, at most this many per second (a stream of random ids
# would otherwise make one HTTP request per record): over it, the worker dead-letters the
# record (unknown-schema, "not looked up"); the command-line tools wait for their turn.
LOOKUPS_PER_SECOND = 20
NOT_FOUND = 404  # HTTP: no such schema id / subject (40403 / 40401 in the Confluent API)


class RegistryError(StepcareError):
    """The registry cannot be used (unreachable, refused a schema): one line, no traceback."""


class UnknownSchemaId(RegistryError):
    """The registry has no schema with this id."""


def subject_of(topic: str) -> str:
    """The subject of a topic's record values (Confluent's default TopicNameStrategy)."""
    return topic + SUBJECT_SUFFIX


def client_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka ``SchemaRegistryClient`` configuration from the settings."""
    if not settings.schema_registry_url:
        raise RegistryError(f"{env_name('schema_registry_url')} is not set")
    check_tls_files(settings)
    config: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": REQUEST_TIMEOUT,
        "max.retries": 2,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 2000,
    }
    if settings.schema_registry_username:
        config["basic.auth.user.info"] = (
            f"{settings.schema_registry_username}:{settings.schema_registry_secret()}"
        )
    for key, value in (
        ("ssl.ca.location", settings.schema_registry_cafile),
        ("ssl.certificate.location", settings.schema_registry_certfile),
        ("ssl.key.location", settings.schema_registry_keyfile),
    ):
        if value:
            config[key] = value
    return config


def _why(exc: Exception) -> str:
    """A registry failure in one line (never the schema, never credentials)."""
    status = getattr(exc, "http_status_code", None)  # confluent-kafka's SchemaRegistryError
    if status is not None:
        message = getattr(exc, "error_message", None)
        if status == NOT_FOUND and not message:  # not the Confluent API at all
            return "HTTP 404 (is it the registry's Confluent API, e.g. .../apis/ccompat/v7?)"
        return f"HTTP {status}: {message}"[:300]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{': ' + text[:200] if text else ''}"


class SchemaRegistry:
    """The few registry calls stepcare makes, each failure a :class:`RegistryError`."""

    def __init__(self, settings: Settings) -> None:
        # Imported here: 0.3 s (httpx, authlib), paid only by programs that use a registry.
        from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        self.url = settings.schema_registry_url
        self._schema = Schema
        self._error = SchemaRegistryError
        try:
            self.client = SchemaRegistryClient(client_config(settings))
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"{env_name('schema_registry_url')}: {exc}") from None

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except self._error as exc:
            if exc.http_status_code == NOT_FOUND and what == "schema":
                raise UnknownSchemaId(f"the registry has no schema id {args[0]}") from None
            raise RegistryError(f"schema registry {self.url}: {what}: {_why(exc)}") from None
        except Exception as exc:  # httpx: refused, timed out, TLS; one line says which
            raise RegistryError(f"schema registry {self.url}: {what}: {_why(exc)}") from None

    def schema_text(self, schema_id: int) -> str:
        """The schema (JSON text) registered with ``schema_id``; UnknownSchemaId if none."""
        schema = self._call("schema", self.client.get_schema, schema_id)
        if schema.schema_type not in (None, "AVRO"):
            return json.dumps({"type": f"not Avro ({schema.schema_type})"})[:100]
        return str(schema.schema_str)

    def ensure(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (the id it has if it is there already), with
        BACKWARD compatibility set on the subject; RegistryError if the registry refuses it."""
        candidate = self._schema(json.dumps(schema), "AVRO")
        try:
            schema_id: int = self.client.register_schema(subject, candidate)
        except self._error as exc:
            if exc.http_status_code == 409:
                raise RegistryError(
                    f"schema registry {self.url}: subject {subject} refuses stepcare's "
                    f"{schema.get('name')} schema as incompatible with its latest version "
                    "(`stepcare schemas check` shows the versions)"
                ) from None
            why = _why(exc)
            raise RegistryError(f"schema registry {self.url}: register {subject}: {why}") from None
        except Exception as exc:
            why = _why(exc)
            raise RegistryError(f"schema registry {self.url}: register {subject}: {why}") from None
        self.set_compatibility(subject)
        return schema_id

    def set_compatibility(self, subject: str, level: str = COMPATIBILITY) -> None:
        """PUT /config/<subject>: Apicurio's global default is NONE, Confluent's BACKWARD."""
        self._call(
            "set compatibility",
            self.client._rest_client.put,  # ServerConfig would send every field, unset ones null
            f"config/{subject}",
            body={"compatibility": level},
        )

    def compatible(self, subject: str, schema: dict[str, Any] | list[Any] | str) -> bool:
        """Whether ``schema`` may be registered next under ``subject`` (true if it is empty)."""
        if self.latest(subject) is None:
            return True
        candidate = self._schema(json.dumps(schema), "AVRO")
        verdict = self._call("compatibility", self.client.test_compatibility, subject, candidate)
        return bool(verdict)

    def subjects(self) -> list[str]:
        return list(self._call("subjects", self.client.get_subjects))

    def versions(self, subject: str) -> list[tuple[int, int]]:
        """(version, schema id) of every version of ``subject``, oldest first."""
        found = []
        for version in self._call("versions", self.client.get_versions, subject):
            registered = self._call("version", self.client.get_version, subject, version)
            found.append((int(version), int(registered.schema_id)))
        return found

    # -- `stepcare schemas`: what is registered ----------------------------------------------

    def registered(self, subject: str, schema: dict[str, Any]) -> tuple[int, int] | None:
        """(version, schema id) of ``schema`` (this exact text) under ``subject``, or None."""
        candidate = self._schema(json.dumps(schema), "AVRO")
        return self._found_or_none(subject, self.client.lookup_schema, subject, candidate)

    def latest(self, subject: str) -> tuple[int, int] | None:
        """(version, schema id) of the latest version of ``subject``; None if it has none."""
        return self._found_or_none(subject, self.client.get_latest_version, subject)

    def _found_or_none(self, subject: str, call: Any, *args: Any) -> tuple[int, int] | None:
        """(version, schema id) of what ``call`` finds; None if the registry answers 404."""
        try:
            found = call(*args)
        except self._error as exc:
            if exc.http_status_code == NOT_FOUND:
                return None
            raise RegistryError(f"schema registry {self.url}: {subject}: {_why(exc)}") from None
        except Exception as exc:
            raise RegistryError(f"schema registry {self.url}: {subject}: {_why(exc)}") from None
        return _numbers(found)

    def compatibility(self, subject: str | None = None) -> str:
        """GET /config/<subject> (the registry's default without a subject, or if the subject
        has no level of its own): Apicurio answers ``compatibilityLevel``, as Confluent does."""
        path = "config" if subject is None else f"config/{quote(subject, safe='')}"
        try:
            answer = self.client._rest_client.get(path)
        except self._error as exc:
            if exc.http_status_code == NOT_FOUND and subject is not None:
                return self.compatibility()
            raise RegistryError(f"schema registry {self.url}: {path}: {_why(exc)}") from None
        except Exception as exc:
            raise RegistryError(f"schema registry {self.url}: {path}: {_why(exc)}") from None
        if not isinstance(answer, dict):
            return "?"
        return str(answer.get("compatibilityLevel") or answer.get("compatibility") or "?")


@dataclass
class Framing:
    """How one program writes its records, and how it reads both framings.

    ``event_header``/``escalation_header``: what starts each record written (the SOE header,
    or ``00`` + the schema id registered for the topic)."""

    wire_format: str
    event_header: bytes
    escalation_header: bytes
    registry: SchemaRegistry | None = None
    events: RegistryWriters = field(default_factory=lambda: RegistryWriters(avro.EVENT_CODEC))
    escalations: RegistryWriters = field(
        default_factory=lambda: RegistryWriters(avro.ESCALATION_CODEC)
    )
    _lookups: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def writing_single_object(cls, registry: SchemaRegistry | None = None) -> Framing:
        """Writes single-object encoding; reads registry framing through ``registry``, if any."""
        return cls(SINGLE_OBJECT, avro.EVENT_CODEC.header, avro.ESCALATION_CODEC.header, registry)

    def event_value(self, obj: dict[str, Any]) -> bytes:
        """A PatientEvent's JSON rendering as a record value in this framing."""
        return avro.encode_event(obj, self.event_header)

    def escalation_value(self, escalation: Escalation) -> bytes:
        return avro.escalation_bytes(escalation, self.escalation_header)

    def look_up(self, writers: RegistryWriters, schema_id: int, *, wait: bool = True) -> None:
        """Learn what ``schema_id`` is (blocking HTTP, at most LOOKUPS_PER_SECOND a second).

        RegistryError if the registry cannot be asked: nothing is remembered then, so the
        record can be retried; an id the registry does not have is remembered as refused.
        Over the pace, ``wait=False`` (the worker) does not wait: CodecError, the id not
        remembered, so a stream of random ids cannot hold every patient's records up."""
        if self.registry is None:
            writers.refuse(
                schema_id,
                f"no schema registry is configured ({env_name('schema_registry_url')})",
            )
            return
        with self._lock:
            if not self._pace(wait):
                raise CodecError(
                    "unknown-schema",
                    f"registry schema id {schema_id}: not looked up (more than "
                    f"{LOOKUPS_PER_SECOND} new schema ids a second)",
                )
            if writers.known(schema_id):
                return
            try:
                text = self.registry.schema_text(schema_id)
            except UnknownSchemaId:
                writers.refuse(schema_id, "the registry has no schema with this id")
                return
            writers.learn(schema_id, text)

    def _pace(self, wait: bool) -> bool:
        """Take a lookup's turn (sleeping for it if ``wait``); False if none is free now."""
        now = time.monotonic()
        recent = [t for t in self._lookups if now - t < 1.0]
        if len(recent) >= LOOKUPS_PER_SECOND:
            if not wait:
                return False
            time.sleep(max(0.0, 1.0 - (now - recent[0])))
        recent.append(time.monotonic())
        self._lookups[:] = recent[-LOOKUPS_PER_SECOND:]
        return True

    def single_object(self, writers: RegistryWriters, value: bytes) -> bytes:
        """``value`` as single-object bytes (registry-framed ones rewritten; looked up first if
        their id is new: blocking). CodecError if it cannot be; RegistryError if the registry
        cannot be asked."""
        schema_id = registry_schema_id(value)
        if schema_id is None:
            return value
        if not writers.known(schema_id):
            self.look_up(writers, schema_id)
        return writers.single_object(value, schema_id)

    def decode_event(self, value: bytes) -> dict[str, Any]:
        """A record value in either framing to a PatientEvent's JSON rendering (blocking)."""
        return avro.decode_event(self.single_object(self.events, value))

    def decode_escalation(self, value: bytes) -> dict[str, Any]:
        """A record value in either framing to an Escalation's JSON rendering (blocking)."""
        return avro.decode_escalation(self.single_object(self.escalations, value))


def reader_for(settings: Settings) -> Framing:
    """A framing for reading only: both framings, registry ids looked up if a URL is set."""
    registry = SchemaRegistry(settings) if settings.schema_registry_url else None
    return Framing.writing_single_object(registry)


def framing_for(
    settings: Settings, *, events_topic: str, escalations_topic: str | None = None
) -> Framing:
    """The framing the settings ask for. With ``registry``: the current schemas registered
    under the topics' subjects (BACKWARD set on them; escalations only if a topic is given);
    RegistryError, one line, if the registry is unreachable or refuses them."""
    framing = reader_for(settings)
    registry = framing.registry
    if settings.wire_format != REGISTRY:
        return framing
    assert registry is not None  # Settings refuses wire_format=registry without a URL
    framing.wire_format = REGISTRY
    # The ids registered here are stepcare's own schemas: reading them needs no lookup.
    schema_id = registry.ensure(subject_of(events_topic), avro.EVENT_CODEC.current.schema)
    framing.event_header = registry_header(schema_id)
    _know(framing.events, schema_id, avro.EVENT_CODEC)
    if escalations_topic is not None:
        subject = subject_of(escalations_topic)
        schema_id = registry.ensure(subject, avro.ESCALATION_CODEC.current.schema)
        framing.escalation_header = registry_header(schema_id)
        _know(framing.escalations, schema_id, avro.ESCALATION_CODEC)
    return framing


def _numbers(found: Any) -> tuple[int, int]:
    """(version, schema id) of a RegisteredSchema: both are set in a registry's answers."""
    return int(found.version), int(found.schema_id)


def _know(writers: RegistryWriters, schema_id: int, codec: RecordCodec) -> None:
    writers.learn(schema_id, json.dumps(codec.current.schema))
