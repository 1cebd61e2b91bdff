"""An analyst's replay run from start to clean-up: ``stepcare worker --replay RUN
--until-caught-up`` ends by itself, ``stepcare replay-run export`` gives what offline
``stepcare replay`` gives, ``diff`` says so (and says what differs), ``delete`` leaves nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import fastavro
import orjson
from confluent_kafka.admin import AdminClient

from tests.integration.workers import REPO, Deployment

UNTIL = "2023-01-01T00:00:00Z"  # after the cohort's last event; before the broker's clock


def stepcare(
    deployment: Deployment, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, **deployment.env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_replay_run_caught_up_exported_diffed_and_deleted(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    # One partition: the run's engine sees the events in the log's order, as offline replay.
    data_dir = tmp_path / "data"
    deployment = Deployment(kafka_bootstrap, topic_name, tmp_path, STEPCARE_PARTITIONS="1",
                            STEPCARE_DATA_DIR=str(data_dir))  # fmt: skip
    cohort = tmp_path / "cohort.jsonl"
    done = stepcare(deployment, "simulate", "--patients", "40", "--seed", "17",
                    "--output", str(cohort))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stepcare(deployment, "topics").returncode == 0
    deployment.publish([orjson.loads(line) for line in cohort.read_bytes().splitlines()],
                       until=UNTIL)  # fmt: skip

    # The replay run ends by itself once caught up, with no web server: it starts while the
    # live worker's port (STEPCARE_WEB_PORT) is taken, as beside a live worker on one host.
    with socket.socket() as live_port:
        live_port.bind(("127.0.0.1", int(deployment.env["STEPCARE_WEB_PORT"])))
        live_port.listen()
        run = stepcare(deployment, "worker", "--replay", "t1", "--until-caught-up")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no web server" in run.stderr
    assert "caught up: " in run.stderr and " processed and committed in " in run.stderr

    offline = tmp_path / "offline.jsonl"
    done = stepcare(deployment, "replay", "--input", str(cohort), "--until", UNTIL,
                    "--output", str(offline))  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = offline.read_bytes()
    assert expected.count(b"\n") > 40

    exported = tmp_path / "export.jsonl"
    done = stepcare(deployment, "replay-run", "export", "t1", "--output", str(exported))
    assert done.returncode == 0, done.stderr
    assert exported.read_bytes() == expected  # byte for byte, in the same order
    count = expected.count(b"\n")
    assert done.stderr == (
        f"exported {count} escalations of replay run 't1' "
        f"({deployment.escalations}.replay.t1) as jsonl\n"
    )

    as_avro = tmp_path / "export.avro"
    done = stepcare(deployment, "replay-run", "export", "t1", "--output", str(as_avro))
    assert done.returncode == 0, done.stderr
    with as_avro.open("rb") as fo:
        records = list(fastavro.reader(fo))
    assert [r["escalation_id"] for r in records] == [
        orjson.loads(line)["escalation_id"] for line in expected.splitlines()
    ]

    done = stepcare(deployment, "replay-run", "diff", "t1", str(offline))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"replay run 't1': {count} escalations; {offline}: {count} escalations\n"
        "only in the run 't1': 0\n"
        f"only in {offline}: 0\n"
        "in both, different: 0\n"
        "identical\n"
    )

    # An offline file with one escalation missing, one changed and one added.
    lines = [orjson.loads(line) for line in expected.splitlines()]
    missing, changed = lines[0]["escalation_id"], lines[1]["escalation_id"]
    lines[1]["care_step"] += 1
    added = dict(lines[2], escalation_id="00000000-0000-5000-8000-000000000000")
    altered = tmp_path / "altered.jsonl"
    altered.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in [*lines[1:], added]))
    done = stepcare(deployment, "replay-run", "diff", "t1", str(altered))
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout == (
        f"replay run 't1': {count} escalations; {altered}: {count} escalations\n"
        "only in the run 't1': 1\n"
        f"  {missing}\n"
        f"only in {altered}: 1\n"
        f"  {added['escalation_id']}\n"
        "in both, different: 1\n"
        f"  {changed}\n"
        "different\n"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"escalation_id": "x"}\n[1]\n')
    done = stepcare(deployment, "replay-run", "diff", "t1", str(bad))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"stepcare: {bad}: line 2: not an escalation (no escalation_id)\n"

    # delete: not without --yes when it cannot ask; then everything of the run, nothing else.
    group = f"{deployment.env['STEPCARE_APP_ID']}-replay-t1"
    run_topics = {f"{deployment.escalations}.replay.t1", f"{deployment.dead_letters}.replay.t1",
                  f"{group}-patients-changelog"}  # fmt: skip
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert run_topics <= set(admin.list_topics(timeout=30).topics)
    assert (data_dir / "replay-t1").is_dir()
    done = stepcare(deployment, "replay-run", "delete", "t1")
    assert done.returncode == 2 and "Add --yes" in done.stderr
    done = stepcare(deployment, "replay-run", "delete", "t1", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("deleted replay run 't1': 3 topics")
    topics = set(admin.list_topics(timeout=30).topics)
    assert not run_topics & topics
    assert {deployment.input, deployment.escalations, deployment.dead_letters} <= topics
    groups = admin.list_consumer_groups().result(30).valid
    assert group not in {g.group_id for g in groups}
    assert not (data_dir / "replay-t1").exists()
    done = stepcare(deployment, "replay-run", "delete", "t1", "--yes")
    assert done.returncode == 2 and done.stderr.startswith("stepcare: no replay run 't1'")
    done = stepcare(deployment, "replay-run", "export", "t1")
    assert done.returncode == 2 and "no such replay run" in done.stderr
