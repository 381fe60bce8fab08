"""The object database: verified, content-addressed objects on any store.

Objects are laid out as :mod:`coral_core.object_format` says, and stored
under their ids, the hash of their logical content. Reading checks the
header checksum, decodes, and re-hashes, so a damaged object raises
:class:`CorruptObjectError` and never returns wrong data. Large tensors are
split into chunks of ``chunk_size`` bytes, so memory stays bounded and
unchanged regions are stored once; how each new chunk is stored (a delta, byte
planes or raw) is :class:`~coral_core.chunk_encoder.ChunkEncoder`'s choice.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np

from coral_core.chunk_encoder import RECENT_BYTES, ChunkEncoder, Recent
from coral_core.delta import (
    MAX_CHAIN_LENGTH,
    DeltaConfig,
    apply_delta,
    codec_of,
    kind_name,
    supports,
)
from coral_core.dtypes import numpy_dtype
from coral_core.errors import (
    CoralError,
    CorruptObjectError,
    MissingObjectError,
)
from coral_core.fingerprints import worth_fingerprint
from coral_core.hashing import chunk_id, document_id, is_object_id, tensor_hasher
from coral_core.object_format import (
    HEADER_SIZE,
    Codec,
    ObjectHeader,
    ObjectKind,
    canonical_json,
    decode_payload,
    encode_object,
    object_key,
    pack_object,
    parse_header,
    unpack_object,
)
from coral_core.planes import decode_planes_into
from coral_core.scratch import scratch
from coral_core.similarity import simhash
from coral_core.store.base import WeightStore, WriteBatch
from coral_core.tensor import WeightTensor

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
#: Bytes read past a chunk's header for its parameters (a delta's are ~300).
_PARAMS_PROBE = 4096
#: The largest chunk: a header claiming more is damage, not a reason to allocate.
MAX_CHUNK_SIZE = 1 << 30
_MAX_DECODE_DEPTH = MAX_CHAIN_LENGTH  # longer chains can only come from damaged parameters
_GRAPH_ENTRIES = 1 << 17  # documents and tensors whose references are remembered
MAX_TAG_CHAIN = 8  # tags of tags followed to their commit
_READ_SLOT = 3  # scratch slots of chunk objects read, one per link of a chain from here
T = TypeVar("T")


@dataclass(frozen=True)
class TensorDescriptor:
    """A stored tensor: its dtype, shape and the chunks that hold its bytes."""

    tensor_id: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: tuple[str, ...]
    chunk_size: int
    simhash: int | None = None  # for float tensors worth a delta (fingerprints.py)


@dataclass(frozen=True)
class WriteResult:
    """What writing a tensor cost."""

    tensor_id: str
    new_bytes: int  # bytes added to the store
    deduplicated: bool  # the whole tensor was already stored
    simhash: int | None = None  # set for a newly stored tensor worth a fingerprint
    lossy: dict[str, Any] | None = None  # lossy codec used: ``type``, ``max_abs_error``


class _LossyRebuild:
    """The content id of what a lossy write stores (the tensor as its deltas
    rebuild it), hashed chunk by chunk in order as the pool finishes them, so
    that no rebuild of the whole tensor is ever held: a chunk finished early
    waits only for those before it, which the pool has already started."""

    def __init__(self, dtype: str, shape: tuple[int, ...]) -> None:
        self._hasher = tensor_hasher(dtype, shape)
        self._next = 0
        self._waiting: dict[int, memoryview] = {}
        self._lock = threading.Lock()

    def add(self, index: int, rebuilt: memoryview) -> None:
        """Chunk ``index`` of the rebuild is done."""
        with self._lock:
            self._waiting[index] = rebuilt
            while self._next in self._waiting:
                self._hasher.update(self._waiting.pop(self._next))
                self._next += 1

    def tensor_id(self) -> str:
        """The id, once every chunk was added."""
        if self._waiting:
            raise RuntimeError("a chunk of the lossy rebuild was never added")
        return self._hasher.hexdigest()


@dataclass(frozen=True)
class _ChunkTask:
    """One chunk to store: its bytes, its delta base, and for a lossy write
    the tensor whose rebuild it is part of (with its index) and where it sits
    in the tensor's rows."""

    piece: memoryview
    dtype: str
    base: str | None
    lossy: tuple[_LossyRebuild, int] | None = None
    rows: tuple[int, int] = (1, 0)  # (row length, first element), for PER_AXIS_SCALED
    remember: bool = False  # keep a reference to ``piece`` as the next write's base


@dataclass(frozen=True)
class _StoredChunk:
    chunk_id: str
    new_bytes: int
    lossy_error: float | None = None  # set when stored as a lossy delta


@dataclass(frozen=True)
class _TensorPlan:
    tensor: WeightTensor
    tensor_id: str
    chunks: range | None  # None: already stored
    rebuilt: _LossyRebuild | None = None  # set for a lossy write
    #: Fingerprint it (fingerprints.py): stored without a reference to follow, so
    #: a later tensor without a namesake can find it. One with a reference (the
    #: next checkpoint of a run) is found through its namesakes instead.
    fingerprint: bool = True


def _missing(object_id: str, kind: ObjectKind) -> MissingObjectError:
    """A store's MissingObjectError, said for a user."""
    return MissingObjectError(
        f"object {object_id} ({kind.name.lower()}) is missing from the store; "
        "run `coral-ml verify` to see what it affects"
    )


def _carve(sizes: Sequence[int], align: int = 64) -> list[np.ndarray]:
    """Byte buffers of ``sizes``, aligned views into one allocation: a large
    allocation is backed by huge pages, and the page faults of fresh memory
    cost a checkout more than the copies do (each buffer keeps the whole
    allocation alive)."""
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + -(-size // align) * align)
    whole = np.empty(starts[-1] + align, dtype=np.uint8)
    shift = -whole.ctypes.data % align
    return [
        whole[shift + start : shift + start + size]
        for start, size in zip(starts, sizes, strict=False)
    ]


def _count(value: Any) -> int:
    """A size or dimension from a descriptor: a non-negative integer, nothing else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _check_layout(descriptor: TensorDescriptor, itemsize: int) -> None:
    """Refuse a descriptor whose sizes do not add up (before anything is allocated
    for it): its bytes, its shape and its chunks must agree."""
    expected = itemsize
    for dim in descriptor.shape:
        expected *= dim
    size, count = descriptor.chunk_size, len(descriptor.chunks)
    problem = None
    if descriptor.nbytes != expected:
        problem = f"claims {descriptor.nbytes} bytes for {descriptor.shape} of {descriptor.dtype}"
    elif not 0 < size <= MAX_CHUNK_SIZE:
        problem = f"claims chunks of {size} bytes"
    elif count != -(-descriptor.nbytes // size):
        problem = f"lists {count} chunks for {descriptor.nbytes} bytes in chunks of {size}"
    elif not all(is_object_id(chunk) for chunk in descriptor.chunks):
        problem = "lists a chunk that is not an id"
    if problem:
        raise CorruptObjectError(f"tensor object {descriptor.tensor_id} {problem}")


class ObjectDatabase:
    """Content-addressed objects on top of any :class:`WeightStore`.

    Args:
        store: where the encoded objects go.
        chunk_size: tensors larger than this are split into chunks of this size
            (a multiple of 16 bytes, so chunks hold whole elements).
        compression_level: zstd level for chunks and documents.
        delta_config: the lossless strategy for chunks stored as deltas, and
            ``max_chain_length``, the most deltas any chunk read decodes.
        threads: chunks encoded or decoded at once.
    """

    def __init__(
        self,
        store: WeightStore,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression_level: int = 1,
        delta_config: DeltaConfig | None = None,
        threads: int | None = None,
    ) -> None:
        if not 1024 <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % 16:
            raise ValueError(
                f"chunk_size must be a multiple of 16 from 1024 to {MAX_CHUNK_SIZE}; "
                f"got {chunk_size}"
            )
        self.store = store
        self.chunk_size = chunk_size
        self.compression_level = compression_level
        self.encoder = ChunkEncoder(
            self,
            delta_config or DeltaConfig(compression_level=compression_level),
            compression_level,
        )
        self.threads = threads or min(2, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._graph: dict[str, list[tuple[str, ObjectKind]]] = {}  # see references()

    def _map(self, function: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """Run ``function`` over ``items`` on the pool (results in order), or inline
        for one item. Every pool thread takes the next item as soon as it is free
        (items cost unevenly: a chunk at the end of a delta chain decodes several
        objects), and one pool task per thread keeps the overhead per item small
        for a model of many tiny tensors. An error stops the rest and is raised."""
        if len(items) <= 1 or self.threads == 1:
            return [function(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="coral-codec")
        results: list[Any] = [None] * len(items)
        indices = iter(range(len(items)))
        take = threading.Lock()
        failed = threading.Event()

        def work() -> None:
            while not failed.is_set():
                with take:
                    index = next(indices, None)
                if index is None:
                    return
                try:
                    results[index] = function(items[index])
                except BaseException:
                    failed.set()
                    raise

        workers = [self._pool.submit(work) for _ in range(min(self.threads, len(items)))]
        for worker in workers:
            worker.result()
        return results

    @property
    def delta_config(self) -> DeltaConfig:
        """The delta strategy of new chunks, and the longest chain a read decodes."""
        return self.encoder.delta_config

    @delta_config.setter
    def delta_config(self, config: DeltaConfig) -> None:
        self.encoder.delta_config = config

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

    def _put(
        self,
        object_id: str,
        kind: ObjectKind,
        raw: bytes | memoryview,
        batch: WriteBatch | None = None,
    ) -> int:
        """Store a document unless present; return the bytes written."""
        key = object_key(object_id)
        if self.store.has(key):
            return 0
        blob = encode_object(kind, raw, self.compression_level)
        return len(blob) if (batch or self.store).put_if_absent(key, blob) else 0

    def _read(
        self,
        object_id: str,
        kind: ObjectKind,
        slot: int | None = None,
        blob: bytes | memoryview | None = None,
    ) -> tuple[ObjectHeader, dict[str, Any], memoryview]:
        """Read and check an object (``blob`` when the caller has read it); with
        ``slot``, into that scratch buffer of this thread when the store can (no
        fresh memory for every chunk read: its page faults cost more than the
        read), valid until the slot's next use."""
        read_into = getattr(self.store, "read_into", None)
        if blob is None and read_into is not None and slot is not None:
            allocate = partial(scratch, slot, dtype=np.uint8)
            try:
                blob = read_into(object_key(object_id), allocate)
            except MissingObjectError:
                raise _missing(object_id, kind) from None
        elif blob is None:
            blob = self._fetch(object_id, kind)
        header, params, payload = unpack_object(object_id, blob)
        if header.kind != kind:
            raise CorruptObjectError(
                f"object {object_id} is a {header.kind.name.lower()}, expected {kind.name.lower()}"
            )
        return header, params, payload

    def _fetch(
        self, object_id: str, kind: ObjectKind, byte_range: tuple[int, int] | None = None
    ) -> bytes:
        try:
            return self.store.get(object_key(object_id), byte_range)
        except MissingObjectError:
            raise _missing(object_id, kind) from None

    def _get(self, object_id: str, kind: ObjectKind, blob: bytes | None = None) -> bytes:
        header, _, payload = self._read(object_id, kind, blob=blob)
        return decode_payload(object_id, header, payload)

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

    def read_document(
        self, kind: ObjectKind, object_id: str, blob: bytes | None = None
    ) -> dict[str, Any]:
        """Read and verify a JSON document (from ``blob``, the object as stored,
        when the caller has read it).

        Raises:
            MissingObjectError: when it is not in the store.
            CorruptObjectError: when it is damaged or of another kind.
        """
        raw = self._get(object_id, kind, blob)
        if document_id(kind.name.lower(), raw) != object_id:
            raise CorruptObjectError(f"object {object_id} does not match its id")
        try:
            document: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise CorruptObjectError(f"object {object_id} is not valid JSON: {exc}") from None
        return document

    # -- tensors -----------------------------------------------------------------

    def write_tensor(self, tensor: WeightTensor, reference: str | None = None) -> WriteResult:
        """Store one tensor; see :meth:`write_tensors`."""
        return self.write_tensors([(tensor, reference)])[0]

    def write_tensors(self, items: Sequence[tuple[WeightTensor, str | None]]) -> list[WriteResult]:
        """Store tensors: their chunks first (all on the thread pool), then descriptors.

        Each new chunk is stored as the smallest of a lossless delta against
        the same chunk of its reference (a tensor id, typically the same-named
        tensor of the parent commit), its byte planes, and its raw bytes.
        Tensors and chunks already stored are skipped. A stored descriptor
        always has its chunks.

        With a lossy ``delta_config``, a float tensor that has a reference is
        stored as lossy deltas instead: what is stored (and gets the content
        id) is the tensor as the deltas rebuild it, and its result says how
        far that is from the input (``lossy``).
        """
        plans: list[_TensorPlan] = []
        tasks: list[_ChunkTask] = []
        kind = self.delta_config.delta_type
        lossy_kind = None if codec_of(kind).lossless or not self.delta_config.enabled else kind
        budget = RECENT_BYTES if lossy_kind is None else 0
        for tensor, reference in items:
            tensor_id = tensor.compute_hash()
            if self.has(tensor_id):
                plans.append(_TensorPlan(tensor, tensor_id, None))
                continue
            raw = tensor.raw_bytes()
            dtype = tensor.metadata.dtype_name
            offsets = range(0, len(raw), self.chunk_size)
            bases = self.aligned_chunks(reference, dtype, len(raw), len(offsets))
            rebuilt = None
            if lossy_kind is not None and bases and supports(lossy_kind, dtype):
                rebuilt = _LossyRebuild(dtype, tensor.shape)
            shape = tensor.shape
            row_length = tensor.size // shape[0] if len(shape) > 1 and tensor.size else 1
            remember = len(raw) <= budget
            budget -= len(raw) if remember else 0
            first = len(tasks)
            for index, offset in enumerate(offsets):
                piece = raw[offset : offset + self.chunk_size]
                lossy = None if rebuilt is None else (rebuilt, index)
                rows = (row_length, offset // tensor.metadata.dtype.itemsize)
                base = bases[index] if bases else None
                tasks.append(_ChunkTask(piece, dtype, base, lossy, rows, remember))
            plans.append(
                _TensorPlan(tensor, tensor_id, range(first, len(tasks)), rebuilt, not bases)
            )
        # Every chunk is durable and visible before a descriptor naming it is: a
        # barrier in one batch where the store orders a batch, two batches otherwise.
        recent: dict[str, Recent] = {}
        with self.store.write_batch() as batch:
            stored = self._map(partial(self._store_chunk, batch, recent), tasks)
            if batch.ordered:
                batch.barrier()
                results = self._store_descriptors(batch, plans, stored)
        if not batch.ordered:
            with self.store.write_batch() as batch:
                results = self._store_descriptors(batch, plans, stored)
        self.encoder.recent = recent
        return results

    def _store_descriptors(
        self, batch: WriteBatch, plans: list[_TensorPlan], stored: list[_StoredChunk]
    ) -> list[WriteResult]:
        results = []
        for plan in plans:
            if plan.chunks is None:
                results.append(WriteResult(plan.tensor_id, 0, deduplicated=True))
                continue
            results.append(self._store_descriptor(batch, plan, [stored[i] for i in plan.chunks]))
        return results

    def _store_descriptor(
        self, batch: WriteBatch, plan: _TensorPlan, chunks: list[_StoredChunk]
    ) -> WriteResult:
        tensor, tensor_id = plan.tensor, plan.tensor_id
        dtype = tensor.metadata.dtype_name
        lossy = None
        if plan.rebuilt is not None and any(c.lossy_error is not None for c in chunks):
            tensor_id = plan.rebuilt.tensor_id()  # what is stored is the rebuild
            error = max(c.lossy_error or 0.0 for c in chunks)
            lossy = {"type": kind_name(self.delta_config.delta_type), "max_abs_error": error}
        descriptor: dict[str, Any] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "nbytes": tensor.nbytes,
            "chunk_size": self.chunk_size,
            "chunks": [c.chunk_id for c in chunks],
        }
        fingerprint = None
        if plan.fingerprint and worth_fingerprint(dtype, tensor.size):
            fingerprint = simhash(tensor)  # of a lossy rebuild's input: close enough for a hint
            descriptor["simhash"] = f"{fingerprint:016x}"
        written = sum(c.new_bytes for c in chunks)
        written += self._put(tensor_id, ObjectKind.TENSOR, canonical_json(descriptor), batch)
        return WriteResult(tensor_id, written, False, fingerprint, lossy)

    def _store_chunk(
        self, batch: WriteBatch, recent: dict[str, Recent], task: _ChunkTask
    ) -> _StoredChunk:
        """Encode and store one chunk unless present; remember it in ``recent``."""
        if task.lossy is not None:
            rebuild, index = task.lossy
            stored = self._store_lossy_chunk(batch, task)
            if stored is not None:
                rebuild.add(index, stored[1].data)
                return stored[0]
            rebuild.add(index, task.piece)  # kept exactly
        piece_id = chunk_id(task.piece)
        key = object_key(piece_id)
        if self.store.has(key):
            return _StoredChunk(piece_id, 0)
        base = task.base if task.base != piece_id else None
        encoded = self.encoder.encode(task.piece, task.dtype, base)
        if not batch.put_if_absent(key, encoded.blob):
            return _StoredChunk(piece_id, 0)
        if task.remember and task.lossy is None:  # (what it stores is ``piece`` exactly)
            recent[piece_id] = encoded.recent(task.piece, piece_id)
        return _StoredChunk(piece_id, len(encoded.blob))

    def _store_lossy_chunk(
        self, batch: WriteBatch, task: _ChunkTask
    ) -> tuple[_StoredChunk, np.ndarray] | None:
        """Store a chunk as a lossy delta against its base; returns it with its
        rebuilt bytes, or None when it has to be kept exactly."""
        assert task.base is not None
        lossy = self.encoder.encode_lossy(task.piece, task.dtype, task.base, task.rows)
        if lossy is None:
            return None
        piece_id = chunk_id(lossy.rebuilt.data)
        key = object_key(piece_id)
        if self.store.has(key):
            return _StoredChunk(piece_id, 0, lossy.max_abs_error), lossy.rebuilt
        blob = pack_object(
            ObjectKind.CHUNK, Codec.DELTA, lossy.payload, len(task.piece), lossy.params
        )
        written = len(blob) if batch.put_if_absent(key, blob) else 0
        return _StoredChunk(piece_id, written, lossy.max_abs_error), lossy.rebuilt

    def aligned_chunks(
        self, reference: str | None, dtype: str, nbytes: int, count: int
    ) -> list[str] | None:
        """The chunks of ``reference`` when they line up with the new tensor's."""
        if reference is None:
            return None
        try:
            descriptor = self.tensor_descriptor(reference)
        except CoralError:
            return None  # a reference is only a hint
        if descriptor.dtype != dtype or descriptor.nbytes != nbytes:
            return None
        if len(descriptor.chunks) != count or descriptor.chunk_size != self.chunk_size:
            return None
        return list(descriptor.chunks)

    def encode_chunk(self, piece: memoryview, dtype: str, base_id: str | None) -> bytes:
        """The object of a new chunk: the smallest of a lossless delta against
        ``base_id``, byte planes and raw bytes (see :class:`ChunkEncoder`)."""
        return self.encoder.encode(piece, dtype, base_id).blob

    def read_base(self, object_id: str) -> tuple[ObjectHeader, dict[str, Any], memoryview]:
        """A chunk's object, checked, in a scratch buffer of this thread (a delta base)."""
        return self._read(object_id, ObjectKind.CHUNK, _READ_SLOT)

    def decode_chunk(
        self, object_id: str, out: np.ndarray, read: tuple[ObjectHeader, dict[str, Any], memoryview]
    ) -> np.ndarray:
        """Chunk ``object_id`` decoded into ``out`` from its object ``read``, verified."""
        return self._decode_chunk(object_id, out, read=read)

    def chunk_params(
        self, object_id: str, head: bytes | None = None
    ) -> tuple[Codec, dict[str, Any]]:
        """A chunk's codec and parameters, read without its payload (from
        ``head``, the object's first bytes, when the caller has read them): one
        read of its first KiBs, which hold the parameters of almost any chunk."""
        if head is None:
            head = self._fetch(object_id, ObjectKind.CHUNK, (0, HEADER_SIZE + _PARAMS_PROBE))
        header = parse_header(object_id, head)
        if header.codec != Codec.DELTA:
            return header.codec, {}
        end = HEADER_SIZE + header.params_size
        raw = head[HEADER_SIZE:end]
        if len(raw) < header.params_size:
            raw = self._fetch(object_id, ObjectKind.CHUNK, (HEADER_SIZE, end))
        try:
            params: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise CorruptObjectError(
                f"chunk {object_id} has unreadable parameters: {exc}"
            ) from None
        return header.codec, params

    def tensor_descriptor(self, tensor_id: str, blob: bytes | None = None) -> TensorDescriptor:
        """Read a tensor's descriptor (dtype, shape, chunk ids) without its data
        (from ``blob``, the object as stored, when the caller has read it)."""
        raw = self._get(tensor_id, ObjectKind.TENSOR, blob)
        try:
            document = json.loads(raw)
            descriptor = TensorDescriptor(
                tensor_id=tensor_id,
                dtype=str(document["dtype"]),
                shape=tuple(_count(d) for d in document["shape"]),
                nbytes=_count(document["nbytes"]),
                chunks=tuple(str(c) for c in document["chunks"]),
                chunk_size=_count(document["chunk_size"]),
                simhash=int(document["simhash"], 16) if "simhash" in document else None,
            )
            itemsize = numpy_dtype(descriptor.dtype).itemsize
        except (ValueError, KeyError, TypeError, CoralError) as exc:
            raise CorruptObjectError(f"tensor object {tensor_id} is malformed: {exc}") from None
        _check_layout(descriptor, itemsize)
        return descriptor

    def read_chunk(self, object_id: str) -> bytes:
        """Read one chunk (decoding its delta chain) and verify it against its id."""
        return self._decode_chunk(object_id).tobytes()

    def _decode_chunk(
        self,
        object_id: str,
        out: np.ndarray | None = None,
        depth: int = 0,
        verify: bool = True,
        read: tuple[ObjectHeader, dict[str, Any], memoryview] | None = None,
    ) -> np.ndarray:
        """Decode a chunk into ``out`` (uint8, exactly its size; allocated when None),
        its delta base first, in place; verify the result against its id unless
        ``verify`` is False (for a caller that checks the whole tensor's id
        instead; every object's checksum is checked either way) and return
        ``out``. ``read`` is the chunk's object when the caller has read it."""
        header, params, payload = read or self._read(
            object_id, ObjectKind.CHUNK, _READ_SLOT + depth
        )
        if out is None:
            if header.raw_size > MAX_CHUNK_SIZE:
                raise CorruptObjectError(f"chunk {object_id} claims {header.raw_size} bytes")
            out = np.empty(header.raw_size, dtype=np.uint8)
        elif header.raw_size != out.nbytes:
            raise CorruptObjectError(
                f"chunk {object_id} holds {header.raw_size} bytes, expected {out.nbytes}"
            )
        if header.codec == Codec.DELTA:
            if depth > _MAX_DECODE_DEPTH:
                raise CorruptObjectError(f"chunk {object_id}: delta chain loops or is too long")
            try:
                target = out.view(numpy_dtype(params["dtype"]))
                kind = codec_of(str(params["type"])).name
                meta = params.get("meta", {})
                base = str(params["base"])
            except (KeyError, ValueError, TypeError) as exc:
                raise CorruptObjectError(
                    f"chunk {object_id} has bad delta parameters: {exc}"
                ) from None
            # A base is not checked on its own: ``out`` is checked once it is whole.
            self._decode_chunk(base, out, depth + 1, verify=False)
            try:
                apply_delta(kind, payload, meta, target)
            except CorruptObjectError as exc:
                raise CorruptObjectError(f"chunk {object_id}: {exc}") from None
        elif header.codec == Codec.PLANES:
            try:
                decode_planes_into(payload, out)
            except CorruptObjectError as exc:
                raise CorruptObjectError(f"object {object_id}: {exc}") from None
        else:
            out[:] = np.frombuffer(decode_payload(object_id, header, payload), dtype=np.uint8)
        if verify and chunk_id(out.data) != object_id:
            raise CorruptObjectError(f"chunk {object_id} does not match its id")
        return out

    def read_tensor(self, tensor_id: str) -> np.ndarray:
        """Rebuild one tensor; see :meth:`read_tensors`."""
        return self.read_tensors([tensor_id])[0]

    def read_tensors(self, tensor_ids: Sequence[str]) -> list[np.ndarray]:
        """Rebuild tensors, decoding all their chunks on the thread pool straight
        into the results, and verify each against its content id (which covers
        every byte, so the chunks are not hashed once more on their own). The
        arrays are views into one allocation, which lives as long as any of them.

        Raises:
            MissingObjectError: when an object they need is gone.
            CorruptObjectError: when any of their objects is damaged.
        """
        descriptors = self._map(self.tensor_descriptor, tensor_ids)
        for descriptor in descriptors:
            size, count = descriptor.chunk_size, len(descriptor.chunks)
            if descriptor.nbytes and (size <= 0 or count != -(-descriptor.nbytes // size)):
                raise CorruptObjectError(f"tensor {descriptor.tensor_id} does not match its id")
            if not descriptor.nbytes and count:
                raise CorruptObjectError(f"tensor {descriptor.tensor_id} does not match its id")
        buffers = _carve([d.nbytes for d in descriptors])
        tasks = [(t, i) for t, d in enumerate(descriptors) for i in range(len(d.chunks))]

        def verify(which: int) -> None:
            descriptor = descriptors[which]
            hasher = tensor_hasher(descriptor.dtype, descriptor.shape)
            hasher.update(buffers[which].data)
            if hasher.hexdigest() != descriptor.tensor_id:
                raise CorruptObjectError(f"tensor {descriptor.tensor_id} does not match its id")

        def load(task: tuple[int, int]) -> None:
            which, index = task
            descriptor, buffer = descriptors[which], buffers[which]
            start = index * descriptor.chunk_size
            piece = buffer[start : start + descriptor.chunk_size]
            self._decode_chunk(descriptor.chunks[index], piece, verify=False)
            if len(descriptor.chunks) == 1:
                verify(which)  # on the pool, while it is in the cache

        self._map(load, tasks)
        self._map(verify, [t for t, d in enumerate(descriptors) if len(d.chunks) != 1])
        return [
            buffer.view(numpy_dtype(d.dtype)).reshape(d.shape)
            for d, buffer in zip(descriptors, buffers, strict=True)
        ]

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
                piece = self._decode_chunk(piece_id)
            except (CorruptObjectError, MissingObjectError) as exc:
                problems[piece_id] = str(exc)
                continue
            hasher.update(piece.data)
            total += len(piece)
        if not problems and (total != descriptor.nbytes or hasher.hexdigest() != tensor_id):
            problems[tensor_id] = f"tensor {tensor_id} does not match its id"
        return problems

    def check_object(self, object_id: str) -> None:
        """Read and verify any object by itself (chunks with their delta bases).

        Raises:
            MissingObjectError, CorruptObjectError: naming the object.
        """
        kind = self.kind_of(object_id)
        if kind == ObjectKind.CHUNK:
            self._decode_chunk(object_id)
        elif kind == ObjectKind.TENSOR:
            self.tensor_descriptor(object_id)
        else:
            self.read_document(kind, object_id)

    # -- graph -------------------------------------------------------------------

    def peel(self, object_id: str) -> str:
        """Follow annotated tags (a tag of a tag, ...) to what they name, at most
        :data:`MAX_TAG_CHAIN` deep.

        Raises:
            CorruptObjectError: for a longer chain (a loop can only be forged).
        """
        given = object_id
        for _ in range(MAX_TAG_CHAIN):
            try:
                kind = self.kind_of(object_id)
            except CoralError:
                if object_id == given:
                    raise
                return object_id  # the tag is sound; whoever reads its target hears why
            if kind != ObjectKind.TAG:
                return object_id
            target = self.read_document(ObjectKind.TAG, object_id).get("object")
            if not isinstance(target, str) or not is_object_id(target):
                raise CorruptObjectError(f"tag {object_id} names {target!r}, not an object id")
            object_id = target
        raise CorruptObjectError(f"tag {object_id}: tags of tags deeper than {MAX_TAG_CHAIN}")

    def references(
        self, object_id: str, kind: ObjectKind, blob: bytes | None = None
    ) -> list[tuple[str, ObjectKind]]:
        """Objects this one points to, with their kinds (a commit's tree and
        parents, ...); from ``blob`` when the caller has read the object (a
        chunk's first bytes will do).

        What documents and tensors reference is remembered (they are never
        rewritten: a walk of history that gc, retention and pushes repeat reads
        each of them once per process); a chunk's base is read each time, as
        ``repack`` may encode a chunk again.

        Raises:
            MissingObjectError, CorruptObjectError: also for an object whose
                parameters or document do not name valid object ids.
        """
        known = self._graph.get(object_id)
        if known is not None:
            return list(known)
        try:
            found = self._references(object_id, kind, blob)
        except (KeyError, TypeError, AttributeError) as exc:
            raise CorruptObjectError(f"object {object_id} is malformed: {exc!r}") from None
        if not all(isinstance(child, str) and is_object_id(child) for child, _ in found):
            raise CorruptObjectError(f"object {object_id} names something that is not an id")
        if kind != ObjectKind.CHUNK:
            if len(self._graph) >= _GRAPH_ENTRIES:
                self._graph.clear()
            self._graph[object_id] = found
        return list(found)

    def references_read_once(
        self, object_id: str, kind: ObjectKind, keep_below: int = 64 << 10
    ) -> tuple[list[tuple[str, ObjectKind]], bytes | None]:
        """:meth:`references` from a single read of the object: a document
        whole, a chunk's first ``keep_below`` bytes (which hold its parameters,
        and all of a chunk that small). Returns the object too when that read
        got all of it, so that a copy need not read it again: on a remote,
        every read is a request."""
        window = None if kind != ObjectKind.CHUNK else (0, max(keep_below, _PARAMS_PROBE))
        blob = self._fetch(object_id, kind, window)
        found = self.references(object_id, kind, blob)
        header = parse_header(object_id, blob)
        whole = len(blob) == HEADER_SIZE + header.params_size + header.payload_size
        return found, blob if whole else None

    def _references(
        self, object_id: str, kind: ObjectKind, blob: bytes | None
    ) -> list[tuple[str, ObjectKind]]:
        if kind == ObjectKind.CHUNK:
            codec, params = self.chunk_params(object_id, blob)
            return [(str(params["base"]), ObjectKind.CHUNK)] if codec == Codec.DELTA else []
        if kind == ObjectKind.TENSOR:
            return [(c, ObjectKind.CHUNK) for c in self.tensor_descriptor(object_id, blob).chunks]
        document = self.read_document(kind, object_id, blob)
        if kind == ObjectKind.TREE:
            return [(e["tensor"], ObjectKind.TENSOR) for e in document["entries"].values()]
        if kind == ObjectKind.COMMIT:
            trees = [document["tree"], (document.get("training") or {}).get("tree")]
            parents = [(p, ObjectKind.COMMIT) for p in document["parents"]]
            return [*((t, ObjectKind.TREE) for t in trees if t), *parents]
        target = document["object"]  # TAG
        return [(target, self.kind_of(target))]
