"""Run only by test_broker_lifecycle (its name keeps normal collection away): holds a broker
from the session fixture, reports its pids, and waits to be killed."""

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import Brokers


@pytest.mark.skipif("STEPCARE_KILL_REPORT" not in os.environ, reason="run by the lifecycle test")
def test_hold_a_broker(kafka_bootstrap: str, brokers: Brokers) -> None:
    (cluster,) = brokers.clusters.values()
    report = {"run_dir": str(cluster.run_dir), "pids": cluster.running_pids()}
    Path(os.environ["STEPCARE_KILL_REPORT"]).write_text(json.dumps(report))
    time.sleep(600)
