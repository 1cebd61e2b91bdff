"""The peer: the same per-patient pipeline written with Quix Streams (``quixstreams``).

Runs in its own venv (``.bench-venv``: quixstreams pins confluent-kafka < 2.13, the project
pins 2.16.1) with the project on ``PYTHONPATH``::

    PYTHONPATH=. .bench-venv/bin/python bench/quix_peer.py --bootstrap HOST:PORT \\
        --input TOPIC --output TOPIC --events N --state-dir DIR [--guarantee exactly_once]

A StreamingDataFrame over the input topic: per record, decode the Avro SOE and validate
(``bench/pipeline.py``, as the worker), read the patient's state from the Quix State store
(RocksDB, changelog topic on, values stored as ``streams.formats.state`` bytes, as the worker's
table), apply ``streams.clinical.engine.apply`` (the FACT-L step-up rule and every other per-event
rule), write the state back if it changed, and publish each escalation (Avro) keyed by patient id
with the CloudEvents headers. Commit interval 1 s, as the worker. What it does not do, being
per-key: the partition clock and the timer index (``PartitionEngine.advance_to``: overdue
timers across patients), so it publishes the event-driven escalations only.

It prints ``started`` when the first record arrives; it stops after ``--events`` records and
prints one JSON line: the wall times of the first and of the last record processed, its CPU
seconds in between (every thread), and the escalations produced.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
import warnings

warnings.filterwarnings("ignore")  # authlib's deprecation warning on import

from pipeline import (  # noqa: E402
    escalation_value,
    read_event,
    report,
    started,
)
from quixstreams import Application, State  # noqa: E402
from quixstreams.models import TopicConfig  # noqa: E402
from quixstreams.state.rocksdb import RocksDBOptions  # noqa: E402

from streams.clinical.engine import NEW_PATIENT, apply  # noqa: E402
from streams.clinical.policy import resolve_policy  # noqa: E402
from streams.formats.avro import cloudevent_headers  # noqa: E402
from streams.formats.state import decode_state, encode_state  # noqa: E402

STATE_KEY = b"s"  # bytes: Quix serializes str keys with `dumps` (here: bytes only)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument(
        "--guarantee", choices=("at_least_once", "exactly_once"), default="at_least_once"
    )
    args = parser.parse_args()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"quix-{args.guarantee}-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        processing_guarantee=args.guarantee.replace("_", "-"),
        commit_interval=1.0,
        state_dir=args.state_dir,
        rocksdb_options=RocksDBOptions(dumps=bytes, loads=bytes),  # statecodec bytes as they are
        loglevel=logging.WARNING,
    )
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(
        args.output, key_serializer="bytes", value_serializer="bytes",
        config=TopicConfig(num_partitions=4, replication_factor=1),
    )  # fmt: skip
    policy = resolve_policy(None)
    tally = {"events": 0, "escalations": 0, "rejected": 0, "first": 0.0, "last": 0.0,
             "cpu_first": 0.0, "cpu": 0.0}  # fmt: skip
    target = args.events

    def step(value: bytes, key: bytes, timestamp: int, headers: object, state: State) -> list:
        if not tally["first"]:
            tally["first"] = time.time()
            tally["cpu_first"] = time.process_time()
            started()
        out = []
        try:
            event = read_event(key, value)
        except ValueError:
            tally["rejected"] += 1
        else:
            stored = state.get(STATE_KEY)
            before = NEW_PATIENT if stored is None else decode_state(stored)
            result = apply(before, event, policy)
            if result.state is not before:
                state.set(STATE_KEY, encode_state(result.state))
            out = [(escalation_value(e), cloudevent_headers(e)) for e in result.escalations]
            tally["escalations"] += len(out)
        tally["events"] += 1
        if tally["events"] >= target:
            tally["last"] = time.time()
            tally["cpu"] = time.process_time() - tally["cpu_first"]
            app.stop()
        return out

    frame = app.dataframe(source)
    frame = frame.apply(step, stateful=True, metadata=True, expand=True)
    frame = frame.set_headers(lambda value, key, timestamp, headers: value[1])
    frame = frame.apply(lambda value: value[0])
    frame.to_topic(sink)
    app.run()
    report({"events": tally["events"], "first": tally["first"], "end": tally["last"],
            "stopped": time.time(), "escalations": tally["escalations"],
            "rejected": tally["rejected"], "cpu_seconds": tally["cpu"]})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
