"""Self-describing, verified objects, and the database that stores them.

Every object is a 32-byte header, codec parameters (JSON) and a payload::

    magic "CRL1" | kind u8 | codec u8 | params length u16 |
    raw size u64 | payload size u64 | xxh3-64 of params + payload

An object is stored under its id, and its id is the hash of its logical
content: a chunk's raw bytes, a tensor's dtype + shape + bytes, a document's
canonical JSON. Reading checks the header checksum, decodes, and re-hashes, so
a damaged object raises :class:`CorruptObjectError` and never returns wrong
data. Large tensors are split into chunks of ``chunk_size`` bytes, so memory
stays bounded and unchanged regions are stored once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import xxhash
import zstandard

from coral_core.dtypes import numpy_dtype
from coral_core.errors import CorruptObjectError, MissingObjectError
from coral_core.hashing import chunk_id, document_id, is_object_id, tensor_hasher
from coral_core.store.base import WeightStore
from coral_core.tensor import WeightTensor

MAGIC = b"CRL1"
_HEADER = struct.Struct("<4sBBHQQQ")
HEADER_SIZE = _HEADER.size
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
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


@dataclass(frozen=True)
class ObjectHeader:
    """The fixed part of an object, readable without the payload."""

    kind: ObjectKind
    codec: Codec
    params_size: int
    raw_size: int
    payload_size: int
    checksum: int


@dataclass(frozen=True)
class TensorDescriptor:
    """A stored tensor: its dtype, shape and the chunks that hold its bytes."""

    tensor_id: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: tuple[str, ...]


@dataclass(frozen=True)
class WriteResult:
    """What writing a tensor cost."""

    tensor_id: str
    new_bytes: int  # bytes added to the store
    deduplicated: bool  # the whole tensor was already stored


def object_key(object_id: str) -> str:
    """Store key of an object: ``ab/cdef...`` (256 folders keep listings short)."""
    return f"{object_id[:2]}/{object_id[2:]}"


def encode_object(
    kind: ObjectKind, raw: bytes | memoryview, level: int = 1, params: dict[str, Any] | None = None
) -> bytes:
    """Encode ``raw`` as an object, compressed with zstd when that saves space."""
    codec, payload = Codec.RAW, raw
    if len(raw) > 64:
        compressed = zstandard.ZstdCompressor(level=level).compress(raw)
        if len(compressed) < _MIN_SAVING * len(raw):
            codec, payload = Codec.ZSTD, compressed
    params_bytes = json.dumps(params, sort_keys=True).encode() if params else b""
    checksum = xxhash.xxh3_64(params_bytes)
    checksum.update(payload)
    header = _HEADER.pack(
        MAGIC, kind, codec, len(params_bytes), len(raw), len(payload), checksum.intdigest()
    )
    return b"".join((header, params_bytes, payload))


def parse_header(object_id: str, blob: bytes) -> ObjectHeader:
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


def decode_object(object_id: str, blob: bytes) -> tuple[ObjectHeader, bytes]:
    """Check an encoded object and return its header and raw (decoded) bytes.

    Raises:
        CorruptObjectError: on a bad header, wrong size, checksum or payload.
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
    payload = body[header.params_size :]
    if header.codec == Codec.ZSTD:
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=header.raw_size)
        except zstandard.ZstdError as exc:
            raise CorruptObjectError(f"object {object_id} does not decompress: {exc}") from None
    else:
        raw = bytes(payload)
    if len(raw) != header.raw_size:
        raise CorruptObjectError(
            f"object {object_id} decodes to {len(raw)} bytes, its header says {header.raw_size}"
        )
    return header, raw


def canonical_json(document: dict[str, Any]) -> bytes:
    """The one byte form of a document, so equal documents get equal ids."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ObjectDatabase:
    """Content-addressed objects on top of any :class:`WeightStore`.

    Args:
        store: where the encoded objects go.
        chunk_size: tensors larger than this are split into chunks of this size.
        compression_level: zstd level for chunks and documents.
    """

    def __init__(
        self, store: WeightStore, chunk_size: int = DEFAULT_CHUNK_SIZE, compression_level: int = 1
    ) -> None:
        if chunk_size < 1024:
            raise ValueError(f"chunk_size must be at least 1024 bytes, got {chunk_size}")
        self.store = store
        self.chunk_size = chunk_size
        self.compression_level = compression_level

    # -- raw objects -------------------------------------------------------------

    def has(self, object_id: str) -> bool:
        return self.store.has(object_key(object_id))

    def delete(self, object_id: str) -> bool:
        return self.store.delete(object_key(object_id))

    def stored_size(self, object_id: str) -> int:
        return self.store.size(object_key(object_id))

    def iter_ids(self, prefix: str = "") -> Iterator[str]:
        """Yield the id of every object (whose id starts with ``prefix``)."""
        key_prefix = object_key(prefix) if len(prefix) >= 2 else prefix
        for key in self.store.list(key_prefix):
            object_id = key.replace("/", "", 1)
            if is_object_id(object_id):
                yield object_id

    def _put(self, object_id: str, kind: ObjectKind, raw: bytes | memoryview) -> int:
        """Store an object unless present; return the bytes written."""
        key = object_key(object_id)
        if self.store.has(key):
            return 0
        blob = encode_object(kind, raw, self.compression_level)
        return len(blob) if self.store.put_if_absent(key, blob) else 0

    def _get(self, object_id: str, kind: ObjectKind) -> bytes:
        try:
            blob = self.store.get(object_key(object_id))
        except MissingObjectError:
            raise MissingObjectError(
                f"object {object_id} ({kind.name.lower()}) is missing from the store; "
                "run `coral-ml verify` to see what it affects"
            ) from None
        header, raw = decode_object(object_id, blob)
        if header.kind != kind:
            raise CorruptObjectError(
                f"object {object_id} is a {header.kind.name.lower()}, expected {kind.name.lower()}"
            )
        return raw

    def kind_of(self, object_id: str) -> ObjectKind:
        """Read only the header of an object and return its kind."""
        key = object_key(object_id)
        try:
            head = self.store.get(key, byte_range=(0, HEADER_SIZE))
        except MissingObjectError:
            raise MissingObjectError(f"object {object_id} is not in the store") from None
        return parse_header(object_id, head).kind

    # -- documents ---------------------------------------------------------------

    def write_document(self, kind: ObjectKind, document: dict[str, Any]) -> str:
        """Store a JSON document (tree, commit, tag) and return its id."""
        raw = canonical_json(document)
        object_id = document_id(kind.name.lower(), raw)
        self._put(object_id, kind, raw)
        return object_id

    def read_document(self, kind: ObjectKind, object_id: str) -> dict[str, Any]:
        """Read and verify a JSON document.

        Raises:
            MissingObjectError: when it is not in the store.
            CorruptObjectError: when it is damaged or of another kind.
        """
        raw = self._get(object_id, kind)
        if document_id(kind.name.lower(), raw) != object_id:
            raise CorruptObjectError(f"object {object_id} does not match its id")
        try:
            document: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise CorruptObjectError(f"object {object_id} is not valid JSON: {exc}") from None
        return document

    # -- tensors -----------------------------------------------------------------

    def write_tensor(self, tensor: WeightTensor) -> WriteResult:
        """Store a tensor's chunks, then its descriptor; skip what is already stored.

        Chunks go first, so a stored descriptor always has its chunks.
        """
        tensor_id = tensor.compute_hash()
        if self.has(tensor_id):
            return WriteResult(tensor_id, 0, deduplicated=True)
        raw = tensor.raw_bytes()
        new_bytes = 0
        chunks = []
        for offset in range(0, len(raw), self.chunk_size):
            piece = raw[offset : offset + self.chunk_size]
            piece_id = chunk_id(piece)
            new_bytes += self._put(piece_id, ObjectKind.CHUNK, piece)
            chunks.append(piece_id)
        descriptor = {
            "dtype": tensor.metadata.dtype_name,
            "shape": list(tensor.shape),
            "nbytes": tensor.nbytes,
            "chunks": chunks,
        }
        new_bytes += self._put(tensor_id, ObjectKind.TENSOR, canonical_json(descriptor))
        return WriteResult(tensor_id, new_bytes, deduplicated=False)

    def tensor_descriptor(self, tensor_id: str) -> TensorDescriptor:
        """Read a tensor's descriptor (dtype, shape, chunk ids) without its data."""
        raw = self._get(tensor_id, ObjectKind.TENSOR)
        try:
            document = json.loads(raw)
            return TensorDescriptor(
                tensor_id=tensor_id,
                dtype=str(document["dtype"]),
                shape=tuple(int(d) for d in document["shape"]),
                nbytes=int(document["nbytes"]),
                chunks=tuple(str(c) for c in document["chunks"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObjectError(f"tensor object {tensor_id} is malformed: {exc}") from None

    def read_chunk(self, object_id: str) -> bytes:
        """Read and verify one chunk."""
        raw = self._get(object_id, ObjectKind.CHUNK)
        if chunk_id(raw) != object_id:
            raise CorruptObjectError(f"chunk {object_id} does not match its id")
        return raw

    def read_tensor(self, tensor_id: str) -> np.ndarray:
        """Rebuild a tensor's array, verifying every chunk and the whole content id.

        Raises:
            MissingObjectError: when an object it needs is gone.
            CorruptObjectError: when any of its objects is damaged.
        """
        descriptor = self.tensor_descriptor(tensor_id)
        buffer = np.empty(descriptor.nbytes, dtype=np.uint8)
        hasher = tensor_hasher(descriptor.dtype, descriptor.shape)
        offset = 0
        for piece_id in descriptor.chunks:
            piece = self.read_chunk(piece_id)
            end = offset + len(piece)
            if end > descriptor.nbytes:
                raise CorruptObjectError(f"tensor {tensor_id}: chunks hold more bytes than it has")
            buffer[offset:end] = np.frombuffer(piece, dtype=np.uint8)
            hasher.update(piece)
            offset = end
        if offset != descriptor.nbytes or hasher.hexdigest() != tensor_id:
            raise CorruptObjectError(f"tensor {tensor_id} does not match its id")
        dtype = numpy_dtype(descriptor.dtype)
        return buffer.view(dtype).reshape(descriptor.shape)

    def check_tensor(self, tensor_id: str) -> dict[str, str]:
        """Read a tensor's objects once each; return problems by object id (empty: sound)."""
        try:
            descriptor = self.tensor_descriptor(tensor_id)
        except (CorruptObjectError, MissingObjectError) as exc:
            return {tensor_id: str(exc)}
        problems: dict[str, str] = {}
        hasher = tensor_hasher(descriptor.dtype, descriptor.shape)
        total = 0
        for piece_id in descriptor.chunks:
            try:
                piece = self.read_chunk(piece_id)
            except (CorruptObjectError, MissingObjectError) as exc:
                problems[piece_id] = str(exc)
                continue
            hasher.update(piece)
            total += len(piece)
        if not problems and (total != descriptor.nbytes or hasher.hexdigest() != tensor_id):
            problems[tensor_id] = f"tensor {tensor_id} does not match its id"
        return problems

    # -- graph -------------------------------------------------------------------

    def references(self, object_id: str, kind: ObjectKind) -> list[tuple[str, ObjectKind]]:
        """Objects this one points to, with their kinds (a commit's tree and parents, ...)."""
        if kind == ObjectKind.CHUNK:
            return []
        if kind == ObjectKind.TENSOR:
            return [(c, ObjectKind.CHUNK) for c in self.tensor_descriptor(object_id).chunks]
        document = self.read_document(kind, object_id)
        if kind == ObjectKind.TREE:
            return [(e["tensor"], ObjectKind.TENSOR) for e in document["entries"].values()]
        if kind == ObjectKind.COMMIT:
            parents = [(p, ObjectKind.COMMIT) for p in document["parents"]]
            return [(document["tree"], ObjectKind.TREE), *parents]
        target = document["object"]  # TAG
        return [(target, self.kind_of(target))]
