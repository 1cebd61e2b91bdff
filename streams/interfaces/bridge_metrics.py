"""The live bridges' Prometheus metrics, and the HTTP server that serves them (``/metrics`` only).

Each bridge process has its own registry (:class:`BridgeMetrics`), every metric labelled
``bridge`` with its name (``fhir-in``, ``hl7-in``, ``fhir-out``, ``mllp-in``). Counted where it
happens: a record is ``published`` once the broker has acknowledged its output,
``dead_lettered`` once the broker has its dead letter (by reason, a fixed code), ``ignored``
when it maps to nothing. No label carries patient-level data (bridge names, outcomes, reasons,
ACK codes and partition numbers only).

The server (:func:`serve`) binds before the bridge consumes anything: a port in use stops the
bridge at once (:class:`MetricsPortError`, exit 2). It answers ``GET /metrics`` and nothing
else (404).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from streams.errors import UsageError

PUBLISHED, IGNORED, DEAD_LETTERED = "published", "ignored", "dead_lettered"
OUTCOMES = (PUBLISHED, IGNORED, DEAD_LETTERED)
ACK_CODES = ("AA", "AE", "AR")
DEFAULT_HOST = "127.0.0.1"
# Each live bridge's default metrics port: different, so all four run on one host.
DEFAULT_PORTS = {"fhir-in": 9471, "hl7-in": 9472, "fhir-out": 9473, "mllp-in": 9474}


class MetricsPortError(UsageError):
    """The metrics server cannot listen (a port in use, an address not of this host): exit 2."""


class BridgeMetrics:
    """The metrics of one bridge process, in their own registry."""

    def __init__(
        self, bridge: str, *, kafka_reading: bool, registry: CollectorRegistry | None = None
    ) -> None:
        self.bridge = bridge
        self.registry = registry if registry is not None else CollectorRegistry()
        self.records = Counter(
            "stepcare_bridge_records_total",
            "Records (mllp-in: messages) handled, by outcome: published (acknowledged by the "
            "broker), ignored (valid, no event), dead_lettered.",
            ["bridge", "outcome"],
            registry=self.registry,
        )
        self._outcomes = {o: self.records.labels(bridge, o) for o in OUTCOMES}
        self.dead_letters = Counter(
            "stepcare_bridge_dead_letters_total",
            "Records written to the bridge's dead-letter topic, by reason.",
            ["bridge", "reason"],
            registry=self.registry,
        )
        self.last_record = Gauge(
            "stepcare_bridge_last_record_timestamp_seconds",
            "Wall time (Unix seconds) of the last record handled; the start time before one.",
            ["bridge"],
            registry=self.registry,
        )
        self._last = self.last_record.labels(bridge)
        self._last.set(time.time())
        self.consumer_lag: Gauge | None = None
        if kafka_reading:
            self.consumer_lag = Gauge(
                "stepcare_bridge_consumer_lag",
                "Records of the source topic not yet committed by the bridge's group, per "
                "partition (end offset - committed offset).",
                ["bridge", "partition"],
                registry=self.registry,
            )
        self.acks: Counter | None = None
        if bridge == "mllp-in":
            self.acks = Counter(
                "stepcare_mllp_acks_total",
                "MLLP ACKs sent, by code: AA accepted, AE refused (dead letter), AR not taken "
                "(the sender resends).",
                ["bridge", "code"],
                registry=self.registry,
            )
            for code in ACK_CODES:
                self.acks.labels(bridge, code)

    def handled(self, outcome: str, reason: str | None = None) -> None:
        """One record handled: ``outcome`` (and the dead letter's ``reason``)."""
        self._outcomes[outcome].inc()
        if outcome == DEAD_LETTERED:
            self.dead_letters.labels(self.bridge, reason or "unknown").inc()
        self._last.set(time.time())

    def ack(self, code: str) -> None:
        if self.acks is not None:
            self.acks.labels(self.bridge, code).inc()

    def set_lag(self, lags: dict[int, int]) -> None:
        if self.consumer_lag is not None:
            for partition, lag in lags.items():
                self.consumer_lag.labels(self.bridge, str(partition)).set(lag)


class MetricsServer:
    """``GET /metrics`` of one registry on a daemon thread; 404 for any other path."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access log on the bridge's stderr

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise MetricsPortError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} "
                "(--metrics-port: another port, or 0 for none)"
            ) from None
        self.server.daemon_threads = True
        self.address: tuple[str, int] = self.server.server_address[:2]  # type: ignore[assignment]
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="bridge-metrics", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(metrics: BridgeMetrics, host: str, port: int) -> MetricsServer | None:
    """Serve ``metrics`` on ``host:port`` (port 0: no server, None)."""
    if port == 0:
        return None
    return MetricsServer(metrics.registry, host, port)
