"""Hypothesis strategies for tensors of every dtype Coral stores, nasty bits included.

Values are drawn as raw bits and viewed as the dtype, so NaNs with payloads,
-0.0, infinities and subnormals all appear; :func:`special_values` builds
arrays from exactly those patterns.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from coral_core.dtypes import SUPPORTED_DTYPES, numpy_dtype

#: Bit patterns worth testing, per float width: NaN with payloads (quiet and
#: signalling, both signs), -0.0, +-inf, the smallest subnormal, the largest finite.
SPECIAL_BITS: dict[str, list[int]] = {
    "float64": [
        0x7FF8000000000001,
        0xFFF4000000000000,
        0x7FF0000000000001,
        0x8000000000000000,
        0x7FF0000000000000,
        0xFFF0000000000000,
        0x0000000000000001,
        0x7FEFFFFFFFFFFFFF,
    ],
    "float32": [
        0x7FC00001,
        0xFFA00000,
        0x7F800001,
        0x80000000,
        0x7F800000,
        0xFF800000,
        0x00000001,
        0x7F7FFFFF,
    ],
    "float16": [0x7E01, 0xFD00, 0x7C01, 0x8000, 0x7C00, 0xFC00, 0x0001, 0x7BFF],
    "bfloat16": [0x7FC1, 0xFFA0, 0x7F81, 0x8000, 0x7F80, 0xFF80, 0x0001, 0x7F7F],
    "float8_e4m3fn": [0x7F, 0xFF, 0x80, 0x01, 0x7E],
    "float8_e5m2": [0x7E, 0xFD, 0x7D, 0x80, 0x7C, 0xFC, 0x01, 0x7B],
}


def dtype_names(include_complex: bool = False) -> st.SearchStrategy[str]:
    """Names of the dtypes Coral stores."""
    names = [n for n in SUPPORTED_DTYPES if include_complex or not n.startswith("complex")]
    return st.sampled_from(names)


def shapes(max_dims: int = 3, max_side: int = 9) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes including 0-d and empty ones."""
    return st.lists(st.integers(0, max_side), max_size=max_dims).map(tuple)


@st.composite
def arrays(
    draw: st.DrawFn,
    dtype: str | None = None,
    shape: tuple[int, ...] | None = None,
    max_side: int = 9,
    max_bytes: int = 4096,
) -> np.ndarray:
    """A C-contiguous array of at most ``max_bytes`` whose bits are arbitrary
    (bool arrays hold 0 or 1)."""
    name = dtype or draw(dtype_names())
    np_dtype = numpy_dtype(name)
    if shape is None:
        fits = shapes(max_side=max_side).filter(
            lambda s: int(np.prod(s, dtype=np.int64)) * np_dtype.itemsize <= max_bytes
        )
        shape = draw(fits)
    count = int(np.prod(shape, dtype=np.int64))
    raw = draw(st.binary(min_size=count * np_dtype.itemsize, max_size=count * np_dtype.itemsize))
    if name == "bool":
        return (np.frombuffer(raw, dtype=np.uint8) & 1).astype(np.bool_).reshape(shape)
    special = SPECIAL_BITS.get(name)
    array = np.frombuffer(raw, dtype=np_dtype).copy()
    if special and count:
        # sprinkle the nasty patterns in, so every run meets some of them
        positions = draw(st.lists(st.integers(0, count - 1), max_size=min(count, 8)))
        words = array.view(f"u{np_dtype.itemsize}")
        for position in positions:
            words[position] = draw(st.sampled_from(special))
    return array.reshape(shape)


def special_values(dtype: str) -> np.ndarray:
    """An array of the dtype holding each of its nasty bit patterns once."""
    np_dtype = numpy_dtype(dtype)
    words = np.array(SPECIAL_BITS[dtype], dtype=f"u{np_dtype.itemsize}")
    return words.view(np_dtype)


def float_dtype_names() -> st.SearchStrategy[str]:
    """The float dtypes (the ones with special bit patterns)."""
    return st.sampled_from(list(SPECIAL_BITS))


__all__ = [
    "SPECIAL_BITS",
    "arrays",
    "dtype_names",
    "float_dtype_names",
    "shapes",
    "special_values",
]
