"""``stepcare topics``: create the topics (partitions, replication from the settings)."""

from __future__ import annotations

import argparse

from streams.cli.progress import report
from streams.kafka.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.topics import ensure_topics

    created = ensure_topics(settings)
    if created:
        report(f"created topics {', '.join(created)} ({settings.partitions} partitions)")
    return 0
