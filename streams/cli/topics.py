"""``stepcare topics``: create the topics (partitions, replication from the settings)."""

from __future__ import annotations

import argparse

from streams.cli.progress import report
from streams.kafka.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, settings: Settings) -> int:
    create(settings)
    return 0


def create(settings: Settings, *, worker: bool = False) -> None:
    """Create the missing topics (with ``worker``, the worker's changelog too) and say so."""
    from streams.kafka.topics import ensure_topics

    created = ensure_topics(settings, worker=worker)
    if created:
        report(f"created topics {', '.join(created)} ({settings.partitions} partitions)")
