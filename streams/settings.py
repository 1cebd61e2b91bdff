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
