"""``stepcare replay``: the engine over an event log (``streams.analysis.replay``)."""

from __future__ import annotations

import argparse

from streams.analysis.replay import replay_events
from streams.cli.progress import Progress, report
from streams.clinical.events import EventError, parse_time
from streams.clinical.policy import resolve_policy
from streams.errors import UsageError
from streams.formats.files import open_text_output, refuse_same_file
from streams.formats.logs import read_events
from streams.kafka.settings import Settings

DESCRIPTION = (
    "Escalations go to stdout (or --output) and nothing else does; rejected lines (number and "
    "reason) and a summary go to stderr."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--input", required=True, help="JSONL log of PatientEvents, or - for stdin")
    parser.add_argument("--output", help="write escalations here instead of stdout")
    parser.add_argument(
        "--policy", help="built-in policy name (step-pc-2024, early-pc) or a TOML file"
    )
    parser.add_argument("--until", help="advance the clock to this RFC 3339 time at the end")
    parser.add_argument("--strict", action="store_true", help="exit 2 on the first bad line")


def run(args: argparse.Namespace, settings: Settings) -> int:
    policy = resolve_policy(args.policy)
    try:
        until = None if args.until is None else parse_time(args.until)
    except EventError as exc:
        raise UsageError(f"--until: {exc}") from None
    refuse_same_file([args.input], [args.output])
    events = read_events(args.input)  # the input opens before any output is made
    with open_text_output(args.output or "-") as output:
        progress = Progress(progress_text)
        summary, engine = replay_events(
            events, policy, output, until=until, strict=args.strict, progress=progress.update
        )
        progress.clear()
    report(summary.text(patients=len(engine.states)))
    return 0


def progress_text(count: int, rate: float, share: float | None) -> str:
    return f"... {count:,} events read ({rate:,.0f}/s)"
