"""Delta encoding: a tensor stored as its difference from a similar reference.

Lossless strategies work on the integer view of the values, so they are exact
for every bit pattern (NaN payloads, -0.0, inf, subnormals) and every dtype:

- ``FLOAT32_RAW``: wrapping integer difference of the bit views, uncompressed.
- ``COMPRESSED``: that difference, zigzag-coded so small changes either way
  are small numbers, then byte planes + zstd. On fine-tuning steps it is the
  smallest lossless delta (smaller than XOR, and than the difference of
  order-preserving views, which costs more and gains nothing), and the default.
- ``XOR_FLOAT32``: XOR of the bit views; unchanged sign, exponent and high
  mantissa bits become zero bytes, which byte planes + zstd squeeze out.
- ``XOR_BFLOAT16``: the same on bfloat16 tensors, in 16-bit words.
- ``EXPONENT_MANTISSA``: XOR, then sign, exponent and mantissa fields coded
  separately.

Lossy strategies are opt-in; each :class:`Delta` they make records
``max_abs_error``, the largest error of any element against the original:

- ``INT8_QUANTIZED`` / ``INT16_QUANTIZED``: the difference, uniformly quantized.
- ``SPARSE``: only elements that changed by more than ``sparse_threshold``.
- ``PER_AXIS_SCALED``: the sign of each change (1 bit) and one float16 scale
  per row.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import zstandard

from coral_core.compression import decompress_exact
from coral_core.dtypes import FLOAT_DTYPES, bits_dtype, dtype_name, numpy_dtype
from coral_core.errors import CorruptObjectError, TensorMismatchError
from coral_core.planes import decode_planes, decode_planes_into, encode_planes
from coral_core.scratch import scratch
from coral_core.tensor import WeightMetadata, WeightTensor


class DeltaType(str, Enum):
    """How a delta is encoded."""

    FLOAT32_RAW = "float32_raw"
    COMPRESSED = "compressed"
    XOR_FLOAT32 = "xor_float32"
    XOR_BFLOAT16 = "xor_bfloat16"
    EXPONENT_MANTISSA = "exponent_mantissa"
    INT8_QUANTIZED = "int8_quantized"
    INT16_QUANTIZED = "int16_quantized"
    SPARSE = "sparse"
    PER_AXIS_SCALED = "per_axis_scaled"

    @property
    def is_lossless(self) -> bool:
        return self in _LOSSLESS


_LOSSLESS = frozenset(
    {
        DeltaType.FLOAT32_RAW,
        DeltaType.COMPRESSED,
        DeltaType.XOR_FLOAT32,
        DeltaType.XOR_BFLOAT16,
        DeltaType.EXPONENT_MANTISSA,
    }
)

#: (exponent bits, mantissa bits) of each float dtype, for EXPONENT_MANTISSA.
_FLOAT_FIELDS = {
    "float64": (11, 52),
    "float32": (8, 23),
    "float16": (5, 10),
    "bfloat16": (8, 7),
    "float8_e4m3fn": (4, 3),
    "float8_e5m2": (5, 2),
}


#: The longest delta chain a read decodes; a longer one can only be damage.
MAX_CHAIN_LENGTH = 64


@dataclass(frozen=True)
class DeltaConfig:
    """Settings of delta encoding, validated at construction.

    Args:
        delta_type: the strategy; lossy ones must be chosen explicitly.
        similarity_threshold: cosine similarity a reference needs (0..1).
        compression_level: zstd level (-7..22; 1 is fast and good on weights).
        max_chain_length: most deltas decoded to rebuild one tensor (>= 1).
        sparse_threshold: changes at most this large are dropped by ``SPARSE``.
    """

    delta_type: DeltaType = DeltaType.COMPRESSED
    similarity_threshold: float = 0.98
    compression_level: int = 1
    max_chain_length: int = 2
    sparse_threshold: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta_type", DeltaType(self.delta_type))
        if not 0.0 <= self.similarity_threshold <= 1.0:
            raise ValueError(
                f"similarity_threshold must be in [0, 1], got {self.similarity_threshold}"
            )
        if not -7 <= self.compression_level <= 22:
            raise ValueError(f"compression_level must be in [-7, 22], got {self.compression_level}")
        if not 1 <= self.max_chain_length <= MAX_CHAIN_LENGTH:
            raise ValueError(
                f"max_chain_length must be from 1 to {MAX_CHAIN_LENGTH} (the longest chain "
                f"a read decodes), got {self.max_chain_length}"
            )
        if self.sparse_threshold < 0:
            raise ValueError(f"sparse_threshold must be >= 0, got {self.sparse_threshold}")


@dataclass(frozen=True)
class Delta:
    """A tensor encoded against a reference tensor.

    ``compression_ratio`` is the fraction of bytes saved (0.95: the delta is 5%
    of the tensor), as the Coral book uses it.
    """

    delta_type: DeltaType
    data: bytes
    reference_hash: str
    original_shape: tuple[int, ...]
    original_dtype: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def original_nbytes(self) -> int:
        return (
            int(np.prod(self.original_shape, dtype=np.int64))
            * numpy_dtype(self.original_dtype).itemsize
        )

    @property
    def compression_ratio(self) -> float:
        original = self.original_nbytes
        return 1.0 - self.nbytes / original if original else 0.0

    @property
    def is_lossless(self) -> bool:
        return self.delta_type.is_lossless


class DeltaEncoder:
    """Encodes tensors as deltas against references, and back.

    Args:
        config: strategy and settings (lossless ``COMPRESSED`` by default).
    """

    def __init__(self, config: DeltaConfig | None = None) -> None:
        self.config = config or DeltaConfig()

    def supports(self, dtype: str) -> bool:
        """True when the configured strategy can encode tensors of ``dtype``."""
        return supports(self.config.delta_type, dtype)

    def can_encode_as_delta(self, current: WeightTensor, reference: WeightTensor) -> bool:
        """Same shape and dtype, a supported dtype, and cosine similarity at or
        above ``similarity_threshold``."""
        if current.shape != reference.shape or current.dtype != reference.dtype:
            return False
        if not self.supports(current.metadata.dtype_name):
            return False
        return cosine_similarity(current.data, reference.data) >= self.config.similarity_threshold

    def encode_delta(self, current: WeightTensor, reference: WeightTensor) -> Delta:
        """Encode ``current`` against ``reference``.

        Raises:
            TensorMismatchError: when shapes or dtypes differ, or the strategy
                does not support the dtype.
        """
        dtype = current.metadata.dtype_name
        if current.shape != reference.shape or current.dtype != reference.dtype:
            raise TensorMismatchError(
                f"cannot delta-encode {current.name!r} {current.shape} {dtype} against "
                f"{reference.name!r} {reference.shape} {reference.metadata.dtype_name}"
            )
        if not self.supports(dtype):
            raise TensorMismatchError(
                f"{self.config.delta_type.name} cannot encode {dtype} tensor {current.name!r}"
            )
        data, metadata = encode_arrays(
            self.config.delta_type, current.data, reference.data, self.config
        )
        return Delta(
            delta_type=self.config.delta_type,
            data=data,
            reference_hash=reference.compute_hash(),
            original_shape=current.shape,
            original_dtype=dtype,
            metadata=metadata,
        )

    def decode_delta(self, delta: Delta, reference: WeightTensor) -> WeightTensor:
        """Rebuild the tensor ``delta`` encodes from its ``reference``.

        Raises:
            TensorMismatchError: when ``reference`` is not the tensor the delta
                was made against.
            CorruptObjectError: when the delta's bytes are damaged.
        """
        if reference.compute_hash() != delta.reference_hash:
            raise TensorMismatchError(
                f"delta was made against tensor {delta.reference_hash}, "
                f"not {reference.compute_hash()} ({reference.name!r})"
            )
        array = decode_arrays(delta.delta_type, delta.data, delta.metadata, reference.data)
        name = reference.name
        metadata = WeightMetadata(name, delta.original_shape, numpy_dtype(delta.original_dtype))
        return WeightTensor(array.reshape(delta.original_shape), metadata)

    def encode(self, reference: WeightTensor, current: WeightTensor) -> Delta:
        """``encode(original, similar)``: the book's argument order (base first)."""
        return self.encode_delta(current, reference)

    def decode(self, delta: Delta, reference: WeightTensor) -> WeightTensor:
        """Same as :meth:`decode_delta`."""
        return self.decode_delta(delta, reference)


def supports(kind: DeltaType, dtype: str) -> bool:
    """True when strategy ``kind`` can encode tensors of ``dtype``."""
    if kind == DeltaType.XOR_BFLOAT16:
        return dtype == "bfloat16"
    if kind == DeltaType.EXPONENT_MANTISSA or not kind.is_lossless:
        return dtype in FLOAT_DTYPES
    return True


def encode_arrays(
    kind: DeltaType,
    current: np.ndarray,
    reference: np.ndarray,
    config: DeltaConfig,
    rows: tuple[int, int] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Encode ``current`` against ``reference`` (same shape and dtype) with ``kind``;
    returns the payload and the metadata needed to decode it.

    ``rows`` = ``(row_length, offset)`` tells ``PER_AXIS_SCALED`` where the
    tensor's rows fall when the arrays are one flat chunk of it, starting
    ``offset`` elements in; otherwise rows follow the first axis.
    """
    if kind == DeltaType.PER_AXIS_SCALED and rows is not None:
        return _encode_per_axis(current, reference, config, *rows)
    return _ENCODERS[kind](current, reference, config)


def decode_arrays(
    kind: DeltaType, data: bytes, metadata: dict[str, Any], reference: np.ndarray
) -> np.ndarray:
    """Inverse of :func:`encode_arrays`.

    Raises:
        CorruptObjectError: when the payload is damaged.
    """
    if kind in _APPLIERS:
        target = np.array(reference, copy=True, order="C")
        apply_delta(kind, data, metadata, target)
        return target
    delta = Delta(kind, data, "", reference.shape, dtype_name(reference.dtype), metadata)
    try:
        return _DECODERS[kind](delta, reference)
    except (ValueError, KeyError, struct.error, zstandard.ZstdError) as exc:
        raise CorruptObjectError(f"{kind.value} delta is malformed: {exc}") from None


def apply_delta(
    kind: DeltaType, data: bytes | memoryview, metadata: dict[str, Any], target: np.ndarray
) -> None:
    """Turn ``target``, a writable C-contiguous copy of the reference, into the
    tensor the delta encodes, in place (without a tensor-sized temporary for
    the integer-view strategies).

    Raises:
        CorruptObjectError: when the payload is damaged.
    """
    applier = _APPLIERS.get(kind)
    if applier is None:
        target[...] = decode_arrays(kind, bytes(data), metadata, target).reshape(target.shape)
        return
    try:
        applier(data, metadata, target)
    except (ValueError, KeyError, struct.error) as exc:
        raise CorruptObjectError(f"{kind.value} delta is malformed: {exc}") from None


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in float64; 1.0 for two all-zero tensors."""
    x = a.reshape(-1).astype(np.float64)
    y = b.reshape(-1).astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return 1.0 if np.array_equal(x, y, equal_nan=True) else 0.0
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(np.dot(x, y) / (nx * ny))


# -- lossless -------------------------------------------------------------------------

Encoded = tuple[bytes, dict[str, Any]]


def _bits(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    if flat.dtype.itemsize > 8:  # complex: pairs of 64-bit words
        return flat.view(np.uint64)
    return flat.view(bits_dtype(flat.dtype))


def _from_bits(words: np.ndarray, like: np.ndarray) -> np.ndarray:
    return words.view(like.dtype).reshape(like.shape)


# The integer-view strategies are written as in-place updates on chunk-sized
# per-thread scratch buffers: fresh temporaries cost more in page faults than
# the arithmetic itself. An "applier" turns a copy of the reference into the
# current tensor in place; decoding into a new array is an applier on a copy.


def _encode_raw_difference(current: np.ndarray, reference: np.ndarray, _: DeltaConfig) -> Encoded:
    return (_bits(current) - _bits(reference)).tobytes(), {}  # unsigned: wraps


def _apply_raw_difference(data: bytes | memoryview, _: dict[str, Any], target: np.ndarray) -> None:
    words = _bits(target)
    diff = np.frombuffer(data, dtype=words.dtype)
    if diff.size != words.size:
        raise CorruptObjectError(f"delta holds {diff.size} elements, expected {words.size}")
    np.add(words, diff, out=words)


#: Items per pass of the zigzag loops: their arrays stay in the core's L2 cache,
#: which makes the five elementwise passes about 1.5x faster than over a chunk.
_BLOCK_BYTES = 256 << 10


def _encode_compressed_difference(
    current: np.ndarray, reference: np.ndarray, config: DeltaConfig
) -> Encoded:
    cur, ref = _bits(current), _bits(reference)
    diff = scratch(0, cur.size, cur.dtype)
    step = max(1, _BLOCK_BYTES // cur.dtype.itemsize)
    temp = scratch(1, min(step, cur.size), cur.dtype)
    top, one = cur.dtype.type(cur.dtype.itemsize * 8 - 1), cur.dtype.type(1)
    for start in range(0, cur.size, step):
        d = diff[start : start + step]
        t = temp[: len(d)]
        np.subtract(cur[start : start + step], ref[start : start + step], out=d)  # wraps
        # zigzag: a wrapping signed difference -> small unsigned (0, -1, 1, -2 -> 0, 1, 2, 3)
        np.right_shift(d, top, out=t)
        np.negative(t, out=t)
        np.left_shift(d, one, out=d)
        np.bitwise_xor(d, t, out=d)
    return encode_planes(diff, diff.dtype.itemsize, config.compression_level), {}


def _apply_compressed_difference(
    data: bytes | memoryview, _: dict[str, Any], target: np.ndarray
) -> None:
    words = _bits(target)
    zigzag = scratch(0, words.size, words.dtype)
    decode_planes_into(data, zigzag.view(np.uint8))
    step = max(1, _BLOCK_BYTES // words.dtype.itemsize)
    temp = scratch(1, min(step, words.size), words.dtype)
    one = zigzag.dtype.type(1)
    for start in range(0, words.size, step):
        z = zigzag[start : start + step]
        t = temp[: len(z)]
        np.bitwise_and(z, one, out=t)
        np.negative(t, out=t)
        np.right_shift(z, one, out=z)
        np.bitwise_xor(z, t, out=z)
        w = words[start : start + step]
        np.add(w, z, out=w)


def _encode_xor(current: np.ndarray, reference: np.ndarray, config: DeltaConfig) -> Encoded:
    cur = _bits(current)
    xor = scratch(0, cur.size, cur.dtype)
    np.bitwise_xor(cur, _bits(reference), out=xor)
    return encode_planes(xor, xor.dtype.itemsize, config.compression_level), {}


def _apply_xor(data: bytes | memoryview, _: dict[str, Any], target: np.ndarray) -> None:
    words = _bits(target)
    xor = scratch(0, words.size, words.dtype)
    decode_planes_into(data, xor.view(np.uint8))
    np.bitwise_xor(words, xor, out=words)


def _compress(data: bytes | memoryview, level: int) -> bytes:
    packed = zstandard.ZstdCompressor(level=level).compress(data)
    return struct.pack("<Q", len(packed)) + packed


def _decompress(view: memoryview, offset: int, size: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from("<Q", view, offset)
    start = offset + 8
    return decompress_exact(view[start : start + length], size), start + length


def _field_dtype(bits: int) -> np.dtype[Any]:
    for candidate in (np.uint8, np.uint16, np.uint32, np.uint64):
        if np.dtype(candidate).itemsize * 8 >= bits:
            return np.dtype(candidate)
    raise ValueError(bits)


def _encode_exponent_mantissa(
    current: np.ndarray, reference: np.ndarray, config: DeltaConfig
) -> Encoded:
    exp_bits, man_bits = _FLOAT_FIELDS[dtype_name(current.dtype)]
    xor = _bits(current) ^ _bits(reference)
    one = xor.dtype.type(1)
    sign = np.packbits((xor >> xor.dtype.type(exp_bits + man_bits)).astype(np.uint8))
    exponent = ((xor >> xor.dtype.type(man_bits)) & xor.dtype.type((1 << exp_bits) - 1)).astype(
        _field_dtype(exp_bits)
    )
    mantissa = (xor & ((one << xor.dtype.type(man_bits)) - one)).astype(_field_dtype(man_bits))
    level = config.compression_level
    parts = [
        _compress(sign.data, level),
        _compress(exponent.data, level),
        encode_planes(mantissa.data, mantissa.dtype.itemsize, level),
    ]
    return b"".join(parts), {}


def _decode_exponent_mantissa(delta: Delta, reference: np.ndarray) -> np.ndarray:
    exp_bits, man_bits = _FLOAT_FIELDS[delta.original_dtype]
    ref = _bits(reference)
    count = ref.size
    view = memoryview(delta.data)
    try:
        sign_raw, offset = _decompress(view, 0, (count + 7) // 8)
        exp_dtype, man_dtype = _field_dtype(exp_bits), _field_dtype(man_bits)
        exp_raw, offset = _decompress(view, offset, count * exp_dtype.itemsize)
        mantissa = np.frombuffer(
            decode_planes(view[offset:], count * man_dtype.itemsize), man_dtype
        )
    except (struct.error, zstandard.ZstdError) as exc:
        raise CorruptObjectError(f"exponent/mantissa delta is malformed: {exc}") from None
    word = ref.dtype.type
    sign = np.unpackbits(np.frombuffer(sign_raw, np.uint8), count=count).astype(ref.dtype)
    exponent = np.frombuffer(exp_raw, exp_dtype).astype(ref.dtype)
    xor = (
        (sign << word(exp_bits + man_bits))
        | (exponent << word(man_bits))
        | mantissa.astype(ref.dtype)
    )
    return _from_bits(ref ^ xor, reference)


# -- lossy ----------------------------------------------------------------------------


def _change(current: np.ndarray, reference: np.ndarray, exact_only: bool = False) -> np.ndarray:
    """``current - reference`` in float64; lossy codecs other than SPARSE need it finite."""
    with np.errstate(invalid="ignore", over="ignore"):
        change = current.reshape(-1).astype(np.float64) - reference.reshape(-1).astype(np.float64)
    if not exact_only and not np.all(np.isfinite(change)):
        raise TensorMismatchError(
            "a lossy delta needs finite values on both sides; this tensor has NaN or inf "
            "(use a lossless strategy, or SPARSE, which keeps such elements exactly)"
        )
    return change


def _max_error(rebuilt: np.ndarray, current: np.ndarray) -> float:
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(
            rebuilt.reshape(-1).astype(np.float64) - current.reshape(-1).astype(np.float64)
        )
    same = _bits(rebuilt) == _bits(current)  # NaN kept exactly counts as no error
    error[same] = 0.0
    return float(np.max(error)) if error.size else 0.0


def _quantizer(levels: int, int_dtype: type) -> tuple[Any, Any]:
    def rebuild(quantized: np.ndarray, scale: float, reference: np.ndarray) -> np.ndarray:
        rebuilt = reference.reshape(-1).astype(np.float64) + quantized.astype(np.float64) * scale
        return rebuilt.astype(reference.dtype).reshape(reference.shape)

    def encode(current: np.ndarray, reference: np.ndarray, config: DeltaConfig) -> Encoded:
        change = _change(current, reference)
        peak = float(np.max(np.abs(change))) if change.size else 0.0
        scale = peak / levels if peak > 0 else 1.0
        quantized: np.ndarray = np.clip(np.rint(change / scale), -levels, levels).astype(int_dtype)
        error = _max_error(rebuild(quantized, scale, reference), current)
        data = _compress(quantized.data, config.compression_level)
        return data, {"scale": scale, "max_abs_error": error}

    def decode(delta: Delta, reference: np.ndarray) -> np.ndarray:
        size = reference.size * np.dtype(int_dtype).itemsize
        raw, _ = _decompress(memoryview(delta.data), 0, size)
        return rebuild(np.frombuffer(raw, int_dtype), delta.metadata["scale"], reference)

    return encode, decode


_encode_int8, _decode_int8 = _quantizer(127, np.int8)
_encode_int16, _decode_int16 = _quantizer(32767, np.int16)


def _encode_sparse(current: np.ndarray, reference: np.ndarray, config: DeltaConfig) -> Encoded:
    change = _change(current, reference, exact_only=True)
    flat = current.reshape(-1)
    positions = np.flatnonzero(~(np.abs(change) <= config.sparse_threshold)).astype(np.uint64)
    gaps = np.diff(positions, prepend=np.uint64(0))  # small numbers compress well
    values = flat[positions.astype(np.int64)]
    level = config.compression_level
    data = _compress(gaps.data, level) + _compress(values.view(np.uint8).data, level)
    meta: dict[str, Any] = {"count": int(positions.size), "threshold": config.sparse_threshold}
    rebuilt = _decode_sparse(Delta(DeltaType.SPARSE, data, "", current.shape, "", meta), reference)
    meta["max_abs_error"] = _max_error(rebuilt, current)
    return data, meta


def _decode_sparse(delta: Delta, reference: np.ndarray) -> np.ndarray:
    count = int(delta.metadata["count"])
    view = memoryview(delta.data)
    gaps_raw, offset = _decompress(view, 0, count * 8)
    values_raw, _ = _decompress(view, offset, count * reference.dtype.itemsize)
    positions = np.cumsum(np.frombuffer(gaps_raw, np.uint64)).astype(np.int64)
    rebuilt = reference.reshape(-1).copy()
    rebuilt[positions] = np.frombuffer(values_raw, np.uint8).view(reference.dtype)
    return rebuilt.reshape(reference.shape)


def _row_starts(size: int, row_length: int, offset: int) -> np.ndarray:
    """Where each row, or part of a row, begins in ``size`` elements that start
    ``offset`` elements into rows of ``row_length`` (a chunk of a tensor)."""
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    first = (-offset) % row_length
    starts = np.arange(first, size, row_length, dtype=np.int64)
    return np.concatenate([[0], starts]) if first else starts


def _encode_per_axis(
    current: np.ndarray,
    reference: np.ndarray,
    config: DeltaConfig,
    row_length: int | None = None,
    offset: int = 0,
) -> Encoded:
    size = current.size
    if row_length is None:  # a whole tensor: one scale per row (the first axis)
        row_length = size // current.shape[0] if current.ndim > 1 and size else max(size, 1)
    change = _change(current, reference)
    starts = _row_starts(size, row_length, offset)
    counts = np.diff(np.append(starts, size))
    scales = (np.add.reduceat(np.abs(change), starts) / counts if size else counts).astype(
        np.float16
    )
    signs = np.packbits(change >= 0)
    level = config.compression_level
    data = _compress(scales.data, level) + _compress(signs.data, level)
    meta: dict[str, Any] = {"row_length": row_length, "offset": offset}
    delta = Delta(DeltaType.PER_AXIS_SCALED, data, "", current.shape, "", meta)
    meta["max_abs_error"] = _max_error(_decode_per_axis(delta, reference), current)
    return data, meta


def _decode_per_axis(delta: Delta, reference: np.ndarray) -> np.ndarray:
    row_length, offset = int(delta.metadata["row_length"]), int(delta.metadata["offset"])
    if row_length < 1 or offset < 0:
        raise ValueError(f"bad row layout {row_length}, {offset}")
    size = reference.size
    starts = _row_starts(size, row_length, offset)
    view = memoryview(delta.data)
    scales_raw, position = _decompress(view, 0, starts.size * 2)
    signs_raw, _ = _decompress(view, position, (size + 7) // 8)
    scales = np.frombuffer(scales_raw, np.float16).astype(np.float64)
    signs = np.unpackbits(np.frombuffer(signs_raw, np.uint8), count=size)
    steps = np.repeat(scales, np.diff(np.append(starts, size)))
    rebuilt = reference.reshape(-1).astype(np.float64) + np.where(signs == 1, steps, -steps)
    return rebuilt.astype(reference.dtype).reshape(reference.shape)


_ENCODERS: dict[DeltaType, Callable[[np.ndarray, np.ndarray, DeltaConfig], Encoded]] = {
    DeltaType.FLOAT32_RAW: _encode_raw_difference,
    DeltaType.COMPRESSED: _encode_compressed_difference,
    DeltaType.XOR_FLOAT32: _encode_xor,
    DeltaType.XOR_BFLOAT16: _encode_xor,
    DeltaType.EXPONENT_MANTISSA: _encode_exponent_mantissa,
    DeltaType.INT8_QUANTIZED: _encode_int8,
    DeltaType.INT16_QUANTIZED: _encode_int16,
    DeltaType.SPARSE: _encode_sparse,
    DeltaType.PER_AXIS_SCALED: _encode_per_axis,
}

_APPLIERS: dict[DeltaType, Callable[[bytes | memoryview, dict[str, Any], np.ndarray], None]] = {
    DeltaType.FLOAT32_RAW: _apply_raw_difference,
    DeltaType.COMPRESSED: _apply_compressed_difference,
    DeltaType.XOR_FLOAT32: _apply_xor,
    DeltaType.XOR_BFLOAT16: _apply_xor,
}

_DECODERS: dict[DeltaType, Callable[[Delta, np.ndarray], np.ndarray]] = {
    DeltaType.EXPONENT_MANTISSA: _decode_exponent_mantissa,
    DeltaType.INT8_QUANTIZED: _decode_int8,
    DeltaType.INT16_QUANTIZED: _decode_int16,
    DeltaType.SPARSE: _decode_sparse,
    DeltaType.PER_AXIS_SCALED: _decode_per_axis,
}
