"""The ``stepcare`` command line.

A user error (bad option, broker that cannot start) exits with status 2 and one line on stderr;
no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from streams import broker
from streams.events import EventError, parse_time
from streams.policy import PolicyError, resolve_policy
from streams.replay import RejectedLine, replay
from streams.scoring import ScoringError, score_fact_l
from streams.settings import KAFKA_VERSIONS, Settings, SettingsError

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.handler(args, settings) or 0)
    except (UsageError, SettingsError, PolicyError, RejectedLine, broker.BrokerError) as exc:
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
    start.set_defaults(handler=_broker_start)

    stop = actions.add_parser("stop", help="stop the broker started from the run folder")
    stop.add_argument("--run-dir", type=Path)
    stop.set_defaults(handler=_broker_stop)

    status = actions.add_parser("status", help="is the broker running? (exit 0 if so, 1 if not)")
    status.add_argument("--run-dir", type=Path)
    status.set_defaults(handler=_broker_status)
    return parser


def _score(args: argparse.Namespace, settings: Settings) -> int:
    text = _read_input(args.file)
    # Score everything before writing anything: a bad object leaves stdout empty.
    lines = []
    for where, obj in _json_objects(text):
        try:
            scores = score_fact_l(_responses_of(obj))
        except ScoringError as exc:
            raise UsageError(f"{where}: {exc}") from None
        lines.append(json.dumps(scores.as_dict()))
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    policy = resolve_policy(args.policy)
    try:
        until = None if args.until is None else parse_time(args.until)
    except EventError as exc:
        raise UsageError(f"--until: {exc}") from None
    source = _open_input(args.input)
    try:
        output = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    try:
        with source:
            summary, engine = replay(source, policy, output, until=until, strict=args.strict)
    finally:
        if output is not sys.stdout:
            output.close()
        else:
            output.flush()
    _err(summary.text(patients=len(engine.states)))
    return 0


def _open_input(name: str):
    if name == "-":
        return sys.stdin
    try:
        return open(name, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None


def _read_input(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {name}: {exc}") from None


def _json_objects(text: str) -> Iterator[tuple[str, Any]]:
    """("input" or "line N", object) for a single JSON document, or for each line of JSONL."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        pass
    else:
        yield ("line 1" if len(text.strip().splitlines()) == 1 else "input"), whole
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"line {number}: not JSON ({exc.msg} at column {exc.colno})") from None


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


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    for name, default, doc in Settings.describe():
        field = name.removeprefix("STEPCARE_").lower()
        print(f"{name}={getattr(settings, field)}\n    {doc} (default: {default})")
    return 0


def _broker_fetch(args: argparse.Namespace, settings: Settings) -> int:
    versions = KAFKA_VERSIONS if args.all else (args.version or settings.kafka_version,)
    for version in versions:
        libs = broker.fetch_jars(version, settings.cache_dir, report=_err)
        _err(f"Kafka {version} jars: {libs}")
    return 0


def _broker_start(args: argparse.Namespace, settings: Settings) -> int:
    cluster = broker.Cluster(
        args.run_dir or settings.broker_run_dir,
        args.version or settings.kafka_version,
        broker.default_nodes(args.nodes, args.port or settings.broker_port),
        cache_dir=settings.cache_dir,
        heap_mb=settings.broker_heap_mb,
        report=_err,
    )
    bootstrap = cluster.start()
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


if __name__ == "__main__":
    sys.exit(main())
