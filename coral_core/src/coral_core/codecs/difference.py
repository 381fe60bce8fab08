"""``float32_raw`` and ``compressed``: the wrapping integer difference of the bit views.

``float32_raw`` stores it as it is; ``compressed`` (the default) zigzag-codes
it, so small changes either way are small numbers, then byte planes + zstd.
On fine-tuning steps it is the smallest lossless delta: smaller than XOR, and
than the difference of order-preserving views, which costs more and gains
nothing. Both work on every dtype, whatever the first one's name says.

Both are in-place updates on chunk-sized per-thread scratch buffers: fresh
temporaries cost more in page faults than the arithmetic itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from coral_core.codecs import DeltaCodec, Encoded
from coral_core.codecs.words import bits
from coral_core.errors import CorruptObjectError
from coral_core.planes import decode_planes_into, encode_planes
from coral_core.scratch import scratch

if TYPE_CHECKING:
    from coral_core.delta import DeltaConfig

#: Items per pass of the zigzag loops: their arrays stay in the core's L2 cache,
#: which makes the five elementwise passes about 1.5x faster than over a chunk.
_BLOCK_BYTES = 256 << 10


def _encode_raw(
    current: np.ndarray, reference: np.ndarray, _: DeltaConfig, __: tuple[int, int] | None
) -> Encoded:
    return (bits(current) - bits(reference)).tobytes(), {}  # unsigned: wraps


def _apply_raw(data: bytes | memoryview, _: dict[str, Any], target: np.ndarray) -> None:
    words = bits(target)
    diff = np.frombuffer(data, dtype=words.dtype)
    if diff.size != words.size:
        raise CorruptObjectError(f"delta holds {diff.size} elements, expected {words.size}")
    np.add(words, diff, out=words)


def _encode_zigzag(
    current: np.ndarray, reference: np.ndarray, config: DeltaConfig, _: tuple[int, int] | None
) -> Encoded:
    cur, ref = bits(current), bits(reference)
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


def _apply_zigzag(data: bytes | memoryview, _: dict[str, Any], target: np.ndarray) -> None:
    words = bits(target)
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


FLOAT32_RAW = DeltaCodec("float32_raw", lossless=True, encode=_encode_raw, apply=_apply_raw)
COMPRESSED = DeltaCodec("compressed", lossless=True, encode=_encode_zigzag, apply=_apply_zigzag)
CODECS = (FLOAT32_RAW, COMPRESSED)
