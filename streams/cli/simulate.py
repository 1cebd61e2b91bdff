"""``stepcare simulate``: a seeded synthetic STEP PC cohort as a replay log
(``streams.analysis.simulate``)."""

from __future__ import annotations

import argparse
import math
import sys

from streams.analysis.simulate import (
    ACCRUAL_WEEKS,
    BASELINE_LEAD_DAYS,
    FOLLOW_UP_WINDOW_DAYS,
    TRIAL_START,
    WEEK_MS,
    Cohort,
    Summary,
    simulate,
)
from streams.cli.progress import Progress
from streams.clinical.events import DAY_MS, MAX_EVENT_TIME, EventError, format_time, parse_time
from streams.clinical.policy import resolve_policy
from streams.errors import UsageError
from streams.formats.logs import LogError, output_format, write_log
from streams.kafka.settings import Settings

DESCRIPTION = (
    "A cohort shaped like the STEP PC trial, with the arm's policy in the loop (its visit "
    "requests are booked and completed), as a log in time order. The same --seed under "
    "step-pc-2024 and early-pc gives the two arms of the trial: the same patients, forms and "
    "clinical events, and different palliative-care visits. Progress and a summary go to "
    "stderr. Parameters and their sources: docs/simulation.md."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--patients", type=int, default=507, help="patients (default 507)")
    parser.add_argument(
        "--weeks", type=float, default=24, help="weeks of follow-up after enrollment (default 24)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--arm",
        default="step-pc-2024",
        help="the arm's policy: step-pc-2024 (default), early-pc, or a policy TOML file",
    )
    parser.add_argument("--output", default="-", help="file to write (.jsonl or .avro), or -")
    parser.add_argument(
        "--format", choices=("jsonl", "avro"), help="output format (default: by extension)"
    )
    parser.add_argument(
        "--start",
        default=TRIAL_START,
        help=f"RFC 3339 time before the first event (default {TRIAL_START}, the trial's start)",
    )
    parser.add_argument(
        "--accrual-weeks",
        type=float,
        default=ACCRUAL_WEEKS,
        help=f"enrollment is spread over this many weeks (default {ACCRUAL_WEEKS})",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.patients < 1:
        raise UsageError("--patients must be at least 1")
    if not args.weeks > 0 or not args.accrual_weeks > 0:
        raise UsageError("--weeks and --accrual-weeks must be more than 0")
    try:
        start = parse_time(args.start)
    except EventError as exc:
        raise UsageError(f"--start: {exc}") from None
    try:
        fmt = output_format(args.output, args.format)
    except LogError as exc:
        raise UsageError(str(exc)) from None
    policy = resolve_policy(args.arm)
    day0 = -(-start // DAY_MS) * DAY_MS  # the first UTC midnight at or after --start
    # The last event: the last enrollment (after the baseline lead), its follow-up and window.
    last = day0 + (math.ceil(BASELINE_LEAD_DAYS) + args.accrual_weeks * 7 + 1) * DAY_MS
    last += args.weeks * WEEK_MS + FOLLOW_UP_WINDOW_DAYS * DAY_MS
    if not last < MAX_EVENT_TIME:  # NaN and inf fail too
        raise UsageError(
            f"--start {args.start} with {args.accrual_weeks:g} weeks of accrual and "
            f"{args.weeks:g} of follow-up would end after {format_time(MAX_EVENT_TIME)}, the "
            "latest time an event may have: start earlier or simulate fewer weeks"
        )
    cohort = Cohort(args.seed, args.patients, args.weeks, day0, args.accrual_weeks)
    summary = Summary()

    def progress_text(done: int, rate: float, share: float | None) -> str:
        return f"simulate: {done}/{args.patients} patients, {sum(summary.events.values())} events"

    shown = Progress(progress_text, total=args.patients)

    def progress(done: int, total: int) -> None:
        shown.update(done, done)

    try:
        write_log(args.output, simulate(cohort, policy, summary, progress), fmt)
    except LogError as exc:
        raise UsageError(str(exc)) from None
    finally:
        shown.clear()
    where = "stdout" if args.output == "-" else args.output
    print(f"{summary.text(policy)} -> {where} ({fmt})", file=sys.stderr)
    return 0
