"""``stepcare explain``: why was this patient (not) seen? (``streams.analysis.explain``)"""

from __future__ import annotations

import argparse
import sys

from streams.analysis.charts import render_png
from streams.analysis.explain import explain, read_events, render_html
from streams.clinical.events import EventError, parse_time
from streams.clinical.policy import resolve_policy
from streams.errors import UsageError
from streams.formats.files import refuse_same_file, write_output
from streams.kafka.settings import Settings

DESCRIPTION = (
    "The whole log runs through one engine, as in stepcare replay; the patient's events, "
    "outcomes, suppressed triggers and escalations are told in order on stdout, then a "
    "summary. Patient data goes to stdout and the --png / --html files only. An unknown "
    "patient: exit 2."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument(
        "--input", required=True, metavar="LOG", help="JSONL or Avro container log, or - (JSONL)"
    )
    parser.add_argument("--patient", required=True, metavar="ID", help="the patient to explain")
    parser.add_argument(
        "--policy",
        metavar="NAME|FILE",
        help="built-in policy name (step-pc-2024, early-pc) or a TOML file",
    )
    parser.add_argument(
        "--until", metavar="TIME", help="advance the clock to this RFC 3339 time at the end"
    )
    parser.add_argument("--png", metavar="FILE", help="also write the timeline chart (PNG)")
    parser.add_argument(
        "--html", metavar="FILE", help="also write a self-contained HTML page (story and chart)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    refuse_same_file([args.input], [args.png, args.html])
    policy = resolve_policy(args.policy)
    try:
        until = None if args.until is None else parse_time(args.until)
    except EventError as exc:
        raise UsageError(f"--until: {exc}") from None
    story = explain(read_events(args.input), args.patient, policy, until=until)
    if story is None:
        raise UsageError(f"patient {args.patient!r} does not appear in {args.input}")
    png = render_png(story) if args.png or args.html else b""
    if args.png:
        write_output(args.png, png)
    if args.html:
        write_output(args.html, render_html(story, png).encode("utf-8"))
    sys.stdout.write("".join(line + "\n" for line in story.lines()))
    sys.stdout.flush()
    return 0
