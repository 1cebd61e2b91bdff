"""A minimal Faust app for the smoke test: counts events per key in a RocksDB-backed table.

After each event it publishes the key's new count to the output topic, so the test can read
what the table holds. Configured from the environment by the test that starts it.
"""

import os

import faust

import streams.worker.faust_patches

streams.worker.faust_patches.apply()  # faust 0.15.3 recovery race: seek before resuming streams

app = faust.App(
    os.environ["COUNTER_APP_ID"],
    broker="kafka://" + os.environ["COUNTER_BOOTSTRAP"],
    store="rocksdb://",
    topic_partitions=int(os.environ["COUNTER_PARTITIONS"]),
    key_serializer="raw",
    value_serializer="raw",
    broker_commit_interval=0.5,
    table_standby_replicas=0,
    web_enabled=False,
)
events = app.topic(os.environ["COUNTER_INPUT"])
counts_out = app.topic(os.environ["COUNTER_OUTPUT"])
counts = app.Table("counts", default=int, key_type=str, value_type=int)


@app.agent(events, concurrency=1)
async def count(stream: faust.StreamT) -> None:
    async for key, _value in stream.items():
        patient = key.decode()
        counts[patient] += 1
        await counts_out.send(key=key, value=str(counts[patient]).encode())
