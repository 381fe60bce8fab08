"""``xor_float32`` and ``xor_bfloat16``: XOR of the bit views, then byte planes + zstd.

Unchanged sign, exponent and high mantissa bits become zero bytes, which the
planes squeeze out. ``xor_float32`` works on every dtype, whatever its name
says; ``xor_bfloat16`` is the same codec for bfloat16 tensors only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from coral_core.codecs import DeltaCodec, Encoded
from coral_core.codecs.words import bits
from coral_core.planes import decode_planes_into, encode_planes
from coral_core.scratch import scratch

if TYPE_CHECKING:
    from coral_core.delta import DeltaConfig


def _encode(
    current: np.ndarray, reference: np.ndarray, config: DeltaConfig, _: tuple[int, int] | None
) -> Encoded:
    cur = bits(current)
    xor = scratch(0, cur.size, cur.dtype)
    np.bitwise_xor(cur, bits(reference), out=xor)
    return encode_planes(xor, xor.dtype.itemsize, config.compression_level), {}


def _apply(data: bytes | memoryview, _: dict[str, Any], target: np.ndarray) -> None:
    words = bits(target)
    xor = scratch(0, words.size, words.dtype)
    decode_planes_into(data, xor.view(np.uint8))
    np.bitwise_xor(words, xor, out=words)


XOR_FLOAT32 = DeltaCodec("xor_float32", lossless=True, encode=_encode, apply=_apply)
XOR_BFLOAT16 = DeltaCodec(
    "xor_bfloat16", lossless=True, encode=_encode, apply=_apply, dtypes=frozenset({"bfloat16"})
)
CODECS = (XOR_FLOAT32, XOR_BFLOAT16)
