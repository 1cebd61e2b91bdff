"""A fresh worker on fresh topics logs nothing at WARNING or ERROR: it starts, processes a small
cohort, stops (both guarantees). The messages libraries log at those levels for what is expected
and retried at a clean start are demoted (streams/worker/runner.py, ``ExpectedAtStart``).
Allowed: nothing at WARNING or above, from stepcare, faust, aiokafka or librdkafka."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest

from streams.cli import main
from tests.integration.test_consumer_lag import kafka_lag
from tests.integration.test_worker_metrics import scrape
from tests.integration.workers import Deployment

UNTIL = "2024-09-01T00:00:00Z"
# faust's log lines: "[2026-12-03 22:45:01,123] [4242] [WARNING] ..."
LEVEL = re.compile(r"^\[[^\]]+\] \[\d+\] \[(WARNING|ERROR|CRITICAL)\] ")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_clean_start_logs_no_warning_nor_error(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, guarantee: str
) -> None:
    # 800 patients enrolled within a week: batches that touch far more than 100 patients (the
    # threshold of faust's producer buffer, which warned at every such batch under exactly once).
    log = tmp_path / "cohort.jsonl"
    assert main(["simulate", "--patients", "800", "--weeks", "2", "--accrual-weeks", "1",
                 "--output", str(log)]) == 0  # fmt: skip
    events = [orjson.loads(line) for line in log.read_text().splitlines()]
    deployment = Deployment(
        kafka_bootstrap, topic_name, tmp_path, STEPCARE_PROCESSING_GUARANTEE=guarantee
    )
    group = deployment.env["STEPCARE_APP_ID"]
    worker = deployment.worker("worker")
    try:
        deployment.publish(events, until=UNTIL)
        deadline = time.monotonic() + 120
        while any(kafka_lag(kafka_bootstrap, group, deployment.input, Deployment.PARTITIONS)
                  .values()):  # fmt: skip
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(1)
        escalations = deployment.escalations_read()
        metrics = scrape(deployment.env["STEPCARE_WEB_PORT"])
    finally:
        assert worker.stop() == 0
    text = worker.log.read_text(errors="replace")
    flagged = [line for line in text.splitlines()
               if LEVEL.match(line) or "%3|" in line or "%4|" in line]  # fmt: skip
    assert flagged == [], "\n".join(flagged)
    assert len(events) > 2_000  # more than a batch
    # The SLO histogram: each escalation observed once the broker acknowledged it (at least
    # once: its delivery report; exactly once: its ack inside the transaction). The cohort's
    # triggers are from 2018: all late, none in the histogram.
    assert len(escalations) > 800
    assert metrics["stepcare_escalations_late_trigger_total", ()] == len(escalations)
    assert metrics["stepcare_escalation_delay_seconds_count", ()] == 0
