"""torch tensors <-> numpy arrays Coral stores, bit for bit and without needless copies.

A contiguous CPU tensor becomes a numpy view of the same memory; a CUDA (or
other device) tensor is copied to the CPU once; a non-contiguous one is made
contiguous once. dtypes numpy has no name for (bfloat16, float8) travel through
a same-width integer view and come out as ``ml_dtypes`` arrays, so no value is
ever converted.
"""

from __future__ import annotations

import numpy as np
import torch

from coral_core import UnsupportedDtypeError, dtype_name, numpy_dtype

#: Every torch dtype Coral stores, by Coral's dtype name.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint64": torch.uint64,
    "uint32": torch.uint32,
    "uint16": torch.uint16,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}
_CORAL_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}

#: dtypes torch cannot hand to numpy directly, and the integer views they travel as.
_CARRIERS: dict[torch.dtype, tuple[torch.dtype, type]] = {
    torch.bfloat16: (torch.int16, np.int16),
    torch.float8_e4m3fn: (torch.uint8, np.uint8),
    torch.float8_e5m2: (torch.uint8, np.uint8),
}


def coral_dtype(dtype: torch.dtype) -> str:
    """Coral's name for a torch dtype.

    Raises:
        UnsupportedDtypeError: for dtypes Coral does not store (quantized, float8 variants
            other than e4m3fn/e5m2, ...).
    """
    try:
        return _CORAL_NAMES[dtype]
    except KeyError:
        raise UnsupportedDtypeError(
            f"torch dtype {dtype} is not stored by Coral; supported: {', '.join(TORCH_DTYPES)}"
        ) from None


def to_array(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as a numpy array: a view of its memory when it is a
    contiguous CPU tensor, otherwise one copy."""
    name = coral_dtype(tensor.dtype)
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    carrier = _CARRIERS.get(tensor.dtype)
    if carrier is None:
        return tensor.numpy()
    return tensor.view(carrier[0]).numpy().view(numpy_dtype(name))


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing the array's memory (the array is copied only when it
    is not contiguous or not writable)."""
    torch_dtype = TORCH_DTYPES.get(dtype_name(array.dtype))
    if torch_dtype is None:
        raise UnsupportedDtypeError(f"numpy dtype {array.dtype} has no torch counterpart")
    if not array.flags.c_contiguous or not array.flags.writeable:
        array = np.array(array, order="C", copy=True)
    carrier = _CARRIERS.get(torch_dtype)
    if carrier is None:
        return torch.from_numpy(array)
    return torch.from_numpy(array.view(carrier[1])).view(torch_dtype)
