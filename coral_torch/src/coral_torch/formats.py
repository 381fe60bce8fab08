"""``.pt`` / ``.pth`` / ``.bin`` files: read with ``torch.load(weights_only=True)`` only.

A full pickle can run any code while it loads, so a file that needs one is
refused with :class:`~coral_core.UnsafeModelFileError`, whose message says how
to convert it in a process you trust. Nested checkpoints (``{"state_dict":
{...}, "epoch": 3}``, as Lightning and most training scripts write them) are
flattened to dotted names; values that are not tensors are left out.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coral_core import ModelFileError, ModelFormat, UnsafeModelFileError
from coral_torch.tensors import to_array, to_tensor

SUFFIXES = (".pt", ".pth", ".bin")


def _tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}.{index}" if prefix else str(index))


def load_torch_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a torch file, by (dotted) name, as numpy arrays.

    Raises:
        UnsafeModelFileError: when reading it would need a full (code-running) unpickle.
        ModelFileError: when it is truncated, not a torch file, or holds no tensor.
    """
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise ModelFileError(f"{path} is not a readable torch file: {exc}") from None
        raise UnsafeModelFileError(
            f"{path} holds Python objects that only a full unpickle can rebuild, and "
            "unpickling can run code from the file, so Coral reads torch files with "
            "weights_only=True only. If you trust the file, convert it in a separate "
            "Python: torch.save(torch.load(path, weights_only=False).state_dict(), "
            "'weights.pt') and add that instead."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ModelFileError(f"{path} is not a readable torch file: {exc}") from None
    arrays = {name: to_array(tensor) for name, tensor in _tensors(loaded)}
    if not arrays:
        raise ModelFileError(f"{path} holds no tensors")
    return arrays


def save_torch_file(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write tensors as a torch state dict file (``torch.save``) readable with
    ``weights_only=True``."""
    torch.save({name: to_tensor(array) for name, array in arrays.items()}, Path(path))


#: The ``coral.formats`` plugin (entry point ``torch``) for ``.pt`` / ``.pth`` / ``.bin``.
TORCH_FORMAT = ModelFormat("torch", SUFFIXES, load_torch_file, save_torch_file)
