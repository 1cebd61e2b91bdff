"""A bare confluent-kafka consume -> transform -> produce loop: the yardstick for the worker.

    .venv/bin/python bench/raw_loop.py --bootstrap HOST:PORT --input TOPIC --output TOPIC \\
        --events N [--guarantee at_least_once|exactly_once]

Per record it does what the worker does (``bench/pipeline.py``): decode the Avro SOE,
validate (``event_from_json``), check the key, run the partition's
:class:`~streams.clinical.partition.PartitionEngine` (patient states in a dict: no RocksDB, no
changelog, no ``statecodec``), encode each escalation and produce it keyed by patient id with the
CloudEvents headers (``--ack-each``: and waits for their acks before the next record, as the
worker does at least once). Offsets are committed every second like the worker's
``broker_commit_interval``: at least once, after ``flush()`` (escalations acknowledged before
the offsets that consumed their input); exactly once, in a Kafka transaction with the
escalations (``send_offsets_to_transaction``), read_committed.

It prints ``started`` when the first record arrives; it stops after ``--events`` records and
prints one JSON line: the wall times of the first record and of the end (after the final
flush/commit), its CPU seconds in between (every thread), and the escalations produced.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pipeline import escalation_value, read_event, report, say, started

from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import resolve_policy
from streams.formats.avro import cloudevent_headers

COMMIT_INTERVAL = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--guarantee", choices=("at_least_once", "exactly_once"), default="at_least_once"
    )
    parser.add_argument(
        "--ack-each",
        action="store_true",
        help="at least once, the worker's order: wait for the acks of each record's "
        "escalations before the next record (flush per record with escalations)",
    )
    args = parser.parse_args()
    eos = args.guarantee == "exactly_once"
    group = f"raw-{args.guarantee}-{uuid.uuid4().hex[:6]}"
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
    })  # fmt: skip
    config = {"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True,
              "linger.ms": 0 if args.ack_each else 5}  # fmt: skip
    if eos:
        config["transactional.id"] = group
    producer = Producer(config)
    partitions = [TopicPartition(args.input, p, OFFSET_BEGINNING) for p in range(args.partitions)]
    consumer.assign(partitions)
    if eos:
        producer.init_transactions()
        producer.begin_transaction()
    policy = resolve_policy(None)
    engines: dict[int, PartitionEngine] = {}
    output = args.output
    produce = producer.produce
    processed = escalations = rejected = 0
    first = cpu_first = 0.0
    last_commit = time.monotonic()
    while processed < args.events:
        batch = consumer.consume(1000, 0.05)  # a short wait: the last batch is not full
        for msg in batch:
            if msg.error() is not None:
                say(f"consumer error: {msg.error()}")
                continue
            if not first:
                first = time.time()
                cpu_first = time.process_time()
                started()
            processed += 1
            try:
                event = read_event(msg.key(), msg.value())
            except ValueError:
                rejected += 1
                continue
            partition = msg.partition()
            engine = engines.get(partition)
            if engine is None:
                engine = engines[partition] = PartitionEngine(policy)
            fired = engine.process(event).escalations
            for escalation in fired:
                produce(
                    output, value=escalation_value(escalation),
                    key=escalation.patient_id.encode(), headers=cloudevent_headers(escalation),
                    timestamp=escalation.occurred_at,
                )  # fmt: skip
                escalations += 1
            if fired and args.ack_each:
                producer.flush()
        producer.poll(0)
        if time.monotonic() - last_commit >= COMMIT_INTERVAL:
            commit(consumer, producer, eos)
            last_commit = time.monotonic()
    commit(consumer, producer, eos, final=True)
    end = time.time()
    cpu = time.process_time() - cpu_first  # every thread of the process (librdkafka's too)
    consumer.close()
    report({"events": processed, "first": first, "end": end, "escalations": escalations,
            "rejected": rejected, "cpu_seconds": cpu})  # fmt: skip
    return 0


def commit(consumer: Consumer, producer: Producer, eos: bool, final: bool = False) -> None:
    positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
    if eos:
        if positions:
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
        producer.commit_transaction()
        if not final:
            producer.begin_transaction()
    else:
        producer.flush()
        if positions:
            consumer.commit(offsets=positions, asynchronous=False)


if __name__ == "__main__":
    sys.exit(main())
