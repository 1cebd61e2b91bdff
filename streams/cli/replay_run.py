"""``stepcare replay-run export|diff|delete RUN``: what a ``stepcare worker --replay RUN`` made,
read back, compared with an offline ``stepcare replay``, and deleted."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from streams.cli.progress import report
from streams.clinical.events import EventError
from streams.errors import UsageError
from streams.formats.files import FileError, json_line, numbered_lines, open_input, open_output
from streams.kafka.settings import Settings

if TYPE_CHECKING:
    from streams.kafka.runs import Run

DESCRIPTION = (
    "A replay run's names come from the live settings (STEPCARE_APP_ID, the topics, "
    "STEPCARE_DATA_DIR) as `stepcare worker --replay RUN` makes them: its escalations are on "
    "<escalations topic>.replay.RUN. export and diff read that topic read_committed, up to its "
    "end offsets when they start; escalations delivered twice (at least once) count once."
)
EXIT_DIFFERENT = 1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="the run's escalations as JSONL (the lines offline `stepcare replay` writes) or "
        "an Avro container file",
        description="Partition by partition, in offset order (one partition: the order of an "
        "offline replay of the same log, byte for byte).",
    )
    export.add_argument("run", metavar="RUN")
    export.add_argument("--output", default="-", help="file to write (default: stdout)")
    export.add_argument(
        "--format",
        choices=("jsonl", "avro"),
        help="jsonl or avro (an Avro container file of the Escalation schema); default: by "
        "the output's extension (.avro), else jsonl",
    )
    diff = actions.add_parser(
        "diff",
        help="compare the run's escalations with an offline replay's output, by escalation id",
        description="Prints the counts and the ids only in the run, only in the offline "
        "file, and in both but different. Exit 0 if identical, 1 if not, 2 for bad input.",
    )
    diff.add_argument("run", metavar="RUN")
    diff.add_argument("offline", metavar="FILE", help="JSONL written by `stepcare replay`")
    delete = actions.add_parser(
        "delete",
        help="delete the run's topics, consumer group and data dir (never a live one)",
        description="Refuses a run that does not exist or still runs. Asks first unless --yes "
        "(and refuses without --yes when stdin is not a terminal).",
    )
    delete.add_argument("run", metavar="RUN")
    delete.add_argument("--yes", action="store_true", help="do not ask")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.runs import Run
    from streams.kafka.settings import RUN_NAME

    if not RUN_NAME.fullmatch(args.run):
        raise UsageError(f"{args.run!r} is not a replay run's name (letters, digits, '.', '_' "
                         "or '-', up to 64)")  # fmt: skip
    action = {"export": _export, "diff": _diff, "delete": _delete}[args.action]
    return action(args, settings, Run.of(settings, args.run))


def _export(args: argparse.Namespace, settings: Settings, run: Run) -> int:
    from streams.formats.avro import write_escalation_log

    fmt = args.format or ("avro" if args.output.endswith(".avro") else "jsonl")
    escalations = _run_escalations(settings, run)  # reads the end offsets before any output
    count = 0
    with open_output(args.output) as out:
        if fmt == "avro":
            count = write_escalation_log(out, escalations)
        else:
            for obj in escalations:
                out.write(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))
                count += 1
    report(f"exported {count} escalations of replay run {run.name!r} ({run.escalations_topic}) "
           f"as {fmt}")  # fmt: skip
    return 0


def _diff(args: argparse.Namespace, settings: Settings, run: Run) -> int:
    offline = _offline_escalations(args.offline)  # bad input is found before Kafka is asked
    in_run = {obj["escalation_id"]: obj for obj in _run_escalations(settings, run)}
    only_run = sorted(in_run.keys() - offline.keys())
    only_offline = sorted(offline.keys() - in_run.keys())
    differing = sorted(
        i for i in in_run.keys() & offline.keys() if _canonical(in_run[i]) != offline[i]
    )
    lines = [f"replay run {run.name!r}: {len(in_run)} escalations; {args.offline}: "
             f"{len(offline)} escalations"]  # fmt: skip
    for title, ids in (
        (f"only in the run {run.name!r}", only_run),
        (f"only in {args.offline}", only_offline),
        ("in both, different", differing),
    ):
        lines.append(f"{title}: {len(ids)}")
        lines.extend(f"  {escalation_id}" for escalation_id in ids)
    different = bool(only_run or only_offline or differing)
    lines.append("different" if different else "identical")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_DIFFERENT if different else 0


def _delete(args: argparse.Namespace, settings: Settings, run: Run) -> int:
    from streams.kafka.runs import RunError, delete, end_offsets

    try:
        end_offsets(settings, run.escalations_topic)  # refuses a run that was never made
    except RunError:
        if not run.data_dir.exists():
            where = settings.bootstrap_servers
            raise RunError(
                f"no replay run {run.name!r}: no topic {run.escalations_topic} at {where} and "
                f"no data dir {run.data_dir}"
            ) from None
    what = (
        f"replay run {run.name!r}: topics {', '.join(run.topics)} (those that exist), "
        f"consumer group {run.group}, data dir {run.data_dir}"
    )
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"delete {what}? Add --yes (stdin is not a terminal to ask)")
        answer = input(f"delete {what}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            report("nothing deleted")
            return 1
    topics, had_group = delete(settings, run)
    if run.data_dir.exists():
        shutil.rmtree(run.data_dir)
    deleted_topics = f"{len(topics)} topics" + (f" ({', '.join(topics)})" if topics else "")
    group = f"group {run.group}" if had_group else "no group"
    report(f"deleted replay run {run.name!r}: {deleted_topics}, {group}, data dir {run.data_dir}")
    return 0


def _run_escalations(settings: Settings, run: Run) -> Iterator[dict[str, Any]]:
    """The run's escalations (JSON renderings), each id once, as they are on the topic.
    The end offsets are read at once (a RunError if the topic does not exist)."""
    from streams.kafka.registry import reader_for
    from streams.kafka.runs import RunError, end_offsets, read_values

    ends = end_offsets(settings, run.escalations_topic)
    framing = reader_for(settings)

    def escalations() -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        for value in read_values(settings, run.escalations_topic, ends):
            try:
                obj = framing.decode_escalation(value)
            except (EventError, ValueError) as exc:
                raise RunError(f"{run.escalations_topic}: a record that is not an escalation "
                               f"({exc})") from None  # fmt: skip
            if obj["escalation_id"] not in seen:
                seen.add(obj["escalation_id"])
                yield obj

    return escalations()


def _offline_escalations(name: str) -> dict[str, bytes]:
    """escalation id -> canonical JSON of each escalation in an offline replay's JSONL."""
    found: dict[str, bytes] = {}
    source = open_input(name)
    try:
        for number, raw in numbered_lines(source):
            if not raw.strip():
                continue
            obj, problem = json_line(raw)
            if problem is not None:
                raise UsageError(f"{name}: line {number}: {problem}")
            escalation_id = obj.get("escalation_id") if isinstance(obj, dict) else None
            if not isinstance(escalation_id, str):
                raise UsageError(f"{name}: line {number}: not an escalation (no escalation_id)")
            found.setdefault(escalation_id, _canonical(obj))
    except OSError as exc:
        raise FileError(f"cannot read {name}: {exc.strerror}") from None
    finally:
        if name != "-":
            source.close()
    return found


def _canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
