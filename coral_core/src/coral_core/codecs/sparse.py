"""``sparse`` (lossy): only the elements that changed by more than ``sparse_threshold``,
stored exactly (NaN and inf included)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from coral_core.codecs import DeltaCodec, Encoded
from coral_core.codecs.words import change, compress, decompress, max_error
from coral_core.dtypes import FLOAT_DTYPES

if TYPE_CHECKING:
    from coral_core.delta import DeltaConfig


def _encode(
    current: np.ndarray, reference: np.ndarray, config: DeltaConfig, _: tuple[int, int] | None
) -> Encoded:
    moved = change(current, reference, exact_only=True)
    flat = current.reshape(-1)
    positions = np.flatnonzero(~(np.abs(moved) <= config.sparse_threshold)).astype(np.uint64)
    gaps = np.diff(positions, prepend=np.uint64(0))  # small numbers compress well
    values = flat[positions.astype(np.int64)]
    level = config.compression_level
    data = compress(gaps.data, level) + compress(values.view(np.uint8).data, level)
    meta: dict[str, Any] = {"count": int(positions.size), "threshold": config.sparse_threshold}
    meta["max_abs_error"] = max_error(_decode(data, meta, reference), current)
    return data, meta


def _decode(data: bytes | memoryview, meta: dict[str, Any], reference: np.ndarray) -> np.ndarray:
    count = int(meta["count"])
    view = memoryview(data)
    gaps_raw, offset = decompress(view, 0, count * 8)
    values_raw, _ = decompress(view, offset, count * reference.dtype.itemsize)
    positions = np.cumsum(np.frombuffer(gaps_raw, np.uint64)).astype(np.int64)
    rebuilt = reference.reshape(-1).copy()
    rebuilt[positions] = np.frombuffer(values_raw, np.uint8).view(reference.dtype)
    return rebuilt.reshape(reference.shape)


SPARSE = DeltaCodec("sparse", lossless=False, encode=_encode, decode=_decode, dtypes=FLOAT_DTYPES)
CODECS = (SPARSE,)
