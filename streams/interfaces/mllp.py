"""HL7 v2 over MLLP, live: ``stepcare bridge mllp-in``, a TCP listener in front of the event topic.

An interface engine connects and sends MLLP-framed ADT messages (``0x0B`` message ``0x1C 0x0D``).
Each message becomes its PatientEvent record exactly as ``bridge hl7-in`` makes it
(:func:`streams.interfaces.live.hl7_in_record`: key, value in the configured framing,
timestamp), and is answered only once Kafka has answered:

- ``AA`` once the event record is acknowledged by the broker, or at once for a valid message
  that maps to no event (an A08, an ORU: counted as ignored);
- ``AE`` once the message, refused by the mapping, is acknowledged on the dead-letter topic with
  its reason (the sender must not resend it: a person must look);
- ``AR`` when the bridge cannot take it (a record not delivered in ``delivery_timeout``, a
  message over ``max_message_bytes``): the sender must resend. Never ``AA`` then.

Messages of one connection are handled one at a time, in order. Everything is bounded: message
size (``AR`` and the connection closed), connections (one more is closed at once), quiet time
on a connection (closed). A frame not finished when its connection ends is dropped: nothing is
produced, nothing acknowledged. SIGTERM or Ctrl-C: stop accepting, finish the messages in hand
(their ACKs are sent), close the connections, exit 0. The protocol, the limits and what binding
beyond loopback exposes: docs/integration.md, "HL7 v2 over MLLP".
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from streams.errors import StepcareError
from streams.interfaces.bridge_metrics import DEAD_LETTERED, IGNORED, PUBLISHED, BridgeMetrics
from streams.interfaces.errors import AdapterError, Ignored, breakdown
from streams.interfaces.hl7 import ack_message
from streams.interfaces.live import PROCESSING_ERROR, Output
from streams.kafka.deadletter import DEAD_LETTER_MARGIN, dead_letter_record

if TYPE_CHECKING:
    from streams.kafka.settings import Settings

START, END = b"\x0b", b"\x1c"
NAME = "mllp-in"
DEFAULT_PORT = 2575  # the IANA port of HL7 over MLLP
MAX_MESSAGE_BYTES = 1 << 19  # 512 KiB: a refused one still fits whole in its dead letter
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 600.0  # seconds
DELIVERY_TIMEOUT = 30.0  # seconds
READ_BYTES = 1 << 16  # bytes read from a socket at a time
ACK_MARGIN = 5.0  # seconds an ACK waits beyond the producer's own delivery timeout

# What a message becomes: its event record, Ignored, or AdapterError (a dead letter).
Convert = Callable[[bytes], "Output | Ignored"]


class FrameTooLarge(Exception):
    """A frame grew beyond the limit before its end."""


class Deframer:
    """Cuts an MLLP byte stream into message bodies (pure; the listener feeds it what it reads).

    A frame starts at ``0x0B`` and ends at ``0x1C`` (the ``0x0D`` after it, like any byte
    between frames, is skipped). A body longer than ``max_bytes`` raises :class:`FrameTooLarge`
    as soon as that many bytes are held, so memory stays bounded."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._held = bytearray()
        self._in_frame = False
        self.skipped = 0  # bytes outside frames, other than the CR (and LF) after a frame end

    def feed(self, data: bytes) -> None:
        self._held += data

    def next(self) -> bytes | None:
        """The next complete body, or None until more bytes are fed."""
        if not self._in_frame:
            start = self._held.find(START)
            outside = self._held if start < 0 else self._held[:start]
            self.skipped += len(outside.strip(b"\r\n"))
            if start < 0:
                self._held.clear()
                return None
            del self._held[: start + 1]
            self._in_frame = True
        end = self._held.find(END)
        if end < 0:
            if len(self._held) > self.max_bytes:
                raise FrameTooLarge
            return None
        if end > self.max_bytes:
            raise FrameTooLarge
        body = bytes(self._held[:end])
        del self._held[: end + 1]
        self._in_frame = False
        return body

    @property
    def partial(self) -> bool:
        """A frame is started and not finished."""
        return self._in_frame

    def head(self, limit: int = 4096) -> bytes:
        """The first segment of the frame in hand (for the ACK of a frame too large)."""
        return bytes(self._held[:limit]).split(b"\r", 1)[0].split(b"\n", 1)[0]


def frame(text: str, encoding: str = "utf-8") -> bytes:
    """An ACK (segments ending in CR) in its MLLP frame."""
    return START + text.encode(encoding, "replace") + END + b"\r"


def encoding_of(body: bytes) -> str:
    """The text encoding of a message as the HL7 reader decides it: UTF-8, else Latin-1."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_connections: int = MAX_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    delivery_timeout: float = DELIVERY_TIMEOUT


@dataclass(frozen=True, slots=True)
class Answer:
    """What a message gets: its ACK code and text, and what happened (for the counts)."""

    code: str  # AA, AE, AR
    text: str = ""


class _Connection:
    __slots__ = ("busy", "number", "task")

    def __init__(self, number: int, task: asyncio.Task[Any] | None) -> None:
        self.number, self.task, self.busy = number, task, False


class MllpBridge:
    """The listener: connections in, one message at a time, records out, ACKs back."""

    def __init__(
        self,
        convert: Convert,
        *,
        target: str,
        dead_letters: str,
        producer_config: dict[str, Any],
        limits: Limits = Limits(),
        report_every: float = 60.0,
        err: IO[str] | None = None,
        clock: Callable[[], float] = time.time,
        producer_factory: Callable[[dict[str, Any]], Any] | None = None,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self.metrics = metrics or BridgeMetrics(NAME, kafka_reading=False)
        self.convert, self.target, self.dead_letters = convert, target, dead_letters
        self.producer_config, self.limits = producer_config, limits
        self.dead_letter_limit = (
            int(producer_config.get("message.max.bytes", 1_000_000)) - DEAD_LETTER_MARGIN
        )
        self.report_every, self.clock = report_every, clock
        self.producer_factory = producer_factory  # default: confluent_kafka.Producer
        self.err = sys.stderr if err is None else err
        self.received = self.written = 0
        self.reasons: Counter[str] = Counter()  # dead letters (AE) by reason
        self.ignored: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # AR by why
        self.closed: Counter[str] = Counter()  # connections closed by stepcare, by why
        self.connections_seen = 0
        self.connections: set[_Connection] = set()
        self.fatal: str | None = None
        self.started = time.monotonic()
        self.producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._polling = False
        self.listening = False

    # -- one message ---------------------------------------------------------------------------

    async def answer(self, body: bytes, where: str) -> Answer:
        """Convert, produce, wait for Kafka: the ACK ``body`` gets (``where``: for the log)."""
        self.received += 1
        result: Output | Ignored | AdapterError
        try:
            result = self.convert(body)
        except AdapterError as exc:
            result = exc
        except Exception as exc:  # a defect on untrusted input: set the message aside
            result = AdapterError(PROCESSING_ERROR, f"{type(exc).__name__} in the adapter")
        if isinstance(result, Ignored):
            self.ignored[f"{result.reason} {result.detail}"] += 1
            self.metrics.handled(IGNORED)
            return Answer("AA")
        if isinstance(result, AdapterError):
            own = [
                ("error.reason", result.reason.encode()),
                ("error.detail", result.detail.encode()),
                ("source.protocol", b"mllp"),
            ]
            key, value, headers = dead_letter_record(None, body, [], own, self.dead_letter_limit)
            failure = await self._deliver(self.dead_letters, key=key, value=value, headers=headers)
            if failure is not None:
                return self._refuse(failure, where)
            self.reasons[result.reason] += 1
            self.metrics.handled(DEAD_LETTERED, result.reason)
            self._say(f"bridge {NAME}: dead letter: {result.reason} ({where})")
            return Answer("AE", f"{result.reason}: {result.detail}")
        failure = await self._deliver(
            self.target, key=result.key, value=result.value, timestamp=result.timestamp,
            headers=result.headers or None,
        )  # fmt: skip
        if failure is not None:
            return self._refuse(failure, where)
        self.written += 1
        self.metrics.handled(PUBLISHED)
        return Answer("AA")

    def _refuse(self, why: str, where: str) -> Answer:
        self.refused[why] += 1
        self._say(f"bridge {NAME}: AR: {why} ({where})")
        return Answer("AR", f"not delivered to Kafka ({why}): send it again")

    async def _deliver(self, topic: str, **record: Any) -> str | None:
        """Produce one record and wait for the broker's answer: None when acknowledged, else
        why not."""
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[str | None] = loop.create_future()

        def settle(result: str | None) -> None:
            if not settled.done():
                settled.set_result(result)

        def delivered(error: Any, _msg: Any) -> None:  # on the poller thread
            loop.call_soon_threadsafe(settle, None if error is None else error.str())

        from confluent_kafka import KafkaException

        try:
            self.producer.produce(topic, on_delivery=delivered, **record)
        except BufferError:
            return "the producer's queue is full"
        except KafkaException as exc:
            return f"Kafka: {exc.args[0].str() if exc.args else exc}"
        try:
            return await asyncio.wait_for(
                asyncio.shield(settled), self.limits.delivery_timeout + ACK_MARGIN
            )
        except TimeoutError:
            return "not acknowledged in time"

    # -- connections -----------------------------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections_seen += 1
        number = self.connections_seen
        if len(self.connections) >= self.limits.max_connections or self._stopping():
            self.closed["stopping" if self._stopping() else "over the connection limit"] += 1
            writer.close()
            return
        connection = _Connection(number, asyncio.current_task())
        self.connections.add(connection)
        deframer = Deframer(self.limits.max_message_bytes)
        messages = 0
        try:
            while not self._stopping():
                try:
                    body = deframer.next()
                except FrameTooLarge:
                    self.received += 1
                    why = f"a message over {self.limits.max_message_bytes} bytes"
                    self.refused["message too large"] += 1
                    self._say(f"bridge {NAME}: AR: message too large (connection {number}); "
                              "connection closed")  # fmt: skip
                    head = deframer.head()
                    self.metrics.ack("AR")
                    writer.write(self._ack(head, Answer("AR", why)))
                    await self._drain(writer)
                    self.closed["message too large"] += 1
                    return
                if body is None:
                    try:
                        data = await asyncio.wait_for(
                            reader.read(READ_BYTES), self.limits.idle_timeout
                        )
                    except TimeoutError:
                        self.closed["idle"] += 1
                        if deframer.partial:
                            self.closed["partial frame dropped"] += 1
                        return
                    if not data:
                        if deframer.partial:
                            self.closed["partial frame dropped"] += 1
                        return
                    deframer.feed(data)
                    continue
                connection.busy = True
                messages += 1
                answer = await self.answer(body, f"connection {number} message {messages}")
                self.metrics.ack(answer.code)
                writer.write(self._ack(body, answer))
                await self._drain(writer)
                connection.busy = False
        except (ConnectionError, OSError):
            self.closed["reset by the peer"] += 1
        except asyncio.CancelledError:
            pass  # stopping: this connection had no message in hand
        except Exception as exc:  # a defect: one line (no content), the other connections go on
            self.closed[f"error {type(exc).__name__}"] += 1
            self._say(f"bridge {NAME}: connection {number} closed: {type(exc).__name__}")
        finally:
            self.connections.discard(connection)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    def _ack(self, message: bytes, answer: Answer) -> bytes:
        """The framed ACK of ``message`` (an ACK without MSH-10 if even that cannot be read)."""
        now = self._now_ms()
        try:
            text = ack_message(message, answer.code, timestamp_ms=now, text=answer.text)
        except Exception:  # an MSH that passes the reader's checks and still breaks the ACK
            text = ack_message(b"", answer.code, timestamp_ms=now, text=answer.text)
        return frame(text, encoding_of(message))

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the ACK is on its way; a sender that reads none for the idle timeout is
        disconnected (ConnectionError), not waited for forever."""
        try:
            await asyncio.wait_for(writer.drain(), self.limits.idle_timeout)
        except TimeoutError:
            raise ConnectionError("the sender reads no ACKs") from None

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- the server ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting, let the messages in hand finish (call on the loop's thread)."""
        if self._stop is not None:
            self._stop.set()

    def _fatal_error(self, error: Any) -> None:  # librdkafka's error_cb, on the poller thread
        if error.fatal() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_fatal, error.str())

    def _on_fatal(self, text: str) -> None:
        self.fatal = text
        self.stop()

    def _poll(self) -> None:
        while self._polling:
            self.producer.poll(0.1)

    async def serve(self, host: str, port: int) -> int:
        """Listen until :meth:`stop` (or SIGTERM, SIGINT): 0 after a clean stop, 1 after a fatal
        Kafka error. Raises :class:`StepcareError` if it cannot listen."""
        from confluent_kafka import KafkaException, Producer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.producer = (self.producer_factory or Producer)(
                {**self.producer_config, "error_cb": self._fatal_error}
            )
        except KafkaException as exc:
            raise StepcareError(f"cannot create a Kafka producer: {exc}") from None
        self._polling = True
        poller = threading.Thread(target=self._poll, name="mllp-producer-poll", daemon=True)
        poller.start()
        try:
            try:
                server = await asyncio.start_server(
                    self._serve_connection, host, port, reuse_address=True
                )
            except OSError as exc:
                raise StepcareError(
                    f"bridge {NAME}: cannot listen on {host}:{port}: {exc.strerror or exc}"
                ) from None
            self.listening = True
            bound = server.sockets[0].getsockname()
            self._say(
                f"bridge {NAME}: listening on {bound[0]}:{bound[1]} -> {self.target} "
                f"(dead letters: {self.dead_letters})" + self.identity
            )
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.stop)
            try:
                while not self._stopping():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.report_every)
                    if not self._stopping():
                        self._say(self.summary())
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
                server.close()
                for connection in list(self.connections):
                    if not connection.busy and connection.task is not None:
                        connection.task.cancel()
                tasks = [c.task for c in self.connections if c.task is not None]
                if tasks:  # the messages in hand: their ACKs go out, then the connections close
                    await asyncio.wait(tasks, timeout=self.limits.delivery_timeout + 2 * ACK_MARGIN)
                await server.wait_closed()
        finally:
            self._polling = False
            await asyncio.to_thread(poller.join)
            await asyncio.to_thread(self.producer.flush, self.limits.delivery_timeout)
            if self.listening:
                self._say(self.summary())
        if self.fatal is not None:
            self._say(f"stepcare: bridge {NAME}: fatal Kafka error: {self.fatal}")
            return 1
        return 0

    identity = ""  # ", pseudonym secret <fingerprint>" for the start line

    def summary(self) -> str:
        parts = [f"{self.received} received", f"{self.written} written to {self.target}"]
        parts.append(f"{sum(self.reasons.values())} dead-lettered" + breakdown(self.reasons))
        parts.append(f"{sum(self.ignored.values())} ignored" + breakdown(self.ignored))
        parts.append(f"{sum(self.refused.values())} refused (AR)" + breakdown(self.refused))
        parts.append(f"{self.connections_seen} connections" + breakdown(self.closed))
        seconds = time.monotonic() - self.started
        return f"bridge {NAME}: {', '.join(parts)} in {seconds:.1f} s"

    def _say(self, line: str) -> None:
        print(line, file=self.err, flush=True)


def run_mllp(
    convert: Convert,
    settings: Settings,
    *,
    host: str,
    port: int,
    target: str,
    dead_letters: str,
    bootstrap_servers: str | None = None,
    limits: Limits = Limits(),
    report_every: float = 60.0,
    fingerprint: str | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
) -> int:
    """``stepcare bridge mllp-in`` on the broker of ``settings`` (or ``bootstrap_servers``),
    creating its missing topics; the producer is the live bridges' (``stepcare publish``'s).
    ``/metrics`` on ``metrics_host:metrics_port`` (0: none), bound before anything else
    (``MetricsPortError``, exit 2, if it cannot)."""
    from streams.interfaces.bridge_metrics import serve
    from streams.kafka.client import SAFE_PRODUCER, connection_config, librdkafka_logger
    from streams.kafka.topics import create_topics, existing_topics

    metrics = BridgeMetrics(NAME, kafka_reading=False)
    server = serve(metrics, metrics_host, metrics_port)
    try:
        connection = connection_config(settings, bootstrap_servers)
        logger = librdkafka_logger("bridge", settings.log_level)
        admin, existing = existing_topics({**connection, "logger": logger})
        missing = sorted({n for n in (target, dead_letters) if n not in existing})
        create_topics(admin, settings, missing, keep=(target,))  # dead letters: default retention
        del admin  # not kept open (nor logging librdkafka's lines) while the listener runs
        if missing:
            print(f"created topics {', '.join(missing)} ({settings.partitions} partitions)",
                  file=sys.stderr, flush=True)  # fmt: skip
        producer = {
            **connection,
            **SAFE_PRODUCER,
            "client.id": f"stepcare-bridge-{NAME}",
            "message.timeout.ms": int(limits.delivery_timeout * 1000),
            # One record in flight per connection, its sender waiting for the ACK: lingering for
            # a batch would only delay each ACK (25 ms an ACK with stepcare publish's 20 ms).
            "linger.ms": 0,
            "logger": logger,
        }
        bridge = MllpBridge(
            convert, target=target, dead_letters=dead_letters, producer_config=producer,
            limits=limits, report_every=report_every, metrics=metrics,
        )  # fmt: skip
        bridge.identity = "" if fingerprint is None else f", pseudonym secret {fingerprint}"
        if server is not None:
            bridge.identity += (
                f", metrics on http://{server.address[0]}:{server.address[1]}/metrics"
            )
        return asyncio.run(bridge.serve(host, port))
    finally:
        if server is not None:
            server.close()
