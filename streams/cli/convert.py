"""``stepcare convert``: an event log between JSONL and an Avro container file, each record
validated as ``stepcare replay`` validates it (docs/simulation.md, "Converting logs")."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

from streams.clinical.events import event_to_json
from streams.errors import UsageError
from streams.formats.files import refuse_same_file
from streams.formats.logs import FORMATS, input_format, output_format, read_events, write_log
from streams.kafka.settings import Settings

DESCRIPTION = (
    "The input format is detected by content (Avro container, else JSONL; - is JSONL on "
    "stdin), the output format is --format or the output's extension (.avro; .jsonl, .ndjson, "
    '.json). A record that is not a valid event is reported on stderr as "record N: reason" '
    "and not written. The output is replaced only if the run succeeds; it may not be the "
    "input."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--input", required=True, help="JSONL or Avro log, or - for JSONL stdin")
    parser.add_argument("--output", required=True, help="file to write, or - for JSONL stdout")
    parser.add_argument(
        "--format", choices=FORMATS, help="output format (default: by the output's extension)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 2 on the first bad record")


def run(args: argparse.Namespace, settings: Settings) -> int:
    refuse_same_file([args.input], [args.output])
    started = time.monotonic()
    source_format = input_format(args.input)
    target_format = output_format(args.output, args.format)
    records = read_events(args.input)
    rejected = 0

    def valid() -> Iterator[dict[str, Any]]:
        nonlocal rejected
        for number, item in records:
            if isinstance(item, str):
                if args.strict:
                    raise UsageError(f"record {number}: {item}")
                rejected += 1
                print(f"record {number}: {item}", file=sys.stderr)
                continue
            yield event_to_json(item)

    written = write_log(args.output, valid(), target_format)
    seconds = time.monotonic() - started
    print(
        f"converted {written} records ({source_format} -> {target_format}) in {seconds:.1f} s, "
        f"{rejected} rejected",
        file=sys.stderr,
    )
    return 0
