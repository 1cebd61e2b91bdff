"""``stepcare settings``: every STEPCARE_* setting, its value, its meaning and its default."""

from __future__ import annotations

import argparse

from streams.kafka.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, settings: Settings) -> int:
    for name, default, doc in Settings.describe():
        field = name.removeprefix("STEPCARE_").lower()
        value = getattr(settings, field)
        if field in ("sasl_password", "schema_registry_password") and value:
            value = "(set, not shown)"
        print(f"{name}={value}\n    {doc} (default: {default})")
    return 0
