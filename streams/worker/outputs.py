"""Where the worker's escalations and dead letters go, and how a batch waits for them.

- at least once, :class:`DeliveredOutputs`: a confluent-kafka producer (idempotent, ``acks=all``:
  ``streams.kafka.client``), the batch waiting until the broker has acknowledged every record
  it sent, failed records sent again. librdkafka produces in C from its own threads; through
  faust's aiokafka producer a record cost ~0.2 ms of the event loop's time (faust's sensors and
  settings lookups, aiokafka's Python partitioner and batching: ``make bench``, stage
  ``publish``).
- exactly once, :class:`TransactionalOutputs`: faust's transactional producer, each record in
  the transaction of the input partition it comes from (the one that commits that partition's
  offsets and table writes); only dead letters are waited for, as the transaction holds the
  rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.kafka.client import librdkafka_logger, producer_config
from streams.kafka.settings import Settings

log = logging.getLogger("stepcare.worker")

RESEND_PAUSE = 1.0  # seconds before records the broker failed (after librdkafka's retries) go again
# Seconds a delivery-report poll may wait: it returns at the first report. Not flush(): the
# next batch's records, produced meanwhile, would hold it until they are delivered too.
POLL_SLICE = 0.1
# librdkafka's linger: records of a batch go out together; the batch waits for them anyway.
WORKER_LINGER_MS = 5

_PENDING: Any = object()  # an Output not yet acknowledged nor failed


@dataclass
class Output:
    """A record sent for an input record, kept until the broker has it."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None
    source: tuple[int, int]  # the input record's (partition, offset), for the log
    partition: int | None = None  # None: the producer's partitioner (by key)
    error: Any = field(default=_PENDING)  # None once acknowledged, else the error
    offset: int = -1  # at least once: its offset, once acknowledged
    ack: Any = None  # exactly once: the future of its acknowledgement
    # Called with the wall time (Unix s) the broker acknowledged the record (at least once: in
    # librdkafka's delivery report, served in an executor thread; exactly once: when the record
    # is acknowledged inside its transaction, which commits within the commit interval).
    on_ack: Callable[[float], None] | None = None


class Outputs(Protocol):
    async def send(self, output: Output, input_topic: str, wait: bool) -> Output | None:
        """Send ``output``; returned if the batch must wait for it."""

    async def until_acknowledged(self, outputs: list[Output]) -> BaseException | None:
        """Wait until the broker has every one of ``outputs``; None, or (exactly once) the
        error of a record it refused."""


class DeliveredOutputs:
    """at least once: a librdkafka producer; a batch waits for every record it sent."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer  # not at import: the CLI loads this module

        config = producer_config(settings, None)
        config["linger.ms"] = WORKER_LINGER_MS
        config["logger"] = librdkafka_logger("worker", settings.log_level)
        self.producer = Producer(config)

    async def send(self, output: Output, input_topic: str, wait: bool) -> Output | None:
        self._produce(output)
        return output

    def _produce(self, output: Output) -> None:
        def delivered(error: Any, message: Any) -> None:
            if error is None:
                output.offset = message.offset()
                if output.on_ack is not None:
                    output.on_ack(time.time())
            output.error = error

        output.error = _PENDING
        kwargs: dict[str, Any] = {"key": output.key, "value": output.value,
                                  "headers": output.headers, "on_delivery": delivered}  # fmt: skip
        if output.timestamp_ms is not None:
            kwargs["timestamp"] = output.timestamp_ms
        if output.partition is not None:
            kwargs["partition"] = output.partition
        while True:
            try:
                self.producer.produce(output.topic, **kwargs)
                return
            except BufferError:  # librdkafka's queue is full: serve delivery reports
                self.producer.poll(0.1)

    async def until_acknowledged(self, outputs: list[Output]) -> BaseException | None:
        loop = asyncio.get_running_loop()
        while outputs:
            while any(output.error is _PENDING for output in outputs):
                # In a thread: librdkafka waits without the GIL, the event loop goes on.
                await loop.run_in_executor(None, self.producer.poll, POLL_SLICE)
            failed = [output for output in outputs if output.error is not None]
            if not failed:
                return None
            partition, offset = failed[0].source
            log.error("%d outputs of the batch not acknowledged (first: partition %d offset %d: "
                      "%s): sending them again", len(failed), partition, offset,
                      failed[0].error)  # fmt: skip
            await asyncio.sleep(RESEND_PAUSE)
            for output in failed:
                self._produce(output)
            outputs = failed
        return None


class TransactionalOutputs:
    """exactly once: faust's transactional producer, in the input partition's transaction."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.transactions: dict[tuple[str, int], str] = {}  # input partition -> transaction id

    async def send(self, output: Output, input_topic: str, wait: bool) -> Output | None:
        app = self.app
        partition = output.source[0]
        transaction = self.transactions.get((input_topic, partition))
        if transaction is None:  # faust's id: <app id>-<assignor group>-<partition>
            group = app.assignor.group_for_topic(input_topic)
            transaction = f"{app.conf.id}-{group}-{partition}"
            self.transactions[(input_topic, partition)] = transaction
        timestamp = None if output.timestamp_ms is None else output.timestamp_ms / 1000
        output.ack = await app.producer.send(
            output.topic,
            output.key,
            output.value,
            None,
            timestamp,
            output.headers,
            transactional_id=transaction,
        )
        on_ack = output.on_ack
        if on_ack is not None:
            output.ack.add_done_callback(
                lambda ack: None if ack.cancelled() or ack.exception() else on_ack(time.time())
            )
        return output if wait else None

    async def until_acknowledged(self, outputs: list[Output]) -> BaseException | None:
        results = await asyncio.gather(*(o.ack for o in outputs), return_exceptions=True)
        for result in results:
            if isinstance(result, asyncio.CancelledError):
                raise result  # the producer is stopping: so is the worker
            if isinstance(result, BaseException):
                return result
        return None
