"""The dtypes a checkpoint can hold, by canonical name.

Coral names every dtype with one canonical string (``"bfloat16"``,
``"float8_e4m3fn"``, ...) and maps it to a numpy dtype; bfloat16 and float8
come from ``ml_dtypes`` because numpy has no such types.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from coral_core.errors import UnsupportedDtypeError

_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint64": np.dtype(np.uint64),
    "uint32": np.dtype(np.uint32),
    "uint16": np.dtype(np.uint16),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
}

_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
    "fp64": "float64",
    "double": "float64",
    "bool_": "bool",
    "f8_e4m3fn": "float8_e4m3fn",
    "f8_e5m2": "float8_e5m2",
}

#: Every dtype name Coral stores, widest floats first.
SUPPORTED_DTYPES: tuple[str, ...] = tuple(_NUMPY_DTYPES)

FLOAT_DTYPES: frozenset[str] = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}
)


def dtype_name(dtype: Any) -> str:
    """Return Coral's canonical name for ``dtype``.

    Accepts numpy dtypes and scalar types, ml_dtypes types, and names such as
    ``"float32"``, ``"bf16"`` or ``"torch.bfloat16"``.

    Raises:
        UnsupportedDtypeError: for a dtype Coral cannot store.
    """
    if isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.").removeprefix("tf.")
        name = _ALIASES.get(name, name)
        if name in _NUMPY_DTYPES:
            return name
    else:
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            np_dtype = None
        if np_dtype is not None:
            for name, candidate in _NUMPY_DTYPES.items():
                if candidate == np_dtype:
                    return name
    raise UnsupportedDtypeError(
        f"dtype {dtype!r} cannot be stored by Coral; supported: {', '.join(SUPPORTED_DTYPES)}"
    )


def numpy_dtype(dtype: Any) -> np.dtype[Any]:
    """Return the numpy dtype for a canonical name (or anything :func:`dtype_name` takes)."""
    return _NUMPY_DTYPES[dtype_name(dtype)]


def bits_dtype(dtype: Any) -> np.dtype[Any]:
    """Return the unsigned integer dtype with the same width, for bitwise views."""
    itemsize = numpy_dtype(dtype).itemsize
    return np.dtype(f"u{min(itemsize, 8)}")  # complex128 compares as pairs of uint64


def bit_view(array: np.ndarray) -> np.ndarray:
    """View ``array`` as unsigned integers of the same width (no copy).

    Two arrays are bitwise equal exactly when their bit views are equal, NaN
    payloads and -0.0 included.
    """
    contiguous = array if array.flags.c_contiguous else array.copy(order="C")
    if contiguous.dtype.itemsize > 8:
        contiguous = contiguous.reshape(-1)
    return contiguous.view(bits_dtype(contiguous.dtype))
