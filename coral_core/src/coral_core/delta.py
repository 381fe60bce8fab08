"""Delta encoding: a tensor stored as its difference from a similar reference.

The strategies are the codecs of :mod:`coral_core.codecs`, one registry keyed
by the names below (which plugins extend). Lossless ones work on the integer
view of the values, so they are exact for every bit pattern (NaN payloads,
-0.0, inf, subnormals) and every dtype:

- ``FLOAT32_RAW``: wrapping integer difference of the bit views, uncompressed
  (any dtype, whatever the name says).
- ``COMPRESSED``: that difference, zigzag-coded, then byte planes + zstd; the
  smallest lossless delta on fine-tuning steps, and the default.
- ``XOR_FLOAT32``: XOR of the bit views, then byte planes + zstd (any dtype).
- ``XOR_BFLOAT16``: the same on bfloat16 tensors.
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
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import zstandard

from coral_core.codecs import DeltaCodec, codec_named
from coral_core.dtypes import dtype_name, numpy_dtype
from coral_core.errors import CorruptObjectError, TensorMismatchError
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
        return codec_named(self.value).lossless


#: A strategy: one of the book's, or the name of a codec a plugin registers.
Kind = DeltaType | str


def kind_name(kind: Kind) -> str:
    """The name a delta of strategy ``kind`` records."""
    return kind.value if isinstance(kind, DeltaType) else kind


def codec_of(kind: Kind) -> DeltaCodec:
    """The codec of strategy ``kind``.

    Raises:
        UnknownCodecError: when it names no installed codec.
    """
    return codec_named(kind_name(kind))


def as_kind(name: Kind) -> Kind:
    """``name`` as a :class:`DeltaType` when it is one of the book's, else a
    plugin's codec name, checked.

    Raises:
        UnknownCodecError: when it names no installed codec.
    """
    if isinstance(name, DeltaType):
        return name
    try:
        return DeltaType(name)
    except ValueError:
        return codec_named(name).name


#: The longest delta chain a read decodes; a longer one can only be damage.
MAX_CHAIN_LENGTH = 64


@dataclass(frozen=True)
class DeltaConfig:
    """Settings of delta encoding, validated at construction.

    Args:
        delta_type: the strategy; lossy ones must be chosen explicitly.
        enabled: store chunks as deltas at all (False: each chunk on its own,
            the book's ``core.delta_encoding false``).
        similarity_threshold: cosine similarity a reference needs (0..1).
        compression_level: zstd level (-7..22; 1 is fast and good on weights).
        max_chain_length: most deltas decoded to rebuild one tensor (>= 1).
        sparse_threshold: changes at most this large are dropped by ``SPARSE``.
    """

    delta_type: Kind = DeltaType.COMPRESSED
    similarity_threshold: float = 0.98
    compression_level: int = 1
    max_chain_length: int = 2
    sparse_threshold: float = 1e-6
    enabled: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta_type", as_kind(self.delta_type))
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


@dataclass(frozen=True, repr=False)
class Delta:
    """A tensor encoded against a reference tensor.

    ``compression_ratio`` is the fraction of bytes saved (0.95: the delta is 5%
    of the tensor), as the Coral book uses it.
    """

    delta_type: Kind
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
        return codec_of(self.delta_type).lossless

    def __repr__(self) -> str:  # without its bytes, which may be megabytes
        return (
            f"Delta({kind_name(self.delta_type)}, {self.nbytes} bytes for "
            f"{self.original_shape} {self.original_dtype}, against {self.reference_hash[:12]}, "
            f"compression_ratio={self.compression_ratio:.3f})"
        )


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
                f"{kind_name(self.config.delta_type)} cannot encode {dtype} tensor {current.name!r}"
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

    def reconstruct(self, delta: Delta, reference: np.ndarray | WeightTensor) -> np.ndarray:
        """The array ``delta`` encodes, rebuilt from its reference's data (the
        book's ``reconstruct(delta, reference.data)``).

        Raises:
            TensorMismatchError: when ``reference`` has another shape or dtype.
            CorruptObjectError: when the delta's bytes are damaged.
        """
        array = np.asarray(reference)
        if array.shape != delta.original_shape or dtype_name(array.dtype) != delta.original_dtype:
            raise TensorMismatchError(
                f"delta encodes {delta.original_shape} {delta.original_dtype}; the reference "
                f"is {array.shape} {dtype_name(array.dtype)}"
            )
        return decode_arrays(delta.delta_type, delta.data, delta.metadata, array).reshape(
            delta.original_shape
        )

    def encode(self, reference: WeightTensor, current: WeightTensor) -> Delta:
        """``encode(original, similar)``: the book's argument order (base first)."""
        return self.encode_delta(current, reference)

    def decode(self, delta: Delta, reference: WeightTensor) -> WeightTensor:
        """Same as :meth:`decode_delta`."""
        return self.decode_delta(delta, reference)


def supports(kind: Kind, dtype: str) -> bool:
    """True when strategy ``kind`` can encode tensors of ``dtype``."""
    return codec_of(kind).supports(dtype)


def encode_arrays(
    kind: Kind,
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
    return codec_of(kind).encode(current, reference, config, rows)


def decode_arrays(
    kind: Kind, data: bytes | memoryview, metadata: dict[str, Any], reference: np.ndarray
) -> np.ndarray:
    """Inverse of :func:`encode_arrays`.

    Raises:
        CorruptObjectError: when the payload is damaged.
    """
    codec = codec_of(kind)
    if codec.apply is not None:
        target = np.array(reference, copy=True, order="C")
        apply_delta(kind, data, metadata, target)
        return target
    assert codec.decode is not None  # a codec has one of the two
    try:
        return codec.decode(data, metadata, reference)
    except (ValueError, KeyError, struct.error, zstandard.ZstdError) as exc:
        raise CorruptObjectError(f"{codec.name} delta is malformed: {exc}") from None


def apply_delta(
    kind: Kind, data: bytes | memoryview, metadata: dict[str, Any], target: np.ndarray
) -> None:
    """Turn ``target``, a writable C-contiguous copy of the reference, into the
    tensor the delta encodes, in place (without a tensor-sized temporary for
    the integer-view strategies).

    Raises:
        CorruptObjectError: when the payload is damaged.
    """
    codec = codec_of(kind)
    if codec.apply is None:
        target[...] = decode_arrays(kind, data, metadata, target).reshape(target.shape)
        return
    try:
        codec.apply(data, metadata, target)
    except (ValueError, KeyError, struct.error) as exc:
        raise CorruptObjectError(f"{codec.name} delta is malformed: {exc}") from None


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
