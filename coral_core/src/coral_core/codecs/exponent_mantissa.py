"""``exponent_mantissa``: XOR of the bit views, its sign, exponent and mantissa
fields coded separately (float dtypes)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np
import zstandard

from coral_core.codecs import DeltaCodec, Encoded
from coral_core.codecs.words import bits, compress, decompress, field_dtype, from_bits
from coral_core.dtypes import FLOAT_DTYPES, dtype_name
from coral_core.errors import CorruptObjectError
from coral_core.planes import decode_planes, encode_planes

if TYPE_CHECKING:
    from coral_core.delta import DeltaConfig

#: (exponent bits, mantissa bits) of each float dtype.
_FIELDS = {
    "float64": (11, 52),
    "float32": (8, 23),
    "float16": (5, 10),
    "bfloat16": (8, 7),
    "float8_e4m3fn": (4, 3),
    "float8_e5m2": (5, 2),
}


def _encode(
    current: np.ndarray, reference: np.ndarray, config: DeltaConfig, _: tuple[int, int] | None
) -> Encoded:
    exp_bits, man_bits = _FIELDS[dtype_name(current.dtype)]
    xor = bits(current) ^ bits(reference)
    one = xor.dtype.type(1)
    sign = np.packbits((xor >> xor.dtype.type(exp_bits + man_bits)).astype(np.uint8))
    exponent = ((xor >> xor.dtype.type(man_bits)) & xor.dtype.type((1 << exp_bits) - 1)).astype(
        field_dtype(exp_bits)
    )
    mantissa = (xor & ((one << xor.dtype.type(man_bits)) - one)).astype(field_dtype(man_bits))
    level = config.compression_level
    parts = [
        compress(sign.data, level),
        compress(exponent.data, level),
        encode_planes(mantissa.data, mantissa.dtype.itemsize, level),
    ]
    return b"".join(parts), {}


def _decode(data: bytes | memoryview, _: dict[str, Any], reference: np.ndarray) -> np.ndarray:
    exp_bits, man_bits = _FIELDS[dtype_name(reference.dtype)]
    ref = bits(reference)
    count = ref.size
    view = memoryview(data)
    try:
        sign_raw, offset = decompress(view, 0, (count + 7) // 8)
        exp_dtype, man_dtype = field_dtype(exp_bits), field_dtype(man_bits)
        exp_raw, offset = decompress(view, offset, count * exp_dtype.itemsize)
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
    return from_bits(ref ^ xor, reference)


EXPONENT_MANTISSA = DeltaCodec(
    "exponent_mantissa", lossless=True, encode=_encode, decode=_decode, dtypes=FLOAT_DTYPES
)
CODECS = (EXPONENT_MANTISSA,)
