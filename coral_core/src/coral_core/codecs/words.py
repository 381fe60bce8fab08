"""What the codecs share: integer views of values, zstd frames, a lossy codec's error."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import zstandard

from coral_core.compression import decompress_exact
from coral_core.dtypes import bits_dtype
from coral_core.errors import TensorMismatchError


def bits(array: np.ndarray) -> np.ndarray:
    """The values of ``array`` as unsigned integers of their width, flat (complex: 64-bit pairs)."""
    flat = array.reshape(-1)
    if flat.dtype.itemsize > 8:
        return flat.view(np.uint64)
    return flat.view(bits_dtype(flat.dtype))


def from_bits(words: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Inverse of :func:`bits`: ``words`` seen as ``like``'s dtype and shape."""
    return words.view(like.dtype).reshape(like.shape)


def compress(data: bytes | memoryview, level: int) -> bytes:
    """A zstd frame behind its length, so several follow one another."""
    packed = zstandard.ZstdCompressor(level=level).compress(data)
    return struct.pack("<Q", len(packed)) + packed


def decompress(view: memoryview, offset: int, size: int) -> tuple[bytes, int]:
    """The ``size`` bytes of the frame at ``offset``, and where the next one begins."""
    (length,) = struct.unpack_from("<Q", view, offset)
    start = offset + 8
    return decompress_exact(view[start : start + length], size), start + length


def field_dtype(bits_wide: int) -> np.dtype[Any]:
    """The narrowest unsigned dtype that holds ``bits_wide`` bits."""
    for candidate in (np.uint8, np.uint16, np.uint32, np.uint64):
        if np.dtype(candidate).itemsize * 8 >= bits_wide:
            return np.dtype(candidate)
    raise ValueError(bits_wide)


def change(current: np.ndarray, reference: np.ndarray, exact_only: bool = False) -> np.ndarray:
    """``current - reference`` in float64; lossy codecs other than SPARSE need it finite.

    Raises:
        TensorMismatchError: for NaN or inf, unless ``exact_only``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        moved = current.reshape(-1).astype(np.float64) - reference.reshape(-1).astype(np.float64)
    if not exact_only and not np.all(np.isfinite(moved)):
        raise TensorMismatchError(
            "a lossy delta needs finite values on both sides; this tensor has NaN or inf "
            "(use a lossless strategy, or SPARSE, which keeps such elements exactly)"
        )
    return moved


def max_error(rebuilt: np.ndarray, current: np.ndarray) -> float:
    """The largest error of any element of ``rebuilt`` (a NaN kept exactly: none)."""
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(
            rebuilt.reshape(-1).astype(np.float64) - current.reshape(-1).astype(np.float64)
        )
    error[bits(rebuilt) == bits(current)] = 0.0
    return float(np.max(error)) if error.size else 0.0
