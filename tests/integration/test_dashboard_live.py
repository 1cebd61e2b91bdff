"""The dashboard against a real Prometheus scraping a real worker (DESIGN §7).

A worker processes the 60-patient demo cohort while Prometheus scrapes it every second; then
every query of every panel, macros and the dashboard's variables substituted as Grafana would
(job ``stepcare``, the worker's instance), is evaluated through the HTTP
API, at the current time and over the run: none may fail, the core panels must have data, and
the counts where the cohort makes them known must be exactly what offline replay computes.

With ``STEPCARE_DASHBOARD_PICTURE=path.png`` the test also draws the dashboard of the run into
that file (``deploy/grafana/picture.py``); ``docs/img/stepcare-overview.png`` is made so.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from streams.analysis.replay import ReplaySummary, replay
from streams.clinical.events import parse_time
from streams.clinical.policy import builtin_policy
from streams.devtools.demo import demo_cohort
from streams.worker.metrics import CARE_STEPS, OUTCOMES, Census, WorkerMetrics
from tests.integration.workers import REPO, Deployment, free_port
from tests.ops.test_dashboard import picture

PATIENTS = 60
END = "2025-06-01T00:00:00Z"
SCRAPE = 1.0  # seconds
CORE_PANELS = [
    "Alert rate by kind",
    "Events by outcome",
    "Patients by care step",
    "Open and overdue visit requests",
    "Event-time lag",
]


class Prometheus:
    """A real Prometheus on loopback that scrapes one worker every second (job ``stepcare``)."""

    def __init__(self, folder: Path, worker_port: str) -> None:
        folder.mkdir()
        self.port = free_port()
        self.target = f"127.0.0.1:{worker_port}"
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE:g}s, evaluation_interval: {SCRAPE:g}s}}\n"
            "scrape_configs:\n"
            "  - job_name: stepcare\n"
            f"    static_configs: [{{targets: ['{self.target}']}}]\n"
        )
        self.log = folder / "prometheus.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def variables(self) -> dict[str, str]:
        """The dashboard's variables with this worker selected, as Grafana sends them."""
        return {"job": "stepcare", "instance": self.target}

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prometheus not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def query(self, expr: str) -> list[dict]:
        return picture.query(self.url, expr)

    def value(self, expr: str) -> float | None:
        """The value of a one-series instant query (None when it has no series)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def by(self, label: str, expr: str) -> dict[str, float]:
        return {r["metric"][label]: float(r["value"][1]) for r in self.query(expr)}

    def wait_for(self, expr: str, expected: float, timeout: float = 30.0) -> None:
        """Until the query's value is ``expected`` (the last scrape has caught up)."""
        deadline = time.monotonic() + timeout
        while (value := self.value(expr)) != expected:
            assert time.monotonic() < deadline, f"{expr} = {value}, expected {expected}"
            time.sleep(SCRAPE / 2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def offline(events: list[dict]) -> tuple[list[str], ReplaySummary, Census]:
    """What ``stepcare replay`` computes for the cohort: its escalations, counts and census."""
    output = io.StringIO()
    lines = [orjson.dumps(e).decode() for e in events]
    summary, engine = replay(lines, builtin_policy("step-pc-2024"), output, until=parse_time(END))
    census = Census()
    for state in engine.states.values():
        census.add(state)
    return output.getvalue().splitlines(), summary, census


def chunks(events: list[dict], parts: int) -> list[list[dict]]:
    size = -(-len(events) // parts)
    return [events[i : i + size] for i in range(0, len(events), size)]


def test_every_panel_query_works_on_a_real_prometheus_scraping_a_real_worker(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    cohort = demo_cohort(PATIENTS, seed=3, end_ms=parse_time(END))
    assert len({e["patient_id"] for e in cohort}) == PATIENTS
    expected, summary, census = offline(cohort)
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path)
    prometheus = Prometheus(tmp_path / "prometheus", deployment.env["STEPCARE_WEB_PORT"])
    worker = None
    try:
        prometheus.wait_ready()
        worker = deployment.worker("worker")
        started = time.time()
        # Prometheus applies a new scrape config within 5 s: have the counters' zeros scraped
        # before the first event, or increase() and rate() miss the first batch.
        prometheus.wait_for('sum(up{job="stepcare"})', 1)
        prometheus.wait_for("sum(stepcare_escalations_total)", 0)
        # In a few batches, a little apart, so the rates have a shape; --until closes the
        # clocks at END.
        batches = chunks(cohort, 4)
        for batch in batches[:-1]:
            deployment.publish(batch)
            time.sleep(2 * SCRAPE)
        deployment.publish(batches[-1], until=END)
        assert len(deployment.escalations_read(expected=len(expected))) == len(expected)
        prometheus.wait_for("sum(stepcare_escalations_total)", len(expected))
        prometheus.wait_for("sum(stepcare_events_total)", len(cohort))
        prometheus.wait_for("sum(stepcare_patients)", PATIENTS)
        time.sleep(2 * SCRAPE)  # a scrape or two after the last change, as a dashboard sees it
        end = time.time()

        panels = evaluate_every_panel(prometheus, started, end)
        for title in CORE_PANELS:
            for (now, over), target in zip(panels[title], targets_of(title), strict=True):
                assert now, f"{title} {target['refId']}: no data at the current time"
                assert over, f"{title} {target['refId']}: no data over the run"

        # Exact values, where the cohort makes them known: what offline replay computes.
        assert stat(panels, "Workers up") == 1
        # The variables do filter: another instance selected, the same panel has no worker.
        [workers_up] = targets_of("Workers up")
        elsewhere = {"job": "stepcare", "instance": "elsewhere:6066"}
        other = picture.substitute(
            workers_up["expr"], interval=60, rate_interval=60, range_=60, variables=elsewhere
        )
        assert picture.query(prometheus.url, other, at=end) == []
        escalations = Counter(orjson.loads(line)["kind"] for line in expected)
        assert escalations == summary.escalations and len(escalations) >= 5
        assert prometheus.by("kind", "sum by (kind) (stepcare_escalations_total)") == {
            kind: float(escalations[kind]) for kind in labels("stepcare_escalations", "kind")
        }
        # increase() extrapolates to the range's end (by up to a scrape interval): never less.
        assert len(expected) <= stat(panels, "Escalations") <= 1.2 * len(expected)
        outcomes = prometheus.by("outcome", "sum by (outcome) (stepcare_events_total)")
        assert outcomes == {o: float(summary.outcomes[o]) for o in OUTCOMES}
        assert prometheus.by("kind", "sum by (kind) (stepcare_suppressed_triggers_total)") == {
            kind: float(summary.suppressed[kind])
            for kind in labels("stepcare_suppressed_triggers", "kind")
        }
        assert prometheus.value("sum(stepcare_dead_letters_total)") == 0
        assert stat(panels, "Dead letters") == 0
        assert prometheus.value("sum(stepcare_event_time_lag_seconds_count)") == len(cohort)
        assert by(panels, "Patients by care step", "care_step") == {
            step: float(census.steps[step]) for step in CARE_STEPS
        }
        assert sum(census.steps.values()) == PATIENTS
        assert stat(panels, "Patients in care") == census.steps["1"] + census.steps["2"]
        assert stat(panels, "Open visit requests") == census.open_requests > 0
        assert stat(panels, "Overdue visit requests") == census.overdue > 0
        assert 0 <= stat(panels, "Last processed") < end - started

        if out := os.environ.get("STEPCARE_DASHBOARD_PICTURE"):
            path = Path(out) if Path(out).is_absolute() else REPO / out
            picture.render(
                prometheus.url,
                started,
                end,
                path,
                scrape_interval=SCRAPE,
                variables=prometheus.variables(),
            )
            assert path.stat().st_size > 10_000
    finally:
        prometheus.stop()
        stopped = worker.stop() if worker is not None else 0
    assert stopped == 0, f"worker log: {worker.log}"


Results = dict[str, list[tuple[list[dict], list[dict]]]]


def evaluate_every_panel(prometheus: Prometheus, start: float, end: float) -> Results:
    """For each panel, for each query: its result at ``end`` with a 1m rate window (a stat, a
    Grafana table) and its result over [start, end] with the Grafana's rate window for a 1 s
    step, the worker selected in the dashboard's variables. Each must have status success (else
    QueryError)."""
    results: Results = {}
    variables = prometheus.variables()
    for panel, target in picture.targets(picture.load_dashboard()):
        expr = target["expr"]
        instant = picture.substitute(
            expr, interval=60, rate_interval=60, range_=end - start, variables=variables
        )
        rate_interval = picture.rate_interval(SCRAPE, SCRAPE)
        ranged = picture.substitute(
            expr,
            interval=SCRAPE,
            rate_interval=rate_interval,
            range_=end - start,
            variables=variables,
        )
        now = picture.query(prometheus.url, instant, at=end)
        over = picture.query_range(prometheus.url, ranged, start, end, SCRAPE)
        results.setdefault(panel["title"], []).append((now, over))
    return results


def targets_of(title: str) -> list[dict]:
    return [t for p, t in picture.targets(picture.load_dashboard()) if p["title"] == title]


def stat(results: Results, title: str) -> float:
    """The value a one-query, one-series panel shows at the end of the run."""
    [(now, _)] = results[title]
    [series] = now
    return float(series["value"][1])


def by(results: Results, title: str, label: str) -> dict[str, float]:
    """The values a one-query panel's series have at the end of the run, by ``label``."""
    [(now, _)] = results[title]
    return {series["metric"][label]: float(series["value"][1]) for series in now}


def labels(family: str, label: str) -> list[str]:
    """The label values the worker creates up front for one of its counters."""
    registry = CollectorRegistry()
    WorkerMetrics(registry, builtin_policy("step-pc-2024"))
    [metric] = [m for m in registry.collect() if m.name == family]
    return sorted({s.labels[label] for s in metric.samples if s.name.endswith("_total")})
