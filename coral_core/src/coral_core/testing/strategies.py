"""Hypothesis strategies for tensors of every dtype Coral stores, nasty bits included.

Values are drawn as raw bytes and viewed as the dtype, so NaNs with payloads,
-0.0, infinities and subnormals all appear; :func:`special_float_bits` and
:func:`special_values` build arrays from exactly those patterns.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from coral_core.dtypes import SUPPORTED_DTYPES, numpy_dtype

# (exponent bits, mantissa bits) of the IEEE-like float formats.
_IEEE_LAYOUTS: dict[str, tuple[int, int]] = {
    "float64": (11, 52),
    "float32": (8, 23),
    "float16": (5, 10),
    "bfloat16": (8, 7),
    "float8_e5m2": (5, 2),
}

#: complex dtypes are pairs of these float components
COMPLEX_COMPONENTS: dict[str, str] = {"complex64": "float32", "complex128": "float64"}


def _ieee_patterns(exponent_bits: int, mantissa_bits: int) -> dict[str, int]:
    sign = 1 << (exponent_bits + mantissa_bits)
    all_ones = ((1 << exponent_bits) - 1) << mantissa_bits
    quiet = 1 << (mantissa_bits - 1)
    max_finite = all_ones - 1
    return {
        "quiet_nan_with_payload": all_ones | quiet | 1,
        "negative_signalling_nan_with_payload": sign | all_ones | (quiet >> 1),
        "signalling_nan": all_ones | 1,
        "zero": 0,
        "negative_zero": sign,
        "inf": all_ones,
        "negative_inf": sign | all_ones,
        "smallest_subnormal": 1,
        "negative_smallest_subnormal": sign | 1,
        "smallest_normal": 1 << mantissa_bits,
        "max_finite": max_finite,
        "negative_max_finite": sign | max_finite,
    }


#: Named bit patterns worth testing, per float dtype. float8_e4m3fn has no
#: infinities and a single NaN (S.1111.111), so it gets its own list.
SPECIAL_PATTERNS: dict[str, dict[str, int]] = {
    **{name: _ieee_patterns(*layout) for name, layout in _IEEE_LAYOUTS.items()},
    "float8_e4m3fn": {
        "nan": 0x7F,
        "negative_nan": 0xFF,
        "zero": 0x00,
        "negative_zero": 0x80,
        "smallest_subnormal": 0x01,
        "negative_smallest_subnormal": 0x81,
        "smallest_normal": 0x08,
        "max_finite": 0x7E,
        "negative_max_finite": 0xFE,
    },
}

#: The same patterns as plain lists of unsigned integers.
SPECIAL_BITS: dict[str, list[int]] = {
    name: list(patterns.values()) for name, patterns in SPECIAL_PATTERNS.items()
}

#: The float dtypes, the ones with special bit patterns.
FLOAT_DTYPE_NAMES: tuple[str, ...] = tuple(SPECIAL_BITS)


def dtype_names(include_complex: bool = True) -> st.SearchStrategy[str]:
    """Names of the dtypes Coral stores (:data:`coral_core.dtypes.SUPPORTED_DTYPES`)."""
    names = [n for n in SUPPORTED_DTYPES if include_complex or n not in COMPLEX_COMPONENTS]
    return st.sampled_from(names)


def float_dtype_names() -> st.SearchStrategy[str]:
    """The float dtypes (the ones with special bit patterns)."""
    return st.sampled_from(FLOAT_DTYPE_NAMES)


def shapes(max_dims: int = 3, max_side: int = 9) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes including 0-d and empty ones."""
    return st.lists(st.integers(0, max_side), max_size=max_dims).map(tuple)


@st.composite
def _bounded_shapes(
    draw: st.DrawFn, max_elements: int, max_dims: int, max_side: int
) -> tuple[int, ...]:
    """A shape of at most ``max_elements`` elements (any number when a side is 0)."""
    ndim = draw(st.integers(0, max_dims))
    dims: list[int] = []
    product = 1
    for _ in range(ndim):
        room = max_side if product == 0 else min(max_side, max_elements // product)
        side = draw(st.integers(0, room))
        dims.append(side)
        product *= side
    return tuple(dims)


def _word_dtype(name: str) -> tuple[np.dtype[np.unsignedinteger], list[int] | None]:
    """The unsigned word a dtype's special patterns live in, and those patterns."""
    component = COMPLEX_COMPONENTS.get(name, name)
    itemsize = numpy_dtype(component).itemsize
    return np.dtype(f"u{itemsize}"), SPECIAL_BITS.get(component)


@st.composite
def arrays(
    draw: st.DrawFn,
    dtype: str | None = None,
    shape: tuple[int, ...] | None = None,
    max_side: int = 9,
    max_bytes: int = 4096,
    max_dims: int = 3,
) -> np.ndarray:
    """A C-contiguous array whose bits are arbitrary.

    The bytes are drawn raw and viewed as ``dtype`` (any supported dtype when
    None), then a few elements (or complex components) are overwritten with the
    dtype's special bit patterns, so every run meets some of them. Shapes
    include 0-d and empty ones; the array holds at most ``max_bytes`` (unless
    a ``shape`` is given). bool arrays hold 0 or 1.
    """
    name = dtype or draw(dtype_names())
    np_dtype = numpy_dtype(name)
    if shape is None:
        max_elements = max(max_bytes // np_dtype.itemsize, 1)
        shape = draw(_bounded_shapes(max_elements, max_dims, max_side))
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * np_dtype.itemsize
    raw = draw(st.binary(min_size=nbytes, max_size=nbytes))
    if name == "bool":
        return (np.frombuffer(raw, dtype=np.uint8) & 1).astype(np.bool_).reshape(shape)
    array = np.frombuffer(raw, dtype=np_dtype).copy()
    word, special = _word_dtype(name)
    if special and count:
        words = array.view(word)
        positions = draw(st.lists(st.integers(0, words.size - 1), max_size=min(words.size, 8)))
        for position in positions:
            words[position] = draw(st.sampled_from(special))
    return array.reshape(shape)


def special_values(dtype: str) -> np.ndarray:
    """A 1-d array of the float dtype holding each of its special bit patterns once."""
    np_dtype = numpy_dtype(dtype)
    words = np.array(SPECIAL_BITS[dtype], dtype=f"u{np_dtype.itemsize}")
    return words.view(np_dtype)


@st.composite
def special_float_bits(draw: st.DrawFn, dtype: str | None = None, max_size: int = 64) -> np.ndarray:
    """A 1-d array of a float dtype made only of its special bit patterns.

    Signalling and quiet NaNs with payloads, -0.0, +-inf, the smallest
    subnormal and the largest finite value, in any order and multiplicity
    (sometimes all of them, sometimes none).
    """
    name = dtype or draw(float_dtype_names())
    bits = SPECIAL_BITS[name]
    chosen = draw(
        st.one_of(
            st.permutations(bits),
            st.lists(st.sampled_from(bits), max_size=max_size),
        )
    )
    np_dtype = numpy_dtype(name)
    return np.array(chosen, dtype=f"u{np_dtype.itemsize}").view(np_dtype)


__all__ = [
    "COMPLEX_COMPONENTS",
    "FLOAT_DTYPE_NAMES",
    "SPECIAL_BITS",
    "SPECIAL_PATTERNS",
    "arrays",
    "dtype_names",
    "float_dtype_names",
    "shapes",
    "special_float_bits",
    "special_values",
]
