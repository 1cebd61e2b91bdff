"""``stepcare registry``: a local schema registry (Apicurio Registry, Confluent-compatible API;
``streams.devtools.registry``): fetch, start, stop, status."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from streams.cli.progress import report
from streams.devtools.registry import (
    APICURIO_VERSION,
    DEFAULT_PORT,
    DEFAULT_RUN_DIR,
    Registry,
    fetch_registry,
)
from streams.kafka.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    actions.add_parser(
        "fetch", help=f"download Apicurio Registry {APICURIO_VERSION} from Maven Central"
    )

    start = actions.add_parser(
        "start", help="start the registry on 127.0.0.1 and wait for it; prints its ccompat URL"
    )
    start.add_argument("--port", type=int, help=f"HTTP port (default {DEFAULT_PORT})")
    start.add_argument(
        "--run-dir", type=Path, help=f"pid, state and log (default {DEFAULT_RUN_DIR})"
    )
    start.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C stops the registry"
    )

    stop = actions.add_parser("stop", help="stop the registry started from the run folder")
    stop.add_argument("--run-dir", type=Path)

    status = actions.add_parser("status", help="is the registry running? (exit 0 if so, 1 if not)")
    status.add_argument("--run-dir", type=Path)


def run(args: argparse.Namespace, settings: Settings) -> int:
    actions = {"fetch": _fetch, "start": _start, "stop": _stop, "status": _status}
    return actions[args.action](args, settings)


def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    folder = fetch_registry(settings.cache_dir, report=report)
    report(f"Apicurio Registry {APICURIO_VERSION}: {folder}")
    return 0


def _start(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry(
        args.run_dir or DEFAULT_RUN_DIR,
        DEFAULT_PORT if args.port is None else args.port,
        cache_dir=settings.cache_dir,
        report=report,
    )
    url = registry.start()
    print(url)
    if not args.foreground:
        report(f"stop it with: stepcare registry stop --run-dir {registry.run_dir}")
        return 0
    report("Ctrl-C stops the registry")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while registry.running():
            time.sleep(1)
        report(f"the registry exited by itself; see {registry.log_path}")
        return 1
    except KeyboardInterrupt:
        report("stopping the registry ...")
        return 0
    finally:
        registry.stop()


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    run_dir = args.run_dir or DEFAULT_RUN_DIR
    registry = Registry.load(run_dir, report=report)
    if registry is None or not registry.running():
        report(f"no schema registry running from {run_dir}")
        return 0
    registry.stop()
    report(f"stopped the schema registry at {registry.ccompat_url}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    run_dir = args.run_dir or DEFAULT_RUN_DIR
    registry = Registry.load(run_dir, report=report)
    if registry is None or not registry.running():
        print(f"not running ({run_dir})")
        return 1
    print(
        f"Apicurio Registry {registry.version} running at {registry.ccompat_url} "
        f"(pid {registry.pid})"
    )
    return 0
