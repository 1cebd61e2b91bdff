"""Per-record cost of the two wire framings (issue 15): the worker's codec work, same run.

Run it from the project root (a command, never a test)::

    .venv/bin/python bench/framing.py                 # 20,000-event demo cohort, best of 5
    .venv/bin/python bench/framing.py --patients 2000 --rounds 7

For each framing, on the same events and escalations (a seeded demo cohort replayed offline),
it times what the worker does per record that depends on the framing: reading the input value
(``registry_schema_id``, the rewrite of a registry-framed value to the single-object form of its
writer schema, ``decode_event``, ``event_from_json``) and writing each escalation
(``Framing.escalation_value``). Registry ids are known (as after the first lookup of each):
the lookup itself is one HTTP request per new id, paced and remembered, not per record.
Rounds alternate between the framings; the best of each is reported, with the goal: the
registry framing within 10% of single-object.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import orjson

from streams.analysis.replay import replay
from streams.clinical.escalations import Escalation
from streams.clinical.events import event_from_json, parse_time
from streams.clinical.policy import builtin_policy
from streams.devtools.demo import demo_cohort
from streams.formats import avro
from streams.formats.wire import registry_header, registry_schema_id
from streams.kafka.registry import Framing

GOAL = 1.10  # registry framing at most 10% more per record than single-object
END = "2025-06-01T00:00:00Z"
EVENT_ID, ESCALATION_ID = 1, 2  # the ids a fresh registry gives stepcare's two subjects


def framings() -> dict[str, Framing]:
    single = Framing.writing_single_object()
    registry = Framing.writing_single_object()
    registry.wire_format = "registry"
    registry.event_header = registry_header(EVENT_ID)
    registry.escalation_header = registry_header(ESCALATION_ID)
    registry.events.learn(EVENT_ID, json.dumps(avro.EVENT_CODEC.current.schema))
    registry.escalations.learn(ESCALATION_ID, json.dumps(avro.ESCALATION_CODEC.current.schema))
    return {"single-object": single, "registry": registry}


def worker_read(framing: Framing) -> Callable[[bytes], object]:
    """The worker's read of one input value (streams.worker.pipeline.Monitor._process)."""
    writers = framing.events

    def read(value: bytes) -> object:
        schema_id = registry_schema_id(value)
        if schema_id is not None:
            value = writers.single_object(value, schema_id)
        return event_from_json(avro.decode_event(value))

    return read


def best_of(rounds: int, work: dict[str, Callable[[], None]]) -> dict[str, float]:
    best = {name: float("inf") for name in work}
    for _ in range(rounds):
        for name, run in work.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    events = demo_cohort(args.patients, seed=args.seed, end_ms=parse_time(END))
    output = io.StringIO()
    lines = [orjson.dumps(e).decode() for e in events]
    replay(lines, builtin_policy("step-pc-2024"), output, until=parse_time(END))
    escalations: list[Escalation] = []
    for line in output.getvalue().splitlines():  # back to engine objects, as the worker has
        escalations.append(_escalation(orjson.loads(line)))
    chosen = framings()
    values = {name: [f.event_value(e) for e in events] for name, f in chosen.items()}
    # Same records either way: the framing is all that differs.
    assert [v[5:] for v in values["registry"]] == [v[10:] for v in values["single-object"]]

    def reading(name: str) -> Callable[[], None]:
        read, records = worker_read(chosen[name]), values[name]
        return lambda: [read(v) for v in records] and None

    def writing(name: str) -> Callable[[], None]:
        write = chosen[name].escalation_value
        return lambda: [write(e) for e in escalations] and None

    read_time = best_of(args.rounds, {n: reading(n) for n in chosen})
    write_time = best_of(args.rounds, {n: writing(n) for n in chosen})
    print(f"{len(events):,} input records, {len(escalations):,} escalations; best of "
          f"{args.rounds} rounds each, alternating\n")  # fmt: skip
    print("| Framing | read per input record | write per escalation | per input record, all |")
    print("|---|---|---|---|")
    total = {}
    for name in chosen:
        per_read = read_time[name] / len(events) * 1e6
        per_write = write_time[name] / max(1, len(escalations)) * 1e6
        total[name] = (read_time[name] + write_time[name]) / len(events) * 1e6
        print(f"| {name} | {per_read:.2f} µs | {per_write:.2f} µs | {total[name]:.2f} µs |")
    ratio = total["registry"] / total["single-object"]
    verdict = "met" if ratio <= GOAL else "**not met**"
    print(f"\nregistry / single-object: {ratio:.3f} (goal ≤ {GOAL:.2f}: {verdict})")
    return 0


def _escalation(obj: dict) -> Escalation:
    """An Escalation object from its JSON rendering (the engine's, as replay wrote it)."""
    from streams.clinical.escalations import Kind, Reason

    reason = obj["reason"]
    return Escalation(
        obj["escalation_id"], obj["patient_id"], Kind(obj["kind"]), obj["care_step"],
        parse_time(obj["occurred_at"]),
        None if obj["due_by"] is None else parse_time(obj["due_by"]),
        obj["trigger_event_id"], obj["policy_id"], obj["policy_version"],
        Reason(reason["text"], reason["instrument"], reason["baseline"], reason["score"],
               reason["change"], reason["threshold"]),
        obj.get("related_request_id"),
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
