"""torch's training state in and out of :class:`~coral_core.TrainingState`.

Optimizer, scheduler and grad-scaler ``state_dict()`` values are nested dicts,
lists and tuples with tensors at some leaves; :func:`to_numpy_tree` turns the
tensors into numpy arrays (bitwise, every dtype) so the core stores them as
tensors of the commit, and :func:`to_torch_tree` turns them back.
:func:`capture_rng` / :func:`restore_rng` cover Python's, numpy's, torch's CPU
and (when initialized) CUDA generators.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from coral_torch.tensors import to_array, to_tensor


def to_numpy_tree(value: Any, copy: bool = False, reuse: Any = None) -> Any:
    """``value`` with every torch tensor replaced by a numpy array (a view of a
    contiguous CPU tensor, or a copy with ``copy``, for a snapshot that must
    not change while training goes on).

    With ``copy``, arrays of ``reuse`` (an earlier result for the same kind of
    state) are overwritten where shape and dtype match, instead of allocating:
    fresh memory costs a page fault per 4 KiB, often more than the copy.
    """
    if isinstance(value, torch.Tensor):
        array = to_array(value)
        if not copy:
            return array
        if (
            isinstance(reuse, np.ndarray)
            and reuse.shape == array.shape
            and reuse.dtype == array.dtype
        ):
            np.copyto(reuse, array)
            return reuse
        return array.copy()
    if isinstance(value, Mapping):
        earlier = reuse if isinstance(reuse, Mapping) else {}
        return {key: to_numpy_tree(item, copy, earlier.get(key)) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        before = list(reuse) if isinstance(reuse, (tuple, list)) else []
        before += [None] * (len(value) - len(before))
        items = [to_numpy_tree(item, copy, old) for item, old in zip(value, before, strict=False)]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def to_torch_tree(value: Any) -> Any:
    """The inverse of :func:`to_numpy_tree`: numpy arrays become CPU tensors."""
    if isinstance(value, np.ndarray):
        return to_tensor(value)
    if isinstance(value, Mapping):
        return {key: to_torch_tree(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_torch_tree(item) for item in value)
    if isinstance(value, list):
        return [to_torch_tree(item) for item in value]
    return value


def capture_rng() -> dict[str, Any]:
    """The state of every random generator a training step may draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": to_array(torch.get_rng_state()).copy(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = [to_array(s).copy() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put the generators back where :func:`capture_rng` found them."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np.random.set_state(tuple(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(to_tensor(np.asarray(state["torch"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([to_tensor(np.asarray(s)) for s in state["cuda"]])
