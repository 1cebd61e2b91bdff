"""``stepcare worker``: the Faust worker (``streams.worker.app``), once what it needs is checked."""

from __future__ import annotations

import argparse
import dataclasses
import socket
import tempfile
from pathlib import Path

from streams.cli import topics
from streams.cli.progress import Progress, report
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
    parser.add_argument(
        "--until-caught-up",
        action="store_true",
        help="with --replay: record the input topic's end offsets at start, show the progress "
        "on stderr, and exit 0 once the run's group has committed every partition up to them "
        "(its escalations written and acknowledged first)",
    )
    parser.add_argument(
        "--web-port",
        metavar="N",
        help="port of the web server (/metrics, /health, /ready) on STEPCARE_WEB_HOST; a live "
        "worker defaults to STEPCARE_WEB_PORT, a replay run to no web server at all (so it runs "
        "beside a live worker on one host); 0 = none",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.registry import framing_for
    from streams.worker import app as worker_app  # faust is slow to import: only for this command
    from streams.worker import runner as worker_runner

    if args.policy:
        settings = dataclasses.replace(settings, policy=args.policy)
    if args.until_caught_up and not args.replay:
        raise UsageError("--until-caught-up needs --replay RUN (a live worker runs until stopped)")
    web_port = _web_port(args.web_port, None if args.replay else settings.web_port)
    if web_port is not None:
        settings = dataclasses.replace(settings, web_port=web_port)
    if args.replay:
        settings = settings.for_replay(args.replay)
        report(
            f"replay run {args.replay!r}: application id {settings.app_id}, from the start of "
            f"{settings.input_topic} into {settings.escalations_topic}"
        )
    policy = resolve_policy(settings.policy)
    settings.confluent_config()  # the TLS files and the SASL password file can be read
    if web_port is not None:  # before any topic is made
        _check_listen(settings.web_host, settings.web_port)
    _check_data_dir(settings.data_dir)
    topics.create(settings, worker=True)
    framing = framing_for(
        settings, events_topic=settings.input_topic, escalations_topic=settings.escalations_topic
    )
    catch_up = None
    if args.until_caught_up:
        from streams.worker.probes import CatchUp

        catch_up = CatchUp(settings)
        total = catch_up.total
        bar = Progress(lambda done, rate, share: progress_text(total, done, rate, share),
                       total=total)  # fmt: skip
        catch_up.progress, catch_up.finish = (lambda done: bar.update(done, done)), bar.clear
        if catch_up.done:  # an empty input topic: nothing to wait for
            report(catch_up.summary())
            return 0
        report(f"replay run {args.replay!r}: {catch_up.total:,} records to process "
               f"({settings.input_topic}, end offsets at start)")  # fmt: skip
    app = worker_app.build(settings, policy, framing, web=web_port is not None,
                           catch_up=catch_up)  # fmt: skip
    served = (
        f"metrics on http://{settings.web_host}:{settings.web_port}/metrics"
        if web_port is not None
        else "no web server"
    )
    report(
        f"stepcare worker {settings.app_id}: policy {policy.policy_id} v{policy.policy_version}, "
        f"clock {settings.clock}, {settings.processing_guarantee}, {framing.wire_format} "
        f"framing, {served}"
    )
    status = worker_runner.run(app, settings)
    if catch_up is not None and status == 0:
        if not catch_up.done:
            report(f"replay run {args.replay!r} stopped before it caught up")
            return 1
        report(catch_up.summary())
    return status


def _web_port(text: str | None, default: int | None) -> int | None:
    """--web-port: a port from 1 to 65535, or 0 for none; ``default`` if not given."""
    if text is None:
        return default
    port = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= port <= 65_535:
        raise UsageError("--web-port must be a port number from 1 to 65535, or 0 for none")
    return port or None


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


def progress_text(total: int, done: int, rate: float, share: float | None) -> str:
    """A replay run's progress: share, records done / total, rate and the time left."""
    percent = f"{100 * share:5.1f}%" if share is not None else "?"
    eta = f"ETA {_duration((total - done) / rate)}" if rate > 0 else "ETA ?"
    return f"replay {percent} {done:,}/{total:,} records ({rate:,.0f}/s, {eta})"


def _duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
