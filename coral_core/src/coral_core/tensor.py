"""``WeightTensor`` and ``WeightMetadata``: an array with its name and identity."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coral_core.dtypes import dtype_name, numpy_dtype
from coral_core.errors import TensorMismatchError
from coral_core.hashing import tensor_hasher


@dataclass
class WeightMetadata:
    """What Coral knows about a tensor besides its values.

    ``dtype`` accepts numpy dtypes and names (``np.float32``, ``"bfloat16"``);
    it is kept as a numpy dtype, and :attr:`dtype_name` gives Coral's name.
    """

    name: str
    shape: tuple[int, ...]
    dtype: Any
    layer_type: str | None = None
    model_name: str | None = None
    compression_info: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in self.shape):
            raise TensorMismatchError(f"tensor {self.name!r}: negative dimension in {self.shape}")
        self.dtype = numpy_dtype(self.dtype)

    @property
    def dtype_name(self) -> str:
        """Coral's canonical dtype name, such as ``"bfloat16"``."""
        return dtype_name(self.dtype)


class WeightTensor:
    """An array plus its metadata; the unit Coral versions.

    Args:
        data: the values. Non-contiguous arrays are made contiguous once.
        metadata: name, shape and dtype. Inferred from ``data`` when omitted;
            when given, it must agree with ``data``.

    Raises:
        TensorMismatchError: when ``data`` does not match ``metadata``.
    """

    __slots__ = ("_data", "metadata")

    def __init__(
        self,
        data: np.ndarray,
        metadata: WeightMetadata | None = None,
        *,
        name: str = "",
    ) -> None:
        array = np.asarray(data)
        if not array.dtype.isnative:  # big-endian: stored by value, in this machine's order
            array = array.astype(array.dtype.newbyteorder("="))
        if metadata is None:
            metadata = WeightMetadata(name=name, shape=array.shape, dtype=array.dtype)
        if array.shape != metadata.shape:
            raise TensorMismatchError(
                f"tensor {metadata.name!r}: data has shape {array.shape}, "
                f"metadata says {metadata.shape}"
            )
        if array.dtype != metadata.dtype:
            raise TensorMismatchError(
                f"tensor {metadata.name!r}: data has dtype {array.dtype}, "
                f"metadata says {metadata.dtype}; cast the data or fix the metadata"
            )
        dtype_name(array.dtype)  # refuse unsupported dtypes early
        self._data = array if array.flags.c_contiguous else array.copy(order="C")
        self.metadata = metadata

    @property
    def data(self) -> np.ndarray:
        """The values (C-contiguous)."""
        return self._data

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.metadata.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._data.dtype

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(self._data.size)

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    def raw_bytes(self) -> memoryview:
        """The tensor's bytes in C order, without a copy."""
        return self._data.reshape(-1).view(np.uint8).data

    def compute_hash(self) -> str:
        """Content id: xxh3-128 over dtype, shape and bytes.

        Not cached, so it stays right if the array is changed in place.
        """
        hasher = tensor_hasher(self.metadata.dtype_name, self.shape)
        hasher.update(self.raw_bytes())
        return hasher.hexdigest()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The array protocol: ``np.asarray(weight)``, ``np.array_equal(weight, array)``."""
        if dtype is not None and np.dtype(dtype) != self._data.dtype:
            return self._data.astype(dtype)
        return self._data.copy() if copy else self._data

    def __repr__(self) -> str:
        return (
            f"WeightTensor(name={self.name!r}, shape={self.shape}, "
            f"dtype={self.metadata.dtype_name})"
        )


def as_weight(value: Any, name: str = "") -> WeightTensor:
    """``value`` as a :class:`WeightTensor`: one already, a numpy array, or a
    framework's tensor (a PyTorch tensor of a ``state_dict()``, bfloat16
    included, is copied off its device; anything else with the array protocol
    is read through it)."""
    if isinstance(value, WeightTensor):
        return value
    detach = getattr(value, "detach", None)
    if detach is not None and hasattr(value, "cpu"):  # a PyTorch tensor
        tensor = detach().cpu().contiguous()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16: through its bits
            torch = sys.modules["torch"]  # (imported by whoever made the tensor)
            array = tensor.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
        else:
            array = tensor.numpy()
        return WeightTensor(array.copy(), name=name)
    return WeightTensor(np.asarray(value), name=name)
