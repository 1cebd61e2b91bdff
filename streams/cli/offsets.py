"""``stepcare offsets``: move a consumer group's offsets on a topic to a point in time."""

from __future__ import annotations

import argparse

from streams.cli.progress import report
from streams.clinical.events import EventError, parse_time
from streams.errors import UsageError
from streams.kafka.settings import Settings

DESCRIPTION = (
    "Dry run unless --execute. The group must be idle (its consumers stopped). Use it to "
    "re-deliver escalations to a scheduling system from a datetime (it deduplicates by "
    "escalation_id), or to re-read input after an upstream fix."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--topic", required=True, help="topic whose offsets move")
    parser.add_argument("--to-datetime", required=True, help="RFC 3339 time to move to")
    parser.add_argument("--execute", action="store_true", help="move them (default: show)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.topics import reset_offsets

    try:
        moment = parse_time(args.to_datetime)
    except EventError as exc:
        raise UsageError(f"--to-datetime: {exc}") from None
    moves = reset_offsets(settings, args.group, args.topic, moment, execute=args.execute)
    for move in moves:
        before = "none" if move.committed is None else move.committed
        print(f"{args.topic} [{move.partition}]: {before} -> {move.target}")
    verb = "moved" if args.execute else "would move (dry run; add --execute)"
    report(f"{verb} {args.group} on {len(moves)} partitions to {args.to_datetime}")
    return 0
