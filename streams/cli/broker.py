"""``stepcare broker``: a local Apache Kafka broker (``streams.devtools``): fetch, start,
stop, status."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from streams.cli.progress import report
from streams.devtools.cluster import Cluster
from streams.devtools.config import default_nodes
from streams.devtools.jars import fetch_jars
from streams.devtools.security import acls_from_options, security_from_options
from streams.kafka.settings import KAFKA_VERSIONS, Settings


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    fetch = actions.add_parser("fetch", help="download the broker jars from Maven Central")
    fetch.add_argument("--version", help="Kafka version (default: STEPCARE_KAFKA_VERSION)")
    fetch.add_argument("--all", action="store_true", help=f"every supported line {KAFKA_VERSIONS}")

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

    stop = actions.add_parser("stop", help="stop the broker started from the run folder")
    stop.add_argument("--run-dir", type=Path)

    status = actions.add_parser("status", help="is the broker running? (exit 0 if so, 1 if not)")
    status.add_argument("--run-dir", type=Path)


def run(args: argparse.Namespace, settings: Settings) -> int:
    actions = {"fetch": _fetch, "start": _start, "stop": _stop, "status": _status}
    return actions[args.action](args, settings)


def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    versions = KAFKA_VERSIONS if args.all else (args.version or settings.kafka_version,)
    for version in versions:
        libs = fetch_jars(version, settings.cache_dir, report=report)
        report(f"Kafka {version} jars: {libs}")
    return 0


def _start(args: argparse.Namespace, settings: Settings) -> int:
    security = security_from_options(args.security, args.tls_dir, args.users, args.super_user)
    cluster = Cluster(
        args.run_dir or settings.broker_run_dir,
        args.version or settings.kafka_version,
        default_nodes(args.nodes, args.port or settings.broker_port),
        cache_dir=settings.cache_dir,
        heap_mb=settings.broker_heap_mb,
        report=report,
        security=security,
    )
    bootstrap = cluster.start(acls=acls_from_options(settings, args.acl, security))
    print(bootstrap)
    if not args.foreground:
        report(f"stop it with: stepcare broker stop --run-dir {cluster.run_dir}")
        return 0
    report("Ctrl-C stops the broker")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while cluster.running_pids():
            time.sleep(1)
        report("the broker exited by itself; see its logs in " + str(cluster.run_dir))
        return 1
    except KeyboardInterrupt:
        report("stopping the broker ...")
        return 0
    finally:
        cluster.stop()


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    run_dir = args.run_dir or settings.broker_run_dir
    cluster = Cluster.load(run_dir, report=report)
    if cluster is None or not cluster.running_pids():
        report(f"no broker running from {run_dir}")
        return 0
    cluster.stop()
    report(f"stopped the broker at {cluster.bootstrap_servers}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    run_dir = args.run_dir or settings.broker_run_dir
    cluster = Cluster.load(run_dir, report=report)
    if cluster is None or not cluster.running_pids():
        print(f"not running ({run_dir})")
        return 1
    pids = cluster.running_pids()
    print(f"Kafka {cluster.version} running at {cluster.bootstrap_servers} (pids {pids})")
    return 0
