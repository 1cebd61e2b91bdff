"""``stepcare replay``: the engine over an event log (``streams.analysis.replay``)."""

from __future__ import annotations

import argparse

from streams.analysis.parallel import MAX_JOBS, replay_parallel
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
    parser.add_argument(
        "--jobs",
        default="1",
        metavar="N",
        help=f"replay in N processes (1-{MAX_JOBS}, default 1), patients split as the worker's "
        "partitioner splits them; the output, rejects and summary are those of one job",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    policy = resolve_policy(args.policy)
    try:
        until = None if args.until is None else parse_time(args.until)
    except EventError as exc:
        raise UsageError(f"--until: {exc}") from None
    jobs = parse_jobs(args.jobs)
    refuse_same_file([args.input], [args.output])
    if jobs > 1:
        with open_text_output(args.output or "-") as output:
            progress = Progress(progress_text)
            summary, patients = replay_parallel(
                args.input, policy, output, jobs, until=until, strict=args.strict,
                progress=progress.update,
            )  # fmt: skip
            progress.clear()
        report(summary.text(patients=patients))
        return 0
    events = read_events(args.input)  # the input opens before any output is made
    with open_text_output(args.output or "-") as output:
        progress = Progress(progress_text)
        summary, engine = replay_events(
            events, policy, output, until=until, strict=args.strict, progress=progress.update
        )
        progress.clear()
    report(summary.text(patients=len(engine.states)))
    return 0


def parse_jobs(text: str) -> int:
    """``--jobs``: a whole number from 1 to ``MAX_JOBS``; else one line, exit 2."""
    jobs = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be a whole number from 1 to {MAX_JOBS}")
    return jobs


def progress_text(count: int, rate: float, share: float | None) -> str:
    return f"... {count:,} events read ({rate:,.0f}/s)"
