"""The topics a worker needs, made before faust starts: the three of DESIGN §2 and the table's
changelog, listed by the broker when ``ensure_topics`` returns, and refused when the partition
counts cannot hold a patient's state with their events."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.kafka.settings import Settings
from streams.kafka.topics import changelog_topic, ensure_topics
from tests.integration.workers import REPO, free_port


def _settings(bootstrap: str, topic_name: str, partitions: int = 4) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap,
        app_id=f"stepcare-test-{uuid.uuid4().hex[:8]}",
        input_topic=f"{topic_name}.events",
        escalations_topic=f"{topic_name}.escalations",
        dead_letter_topic=f"{topic_name}.dlq",
        partitions=partitions,
    )


def _config(admin: AdminClient, topic: str, name: str) -> str:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    return entries[name].value


def test_the_worker_topics_include_its_compacted_changelog_listed_on_return(
    kafka_bootstrap: str, topic_name: str
) -> None:
    settings = _settings(kafka_bootstrap, topic_name, partitions=3)
    changelog = f"{settings.app_id}-patients-changelog"
    assert changelog_topic(settings) == changelog

    created = ensure_topics(settings, worker=True)

    assert created == [
        f"{topic_name}.events", f"{topic_name}.escalations", f"{topic_name}.dlq", changelog
    ]  # fmt: skip
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    listed = admin.list_topics(timeout=30).topics
    assert {name: len(listed[name].partitions) for name in created} == dict.fromkeys(created, 3)
    assert _config(admin, changelog, "cleanup.policy") == "compact"
    assert _config(admin, f"{topic_name}.events", "retention.ms") == "-1"
    assert _config(admin, f"{topic_name}.events", "cleanup.policy") == "delete"
    assert ensure_topics(settings, worker=True) == []  # a second worker creates nothing


def test_stepcare_topics_leaves_the_changelog_to_the_worker(
    kafka_bootstrap: str, topic_name: str
) -> None:
    settings = _settings(kafka_bootstrap, topic_name)
    assert changelog_topic(settings) not in ensure_topics(settings)
    listed = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=30).topics
    assert changelog_topic(settings) not in listed


@pytest.mark.parametrize("which", ["input", "changelog"])
def test_a_worker_whose_topic_has_other_partitions_stops_with_one_line(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, which: str
) -> None:
    settings = _settings(kafka_bootstrap, topic_name, partitions=4)
    name = settings.input_topic if which == "input" else changelog_topic(settings)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[name].result(30)
    env = {
        **os.environ,
        "STEPCARE_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STEPCARE_APP_ID": settings.app_id,
        "STEPCARE_INPUT_TOPIC": settings.input_topic,
        "STEPCARE_ESCALATIONS_TOPIC": settings.escalations_topic,
        "STEPCARE_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
        "STEPCARE_PARTITIONS": "4",
        "STEPCARE_DATA_DIR": str(tmp_path / "data"),
        "STEPCARE_WEB_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"stepcare: topic {name} has 2 partitions but STEPCARE_PARTITIONS=4; the worker's "
        "table must be co-partitioned with its input: set STEPCARE_PARTITIONS=2"
    ]
