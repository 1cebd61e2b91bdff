"""``stepcare worker``: the Faust worker (``streams.worker.app``), once what it needs is checked."""

from __future__ import annotations

import argparse
import dataclasses
import socket
import tempfile
from pathlib import Path

from streams.cli import topics
from streams.cli.progress import report
from streams.clinical.policy import resolve_policy
from streams.errors import UsageError
from streams.kafka.settings import Settings

DESCRIPTION = (
    "Configured by STEPCARE_* settings (stepcare settings lists them). Creates missing topics, "
    "then runs until SIGTERM or Ctrl-C."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument(
        "--replay",
        metavar="RUN",
        help="a replay run: its own application id, event clock, and output to "
        "stepcare.escalations.replay.RUN (scheduling systems never see it)",
    )
    parser.add_argument("--policy", help="policy of this run (default: STEPCARE_POLICY)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.registry import framing_for
    from streams.worker import app as worker_app  # faust is slow to import: only for this command
    from streams.worker import runner as worker_runner

    if args.policy:
        settings = dataclasses.replace(settings, policy=args.policy)
    if args.replay:
        settings = settings.for_replay(args.replay)
        report(
            f"replay run {args.replay!r}: application id {settings.app_id}, from the start of "
            f"{settings.input_topic} into {settings.escalations_topic}"
        )
    policy = resolve_policy(settings.policy)
    settings.confluent_config()  # the TLS files and the SASL password file can be read
    _check_listen(settings.web_host, settings.web_port)
    _check_data_dir(settings.data_dir)
    topics.create(settings, worker=True)
    framing = framing_for(
        settings, events_topic=settings.input_topic, escalations_topic=settings.escalations_topic
    )
    app = worker_app.build(settings, policy, framing)
    report(
        f"stepcare worker {settings.app_id}: policy {policy.policy_id} v{policy.policy_version}, "
        f"clock {settings.clock}, {settings.processing_guarantee}, {framing.wire_format} "
        "framing, "
        f"metrics on http://{settings.web_host}:{settings.web_port}/metrics"
    )
    return worker_runner.run(app, settings)


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
