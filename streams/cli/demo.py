"""``stepcare demo``: ``demo run`` (the whole live demo, ``make run``) and ``demo cohort``."""

from __future__ import annotations

import argparse
import json
import time

from streams.cli.progress import report
from streams.clinical.events import (
    DAY_MS,
    MAX_EVENT_TIME,
    MIN_TIME,
    EventError,
    format_time,
    parse_time,
)
from streams.errors import UsageError
from streams.formats.files import open_output
from streams.kafka.settings import Settings

DEMO_MAX_WEEKS = 520  # ten years: a demo cohort, not a registry


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    live = actions.add_parser(
        "run",
        help="make run: broker, topics, worker, a demo cohort, escalations as they arrive",
    )
    live.add_argument("--patients", type=int, default=200, help="patients in the cohort")
    live.add_argument("--seed", type=int, default=1, help="random seed of the cohort")
    cohort = actions.add_parser("cohort", help="write a seeded demo cohort as a JSONL log")
    cohort.add_argument("--patients", type=int, default=200, help="patients in the cohort")
    cohort.add_argument("--seed", type=int, default=1, help="random seed")
    cohort.add_argument(
        "--weeks", type=int, default=30, help=f"weeks the cohort spans (1-{DEMO_MAX_WEEKS})"
    )
    cohort.add_argument("--end", default="now", help="RFC 3339 time of the end, or now")
    cohort.add_argument("--output", default="-", help="file to write, or - for stdout")


def run(args: argparse.Namespace, settings: Settings) -> int:
    return _live(args, settings) if args.action == "run" else _cohort(args)


def _live(args: argparse.Namespace, settings: Settings) -> int:
    from streams.devtools.run import DemoError, run_demo

    if args.patients < 1:
        raise UsageError("--patients must be at least 1")
    try:
        return run_demo(settings, args.patients, args.seed)
    except DemoError as exc:
        raise UsageError(str(exc)) from None


def _cohort(args: argparse.Namespace) -> int:
    from streams.devtools.demo import demo_cohort

    if args.patients < 1:
        raise UsageError("--patients must be at least 1")
    if not 1 <= args.weeks <= DEMO_MAX_WEEKS:
        raise UsageError(f"--weeks must be 1-{DEMO_MAX_WEEKS}")
    try:
        end = time.time_ns() // 1_000_000 if args.end == "now" else parse_time(args.end)
    except EventError as exc:
        raise UsageError(f"--end: {exc}") from None
    # Events lie between a month before the start (baseline forms) and the end.
    if not MIN_TIME + (args.weeks * 7 + 31) * DAY_MS <= end < MAX_EVENT_TIME:
        raise UsageError(
            f"--end {args.end}: the cohort's events must lie within 0001-01-01 and "
            f"{format_time(MAX_EVENT_TIME)}"
        )
    events = demo_cohort(args.patients, args.seed, end, weeks=args.weeks)
    with open_output(args.output) as out:
        for event in events:
            out.write(json.dumps(event).encode() + b"\n")
    report(f"{len(events)} events for {args.patients} patients")
    return 0
