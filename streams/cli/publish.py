"""``stepcare publish``: an event log onto the input topic (``streams.kafka.publish``)."""

from __future__ import annotations

import argparse
import sys

from streams.cli.progress import Progress
from streams.clinical.events import EventError, parse_time
from streams.errors import UsageError
from streams.kafka.settings import Settings

DESCRIPTION = (
    "Keys are patient ids, values Avro single-object encoded, record timestamps the events' "
    "times; per-patient file order is kept. Bad lines are reported to stderr and not published. "
    "Exit 1 if a record was not delivered."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--input", required=True, help="JSONL or Avro log, or - for JSONL on stdin")
    parser.add_argument("--topic", help="topic to publish to (default: STEPCARE_INPUT_TOPIC)")
    parser.add_argument("--rate", type=float, help="at most this many events per second")
    parser.add_argument(
        "--until", help="then a CLOCK_TICK at this RFC 3339 time on every partition"
    )
    parser.add_argument(
        "--from", dest="since", help="only events at or after this RFC 3339 time (a time range)"
    )
    parser.add_argument("--to", dest="before", help="only events before this RFC 3339 time")
    parser.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap servers (default: STEPCARE_BOOTSTRAP_SERVERS)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 2 on the first bad line")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """0 if every record was delivered, 1 if some were not."""
    from streams.kafka import client, publish  # confluent-kafka is loaded only for this command

    times = {}
    for option, value in (("--until", args.until), ("--from", args.since), ("--to", args.before)):
        try:
            times[option] = None if value is None else parse_time(value)
        except EventError as exc:
            raise UsageError(f"{option}: {exc}") from None
    until, since, before = times["--until"], times["--from"], times["--to"]
    if since is not None and before is not None and since >= before:
        raise UsageError("--from must be before --to")
    if args.rate is not None and not args.rate > 0:
        raise UsageError(f"--rate: {args.rate:g} is not a positive number of events/s")
    topic = args.topic or settings.input_topic
    config = client.producer_config(settings, args.bootstrap_servers)
    log = publish.open_log(args.input)  # a missing file is reported before any connection
    header = None
    if settings.wire_format == "registry":
        from streams.kafka.registry import framing_for

        try:
            header = framing_for(settings, events_topic=topic).event_header
        except Exception:
            log.close()
            raise
    try:
        producer = publish.connect(config, settings.log_level)
        summary = publish.publish_log(
            log,
            producer,
            topic,
            rate=args.rate,
            until=until,
            since=since,
            before=before,
            strict=args.strict,
            where=config["bootstrap.servers"],
            max_message_bytes=int(config.get("message.max.bytes", 1_000_000)),
            progress=Progress(progress_text, total=log.total_bytes),
            header=header,
        )
    finally:
        log.close()
    print(summary.text(), file=sys.stderr, flush=True)
    if summary.stopped_at is not None:
        raise UsageError(summary.stopped_at)
    if summary.failed:
        reasons = "; ".join(f"{n} x {reason}" for reason, n in summary.failures.most_common())
        print(f"stepcare: {summary.failed} records not delivered ({reasons})", file=sys.stderr)
        return 1
    return 0


def progress_text(published: int, rate: float, share: float | None) -> str:
    text = f"published {published} events, {rate:.0f} events/s"
    if share is not None:
        text += f", {100 * share:.0f}% of the log"
    return text
