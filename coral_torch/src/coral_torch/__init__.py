"""Coral for PyTorch: models and state dicts in and out of a repository, bit for bit."""

__version__ = "0.1.0"

from typing import Any

from coral_core.exports import TIES_KEY
from coral_torch.formats import load_torch_file, save_torch_file
from coral_torch.state_dict import (
    StateDictMismatchError,
    find_ties,
    load_model,
    load_state_dict,
    save_model,
    state_dict_to_weights,
)
from coral_torch.tensors import TORCH_DTYPES, coral_dtype, to_array, to_tensor
from coral_torch.trainer import CoralTrainer, optimizer_hyperparameters
from coral_torch.training_state import capture_rng, restore_rng, to_numpy_tree, to_torch_tree

__all__ = [
    "TIES_KEY",
    "CoralReader",
    "CoralTrainer",
    "optimizer_hyperparameters",
    "CoralWriter",
    "TORCH_DTYPES",
    "StateDictMismatchError",
    "capture_rng",
    "coral_dtype",
    "find_ties",
    "load_model",
    "load_state_dict",
    "load_torch_file",
    "restore_rng",
    "save_model",
    "save_torch_file",
    "state_dict_to_weights",
    "to_array",
    "to_numpy_tree",
    "to_tensor",
    "to_torch_tree",
]


def __getattr__(name: str) -> Any:
    """``CoralWriter`` / ``CoralReader`` import ``torch.distributed.checkpoint``
    (half a second, and absent from some torch builds) only when used."""
    if name in ("CoralWriter", "CoralReader"):
        from coral_torch import dcp

        return getattr(dcp, name)
    raise AttributeError(f"module 'coral_torch' has no attribute {name!r}")
