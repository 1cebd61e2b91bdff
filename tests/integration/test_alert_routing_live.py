"""An alert from rule to receiver: a real Prometheus evaluates the repository's rules on a
target this test serves, and a real Alertmanager routes what fires with the repository's
configuration to a webhook receiver in this test (docs/runbook.md, "Routing alerts").

The Alertmanager configuration is deploy/alertmanager/alertmanager.yml with two changes only:
every receiver's URL points at the test's receiver (same path, so the path says which receiver
was chosen) and ``group_wait`` is 1 s instead of 30 s. No broker is needed: the targets are
metrics pages the test sets, a bridge's (a dead letter: StepcareDeadLetters, to ops-ticket)
and a worker's (40% of escalations late: StepcareEscalationSloFastBurn, to ops-page; the
SlowBurn ticket fires too and is inhibited). Takes up to a minute: the SLO's long windows are
recorded once a minute. Needs Debian's ``prometheus`` and ``prometheus-alertmanager`` (.ci/run
installs both).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.workers import REPO, free_port

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER is None,
    reason="needs prometheus and prometheus-alertmanager (Debian packages; .ci/run installs them)",
)

RULES = REPO / "deploy" / "prometheus" / "rules"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


class Endpoints(BaseHTTPRequestHandler):
    """GET /bridge, /worker: the metrics pages the test sets; POST anything: a webhook delivery."""

    server: Server

    def do_GET(self) -> None:
        page = self.server.pages.get(self.path)
        body = (page or "").encode()
        self.send_response(200 if page is not None else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.deliveries.append((self.path, payload))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Endpoints)
        self.pages: dict[str, str] = {}
        self.deliveries: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


def bridge_page(dead_letters: int) -> str:
    return (
        "# TYPE stepcare_bridge_dead_letters_total counter\n"
        'stepcare_bridge_dead_letters_total{bridge="hl7-in",reason="hl7-malformed"} '
        f"{dead_letters}\n"
    )


def worker_page(escalations: int, in_time: int) -> str:
    """The SLO histogram: ``escalations`` observed, ``in_time`` of them within 900 s."""
    return (
        "# TYPE stepcare_escalation_delay_seconds histogram\n"
        f'stepcare_escalation_delay_seconds_bucket{{le="900.0"}} {in_time}\n'
        f'stepcare_escalation_delay_seconds_bucket{{le="+Inf"}} {escalations}\n'
        f"stepcare_escalation_delay_seconds_sum {escalations * 60}\n"
        f"stepcare_escalation_delay_seconds_count {escalations}\n"
    )


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait(what: str, condition: Any, logs: list[Path], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := condition():
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.25)


def test_a_bridge_dead_letter_reaches_the_ops_ticket_receiver(
    server: Server, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None and ALERTMANAGER is not None
    server.pages = {"/bridge": bridge_page(0), "/worker": worker_page(0, 0)}
    am_port, prom_port = free_port(), free_port()

    # Alertmanager: the repository's routes and receivers, delivered to this test.
    config = ALERTMANAGER_CONFIG.read_text()
    config, hooks = re.subn(
        r"http://127\.0\.0\.1:\d+/", f"http://{server.address}/", config
    )  # fmt: skip
    assert hooks == 7
    config = config.replace("group_wait: 30s", "group_wait: 1s")
    (tmp_path / "alertmanager.yml").write_text(config)
    am_log = tmp_path / "alertmanager.log"
    alertmanager = start(
        [
            ALERTMANAGER,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",  # no gossip port
        ],
        am_log,
    )
    # Prometheus: the repository's rules, the test's pages as a bridge and a worker.
    # The SLO's long windows are recorded once a minute (`interval: 1m`); every second here,
    # so the slow burn fires in seconds instead of a minute. Nothing else is changed.
    slo = (RULES / "stepcare-slo.yml").read_text()
    assert slo.count("interval: 1m") == 1
    (tmp_path / "stepcare-slo.yml").write_text(slo.replace("interval: 1m", "interval: 1s"))
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES / 'stepcare-service.yml'}', '{tmp_path / 'stepcare-slo.yml'}']\n"
        "alerting:\n"
        f"  alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]}}]\n"
        "scrape_configs:\n"
        "  - job_name: stepcare-bridge\n"
        "    metrics_path: /bridge\n"
        f"    static_configs: [{{targets: ['{server.address}']}}]\n"
        "  - job_name: stepcare\n"
        "    metrics_path: /worker\n"
        f"    static_configs: [{{targets: ['{server.address}']}}]\n"
    )
    prom_log = tmp_path / "prometheus.log"
    prometheus = start(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        prom_log,
    )
    logs = [prom_log, am_log]
    prom = f"http://127.0.0.1:{prom_port}"
    try:

        def scraped(metric: str, value: int) -> bool:
            query = urllib.parse.quote(metric)
            result = get_json(f"{prom}/api/v1/query?query={query}")["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) == value

        wait("the zeros scraped", lambda: scraped("stepcare_bridge_dead_letters_total", 0), logs)
        wait(
            "the zeros scraped", lambda: scraped("stepcare_escalation_delay_seconds_count", 0), logs
        )
        time.sleep(2)  # two more samples at 0: the quiet state, evaluated
        assert server.deliveries == []

        # Three messages dead-lettered by the bridge; 10 escalations, 4 of them late.
        server.pages = {"/bridge": bridge_page(3), "/worker": worker_page(10, 6)}
        wait("two deliveries", lambda: len(server.deliveries) >= 2, logs)

        # The ticket's long windows (1d, 3d) are recorded apart: when it fires too,
        # Alertmanager holds it back (inhibited by the page) and delivers nothing more.
        def slow_burn_inhibited() -> bool:
            alerts = get_json(f"http://127.0.0.1:{am_port}/api/v2/alerts")
            return any(
                alert["labels"]["alertname"] == "StepcareEscalationSloSlowBurn"
                and alert["status"]["state"] == "suppressed"
                and alert["status"]["inhibitedBy"]
                for alert in alerts
            )

        wait("the ticket inhibited", slow_burn_inhibited, logs, timeout=120)
        time.sleep(3)  # anything else that would be delivered
        with server.lock:
            deliveries = list(server.deliveries)
    finally:
        stop(prometheus)
        stop(alertmanager)

    received = {
        payload["alerts"][0]["labels"]["alertname"]: (path, payload) for path, payload in deliveries
    }
    assert sorted(received) == ["StepcareDeadLetters", "StepcareEscalationSloFastBurn"]
    assert len(deliveries) == 2

    path, payload = received["StepcareDeadLetters"]
    assert path == "/ops/ticket"  # team ops, severity warning
    assert payload["receiver"] == "ops-ticket"
    assert payload["status"] == "firing"
    [alert] = payload["alerts"]
    assert alert["labels"] == {
        "alertname": "StepcareDeadLetters",
        "bridge": "hl7-in",
        "reason": "hl7-malformed",
        "instance": server.address,
        "job": "stepcare-bridge",
        "severity": "warning",
        "team": "ops",
    }
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#stepcaredeadletters"
    assert alert["annotations"]["summary"] == (
        "stepcare bridge hl7-in dead-lettered input records (hl7-malformed)"
    )

    path, payload = received["StepcareEscalationSloFastBurn"]
    assert path == "/ops/page"  # team ops, severity critical
    assert payload["receiver"] == "ops-page"
    [alert] = payload["alerts"]
    assert alert["labels"] == {
        "alertname": "StepcareEscalationSloFastBurn",
        "job": "stepcare",
        "severity": "critical",
        "team": "ops",
    }
    assert alert["annotations"]["summary"] == "Escalations are late: 40% over 15 minutes"
