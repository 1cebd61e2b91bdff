# Escalations, registry-framed. Run: python consume_registry.py BOOTSTRAP TOPIC REGISTRY_URL
import sys

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

bootstrap, topic, registry_url = sys.argv[1:4]
deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
config = {"bootstrap.servers": bootstrap, "group.id": "ward-7", "auto.offset.reset": "earliest"}
consumer = Consumer({**config, "isolation.level": "read_committed"})
consumer.subscribe([topic])
while (msg := consumer.poll(10)) is not None:  # stops after 10 s without a record
    escalation = deserialize(msg.value(), SerializationContext(topic, MessageField.VALUE))
    print(escalation["escalation_id"], escalation["kind"], escalation["due_by"])
consumer.close()
