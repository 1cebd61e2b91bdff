"""Dead letters: the record a worker or a bridge could not use, set aside with its reason.

One builder for the worker and the live bridges (DESIGN §2): the dead letter carries the
record's key, value and headers, behind the stepcare headers that say why and where it came from
(``error.reason``, ``error.detail``, ``source.topic``, ``source.partition``, ``source.offset``),
and always fits in one produce request, so that no bad record is ever lost because its copy
was too big to send.
"""

from __future__ import annotations

from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder

# A dead letter must fit in one produce request of the producer (faust's
# producer_max_request_size and librdkafka's message.max.bytes, 1,000,000 bytes by default),
# though the input topic can take bigger records (the broker's default is 1,048,588, and a topic
# can allow more): see dead_letter_record.
DEAD_LETTER_MARGIN = 1_000  # bytes kept below the producer's maximum request
# Header names stepcare writes on a dead letter; a producer's own headers in these name spaces
# are renamed ORIGINAL + name, so that a subscriber cannot be fooled by forged ones.
OWN_HEADER_PREFIXES = ("error.", "source.")
ORIGINAL = "original."


def error_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """stepcare's own headers of a dead letter: why, and where the record is in its topic."""
    return [
        ("error.reason", reason.encode()),
        ("error.detail", detail.encode()),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
    ]


def dead_letter_record(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
    own: list[tuple[str, bytes]],
    limit: int,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]:
    """The dead letter of a record: (key, value, headers), at most ``limit`` bytes as sent.

    Headers: ``own`` (stepcare's error.* and source.*, :func:`error_headers`) first, then
    ``error.cut`` if anything had to be cut, then the record's own headers in their order,
    those named error.* or source.* renamed ``original.<name>``. The key, the value and the
    record's headers are kept whole or not at all (a cut value would look like one the
    producer sent): when the whole does not fit, the biggest of them are left out, one at a
    time (the later first among equal sizes), until the rest fits, and ``error.cut`` says which
    and their sizes. The record stays in the input topic, at the offset the source.* headers
    give, until its retention ends. A dead letter with neither key nor value gets the empty key.
    """
    theirs = [(ORIGINAL + n if n.startswith(OWN_HEADER_PREFIXES) else n, v) for n, v in headers]
    if key is None and value is None:
        key = b""  # Kafka clients need one of them (the input can have neither)
    if _record_size(key, value, [*own, *theirs]) <= limit:
        return key, value, [*own, *theirs]
    # Each part's share of the record's size (aiokafka's estimate is a sum of these), its
    # position (-2: the key, -1: the value, n: header n) and its length in bytes.
    parts: list[tuple[int, int, int]] = []  # the candidates to leave out
    if key is not None:
        parts.append((_field_size(key) - 1, -2, len(key)))  # a null key still takes 1 byte
    if value is not None:
        parts.append((_field_size(value) - 1, -1, len(value)))
    for position, (name, data) in enumerate(theirs):
        size = _field_size(name.encode()) + _field_size(data)
        parts.append((size, position, len(name.encode()) + len(data or b"")))
    excess = _record_size(key, value, [*own, *theirs]) - limit + CUT_RESERVE
    dropped: list[tuple[int, int, int]] = []
    for part in sorted(parts, key=lambda p: (-p[0], -p[1])):
        if excess <= 0:
            break
        dropped.append(part)
        excess -= part[0]
    dropped.sort(key=lambda p: p[1])
    gone = {position for _, position, _ in dropped}
    key = None if -2 in gone else key
    value = None if -1 in gone else value
    kept = [header for position, header in enumerate(theirs) if position not in gone]
    cut = [f"{'key' if p == -2 else 'value'} ({n} bytes)" for _, p, n in dropped if p < 0]
    cut_headers = [(p + 1, n) for _, p, n in dropped if p >= 0]
    if cut_headers:
        size = sum(n for _, n in cut_headers)
        cut.append(f"{_positions([p for p, _ in cut_headers], len(theirs))} ({size} bytes)")
    out = [*own, ("error.cut", "; ".join(cut).encode()), *kept]
    if _record_size(key, value, out) > limit:  # never, by the arithmetic above; but be sure
        out = [*own, ("error.cut", b"key, value and headers")]
        key = value = None
    if key is None and value is None:
        key = b""
    return key, value, out


CUT_RESERVE = 400  # bytes for the error.cut header (at most ~MAX_RANGES ranges of positions)
MAX_RANGES = 8


def _positions(numbers: list[int], total: int) -> str:
    """``header 2 of 3``, ``headers 4-6000 of 6000``, ``headers 2, 5-9 of 10``, or a count."""
    ranges: list[list[int]] = []
    for n in numbers:
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    noun = "header" if len(numbers) == 1 else "headers"
    if len(ranges) > MAX_RANGES:
        return f"{len(numbers)} {noun} of {total}"
    listed = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
    return f"{noun} {listed} of {total}"


def _field_size(data: bytes | None) -> int:
    """Bytes a key, value, header name or header value takes in a Kafka record (v2)."""
    if data is None:
        return 1
    length = len(data)
    varint = 1
    zigzag = length << 1
    while zigzag >= 0x80:
        zigzag >>= 7
        varint += 1
    return varint + length


def _record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, Any]]) -> int:
    """What aiokafka's producer compares with its max_request_size for this record."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size
