"""The MLLP listener without Kafka: framing, the ACK each message gets and when, the limits.

A fake producer stands in for confluent-kafka's (records kept, delivery reports released when
the test says so); the sockets are real (asyncio on 127.0.0.1). The listener on a real broker
with a real MLLP client: tests/integration/test_mllp.py.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.interfaces import hl7
from streams.interfaces.live import hl7_in_record
from streams.interfaces.mllp import Answer, Deframer, FrameTooLarge, Limits, MllpBridge, frame
from streams.interfaces.pseudonym import Pseudonymizer
from tests.unit.interfaces.test_fhir import SECRET

REPO = Path(__file__).resolve().parents[3]
HL7_DATA = REPO / "tests" / "data" / "hl7"
NOW = 1_712_400_000.0  # 2024-04-06T10:40:00Z, the ACKs' MSH-7
DEFAULT_LIMITS = Limits()


def body(name: str) -> bytes:
    """A sample message as its segments, CR-terminated (the body of an MLLP frame)."""
    return hl7.mllp_frame((HL7_DATA / name).read_text())[1:-2]


# -- framing -------------------------------------------------------------------------------------


def test_frames_are_cut_at_their_end_however_the_bytes_arrive() -> None:
    stream = b"\x0bMSH|one\r\x1c\r" + b"\r\n" + b"\x0bMSH|two\r\x1c\r\x0bMSH|th"
    for size in (1, 2, 5, len(stream)):
        deframer, bodies = Deframer(), []
        for start in range(0, len(stream), size):
            deframer.feed(stream[start : start + size])
            while (found := deframer.next()) is not None:
                bodies.append(found)
        assert bodies == [b"MSH|one\r", b"MSH|two\r"]
        assert deframer.partial and deframer.head() == b"MSH|th"
        assert deframer.skipped == 0


def test_bytes_outside_frames_are_skipped_and_counted() -> None:
    deframer = Deframer()
    deframer.feed(b"junk\x0bMSH|a\r\x1c\rmore\r\n")
    assert deframer.next() == b"MSH|a\r"
    assert deframer.next() is None and not deframer.partial
    assert deframer.skipped == len(b"junk") + len(b"more")


def test_a_frame_over_the_limit_is_refused_before_its_end_arrives() -> None:
    deframer = Deframer(max_bytes=10)
    deframer.feed(b"\x0b" + b"x" * 10)
    assert deframer.next() is None  # 10 bytes: still allowed
    deframer.feed(b"x")
    with pytest.raises(FrameTooLarge):
        deframer.next()
    whole = Deframer(max_bytes=10)
    whole.feed(b"\x0b" + b"y" * 11 + b"\x1c\r")
    with pytest.raises(FrameTooLarge):
        whole.next()
    exact = Deframer(max_bytes=10)
    exact.feed(b"\x0b" + b"z" * 10 + b"\x1c\r")
    assert exact.next() == b"z" * 10


def test_an_ack_frame() -> None:
    assert frame("MSH|^~\\&\rMSA|AA|1\r") == b"\x0bMSH|^~\\&\rMSA|AA|1\r\x1c\r"


# -- the ACK of each message ---------------------------------------------------------------------


class FakeProducer:
    """confluent-kafka's Producer as the listener uses it: produce, poll (delivery reports on the
    polling thread), flush. ``error``: what every delivery report says (None: delivered);
    ``hold``: reports wait until it is set."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.pending: list[Any] = []
        self.error: Any = None
        self.hold = threading.Event()
        self.hold.set()
        self.lock = threading.Lock()

    def produce(self, topic: str, on_delivery: Any, **record: Any) -> None:
        with self.lock:
            self.records.append((topic, record))
            self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        if not self.hold.wait(timeout):
            return 0
        with self.lock:
            pending, self.pending = self.pending, []
        for report in pending:
            report(self.error, None)
        if not pending:
            threading.Event().wait(min(timeout, 0.01))
        return len(pending)

    def flush(self, timeout: float) -> int:
        return len(self.pending)


class KafkaError:
    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text


def convert() -> Any:
    return partial(hl7_in_record, pseudonymizer=Pseudonymizer(SECRET))


def new_bridge(
    limits: Limits = DEFAULT_LIMITS, **options: Any
) -> tuple[MllpBridge, list[FakeProducer]]:
    made: list[FakeProducer] = []
    error = options.pop("error", None)

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config))
        made[-1].error = error
        return made[-1]

    bridge = MllpBridge(
        convert(), target="events", dead_letters="dlq", producer_config={}, limits=limits,
        err=io.StringIO(), clock=lambda: NOW, producer_factory=factory, **options,
    )  # fmt: skip
    return bridge, made


class Listener:
    """A bridge serving on an ephemeral port of 127.0.0.1 in a thread of its own."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, error: Any = None) -> None:
        self.bridge, self.made = new_bridge(limits, error=error)
        self.status: int | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        for _ in range(500):
            if "listening on" in self.log():
                break
            threading.Event().wait(0.01)
        self.port = int(self.log().split("listening on 127.0.0.1:")[1].split()[0])

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        # add_signal_handler needs the main thread: serve() here without signals.
        self.loop.add_signal_handler = lambda *a: None  # type: ignore[method-assign]
        self.loop.remove_signal_handler = lambda *a: True  # type: ignore[method-assign]
        self.status = self.loop.run_until_complete(self.bridge.serve("127.0.0.1", 0))

    @property
    def producer(self) -> FakeProducer:
        return self.made[0]

    def log(self) -> str:
        err = self.bridge.err
        assert isinstance(err, io.StringIO)
        return err.getvalue()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self) -> int:
        self.loop.call_soon_threadsafe(self.bridge.stop)
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert self.status is not None
        return self.status


def ack_of(sock: socket.socket) -> list[str]:
    """One ACK frame from the socket, as its segments' fields."""
    data = b""
    while not data.endswith(b"\x1c\r"):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    assert data.startswith(b"\x0b") and data.count(b"\x1c") == 1
    return data[1:-2].decode().split("\r")[:-1]


def msa(sock: socket.socket) -> list[str]:
    return ack_of(sock)[1].split("|")


@pytest.fixture
def listener() -> Any:
    running: list[Listener] = []

    def start(limits: Limits = DEFAULT_LIMITS, error: Any = None) -> Listener:
        running.append(Listener(limits, error))
        return running[-1]

    yield start
    for one in running:
        if one.thread.is_alive():
            one.stop()


def test_each_message_on_one_connection_gets_its_ack_after_its_record(listener: Any) -> None:
    server = listener()
    pz = Pseudonymizer(SECRET)
    names = ["adt-a01.hl7", "adt-a08.hl7", "malformed-no-evn.hl7", "adt-a03.hl7"]
    with server.connect() as sock:
        acks = []
        for name in names:
            sock.sendall(b"\x0b" + body(name) + b"\x1c\r")
            acks.append(ack_of(sock))
    controls = [hl7._Message(hl7._segments(body(n))).all("MSH")[0][10] for n in names]
    assert [a[1].split("|")[:3] for a in acks] == [
        ["MSA", "AA", controls[0]],
        ["MSA", "AA", controls[1]],  # an A08: valid, no event
        ["MSA", "AE", controls[2]],
        ["MSA", "AA", controls[3]],
    ]
    assert acks[2][1].split("|")[3] == "hl7-malformed: ADT A03 without an EVN segment"
    assert acks[0][0] == (
        "MSH|^~\\&|STEPCARE|GHH|EPICADT|GHH|20240406104000+0000||ACK^A01^ACK|"
        "ACKGHH20240405221512|P|2.5.1"
    )
    events = [hl7_in_record(body(n), pz) for n in ("adt-a01.hl7", "adt-a03.hl7")]
    records = server.producer.records
    assert [(t, r.get("key"), r.get("value"), r.get("timestamp")) for t, r in records] == [
        ("events", events[0].key, events[0].value, events[0].timestamp),  # type: ignore[union-attr]
        ("dlq", None, body("malformed-no-evn.hl7"), None),
        ("events", events[1].key, events[1].value, events[1].timestamp),  # type: ignore[union-attr]
    ]
    assert records[1][1]["headers"][:3] == [
        ("error.reason", b"hl7-malformed"),
        ("error.detail", b"ADT^A03 without an EVN segment"),
        ("source.protocol", b"mllp"),
    ]
    assert server.stop() == 0
    assert (
        server.log()
        .splitlines()[-1]
        .startswith(
            "bridge mllp-in: 4 received, 2 written to events, 1 dead-lettered (1 hl7-malformed), "
            "1 ignored (1 hl7-ignored-trigger ADT^A08), 0 refused (AR), 1 connections in "
        )
    )
    assert "MRN" not in server.log()


def test_no_ack_before_the_broker_answers_and_ar_when_it_refuses(listener: Any) -> None:
    server = listener(error=KafkaError("Local: Message timed out"))
    server.producer.hold.clear()  # delivery reports held back
    with server.connect() as sock:
        sock.sendall(b"\x0b" + body("adt-a01.hl7") + b"\x1c\r")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)
        assert len(server.producer.records) == 1
        sock.settimeout(10)
        server.producer.hold.set()
        assert msa(sock)[1:2] == ["AR"]
        # A refused message whose dead letter is not delivered: AR too, not AE.
        sock.sendall(b"\x0b" + body("malformed-no-evn.hl7") + b"\x1c\r")
        fields = msa(sock)
        assert fields[1] == "AR" and fields[3].startswith("not delivered to Kafka")
    assert server.stop() == 0
    assert "2 refused (AR) (2 Local: Message timed out)" in server.log()
    assert "0 dead-lettered" in server.log() and "0 written" in server.log()


def test_a_partial_frame_at_disconnect_is_dropped_and_the_next_client_is_served(
    listener: Any,
) -> None:
    server = listener()
    whole = body("adt-a01.hl7")
    with server.connect() as sock:
        sock.sendall(b"\x0b" + whole[: len(whole) // 2])
    with server.connect() as sock:
        sock.sendall(b"\x0b" + whole + b"\x1c\r")
        assert msa(sock)[1] == "AA"
    assert server.stop() == 0
    assert len(server.producer.records) == 1
    assert "2 connections (1 partial frame dropped)" in server.log()


def test_a_message_over_the_limit_gets_ar_and_its_connection_closes(listener: Any) -> None:
    server = listener(Limits(max_message_bytes=200))
    with server.connect() as sock:
        sock.sendall(b"\x0b" + body("adt-a01.hl7"))  # no end yet: refused as it grows
        fields = msa(sock)
        assert fields[:2] == ["MSA", "AR"] and fields[3] == "a message over 200 bytes"
        assert sock.recv(4096) == b""  # closed
    assert server.stop() == 0
    assert server.producer.records == []
    assert "1 refused (AR) (1 message too large)" in server.log()


def test_connections_beyond_the_limit_are_closed_and_idle_ones_time_out(listener: Any) -> None:
    server = listener(Limits(max_connections=1, idle_timeout=0.5))
    with server.connect() as first:
        first.sendall(b"\x0b" + body("adt-a01.hl7") + b"\x1c\r")
        assert msa(first)[1] == "AA"
        with server.connect() as second:
            assert second.recv(4096) == b""  # one connection at most: closed at once
        assert first.recv(4096) == b""  # then the first, quiet for 0.5 s, is closed
    assert server.stop() == 0
    assert "2 connections (1 idle, 1 over the connection limit)" in server.log()


def test_stop_finishes_the_message_in_hand_then_exits_0(listener: Any) -> None:
    server = listener()
    server.producer.hold.clear()
    with server.connect() as sock, server.connect() as quiet:
        sock.sendall(b"\x0b" + body("adt-a01.hl7") + b"\x1c\r")
        for _ in range(500):
            if server.producer.records:
                break
            threading.Event().wait(0.01)
        server.loop.call_soon_threadsafe(server.bridge.stop)
        threading.Event().wait(0.3)
        assert server.thread.is_alive()  # waiting for the broker's answer
        server.producer.hold.set()
        assert msa(sock)[1] == "AA"
        assert sock.recv(4096) == b"" and quiet.recv(4096) == b""
    server.thread.join(30)
    assert server.status == 0


def test_a_port_in_use_is_one_line_and_no_summary() -> None:
    from streams.errors import StepcareError

    bridge, _ = new_bridge()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StepcareError, match=f"cannot listen on 127.0.0.1:{port}: "):
            asyncio.run(bridge.serve("127.0.0.1", port))
    err = bridge.err
    assert isinstance(err, io.StringIO) and err.getvalue() == ""


@given(st.binary(max_size=300))
def test_every_message_gets_an_ack_frame_however_broken(tail: bytes) -> None:
    bridge, _ = new_bridge()
    for code in ("AA", "AE", "AR"):
        ack = bridge._ack(b"MSH" + tail, Answer(code, "why"))
        assert ack.startswith(b"\x0bMSH") and ack.endswith(b"\r\x1c\r")
        assert ack.count(b"\x1c") == 1  # the message's own separators, or |^~\&
        assert re.search(rb"\rMSA(.)" + code.encode() + rb"\1", ack, flags=re.DOTALL)


def test_a_message_that_breaks_the_ack_builder_still_gets_its_ae(listener: Any) -> None:
    server = listener()
    with server.connect() as sock:
        sock.sendall(b"\x0bMSH-----BEGIN CERTIFICATE-----\x1c\r")
        assert msa(sock)[:3] == ["MSA", "AE", ""]
        sock.sendall(b"\x0b" + body("adt-a01.hl7") + b"\x1c\r")
        assert msa(sock)[1] == "AA"
    assert server.stop() == 0
    assert [topic for topic, _ in server.producer.records] == ["dlq", "events"]
