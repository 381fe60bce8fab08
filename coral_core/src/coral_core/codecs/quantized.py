"""``int8_quantized`` and ``int16_quantized`` (lossy): the difference, uniformly quantized."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from coral_core.codecs import DeltaCodec, Encoded
from coral_core.codecs.words import change, compress, decompress, max_error
from coral_core.dtypes import FLOAT_DTYPES

if TYPE_CHECKING:
    from coral_core.delta import DeltaConfig


def quantized(name: str, levels: int, int_dtype: type) -> DeltaCodec:
    """A codec that stores each change as one of ``2 * levels + 1`` steps of ``int_dtype``."""

    def rebuild(steps: np.ndarray, scale: float, reference: np.ndarray) -> np.ndarray:
        rebuilt = reference.reshape(-1).astype(np.float64) + steps.astype(np.float64) * scale
        return rebuilt.astype(reference.dtype).reshape(reference.shape)

    def encode(
        current: np.ndarray, reference: np.ndarray, config: DeltaConfig, _: tuple[int, int] | None
    ) -> Encoded:
        moved = change(current, reference)
        peak = float(np.max(np.abs(moved))) if moved.size else 0.0
        scale = peak / levels if peak > 0 else 1.0
        steps: np.ndarray = np.clip(np.rint(moved / scale), -levels, levels).astype(int_dtype)
        error = max_error(rebuild(steps, scale, reference), current)
        return compress(steps.data, config.compression_level), {
            "scale": scale,
            "max_abs_error": error,
        }

    def decode(data: bytes | memoryview, meta: dict[str, Any], reference: np.ndarray) -> np.ndarray:
        size = reference.size * np.dtype(int_dtype).itemsize
        raw, _ = decompress(memoryview(data), 0, size)
        return rebuild(np.frombuffer(raw, int_dtype), meta["scale"], reference)

    return DeltaCodec(name, lossless=False, encode=encode, decode=decode, dtypes=FLOAT_DTYPES)


INT8_QUANTIZED = quantized("int8_quantized", 127, np.int8)
INT16_QUANTIZED = quantized("int16_quantized", 32767, np.int16)
CODECS = (INT8_QUANTIZED, INT16_QUANTIZED)
