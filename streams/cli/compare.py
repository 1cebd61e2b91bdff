"""``stepcare compare``: policies over event logs, what each requests, side by side
(``streams.analysis.compare``)."""

from __future__ import annotations

import argparse
import sys
import time

from streams.analysis.compare import (
    DEFAULT_WEEK,
    compare,
    table,
    write_csv,
    write_per_patient,
    write_png,
)
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
    'compare counts". With --seeds N, no --input: the trial comparison over N simulated '
    "cohorts (each policy over its own arm, seed by seed), each number as its mean over the seeds "
    "with a 95% Student-t confidence interval (mean ± t(0.975, N-1)·sd/√N over the seeds)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        help="JSONL or Avro log; once for all policies, or once per --policy (paired in order); "
        "none with --seeds",
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
    parser.add_argument(
        "--per-patient",
        metavar="FILE.csv",
        help="write one row per patient: per policy run, its escalations, visit requests and "
        "completed visits",
    )
    parser.add_argument(
        "--seeds",
        metavar="N",
        help="simulate N cohorts (seeds --seed .. --seed+N-1; N from 2 to 1000), each policy "
        "over its own arm, and print each number's mean and 95%% interval: Student-t over the "
        "seeds (mean ± t(0.975, N-1)·sd/√N); --csv then has one row per seed and run",
    )
    parser.add_argument("--seed", type=int, default=1, help="with --seeds: the first seed (1)")
    parser.add_argument(
        "--patients", type=int, default=507, help="with --seeds: patients per cohort (507)"
    )
    parser.add_argument(
        "--weeks-of-follow-up",
        dest="follow_up",
        type=float,
        default=24,
        help="with --seeds: weeks of follow-up after enrollment (24)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    started = time.monotonic()
    if args.seeds is not None:
        return _run_seeds(args, started)
    if not args.input:
        raise UsageError("give --input LOG (or --seeds N to simulate the cohorts)")
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
    refuse_same_file(args.input, [args.csv, args.png, args.per_patient])
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
    if args.per_patient:
        write_per_patient(args.per_patient, runs)
    seconds = time.monotonic() - started
    logs = list(dict.fromkeys(args.input))
    events = sum(next(r.events for r in runs if r.input == log) for log in logs)
    print(
        f"compared {len(runs)} policy runs over {events} events ({len(logs)} "
        f"log{'s' if len(logs) > 1 else ''}) in {engines:.2f} s; {seconds:.2f} s with the output",
        file=sys.stderr,
    )
    return 0


MAX_SEEDS = 1000


def _run_seeds(args: argparse.Namespace, started: float) -> int:
    """--seeds N: N simulated trials, each number's mean and 95% t interval over them."""
    from streams.analysis.seeds import seeds_table, simulated_runs, summarise

    seeds = int(args.seeds) if args.seeds.isascii() and args.seeds.isdigit() else 0
    if not 2 <= seeds <= MAX_SEEDS:
        raise UsageError(f"--seeds must be a whole number from 2 to {MAX_SEEDS} (an interval "
                         "needs two seeds)")  # fmt: skip
    if args.input:
        raise UsageError("--seeds simulates the cohorts: give no --input")
    if args.png or args.per_patient:
        raise UsageError("--png and --per-patient need --input (not --seeds)")
    if args.patients < 1:
        raise UsageError("--patients must be at least 1")
    if not args.follow_up > 0 or any(not w > 0 for w in args.week):
        raise UsageError("--weeks-of-follow-up and --week must be more than 0")
    weeks = sorted({DEFAULT_WEEK, *args.week})
    try:
        until = None if args.until is None else parse_time(args.until)
    except EventError as exc:
        raise UsageError(f"--until: {exc}") from None
    policies = [resolve_policy(name) for name in args.policy]
    rows_by_seed = []
    csv_rows = []
    for seed in range(args.seed, args.seed + seeds):
        runs = simulated_runs(policies, seed, args.patients, args.follow_up, until=until)
        rows = [r.report(weeks) for r in runs]
        rows_by_seed.append(rows)
        csv_rows += [{"seed": seed, **row} for row in rows]
        print(f"... seed {seed}: {len(runs)} runs, {sum(r.events for r in runs)} events",
              file=sys.stderr)  # fmt: skip
    sys.stdout.write(seeds_table(summarise(rows_by_seed)))
    sys.stdout.flush()
    if args.csv:
        write_csv(args.csv, csv_rows)
    print(
        f"compared {len(policies)} policies over {seeds} simulated cohorts of {args.patients} "
        f"patients (seeds {args.seed}-{args.seed + seeds - 1}) in "
        f"{time.monotonic() - started:.2f} s",
        file=sys.stderr,
    )
    return 0
