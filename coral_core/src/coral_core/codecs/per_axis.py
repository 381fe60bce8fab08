"""``per_axis_scaled`` (lossy): the sign of each change (1 bit) and one float16
scale per row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from coral_core.codecs import DeltaCodec, Encoded
from coral_core.codecs.words import change, compress, decompress, max_error
from coral_core.dtypes import FLOAT_DTYPES

if TYPE_CHECKING:
    from coral_core.delta import DeltaConfig


def _row_starts(size: int, row_length: int, offset: int) -> np.ndarray:
    """Where each row, or part of a row, begins in ``size`` elements that start
    ``offset`` elements into rows of ``row_length`` (a chunk of a tensor)."""
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    first = (-offset) % row_length
    starts = np.arange(first, size, row_length, dtype=np.int64)
    return np.concatenate([[0], starts]) if first else starts


def _encode(
    current: np.ndarray, reference: np.ndarray, config: DeltaConfig, rows: tuple[int, int] | None
) -> Encoded:
    size = current.size
    if rows is None:  # a whole tensor: one scale per row (the first axis)
        rows = (size // current.shape[0] if current.ndim > 1 and size else max(size, 1), 0)
    row_length, offset = rows
    moved = change(current, reference)
    starts = _row_starts(size, row_length, offset)
    counts = np.diff(np.append(starts, size))
    scales = (np.add.reduceat(np.abs(moved), starts) / counts if size else counts).astype(
        np.float16
    )
    signs = np.packbits(moved >= 0)
    level = config.compression_level
    data = compress(scales.data, level) + compress(signs.data, level)
    meta: dict[str, Any] = {"row_length": row_length, "offset": offset}
    meta["max_abs_error"] = max_error(_decode(data, meta, reference), current)
    return data, meta


def _decode(data: bytes | memoryview, meta: dict[str, Any], reference: np.ndarray) -> np.ndarray:
    row_length, offset = int(meta["row_length"]), int(meta["offset"])
    if row_length < 1 or offset < 0:
        raise ValueError(f"bad row layout {row_length}, {offset}")
    size = reference.size
    starts = _row_starts(size, row_length, offset)
    view = memoryview(data)
    scales_raw, position = decompress(view, 0, starts.size * 2)
    signs_raw, _ = decompress(view, position, (size + 7) // 8)
    scales = np.frombuffer(scales_raw, np.float16).astype(np.float64)
    signs = np.unpackbits(np.frombuffer(signs_raw, np.uint8), count=size)
    steps = np.repeat(scales, np.diff(np.append(starts, size)))
    rebuilt = reference.reshape(-1).astype(np.float64) + np.where(signs == 1, steps, -steps)
    return rebuilt.astype(reference.dtype).reshape(reference.shape)


PER_AXIS_SCALED = DeltaCodec(
    "per_axis_scaled", lossless=False, encode=_encode, decode=_decode, dtypes=FLOAT_DTYPES
)
CODECS = (PER_AXIS_SCALED,)
