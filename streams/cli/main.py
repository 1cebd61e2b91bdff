"""The ``stepcare`` command line.

A user error (bad option, broker that cannot start) exits with status 2 and one line on stderr;
no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import importlib.util
import json
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from streams.analysis.replay import replay_events
from streams.clinical import INPUT_ERRORS
from streams.clinical.events import (
    DAY_MS,
    MAX_EVENT_TIME,
    MIN_TIME,
    EventError,
    format_time,
    parse_time,
)
from streams.clinical.policy import resolve_policy
from streams.clinical.scoring import ScoringError, score_fact_l
from streams.devtools import broker
from streams.errors import StepcareError, UsageError
from streams.formats.files import (
    Document,
    document_or_lines,
    open_input,
    open_output,
    open_text_output,
    read_events,
    refuse_same_file,
    stdout_error,
)
from streams.kafka.settings import KAFKA_VERSIONS, Settings

EXIT_USAGE = 2
DEMO_MAX_WEEKS = 520  # ten years: a demo cohort, not a registry
# Commands in modules of their own: configure(parser) and run(args, settings).
ANALYSIS_COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": (
        "streams.analysis.simulate",
        "a seeded synthetic cohort shaped like the STEP PC trial, as a replay log",
    ),
    "compare": (
        "streams.analysis.compare",
        "run two or more policies over one log and compare what they request",
    ),
    "explain": (
        "streams.analysis.explain",
        "why was this patient (not) seen: one patient's timeline as text and a chart",
    ),
    "convert": (
        "streams.formats.convert",
        "convert an event log between JSONL and Avro container files",
    ),
    "bridge": (
        "streams.interfaces.bridge",
        "hospital interfaces: FHIR and HL7 v2 ADT in as events, FHIR out (files or Kafka)",
    ),
}


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a process SIGPIPE ended
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EPIPE}
# The errors reported as one line, exit 2: stepcare's own and the clinical core's.
_USER_ERRORS: tuple[type[Exception], ...] = (StepcareError, *INPUT_ERRORS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        status = int(args.handler(args, settings) or 0)
        sys.stdout.flush()  # a full disk under stdout is reported here, not at exit
        return status
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _WRITE_ERRNOS:
            raise
        error = stdout_error(exc)
        if exc.errno == errno.EPIPE:  # the reader went away (`| head`): quiet, as SIGPIPE is
            return EXIT_BROKEN_PIPE
        print(f"stepcare: {error}", file=sys.stderr)  # print() to a full stdout
        return EXIT_USAGE
    except _USER_ERRORS as exc:
        print(f"stepcare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepcare", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = commands.add_parser(
        "score",
        help="score FACT-L forms (JSON or JSONL: events, surveys or bare response maps)",
        description="One JSON object out per object in, in order. Invalid input: exit 2.",
    )
    score.add_argument("file", nargs="?", default="-", help="input file, or - for stdin")
    score.set_defaults(handler=_score)

    rep = commands.add_parser(
        "replay",
        help="run the engine over a JSONL event log; escalations as JSONL",
        description="Escalations go to stdout (or --output) and nothing else does; rejected "
        "lines (number and reason) and a summary go to stderr.",
    )
    rep.add_argument("--input", required=True, help="JSONL log of PatientEvents, or - for stdin")
    rep.add_argument("--output", help="write escalations here instead of stdout")
    rep.add_argument(
        "--policy", help="built-in policy name (step-pc-2024, early-pc) or a TOML file"
    )
    rep.add_argument("--until", help="advance the clock to this RFC 3339 time at the end")
    rep.add_argument("--strict", action="store_true", help="exit 2 on the first bad line")
    rep.set_defaults(handler=_replay)

    pub = commands.add_parser(
        "publish",
        help="publish an event log (JSONL or Avro container) to the input topic",
        description="Keys are patient ids, values Avro single-object encoded, record timestamps "
        "the events' times; per-patient file order is kept. Bad lines are reported to stderr "
        "and not published. Exit 1 if a record was not delivered.",
    )
    pub.add_argument("--input", required=True, help="JSONL or Avro log, or - for JSONL on stdin")
    pub.add_argument("--topic", help="topic to publish to (default: STEPCARE_INPUT_TOPIC)")
    pub.add_argument("--rate", type=float, help="at most this many events per second")
    pub.add_argument("--until", help="then a CLOCK_TICK at this RFC 3339 time on every partition")
    pub.add_argument(
        "--from", dest="since", help="only events at or after this RFC 3339 time (a time range)"
    )
    pub.add_argument("--to", dest="before", help="only events before this RFC 3339 time")
    pub.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap servers (default: STEPCARE_BOOTSTRAP_SERVERS)"
    )
    pub.add_argument("--strict", action="store_true", help="exit 2 on the first bad line")
    pub.set_defaults(handler=_publish)

    work = commands.add_parser(
        "worker",
        help="the Faust worker: patient events in, escalations and dead letters out",
        description="Configured by STEPCARE_* settings (stepcare settings lists them). Creates "
        "missing topics, then runs until SIGTERM or Ctrl-C.",
    )
    work.add_argument(
        "--replay",
        metavar="RUN",
        help="a replay run: its own application id, event clock, and output to "
        "stepcare.escalations.replay.RUN (scheduling systems never see it)",
    )
    work.add_argument("--policy", help="policy of this run (default: STEPCARE_POLICY)")
    work.set_defaults(handler=_worker)

    tops = commands.add_parser(
        "topics", help="create the topics (partitions, replication from the settings)"
    )
    tops.set_defaults(handler=_topics)

    demo = commands.add_parser("demo", help="the demo: a cohort log, or the whole live demo")
    demos = demo.add_subparsers(dest="action", required=True, metavar="ACTION")
    live = demos.add_parser(
        "run",
        help="make run: broker, topics, worker, a demo cohort, escalations as they arrive",
    )
    live.add_argument("--patients", type=int, default=200, help="patients in the cohort")
    live.add_argument("--seed", type=int, default=1, help="random seed of the cohort")
    live.set_defaults(handler=_demo_run)
    cohort = demos.add_parser("cohort", help="write a seeded demo cohort as a JSONL log")
    cohort.add_argument("--patients", type=int, default=200, help="patients in the cohort")
    cohort.add_argument("--seed", type=int, default=1, help="random seed")
    cohort.add_argument(
        "--weeks", type=int, default=30, help=f"weeks the cohort spans (1-{DEMO_MAX_WEEKS})"
    )
    cohort.add_argument("--end", default="now", help="RFC 3339 time of the end, or now")
    cohort.add_argument("--output", default="-", help="file to write, or - for stdout")
    cohort.set_defaults(handler=_demo_cohort)

    # Analysis commands: modules with configure(parser) and run(args, settings).
    for name, (module_name, help_text) in ANALYSIS_COMMANDS.items():
        module = importlib.import_module(module_name)
        command = commands.add_parser(name, help=help_text, description=module.__doc__)
        module.configure(command)
        command.set_defaults(handler=module.run)

    offsets = commands.add_parser(
        "offsets",
        help="move a consumer group's offsets on a topic to a point in time",
        description="Dry run unless --execute. The group must be idle (its consumers stopped). "
        "Use it to re-deliver escalations to a scheduling system from a datetime (it "
        "deduplicates by escalation_id), or to re-read input after an upstream fix.",
    )
    offsets.add_argument("--group", required=True, help="consumer group id")
    offsets.add_argument("--topic", required=True, help="topic whose offsets move")
    offsets.add_argument("--to-datetime", required=True, help="RFC 3339 time to move to")
    offsets.add_argument("--execute", action="store_true", help="move them (default: show)")
    offsets.set_defaults(handler=_offsets)

    show = commands.add_parser("settings", help="print every STEPCARE_* setting and its value")
    show.set_defaults(handler=_settings)

    brk = commands.add_parser("broker", help="run a local Apache Kafka broker (dev, demo, tests)")
    actions = brk.add_subparsers(dest="action", required=True, metavar="ACTION")

    fetch = actions.add_parser("fetch", help="download the broker jars from Maven Central")
    fetch.add_argument("--version", help="Kafka version (default: STEPCARE_KAFKA_VERSION)")
    fetch.add_argument("--all", action="store_true", help=f"every supported line {KAFKA_VERSIONS}")
    fetch.set_defaults(handler=_broker_fetch)

    start = actions.add_parser("start", help="start a KRaft broker on 127.0.0.1 and wait for it")
    start.add_argument("--version", help="Kafka version (default: STEPCARE_KAFKA_VERSION)")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1, help="1 or 3 nodes")
    start.add_argument("--port", type=int, help="client port of node 1 (default 9092)")
    start.add_argument("--run-dir", type=Path, help="data, logs and state (default .run/kafka)")
    start.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C stops the broker"
    )
    start.add_argument(
        "--security",
        choices=("plaintext", "sasl_ssl"),
        default="plaintext",
        help="sasl_ssl: one node; clients only over TLS + SCRAM-SHA-512; ACLs enforced",
    )
    start.add_argument(
        "--tls-dir", type=Path, help="sasl_ssl: broker.pem (certificate, chain) and broker.key"
    )
    start.add_argument("--users", type=Path, help="sasl_ssl: SCRAM users, name:password a line")
    start.add_argument(
        "--super-user",
        action="append",
        default=[],
        metavar="NAME",
        help="sasl_ssl: a user not bound by ACLs (repeatable; default admin)",
    )
    start.add_argument(
        "--acl",
        action="append",
        default=[],
        metavar="ROLE=USER",
        help="sasl_ssl: give USER the ACLs of ROLE: worker, publisher or scheduler (repeatable)",
    )
    start.set_defaults(handler=_broker_start)

    stop = actions.add_parser("stop", help="stop the broker started from the run folder")
    stop.add_argument("--run-dir", type=Path)
    stop.set_defaults(handler=_broker_stop)

    status = actions.add_parser("status", help="is the broker running? (exit 0 if so, 1 if not)")
    status.add_argument("--run-dir", type=Path)
    status.set_defaults(handler=_broker_status)
    return parser


def _score(args: argparse.Namespace, settings: Settings) -> int:
    # Score everything before writing anything: a bad object leaves stdout empty. The scores
    # wait in a temporary file, so memory does not grow with the input.
    source = open_input(args.file)
    try:
        with tempfile.TemporaryFile() as spool:
            found = document_or_lines(source, _json_document)
            if isinstance(found, Document):
                where = f"line {found.line}" if found.one_line else "input"
                objects: Iterable[tuple[str, Any]] = [(where, found.value)]
            else:
                objects = _json_objects(args.file, found)
            for where, obj in objects:
                try:
                    scores = score_fact_l(_responses_of(obj))
                except ScoringError as exc:
                    raise UsageError(f"{where}: {exc}") from None
                spool.write(json.dumps(scores.as_dict()).encode() + b"\n")
            spool.seek(0)
            with open_output("-") as out:
                shutil.copyfileobj(spool, out)
    except OSError as exc:  # reading the input (writing stdout is reported by open_output)
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    finally:
        if args.file != "-":
            source.close()
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    policy = resolve_policy(args.policy)
    try:
        until = None if args.until is None else parse_time(args.until)
    except EventError as exc:
        raise UsageError(f"--until: {exc}") from None
    refuse_same_file([args.input], [args.output])
    events = read_events(args.input)  # the input opens before any output is made
    with open_text_output(args.output or "-") as output:
        progress = Progress()
        summary, engine = replay_events(
            events, policy, output, until=until, strict=args.strict, progress=progress
        )
        progress.clear()
    _err(summary.text(patients=len(engine.states)))
    return 0


class Progress:
    """Progress of a long run on stderr: redrawn on a terminal, a line every 10 s in a log."""

    def __init__(self, noun: str = "events") -> None:
        self.noun = noun
        self.started = self.shown = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, count: int) -> None:
        now = time.monotonic()
        if now - self.shown < (0.5 if self.tty else 10.0):
            return
        self.shown = now
        rate = count / (now - self.started)
        text = f"... {count:,} {self.noun} read ({rate:,.0f}/s)"
        print(f"\r{text}" if self.tty else text, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)  # fmt: skip
        self.drawn = self.tty

    def clear(self) -> None:
        if getattr(self, "drawn", False):
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka import publish  # confluent-kafka is loaded only for this command

    try:
        return publish.command(args, settings)
    except publish.PublishError as exc:
        raise UsageError(str(exc)) from None


def _json_document(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _json_objects(name: str, lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[str, Any]]:
    """("line N", object) for each non-blank line of JSONL (lines end at ``\\n`` only)."""
    for number, raw in lines:
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"cannot read {name}: line {number} is not UTF-8 text") from None
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"line {number}: not JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # a huge integer literal; deep nesting
            raise UsageError(f"line {number}: not JSON ({exc})") from None


def _responses_of(obj: Any) -> Any:
    """The FACT-L responses in a PatientEvent, a ``survey`` object, or a bare responses map."""
    if not isinstance(obj, dict):
        raise ScoringError(f"expected a JSON object, got {type(obj).__name__}")
    if {"type", "event_id", "survey"} & obj.keys():  # a PatientEvent
        survey = obj.get("survey")
        if not isinstance(survey, dict):
            raise ScoringError(f"event of type {obj.get('type')!r} carries no survey to score")
        obj = survey
    if "responses" in obj:  # a survey object
        instrument = obj.get("instrument", "FACT-L")
        if instrument != "FACT-L":
            raise ScoringError(f"instrument {instrument!r} is not FACT-L")
        obj = obj["responses"]
        if not isinstance(obj, dict):
            raise ScoringError("responses must be an object of item codes")
    return obj


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import app as worker_app  # faust is slow to import: only for this command

    if args.policy:
        settings = dataclasses.replace(settings, policy=args.policy)
    if args.replay:
        settings = replay_settings(settings, args.replay)
        _err(
            f"replay run {args.replay!r}: application id {settings.app_id}, from the start of "
            f"{settings.input_topic} into {settings.escalations_topic}"
        )
    policy = resolve_policy(settings.policy)
    settings.confluent_config()  # the TLS files and the SASL password file can be read
    _check_listen(settings.web_host, settings.web_port)
    _check_data_dir(settings.data_dir)
    _topics(args, settings)
    app = worker_app.build(settings, policy)
    _err(
        f"stepcare worker {settings.app_id}: policy {policy.policy_id} v{policy.policy_version}, "
        f"clock {settings.clock}, {settings.processing_guarantee}, "
        f"metrics on http://{settings.web_host}:{settings.web_port}/metrics"
    )
    return worker_app.run(app, settings)


def _check_listen(host: str, port: int) -> None:
    """The worker's web server can listen on host:port (checked before faust starts, which
    would otherwise report the worker ready without a web server, or end with a traceback)."""
    where = "STEPCARE_WEB_HOST, STEPCARE_WEB_PORT"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)  # fmt: skip
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot resolve the web host {host!r} ({where}): {reason}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does
            try:
                probe.bind(address)
            except OSError as exc:
                raise UsageError(
                    f"cannot listen on {host}:{port} ({where}): {exc.strerror}"
                ) from None


def _check_data_dir(data_dir: Path) -> None:
    """The data dir exists (or is created) and the worker can write in it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write in the data dir {data_dir} (STEPCARE_DATA_DIR): {exc.strerror}"
        ) from None


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def replay_settings(settings: Settings, run: str) -> Settings:
    """A replay run's settings: a fresh consumer group (so it reads the input topic from its
    start), event-time clock, and its own output topics and data dir, so nothing it writes
    reaches the live escalation topic or disturbs a live worker's state."""
    if not RUN_NAME.fullmatch(run):
        raise UsageError(f"--replay {run!r}: a run name is letters, digits, '.', '_' or '-'")

    def beside(topic: str) -> str:
        return f"{topic.removesuffix('.v1')}.replay.{run}"

    return dataclasses.replace(
        settings,
        app_id=f"{settings.app_id}-replay-{run}",
        escalations_topic=beside(settings.escalations_topic),
        dead_letter_topic=beside(settings.dead_letter_topic),
        data_dir=settings.data_dir / f"replay-{run}",
        clock="event",
    )


def _offsets(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.topics import reset_offsets

    try:
        moment = parse_time(args.to_datetime)
    except EventError as exc:
        raise UsageError(f"--to-datetime: {exc}") from None
    moves = reset_offsets(settings, args.group, args.topic, moment, execute=args.execute)
    for move in moves:
        before = "none" if move.committed is None else move.committed
        print(f"{args.topic} [{move.partition}]: {before} -> {move.target}")
    verb = "moved" if args.execute else "would move (dry run; add --execute)"
    _err(f"{verb} {args.group} on {len(moves)} partitions to {args.to_datetime}")
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.topics import ensure_topics

    created = ensure_topics(settings)
    if created:
        _err(f"created topics {', '.join(created)} ({settings.partitions} partitions)")
    return 0


def _demo_run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.devtools.run import DemoError, run_demo

    if args.patients < 1:
        raise UsageError("--patients must be at least 1")
    try:
        return run_demo(settings, args.patients, args.seed)
    except DemoError as exc:
        raise UsageError(str(exc)) from None


def _demo_cohort(args: argparse.Namespace, settings: Settings) -> int:
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
    _err(f"{len(events)} events for {args.patients} patients")
    return 0


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    for name, default, doc in Settings.describe():
        field = name.removeprefix("STEPCARE_").lower()
        value = getattr(settings, field)
        if field == "sasl_password" and value:
            value = "(set, not shown)"
        print(f"{name}={value}\n    {doc} (default: {default})")
    return 0


def _broker_fetch(args: argparse.Namespace, settings: Settings) -> int:
    versions = KAFKA_VERSIONS if args.all else (args.version or settings.kafka_version,)
    for version in versions:
        libs = broker.fetch_jars(version, settings.cache_dir, report=_err)
        _err(f"Kafka {version} jars: {libs}")
    return 0


def _broker_start(args: argparse.Namespace, settings: Settings) -> int:
    security = broker.security_from_options(
        args.security, args.tls_dir, args.users, args.super_user
    )
    cluster = broker.Cluster(
        args.run_dir or settings.broker_run_dir,
        args.version or settings.kafka_version,
        broker.default_nodes(args.nodes, args.port or settings.broker_port),
        cache_dir=settings.cache_dir,
        heap_mb=settings.broker_heap_mb,
        report=_err,
        security=security,
    )
    bootstrap = cluster.start(acls=broker.acls_from_options(settings, args.acl, security))
    print(bootstrap)
    if not args.foreground:
        _err(f"stop it with: stepcare broker stop --run-dir {cluster.run_dir}")
        return 0
    _err("Ctrl-C stops the broker")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while cluster.running_pids():
            time.sleep(1)
        _err("the broker exited by itself; see its logs in " + str(cluster.run_dir))
        return 1
    except KeyboardInterrupt:
        _err("stopping the broker ...")
        return 0
    finally:
        cluster.stop()


def _broker_stop(args: argparse.Namespace, settings: Settings) -> int:
    run_dir = args.run_dir or settings.broker_run_dir
    cluster = broker.Cluster.load(run_dir, report=_err)
    if cluster is None or not cluster.running_pids():
        _err(f"no broker running from {run_dir}")
        return 0
    cluster.stop()
    _err(f"stopped the broker at {cluster.bootstrap_servers}")
    return 0


def _broker_status(args: argparse.Namespace, settings: Settings) -> int:
    run_dir = args.run_dir or settings.broker_run_dir
    cluster = broker.Cluster.load(run_dir, report=_err)
    if cluster is None or not cluster.running_pids():
        print(f"not running ({run_dir})")
        return 1
    pids = cluster.running_pids()
    print(f"Kafka {cluster.version} running at {cluster.bootstrap_servers} (pids {pids})")
    return 0


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
