"""Byte-plane codec: bitwise round-trips for every item size and bit pattern."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core import CorruptObjectError
from coral_core.planes import decode_planes, encode_planes, rotate_left, rotate_right


@settings(max_examples=200, deadline=None)
@given(
    itemsize=st.sampled_from([1, 2, 4, 8]),
    data=st.binary(max_size=4096),
    rotate=st.booleans(),
    level=st.sampled_from([-1, 1, 3]),
)
def test_round_trip_is_bitwise(itemsize: int, data: bytes, rotate: bool, level: int) -> None:
    data = data[: len(data) - len(data) % itemsize]
    assert decode_planes(encode_planes(data, itemsize, level, rotate), len(data)) == data


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_special_values_and_compression(dtype: type) -> None:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(50_000) * 0.02).astype(dtype)
    values[:6] = [np.nan, -0.0, np.inf, -np.inf, np.finfo(dtype).smallest_subnormal, 0.0]
    raw = values.tobytes()
    encoded = encode_planes(raw, values.itemsize)
    assert decode_planes(encoded, len(raw)) == raw
    assert len(encoded) < 0.9 * len(raw)  # exponents compress


def test_rotation_is_invertible() -> None:
    words = np.array([0, 1, 2**31, 2**32 - 1, 0x80000001], dtype=np.uint32)
    assert np.array_equal(rotate_right(rotate_left(words)), words)
    assert rotate_left(words)[2] == 1  # the sign bit lands at the bottom


def test_damaged_payloads_raise() -> None:
    raw = np.arange(1000, dtype=np.float32).tobytes()
    encoded = encode_planes(raw, 4)
    for bad in (encoded[:-1], encoded + b"x", b"\x00\x01", encoded[:5]):
        with pytest.raises(CorruptObjectError):
            decode_planes(bad, len(raw))
    with pytest.raises(ValueError, match="whole number"):
        encode_planes(b"abc", 4)
