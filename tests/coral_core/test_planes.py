"""Byte-plane codec: bitwise round-trips for every item size and bit pattern; scratch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core import CorruptObjectError
from coral_core.planes import decode_planes, decode_planes_into, encode_planes
from coral_core.scratch import MAX_KEPT, scratch


@settings(max_examples=200, deadline=None)
@given(
    itemsize=st.sampled_from([1, 2, 4, 8]),
    data=st.binary(max_size=4096),
    level=st.sampled_from([-1, 1, 3, 22]),
)
def test_round_trip_is_bitwise(itemsize: int, data: bytes, level: int) -> None:
    data = data[: len(data) - len(data) % itemsize]
    assert decode_planes(encode_planes(data, itemsize, level), len(data)) == data


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_special_values_and_compression(dtype: type) -> None:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(1 << 19) * 0.02).astype(dtype)
    values[:6] = [np.nan, -0.0, np.inf, -np.inf, np.finfo(dtype).smallest_subnormal, 0.0]
    raw = values.tobytes()
    encoded = encode_planes(raw, values.itemsize)
    assert decode_planes(encoded, len(raw)) == raw
    assert len(encoded) < 0.9 * len(raw)  # exponents compress


def test_damaged_payloads_raise() -> None:
    raw = np.arange(1000, dtype=np.float32).tobytes()
    encoded = encode_planes(raw, 4)
    for bad in (encoded[:-1], encoded + b"x", b"\x00\x01", encoded[:5]):
        with pytest.raises(CorruptObjectError):
            decode_planes(bad, len(raw))
    with pytest.raises(ValueError, match="whole number"):
        encode_planes(b"abc", 4)


@settings(max_examples=100, deadline=None)
@given(itemsize=st.sampled_from([1, 2, 4, 8]), data=st.binary(max_size=4096))
def test_decoding_into_a_buffer_matches_decoding_to_bytes(itemsize: int, data: bytes) -> None:
    data = data[: len(data) - len(data) % itemsize]
    encoded = encode_planes(data, itemsize)
    out = np.full(len(data), 0xAA, dtype=np.uint8)
    decode_planes_into(encoded, out)
    assert out.tobytes() == data == decode_planes(encoded, len(data))


def test_decoding_into_a_buffer_of_another_size_is_refused_before_writing() -> None:
    encoded = encode_planes(np.arange(100, dtype=np.float32).tobytes(), 4)
    for size in (399, 401, 0):
        out = np.zeros(size, dtype=np.uint8)
        with pytest.raises(CorruptObjectError):
            decode_planes_into(encoded, out)
        assert not out.any()
    with pytest.raises(ValueError, match="writable"):
        decode_planes_into(encoded, np.zeros(800, dtype=np.uint8)[::2])


def test_scratch_buffers_are_per_slot_and_per_thread() -> None:
    first, second = scratch(0, 1000, np.uint32), scratch(1, 1000, np.uint32)
    first[:], second[:] = 1, 2
    assert first.dtype == np.uint32
    assert first.size == 1000
    assert (first == 1).all()
    again = scratch(0, 10, np.uint8)
    assert again.ctypes.data == first.ctypes.data  # the same memory, reused
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(scratch(0, 10, np.uint8).ctypes.data))
    thread.start()
    thread.join()
    assert seen != [first.ctypes.data]
    huge = scratch(0, MAX_KEPT + 1, np.uint8)
    assert huge.ctypes.data != first.ctypes.data  # fresh memory, not kept
    assert scratch(0, 10, np.uint8).ctypes.data == first.ctypes.data
