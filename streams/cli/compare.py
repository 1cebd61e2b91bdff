"""``stepcare compare``: policies over event logs, what each requests, side by side
(``streams.analysis.compare``)."""

from __future__ import annotations

import argparse
import sys
import time

from streams.analysis.compare import DEFAULT_WEEK, compare, table, write_csv, write_png
from streams.clinical.events import EventError, parse_time
from streams.clinical.policy import resolve_policy
from streams.errors import UsageError
from streams.formats.files import refuse_same_file
from streams.kafka.settings import Settings

DESCRIPTION = (
    "One --input and several --policy: every policy runs over the same log (what each would "
    "have requested given that history). As many --input as --policy: input i runs under "
    "policy i (the trial comparison: two simulate runs with the same seed, one per arm). A "
    'table on stdout, one column per run; what each row counts: docs/simulation.md, "What '
    'compare counts".'
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        help="JSONL or Avro log; once for all policies, or once per --policy (paired in order)",
    )
    parser.add_argument(
        "--policy",
        action="append",
        required=True,
        help="built-in policy name (step-pc-2024, early-pc) or a TOML file; repeat",
    )
    parser.add_argument(
        "--week",
        action="append",
        type=float,
        default=[],
        help=f"also count visits by this week after enrollment (week {DEFAULT_WEEK} always)",
    )
    parser.add_argument("--until", help="advance every clock to this RFC 3339 time at the end")
    parser.add_argument("--csv", help="write one row per policy run to this CSV file")
    parser.add_argument("--png", help="write bar charts to this PNG file")


def run(args: argparse.Namespace, settings: Settings) -> int:
    started = time.monotonic()
    if len(args.input) != 1 and len(args.input) != len(args.policy):
        raise UsageError(
            f"{len(args.input)} --input for {len(args.policy)} --policy: give one --input for "
            "all policies, or one --input per --policy (paired in order)"
        )
    if any(not w > 0 for w in args.week):
        raise UsageError("--week must be more than 0")
    weeks = sorted({DEFAULT_WEEK, *args.week})
    try:
        until = None if args.until is None else parse_time(args.until)
    except EventError as exc:
        raise UsageError(f"--until: {exc}") from None
    refuse_same_file(args.input, [args.csv, args.png])
    policies = [resolve_policy(name) for name in args.policy]
    runs = compare(args.input, policies, until=until)
    engines = time.monotonic() - started
    rows = [r.report(weeks) for r in runs]
    sys.stdout.write(table(rows, weeks))
    sys.stdout.flush()
    if args.csv:
        write_csv(args.csv, rows)
    if args.png:
        write_png(args.png, rows, weeks)
    seconds = time.monotonic() - started
    logs = list(dict.fromkeys(args.input))
    events = sum(next(r.events for r in runs if r.input == log) for log in logs)
    print(
        f"compared {len(runs)} policy runs over {events} events ({len(logs)} "
        f"log{'s' if len(logs) > 1 else ''}) in {engines:.2f} s; {seconds:.2f} s with the output",
        file=sys.stderr,
    )
    return 0
