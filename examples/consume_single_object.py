# Escalations, single-object encoded. Run: python consume_single_object.py BOOTSTRAP TOPIC AVSC
import io
import json
import sys
from pathlib import Path

import fastavro
from confluent_kafka import Consumer
from fastavro.schema import fingerprint, to_parsing_canonical_form

bootstrap, topic, avsc = sys.argv[1:4]
schema = fastavro.parse_schema(json.loads(Path(avsc).read_text()))
header = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
config = {"bootstrap.servers": bootstrap, "group.id": "ward-7", "auto.offset.reset": "earliest"}
consumer = Consumer({**config, "isolation.level": "read_committed"})
consumer.subscribe([topic])
while (msg := consumer.poll(10)) is not None:  # stops after 10 s without a record
    if msg.value()[:10] != header:  # another framing or schema version: never skip it
        sys.exit(f"offset {msg.offset()}: not {avsc} in single-object encoding")
    escalation = fastavro.schemaless_reader(io.BytesIO(msg.value()[10:]), schema)
    print(escalation["escalation_id"], escalation["kind"], escalation["due_by"])
consumer.close()
