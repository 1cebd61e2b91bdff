"""The worker's metrics on an isolated registry: names, pre-initialised children, the census."""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib.metadata import version

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streams.clinical.engine import ENDED, NEW_PATIENT, OpenRequest, PatientState
from streams.clinical.escalations import Kind
from streams.clinical.policy import builtin_policy
from streams.worker.metrics import CARE_STEPS, EVENT_TYPES, OUTCOMES, Census, WorkerMetrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> WorkerMetrics:
    return WorkerMetrics(registry, builtin_policy("step-pc-2024"))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_every_label_child_exists_at_zero_before_the_first_event(
    registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    for event_type in EVENT_TYPES[:-1]:
        for outcome in OUTCOMES:
            assert sample(registry, "stepcare_events_total", type=event_type, outcome=outcome) == 0
    assert (
        sample(registry, "stepcare_events_total", type="unreadable", outcome="dead_lettered") == 0
    )
    assert sample(registry, "stepcare_events_total", type="unreadable", outcome="applied") is None
    for kind in Kind:
        assert sample(registry, "stepcare_escalations_total", kind=kind) == 0
    for reason in ("not-single-object-encoding", "unknown-schema", "malformed-avro",
                   "invalid-event", "processing-error"):  # fmt: skip
        assert sample(registry, "stepcare_dead_letters_total", reason=reason) == 0
    for step in CARE_STEPS:
        assert sample(registry, "stepcare_patients", care_step=step) == 0
    assert sample(registry, "stepcare_suppressed_triggers_total", kind="STEP_UP") is None


def test_names_follow_the_conventions(registry: CollectorRegistry, metrics: WorkerMetrics) -> None:
    families = {family.name: family for family in registry.collect()}
    assert all(name.startswith("stepcare_") for name in families)
    for family in families.values():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
    lag = families["stepcare_event_time_lag_seconds"]
    buckets = [s.labels["le"] for s in lag.samples if s.name.endswith("_bucket")]
    assert buckets[0] == "1.0" and buckets[-2] == "86400.0" and buckets[-1] == "+Inf"
    build = {
        "version": version("stepcare"),
        "faust_version": "0.15.3",
        "python_version": platform.python_version(),
        "policy_id": "step-pc-2024",
        "policy_version": "1",
    }
    info = sample(registry, "stepcare_build_info", **build)
    assert info == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by .ci/run")
def test_the_exposition_passes_promtool_lint(
    metrics: WorkerMetrics, registry: CollectorRegistry
) -> None:
    metrics.events.labels("ENROLLED", "applied").inc()
    metrics.event_lag.observe(42)
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=generate_latest(registry), capture_output=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


REQUEST = OpenRequest(Kind.INITIAL_VISIT_DUE, 10, "id")


def test_the_census_follows_each_patient_from_step_to_step(
    registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    enrolled = PatientState(care_step=1, request=REQUEST)
    overdue = PatientState(care_step=1, request=REQUEST._replace(overdue_sent=True))
    stepped_up = PatientState(care_step=2, request=OpenRequest(Kind.STEP_UP, 20, "id2"))

    census = metrics.census(0)
    census.change(None, NEW_PATIENT._replace(held=()))  # a survey held before enrollment
    census.change(NEW_PATIENT, enrolled)
    metrics.census(1).change(None, overdue)
    metrics.publish_census()
    assert sample(registry, "stepcare_patients", care_step="1") == 2
    assert sample(registry, "stepcare_patients", care_step="not_enrolled") == 0
    assert sample(registry, "stepcare_open_visit_requests") == 2
    assert sample(registry, "stepcare_overdue_visit_requests") == 1

    metrics.census(1).change(overdue, stepped_up)
    census.change(enrolled, ENDED)
    metrics.publish_census()
    assert [sample(registry, "stepcare_patients", care_step=s) for s in CARE_STEPS] == [0, 0, 1, 1]
    assert sample(registry, "stepcare_open_visit_requests") == 1
    assert sample(registry, "stepcare_overdue_visit_requests") == 0

    # Partitions move to another worker at a rebalance: their patients are no longer counted here.
    metrics.forget_partitions()
    assert [sample(registry, "stepcare_patients", care_step=s) for s in CARE_STEPS] == [0, 0, 0, 0]


def test_a_rebuilt_partition_replaces_its_census(
    registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    metrics.census(3).change(None, PatientState(care_step=2))
    rebuilt = Census()
    for state in (PatientState(care_step=1), PatientState(care_step=1), ENDED):
        rebuilt.add(state)
    metrics.replace_census(3, rebuilt)
    assert [sample(registry, "stepcare_patients", care_step=s) for s in CARE_STEPS] == [0, 2, 0, 1]


def test_escalation_delays_fall_in_exact_buckets_and_old_triggers_are_only_counted(
    registry: CollectorRegistry, metrics: WorkerMetrics
) -> None:
    trigger_ms = 1_700_000_000_000
    for delay in (-3.0, 0.5, 60.0, 299.0, 300.0, 900.0, 901.0, 86_400.0, 86_400.5, 10**7):
        metrics.escalation_acked(trigger_ms, trigger_ms / 1000 + delay)

    def bucket(le: str) -> float | None:
        return sample(registry, "stepcare_escalation_delay_seconds_bucket", le=le)

    # -3 (a clock behind the trigger's) counts as 0; 86400.5 and 10^7 are late triggers.
    assert [bucket(le) for le in ("1.0", "60.0", "300.0", "900.0", "1800.0", "86400.0")] == [
        2, 3, 5, 6, 7, 8,
    ]  # fmt: skip
    assert bucket("+Inf") == 8
    assert sample(registry, "stepcare_escalation_delay_seconds_count") == 8
    assert sample(registry, "stepcare_escalation_delay_seconds_sum") == (
        0.5 + 60 + 299 + 300 + 900 + 901 + 86_400
    )
    assert sample(registry, "stepcare_escalations_late_trigger_total") == 2
    for le in ("60.0", "300.0", "900.0", "1800.0", "3600.0"):  # the SLO's buckets
        assert bucket(le) is not None
