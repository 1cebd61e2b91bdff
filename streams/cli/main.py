"""The ``stepcare`` command line.

A user error (bad option, broker that cannot start) exits with status 2 and one line on stderr;
no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.metadata
import signal
import sys
from collections.abc import Sequence
from typing import Any

from streams.clinical import INPUT_ERRORS
from streams.errors import StepcareError
from streams.formats.files import stdout_error
from streams.kafka.settings import Settings

DESCRIPTION = (
    "stepcare: the stepped palliative-care monitor. FACT-L scores and clinical events in, "
    "palliative-care escalations out; 'stepcare COMMAND --help' for each command."
)
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a process SIGPIPE ended
EXIT_INTERRUPTED = 128 + signal.SIGINT  # Ctrl-C, as a shell reports it
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EPIPE}
# The errors reported as one line, exit 2: stepcare's own and the clinical core's.
_USER_ERRORS: tuple[type[Exception], ...] = (StepcareError, *INPUT_ERRORS)

# Every command, in the order of `stepcare --help`: its module (with configure(parser) and
# run(args, settings) -> int) and its one-line help.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": (
        "streams.cli.score",
        "score FACT-L forms (JSON or JSONL: events, surveys or bare response maps)",
    ),
    "replay": (
        "streams.cli.replay",
        "run the engine over a JSONL event log; escalations as JSONL",
    ),
    "publish": (
        "streams.cli.publish",
        "publish an event log (JSONL or Avro container) to the input topic",
    ),
    "worker": (
        "streams.cli.worker",
        "the Faust worker: patient events in, escalations and dead letters out",
    ),
    "replay-run": (
        "streams.cli.replay_run",
        "a worker's replay run: export its escalations, diff them with offline replay, delete it",
    ),
    "topics": (
        "streams.cli.topics",
        "create the topics (partitions, replication from the settings)",
    ),
    "demo": ("streams.cli.demo", "the demo: a cohort log, or the whole live demo"),
    "simulate": (
        "streams.cli.simulate",
        "a seeded synthetic cohort shaped like the STEP PC trial, as a replay log",
    ),
    "compare": (
        "streams.cli.compare",
        "run two or more policies over one log and compare what they request",
    ),
    "explain": (
        "streams.cli.explain",
        "why was this patient (not) seen: one patient's timeline as text and a chart",
    ),
    "convert": (
        "streams.cli.convert",
        "convert an event log between JSONL and Avro container files",
    ),
    "bridge": (
        "streams.cli.bridge",
        "hospital interfaces: FHIR and HL7 v2 ADT in as events, FHIR out (files or Kafka)",
    ),
    "pseudonym": (
        "streams.cli.pseudonym",
        "MRNs -> the pseudonymous patient ids the bridges give them (a lookup table)",
    ),
    "offsets": (
        "streams.cli.offsets",
        "move a consumer group's offsets on a topic to a point in time",
    ),
    "settings": ("streams.cli.settings", "print every STEPCARE_* setting and its value"),
    "broker": ("streams.cli.broker", "run a local Apache Kafka broker (dev, demo, tests)"),
    "registry": (
        "streams.cli.registry",
        "run a local schema registry (Apicurio, Confluent-compatible API; dev, tests)",
    ),
    "schemas": (
        "streams.cli.schemas",
        "stepcare's schemas in a schema registry: register, check a candidate .avsc, list",
    ),
    "fhir-validator": (
        "streams.cli.fhir_validator",
        "HAPI FHIR's validator (dev, tests): fetch it, check FHIR R4 JSON files with it",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepcare", description=DESCRIPTION)
    parser.add_argument("--version", action=_PrintVersion)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = commands.add_parser(name, help=help_text)
        module.configure(command)
        command.set_defaults(handler=module.run)
    return parser


def version() -> str:
    """The installed distribution's version (a source tree that is not installed has none)."""
    try:
        return importlib.metadata.version("stepcare")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: the stepcare distribution is not installed)"


class _PrintVersion(argparse.Action):
    """``--version``: print ``stepcare <version>`` and exit 0 (looked up only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
            help="print the version of stepcare and exit",
        )  # fmt: skip

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"stepcare {version()}")
        parser.exit()
