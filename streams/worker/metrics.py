"""The worker's Prometheus metrics (DESIGN §7): what ops teams graph and get paged on.

Names carry the ``stepcare_`` prefix and base units; counters end in ``_total``; every label
child that can occur is created up front, so a rate is 0 (not absent) before the first event;
no label ever carries patient-level data (only event types, outcomes, kinds, reasons, care
steps and partition numbers, all bounded sets).
"""

from __future__ import annotations

import platform
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, Info
from prometheus_client import Counter as PromCounter

from streams.clinical.engine import Outcome, PatientState
from streams.clinical.escalations import Kind
from streams.clinical.events import EventType
from streams.clinical.policy import Policy

DEAD_LETTERED = "dead_lettered"
OUTCOMES = [*(str(o) for o in Outcome), DEAD_LETTERED]
# A record that could not be read has no known type.
EVENT_TYPES = [str(t) for t in EventType if t is not EventType.CLOCK_TICK] + ["unreadable"]
DEAD_LETTER_REASONS = [
    "not-single-object-encoding",
    "unknown-schema",
    "malformed-avro",
    "invalid-event",
    "processing-error",
]
SUPPRESSIBLE = [Kind.TREATMENT_CHANGE_VISIT_DUE, Kind.POST_DISCHARGE_VISIT_DUE]
CARE_STEPS = ["not_enrolled", "1", "2", "ended"]
# Event-time lag: from a second (live feeds) to a day (a batch upload of yesterday's forms).
LAG_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400)
# The SLO (an escalation on its topic within 15 minutes of its trigger): 300 s and 900 s for
# the objective and its variants, the rest to see how far off a miss is.
DELAY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
LATE_TRIGGER = 86_400.0  # s: escalations triggered longer ago (backfills, replays): not observed


def care_step_label(state: PatientState) -> str:
    """The ``care_step`` label of a patient's state."""
    if state.ended:
        return "ended"
    return CARE_STEPS[state.care_step] if state.care_step in (1, 2) else "not_enrolled"


class WorkerMetrics:
    """Every metric of one worker, in ``registry`` (a fresh registry in unit tests)."""

    def __init__(self, registry: CollectorRegistry, policy: Policy) -> None:
        self.events = PromCounter(
            "stepcare_events_total",
            "Input events processed, by event type and outcome.",
            ["type", "outcome"],
            registry=registry,
        )
        for event_type in EVENT_TYPES:
            for outcome in OUTCOMES:
                if event_type != "unreadable" or outcome == DEAD_LETTERED:
                    self.events.labels(event_type, outcome)
        self.escalations = PromCounter(
            "stepcare_escalations_total",
            "Escalations published, by kind: the alert rate.",
            ["kind"],
            registry=registry,
        )
        self.suppressed = PromCounter(
            "stepcare_suppressed_triggers_total",
            "Visit triggers not sent because a visit request was already open, by kind.",
            ["kind"],
            registry=registry,
        )
        self.dead_letters = PromCounter(
            "stepcare_dead_letters_total",
            "Input records written to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        for kind in Kind:
            self.escalations.labels(str(kind))
        for kind in SUPPRESSIBLE:
            self.suppressed.labels(str(kind))
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        self.event_lag = Histogram(
            "stepcare_event_time_lag_seconds",
            "Wall time when an event is processed minus its occurred_at.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.last_event = Gauge(
            "stepcare_last_event_timestamp_seconds",
            "Latest occurred_at of the input events processed (event time, Unix seconds).",
            registry=registry,
        )
        self.last_processed = Gauge(
            "stepcare_last_processed_timestamp_seconds",
            "Wall time the worker last processed an input record (clock ticks included), or "
            "started.",
            registry=registry,
        )
        self.registry_errors = PromCounter(
            "stepcare_schema_registry_errors_total",
            "Failed lookups of a new input schema id in the schema registry (the record and "
            "the worker wait, asking again).",
            registry=registry,
        )
        self.ticks = PromCounter(
            "stepcare_clock_ticks_total",
            "CLOCK_TICK records processed (they move a partition's clock, nothing else).",
            registry=registry,
        )
        self.patients = Gauge(
            "stepcare_patients",
            "Patients known to this worker's partitions, by care step.",
            ["care_step"],
            registry=registry,
        )
        self.open_requests = Gauge(
            "stepcare_open_visit_requests",
            "Visit requests sent and not yet closed by a palliative visit.",
            registry=registry,
        )
        self.overdue_requests = Gauge(
            "stepcare_overdue_visit_requests",
            "Open visit requests whose due date has passed (VISIT_OVERDUE sent).",
            registry=registry,
        )
        for step in CARE_STEPS:
            self.patients.labels(step)
        self.consumer_lag = Gauge(
            "stepcare_consumer_lag",
            "Input records not yet committed, per partition (end offset - committed offset).",
            ["partition"],
            registry=registry,
        )
        self.subscriber_lag = Gauge(
            "stepcare_subscriber_lag",
            "Escalations a subscriber group (STEPCARE_SUBSCRIBER_GROUPS) has not committed, per "
            "partition of the escalations topic (end offset - committed offset).",
            ["group", "partition"],
            registry=registry,
        )
        self.subscriber_lag_seconds = Gauge(
            "stepcare_subscriber_lag_seconds",
            "Age of the oldest escalation a subscriber group has not committed (now - its record "
            "timestamp); 0 when caught up.",
            ["group"],
            registry=registry,
        )
        self.escalation_delay = Histogram(
            "stepcare_escalation_delay_seconds",
            "Wall time the broker acknowledged an escalation minus its trigger time (the "
            "triggering event's occurred_at, or the deadline that passed); triggers over 24 h "
            "old are not observed (stepcare_escalations_late_trigger_total).",
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        self.late_triggers = PromCounter(
            "stepcare_escalations_late_trigger_total",
            "Escalations acknowledged more than 24 h after their trigger time (backfills, "
            "replays): not observed in stepcare_escalation_delay_seconds.",
            registry=registry,
        )
        self.build = Info("stepcare_build", "Versions and the policy in force.", registry=registry)
        self.build.info(
            {
                "version": _version("stepcare"),
                "faust_version": _version("faust-streaming"),
                "python_version": platform.python_version(),
                "policy_id": policy.policy_id,
                "policy_version": str(policy.policy_version),
            }
        )
        # Per-partition tallies behind the patient gauges (partitions move between workers).
        self._tallies: dict[int, Census] = {}
        # Label children resolved once: ``labels()`` hashes and locks on every call (measured:
        # a few % of the worker's CPU at one call per event).
        self._children: dict[tuple[Any, ...], Any] = {}
        self._patients_by_step = {step: self.patients.labels(step) for step in CARE_STEPS}

    def count(self, metric: PromCounter, *labels: str) -> None:
        """``metric.labels(*labels).inc()``, with the child cached."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        child.inc()

    def escalation_acked(self, trigger_ms: int, acked_at: float) -> None:
        """The broker acknowledged an escalation triggered at ``trigger_ms`` (Unix ms) at wall
        time ``acked_at`` (Unix s). Thread-safe (at least once: librdkafka's delivery reports
        are served in an executor thread)."""
        delay = acked_at - trigger_ms / 1000
        if delay > LATE_TRIGGER:
            self.late_triggers.inc()
        else:
            self.escalation_delay.observe(max(0.0, delay))

    # -- the patient gauges --------------------------------------------------------------------

    def census(self, partition: int) -> Census:
        return self._tallies.setdefault(partition, Census())

    def replace_census(self, partition: int, census: Census) -> None:
        self._tallies[partition] = census
        self.publish_census()

    def forget_partitions(self) -> None:
        self._tallies.clear()
        self.publish_census()

    def publish_census(self) -> None:
        steps: Counter[str] = Counter()
        open_requests = overdue = 0
        for census in self._tallies.values():
            steps.update(census.steps)
            open_requests += census.open_requests
            overdue += census.overdue
        for step, gauge in self._patients_by_step.items():
            gauge.set(steps[step])
        self.open_requests.set(open_requests)
        self.overdue_requests.set(overdue)


class Census:
    """Patients of one partition by care step, and their open and overdue visit requests."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()
        self.open_requests = 0
        self.overdue = 0

    def add(self, state: PatientState, sign: int = 1) -> None:
        self.steps[care_step_label(state)] += sign
        if state.request is not None and not state.ended:
            self.open_requests += sign
            self.overdue += sign * state.request.overdue_sent

    def change(self, before: PatientState | None, after: PatientState) -> None:
        if before is not None:
            self.add(before, -1)
        self.add(after)


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
