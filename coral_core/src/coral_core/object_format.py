"""The bytes of one object: a header, codec parameters (JSON) and a payload::

    magic "CRL1" | kind u8 | codec u8 | params length u16 |
    raw size u64 | payload size u64 | xxh3-64 of params + payload

An object is stored under its id (``ab/cdef...``), and its id is the hash of
its logical content: a chunk's raw bytes, a tensor's dtype + shape + bytes, a
document's canonical JSON. Unpacking checks the header and the checksum, so a
damaged object raises :class:`CorruptObjectError`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import xxhash
import zstandard

from coral_core.compression import decompress_exact
from coral_core.errors import CorruptObjectError
from coral_core.planes import decode_planes

MAGIC = b"CRL1"
_HEADER = struct.Struct("<4sBBHQQQ")
HEADER_SIZE = _HEADER.size
_MIN_SAVING = 0.98  # keep the compressed form only when it saves at least 2%


class ObjectKind(IntEnum):
    """What an object holds."""

    CHUNK = 1
    TENSOR = 2
    TREE = 3
    COMMIT = 4
    TAG = 5


class Codec(IntEnum):
    """How a payload is encoded."""

    RAW = 0
    ZSTD = 1
    PLANES = 2  # byte planes, each zstd-compressed (planes.py)
    DELTA = 3  # a lossless delta against another chunk (delta.py); params name the base


@dataclass(frozen=True)
class ObjectHeader:
    """The fixed part of an object, readable without the payload."""

    kind: ObjectKind
    codec: Codec
    params_size: int
    raw_size: int
    payload_size: int
    checksum: int


def object_key(object_id: str) -> str:
    """Store key of an object: ``ab/cdef...`` (256 folders keep listings short)."""
    return f"{object_id[:2]}/{object_id[2:]}"


def pack_object(
    kind: ObjectKind,
    codec: Codec,
    payload: bytes | memoryview,
    raw_size: int,
    params: dict[str, Any] | None = None,
) -> bytes:
    """Frame an encoded payload as an object: header, parameters, payload."""
    params_bytes = json.dumps(params, sort_keys=True).encode() if params else b""
    checksum = xxhash.xxh3_64(params_bytes)
    checksum.update(payload)
    header = _HEADER.pack(
        MAGIC, kind, codec, len(params_bytes), raw_size, len(payload), checksum.intdigest()
    )
    return b"".join((header, params_bytes, payload))


def encode_object(kind: ObjectKind, raw: bytes | memoryview, level: int = 1) -> bytes:
    """Encode ``raw`` as an object, compressed with zstd when that saves space."""
    codec, payload = Codec.RAW, raw
    if len(raw) > 64:
        compressed = zstandard.ZstdCompressor(level=level).compress(raw)
        if len(compressed) < _MIN_SAVING * len(raw):
            codec, payload = Codec.ZSTD, compressed
    return pack_object(kind, codec, payload, len(raw))


def parse_header(object_id: str, blob: bytes | memoryview) -> ObjectHeader:
    """Read and sanity-check an object's header.

    Raises:
        CorruptObjectError: when the header is damaged or the object truncated.
    """
    if len(blob) < HEADER_SIZE:
        raise CorruptObjectError(
            f"object {object_id} is truncated ({len(blob)} bytes, header needs {HEADER_SIZE})"
        )
    magic, kind, codec, params_size, raw_size, payload_size, checksum = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptObjectError(f"object {object_id} has no Coral header (magic {magic!r})")
    try:
        header = ObjectHeader(
            ObjectKind(kind), Codec(codec), params_size, raw_size, payload_size, checksum
        )
    except ValueError:
        raise CorruptObjectError(
            f"object {object_id} has an unknown kind {kind} or codec {codec}; "
            "it is damaged or was written by a newer Coral"
        ) from None
    return header


def unpack_object(
    object_id: str, blob: bytes | memoryview
) -> tuple[ObjectHeader, dict[str, Any], memoryview]:
    """Check an object's header, size and checksum; return header, params and payload.

    Raises:
        CorruptObjectError: on a bad header, wrong size or checksum.
    """
    header = parse_header(object_id, blob)
    expected = HEADER_SIZE + header.params_size + header.payload_size
    if len(blob) != expected:
        raise CorruptObjectError(
            f"object {object_id} has {len(blob)} bytes, its header says {expected} (truncated?)"
        )
    body = memoryview(blob)[HEADER_SIZE:]
    if xxhash.xxh3_64_intdigest(body) != header.checksum:
        raise CorruptObjectError(f"object {object_id} fails its checksum (bit rot or tampering)")
    params: dict[str, Any] = {}
    if header.params_size:
        try:
            params = json.loads(bytes(body[: header.params_size]))
        except ValueError as exc:
            raise CorruptObjectError(
                f"object {object_id} has unreadable parameters: {exc}"
            ) from None
    return header, params, body[header.params_size :]


def decode_payload(object_id: str, header: ObjectHeader, payload: memoryview) -> bytes:
    """Decode a payload that needs no other object (every codec but DELTA).

    Raises:
        CorruptObjectError: when it does not decode to ``header.raw_size`` bytes.
    """
    if header.codec == Codec.ZSTD:
        try:
            raw = decompress_exact(payload, header.raw_size)
        except CorruptObjectError as exc:
            raise CorruptObjectError(f"object {object_id}: {exc}") from None
    elif header.codec == Codec.PLANES:
        try:
            raw = decode_planes(payload, header.raw_size)
        except CorruptObjectError as exc:
            raise CorruptObjectError(f"object {object_id}: {exc}") from None
    elif header.codec == Codec.RAW:
        raw = bytes(payload)
    else:
        raise CorruptObjectError(f"object {object_id}: codec {header.codec.name} needs its base")
    if len(raw) != header.raw_size:
        raise CorruptObjectError(
            f"object {object_id} decodes to {len(raw)} bytes, its header says {header.raw_size}"
        )
    return raw


def canonical_json(document: dict[str, Any]) -> bytes:
    """The one byte form of a document, so equal documents get equal ids."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
