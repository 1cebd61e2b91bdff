"""The two framings of stepcare's records on Kafka (DESIGN §3), told apart by their first byte.

* **single-object** (the default, no server): ``C3 01`` + the 8-byte fingerprint of the writer
  schema + the Avro body (``streams.formats.avro``).
* **registry** (Confluent wire format, what stock tooling reads): ``00`` + the writer schema's
  4-byte big-endian id in a schema registry + the same Avro body.

Both are always readable on input. A registry-framed record is read by turning it into the
single-object form of its writer schema: :class:`RegistryWriters` remembers, per schema id, the
fingerprint of the schema the registry gave for it (learned through
``streams.kafka.registry``, which does the HTTP), so decoding stays the one path of
``streams.formats.avro`` and its checks.
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from typing import Final, Literal

from streams.formats.avro import MARKER, CodecError, RecordCodec

SINGLE_OBJECT: Final = "single-object"
REGISTRY: Final = "registry"
WIRE_FORMATS = (SINGLE_OBJECT, REGISTRY)
WireFormat = Literal["single-object", "registry"]

REGISTRY_MAGIC = 0
REGISTRY_HEADER_SIZE = 5  # magic byte + 4-byte schema id
_SCHEMA_ID = struct.Struct(">I")
MAX_SCHEMA_ID = 2**31 - 1  # Confluent ids are Java ints

# Schema ids remembered per record type (good and bad): more are forgotten oldest first.
MAX_REMEMBERED_IDS = 1024
MAX_SCHEMA_TEXT = 1 << 20  # a writer schema larger than this is not read (bytes of its JSON)


def registry_header(schema_id: int) -> bytes:
    """The 5 bytes that start a registry-framed record written with schema ``schema_id``."""
    if not 0 <= schema_id <= MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} is not 0-{MAX_SCHEMA_ID}")
    return bytes((REGISTRY_MAGIC,)) + _SCHEMA_ID.pack(schema_id)


def registry_schema_id(data: object) -> int | None:
    """The schema id of a registry-framed value; None if the value is not registry-framed.

    ``CodecError("malformed-avro")`` if it starts like one (byte ``00``) but is too short."""
    if type(data) is not bytes or not data or data[0] != REGISTRY_MAGIC:
        return None
    if len(data) < REGISTRY_HEADER_SIZE:
        raise CodecError(
            "malformed-avro", f"registry framing: {len(data)} bytes, shorter than its 5-byte header"
        )
    schema_id: int = _SCHEMA_ID.unpack_from(data, 1)[0]
    return schema_id


class RegistryWriters:
    """What the schema ids of a registry mean for one record type (PatientEvent, Escalation).

    ``learn`` is told the schema text the registry gave for an id, ``refuse`` why an id cannot
    be used (unknown to the registry, another record type); ``single_object`` then rewrites a
    registry-framed value as the single-object value of the same writer schema. At most
    ``MAX_REMEMBERED_IDS`` ids are remembered (oldest forgotten first), so a stream of random ids
    cannot grow it.
    """

    def __init__(self, codec: RecordCodec, limit: int = MAX_REMEMBERED_IDS) -> None:
        self.codec = codec
        self.limit = limit
        # schema id -> the SOE header of its writer schema, or the reason it cannot be read
        self._ids: OrderedDict[int, bytes | str] = OrderedDict()

    def known(self, schema_id: int) -> bool:
        return schema_id in self._ids

    def learn(self, schema_id: int, schema_text: str) -> None:
        """Remember the writer schema of ``schema_id`` (its JSON text, as the registry gave it);
        an unusable one is remembered as refused, with the reason."""
        if len(schema_text) > MAX_SCHEMA_TEXT:
            self.refuse(schema_id, f"its schema is over {MAX_SCHEMA_TEXT} bytes")
            return
        try:
            schema = json.loads(schema_text)
        except (ValueError, RecursionError):
            self.refuse(schema_id, "its schema is not JSON")
            return
        try:
            found = self.codec.add_writer(schema)
        except CodecError as exc:
            self.refuse(schema_id, str(exc))
            return
        self._remember(schema_id, MARKER + found)

    def refuse(self, schema_id: int, reason: str) -> None:
        """Remember that ``schema_id`` cannot be read, and why (a dead letter's detail)."""
        self._remember(schema_id, reason)

    def _remember(self, schema_id: int, value: bytes | str) -> None:
        self._ids[schema_id] = value
        self._ids.move_to_end(schema_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def single_object(self, data: bytes, schema_id: int) -> bytes:
        """The registry-framed ``data`` (its ``schema_id`` already read) as single-object bytes.

        ``CodecError("unknown-schema")`` if the id was refused or was never learned."""
        header = self._ids.get(schema_id)
        if isinstance(header, bytes):
            return header + data[REGISTRY_HEADER_SIZE:]
        reason = header or "it was not looked up in the registry"
        raise CodecError("unknown-schema", f"registry schema id {schema_id}: {reason}")
