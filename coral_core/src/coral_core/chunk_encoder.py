"""How a new chunk is stored: the smallest of a delta, byte planes and raw bytes.

:class:`ChunkEncoder` owns the choice and what it needs: the delta base of a
chunk (the same chunk of the reference tensor, or the keyframe under it when
the chain is long enough), the chunks of the last write still in the caller's
memory (found again without decoding), and the tuning constants that weigh a
delta against a keyframe. The object database hands it each chunk to store
and reads delta bases for it; the codecs themselves are in
:mod:`coral_core.codecs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from coral_core.delta import DeltaConfig, DeltaType, apply_delta, codec_of, encode_arrays, kind_name
from coral_core.delta import supports as codec_supports
from coral_core.dtypes import numpy_dtype
from coral_core.errors import CoralError, TensorMismatchError
from coral_core.hashing import chunk_id
from coral_core.object_format import HEADER_SIZE, Codec, ObjectHeader, ObjectKind, pack_object
from coral_core.planes import encode_planes
from coral_core.scratch import scratch

_DELTA_GOOD_ENOUGH = 0.6  # a delta this small is kept without trying the standalone codec
#: A delta this much smaller than its keyframe base (relative sizes) is kept
#: without compressing the chunk's byte planes too: they would come out about
#: as large as that keyframe's.
_PLANES_MARGIN = 0.95
#: Each link of a delta chain costs a read one more decode, so a delta at depth
#: d is kept only when it is at most 1 - d * _LINK_COST of the chunk's
#: standalone size: deeper links must save more, and a delta that saves little
#: (training from scratch moves every weight) loses to a keyframe, which also
#: starts a fresh, shorter chain. On benchmarks/storage.py this cuts the
#: from-scratch run's newest checkout from 5.9x to 3.0x of load_file for 2%
#: more bytes; fine-tune deltas, half the standalone size, are unaffected.
_LINK_COST = 0.075
_MIN_WORTH = 0.1  # however deep: a delta a tenth of the standalone size always pays
#: Bytes of the caller's arrays the last write keeps a reference to, so that
#: the next write finds its delta bases without decoding them (a training run
#: commits fresh copies of its weights; arrays changed in place since are
#: noticed by their hash and decoded as usual). Bounded, and no copy is made.
RECENT_BYTES = 256 << 20
_BASE_SLOT = 2  # scratch slot of delta bases (the delta codecs use 0 and 1)

ChunkRead = tuple[ObjectHeader, dict[str, Any], memoryview]


class ChunkSource(Protocol):
    """Where delta bases are read from (the object database)."""

    def has(self, object_id: str) -> bool: ...

    def read_base(self, object_id: str) -> ChunkRead:
        """The object of a chunk, checked, in a scratch buffer of this thread."""
        ...

    def decode_chunk(self, object_id: str, out: np.ndarray, read: ChunkRead) -> np.ndarray:
        """Chunk ``object_id`` decoded into ``out`` from its object ``read``."""
        ...


@dataclass(frozen=True)
class DeltaBase:
    """A chunk a delta is made against, with its raw bytes and chain position."""

    chunk_id: str
    raw: np.ndarray  # uint8, in this thread's scratch: use before the next base
    depth: int  # deltas decoded to rebuild it (0 for a keyframe)
    root: str  # the keyframe at the bottom of its chain
    stored: float | None = None  # stored / raw size, when it is a keyframe itself
    borrowed: bool = False  # ``raw`` is a caller's array: check it again after use


@dataclass(frozen=True)
class Recent:
    """A chunk the last write stored, still in the caller's memory: the raw
    bytes of the next write's delta base without decoding anything."""

    piece: memoryview
    depth: int
    root: str
    stored: float | None


@dataclass(frozen=True)
class EncodedChunk:
    """A chunk's object, the depth of its delta chain and its keyframe (None: it is one)."""

    blob: bytes
    depth: int
    root: str | None

    def recent(self, piece: memoryview, piece_id: str) -> Recent:
        """How the next write finds this chunk as a base in the caller's memory."""
        ratio = len(self.blob) / len(piece) if self.depth == 0 and piece else None
        return Recent(piece, self.depth, self.root or piece_id, ratio)


@dataclass(frozen=True)
class LossyChunk:
    """A chunk as a lossy delta: its object's payload and parameters, and the
    bytes it decodes to (what is stored, and gets the content id)."""

    payload: bytes
    params: dict[str, Any]
    rebuilt: np.ndarray
    max_abs_error: float


class ChunkEncoder:
    """Chooses how each new chunk is stored (see the module).

    Args:
        source: where delta bases are read from.
        delta_config: the delta strategy and the longest chain.
        compression_level: zstd level of the byte planes.
    """

    def __init__(self, source: ChunkSource, delta_config: DeltaConfig, compression_level: int):
        self.source = source
        self.delta_config = delta_config
        self.compression_level = compression_level
        #: The chunks of the last write, by id (a write swaps in a new table).
        self.recent: dict[str, Recent] = {}

    def encode(
        self, piece: memoryview, dtype: str, base_id: str | None, borrow: bool = True
    ) -> EncodedChunk:
        """The smallest of: a lossless delta against ``base_id``, byte planes, raw bytes."""
        np_dtype = numpy_dtype(dtype)
        Candidate = tuple[float, Codec, bytes | memoryview, dict[str, Any] | None]
        candidates: list[Candidate] = []
        wanted = base_id if self.delta_config.enabled else None
        base = self.base(wanted, len(piece), borrow) if wanted else None
        if base is not None:
            kind = self.delta_config.delta_type
            if not codec_of(kind).lossless:  # what a lossy write keeps exactly stays exact
                kind = DeltaType.COMPRESSED
            elif not codec_supports(kind, dtype):
                kind = DeltaType.XOR_FLOAT32
            data, meta = encode_arrays(
                kind,
                np.frombuffer(piece, np_dtype),
                base.raw.view(np_dtype),
                self.delta_config,
            )
            if base.borrowed and chunk_id(base.raw.data) != base.chunk_id:
                return self.encode(piece, dtype, base_id, borrow=False)  # changed meanwhile
            params = self._params(base, kind, dtype, meta)
            worth = max(_MIN_WORTH, 1.0 - _LINK_COST * (base.depth + 1))
            good_enough = _DELTA_GOOD_ENOUGH
            if base.stored is not None:  # a keyframe of this tensor: planes would be about as big
                good_enough = max(good_enough, _PLANES_MARGIN * worth * base.stored)
            if len(data) <= good_enough * len(piece):  # no need to try the rest
                blob = pack_object(ObjectKind.CHUNK, Codec.DELTA, data, len(piece), params)
                return EncodedChunk(blob, base.depth + 1, base.root)
            candidates.append((len(data) / worth, Codec.DELTA, data, params))
        itemsize = min(np_dtype.itemsize, 8)
        planes = encode_planes(piece, itemsize, self.compression_level)
        candidates.append((len(planes), Codec.PLANES, planes, None))
        candidates.append((len(piece), Codec.RAW, piece, None))
        _, codec, payload, chosen = min(candidates, key=lambda c: c[0])
        blob = pack_object(ObjectKind.CHUNK, codec, payload, len(piece), chosen)
        if chosen is None:
            return EncodedChunk(blob, 0, None)
        return EncodedChunk(blob, int(chosen["depth"]), str(chosen["root"]))

    def encode_lossy(
        self, piece: memoryview, dtype: str, base_id: str, rows: tuple[int, int]
    ) -> LossyChunk | None:
        """A chunk as a lossy delta against ``base_id``; None when it has to be
        kept exactly (no readable base, unchanged, or values the lossy codec
        cannot take, such as NaN)."""
        base = self.base(base_id, len(piece), borrow=False)
        if base is None or base.raw.data == piece:
            return None
        np_dtype = numpy_dtype(dtype)
        kind = self.delta_config.delta_type
        reference = base.raw.view(np_dtype)
        try:
            data, meta = encode_arrays(
                kind, np.frombuffer(piece, np_dtype), reference, self.delta_config, rows
            )
        except TensorMismatchError:
            return None
        rebuilt = np.empty(len(piece), dtype=np.uint8)
        target = rebuilt.view(np_dtype)
        target[:] = reference
        apply_delta(kind, data, meta, target)
        params = self._params(base, kind, dtype, meta)
        return LossyChunk(data, params, rebuilt, float(meta["max_abs_error"]))

    @staticmethod
    def _params(base: DeltaBase, kind: Any, dtype: str, meta: dict[str, Any]) -> dict[str, Any]:
        """The parameters a delta chunk records: its base, keyframe, depth and codec."""
        return {
            "base": base.chunk_id,
            "root": base.root,
            "depth": base.depth + 1,
            "type": kind_name(kind),
            "dtype": dtype,
            "meta": meta,
        }

    def base(self, reference_chunk: str, size: int, borrow: bool = True) -> DeltaBase | None:
        """The chunk a new delta of ``size`` bytes should be made against: the
        reference chunk, or its keyframe when the chain below it is already
        ``max_chain_length`` long. With ``borrow``, straight from the caller's
        memory when the last write stored it and it is unchanged since."""
        table = self.recent  # (another write may swap it meanwhile)
        reference = table.get(reference_chunk) if borrow else None
        if reference is not None:
            target, depth, root = reference_chunk, reference.depth, reference.root
            if depth >= self.delta_config.max_chain_length:
                target, depth = root, 0
            found = table.get(target)
            if found is not None and len(found.piece) == size:
                raw = np.frombuffer(found.piece, np.uint8)
                # Unchanged since it was stored, and still stored (not collected since):
                if chunk_id(raw.data) == target and self.source.has(target):
                    return DeltaBase(target, raw, depth, root, found.stored, borrowed=True)
        try:
            read = self.source.read_base(reference_chunk)  # params and payload
            params = read[1] if read[0].codec == Codec.DELTA else {}
            depth = int(params.get("depth", 0))
            root = str(params.get("root", reference_chunk))
            if depth >= self.delta_config.max_chain_length:
                reference_chunk, depth = root, 0
                read = self.source.read_base(root)
            stored = None
            if read[0].codec != Codec.DELTA and read[0].raw_size:
                stored = (HEADER_SIZE + read[0].payload_size) / read[0].raw_size
            out = scratch(_BASE_SLOT, size, np.uint8)
            raw = self.source.decode_chunk(reference_chunk, out, read)
            return DeltaBase(reference_chunk, raw, depth, root, stored)
        except CoralError:
            return None  # an unreadable reference: store the chunk without it
