"""``make run`` (``stepcare demo run``) end to end: its own broker, the worker, a cohort,
escalations on the terminal, and nothing left running after Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.devtools.cluster import broker_pids
from streams.devtools.config import free_nodes
from streams.devtools.registry import registry_pids
from tests.integration.workers import REPO, free_port

ESCALATION_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+Z  [A-Z_]+ +demo-\d{4} +due ")


@pytest.mark.parametrize("wire_format", ["single-object", "registry"])
def test_make_run_shows_escalations_and_stops_everything_on_ctrl_c(
    tmp_path: Path, wire_format: str
) -> None:
    """With the registry framing, ``make run`` also starts (and stops) a local registry."""
    node = free_nodes(1)[0]
    registry_url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "STEPCARE_BROKER_PORT": str(node.client_port),
        "STEPCARE_BROKER_RUN_DIR": str(tmp_path / "kafka"),
        "STEPCARE_DATA_DIR": str(tmp_path / "worker"),
        "STEPCARE_WEB_PORT": str(free_port()),
        "STEPCARE_WIRE_FORMAT": wire_format,
        "STEPCARE_SCHEMA_REGISTRY_URL": registry_url if wire_format == "registry" else "",
    }
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        demo = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "demo", "run", "--patients", "20"],
            cwd=tmp_path, env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while initial_visits(out.read_text()) < 20:  # one per patient: all were enrolled
            assert demo.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.5)
    finally:
        demo.send_signal(signal.SIGINT)
        status = demo.wait(timeout=120)
    lines = out.read_text().splitlines()
    assert status == 0, err.read_text()
    assert all(ESCALATION_LINE.match(line) for line in lines), lines[:5]
    assert initial_visits(out.read_text()) == 20
    messages = err.read_text()
    assert "/metrics" in messages and "[stepcare] stopped" in messages
    assert broker_pids(tmp_path / "kafka") == []
    assert registry_pids(tmp_path / ".run/registry") == []
    if wire_format == "registry":
        assert f"ready at {registry_url}" in messages, messages
    assert processes_with(f"STEPCARE_DATA_DIR={tmp_path / 'worker'}".encode()) == []


def initial_visits(output: str) -> int:
    return sum(line.split()[1:2] == ["INITIAL_VISIT_DUE"] for line in output.splitlines())


def processes_with(environment_entry: bytes) -> list[int]:
    """Pids of live processes whose environment holds ``environment_entry``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and environment_entry + b"\0" in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
