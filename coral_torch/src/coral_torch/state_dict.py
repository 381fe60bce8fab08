"""Models and state dicts in and out of a Coral repository.

``save_model`` commits a model's ``state_dict`` (parameters and persistent
buffers). Tensors that share memory, like embeddings tied to an LM head, are
stored once; the commit's metadata names the aliases (``coral_torch.ties``)
so :func:`load_state_dict` hands them back as one shared tensor.
``load_model`` copies a commit into a model in place, one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from coral_core import (
    Commit,
    Repository,
    TensorMismatchError,
    WeightMetadata,
    WeightsMismatchError,
    WeightTensor,
)
from coral_core.exports import TIES_KEY, tensor_aliases
from coral_torch.tensors import TORCH_DTYPES, to_array, to_tensor


class StateDictMismatchError(WeightsMismatchError):
    """A commit's tensors do not fit the module's ``state_dict``."""


def find_ties(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: first name}`` for entries that are the same memory viewed the
    same way (tied weights); empty tensors are never ties."""
    seen: dict[tuple[Any, ...], str] = {}
    ties = {}
    for name, tensor in state_dict.items():
        if tensor.numel() == 0:
            continue
        key = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if key in seen:
            ties[name] = seen[key]
        else:
            seen[key] = name
    return ties


def _module_types(model: torch.nn.Module) -> dict[str, str]:
    return {name: type(module).__name__ for name, module in model.named_modules()}


def state_dict_to_weights(
    state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module | None = None
) -> tuple[dict[str, WeightTensor], dict[str, str]]:
    """Coral tensors for a state dict (views of contiguous CPU tensors), and its ties.

    With ``model``, each tensor records the class of the module holding it
    (``layer_type``) and the model's class (``model_name``).
    """
    ties = find_ties(state_dict)
    layer_types = _module_types(model) if model is not None else {}
    model_name = type(model).__name__ if model is not None else None
    weights = {}
    for name, tensor in state_dict.items():
        if name in ties:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TensorMismatchError(
                f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor; "
                "put training state that is not a tensor in a TrainingState instead"
            )
        array = to_array(tensor)
        metadata = WeightMetadata(
            name=name,
            shape=array.shape,
            dtype=array.dtype,
            layer_type=layer_types.get(name.rpartition(".")[0]),
            model_name=model_name,
        )
        weights[name] = WeightTensor(array, metadata=metadata)
    return weights, ties


def save_model(
    repo: Repository,
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    message: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    author: str | None = None,
    tags: Sequence[str] = (),
    branch: str | None = None,
) -> Commit:
    """Commit a model's (or a state dict's) tensors as one snapshot.

    Args:
        repo: the repository.
        model: a module (its ``state_dict()``: parameters and persistent buffers)
            or a state dict.
        message, metrics, metadata, author, tags, branch: as in
            :meth:`coral_core.Repository.commit`; the commit moves ``branch``
            (HEAD's branch by default) and leaves the staging index alone.
    """
    module = model if isinstance(model, torch.nn.Module) else None
    state = module.state_dict() if module is not None else dict(model)  # type: ignore[arg-type]
    weights, ties = state_dict_to_weights(state, module)
    details = dict(metadata or {})
    if ties:
        details[TIES_KEY] = ties
    return repo.commit(
        message,
        author=author,
        metrics=metrics,
        metadata=details,
        tags=tags,
        weights=weights,
        branch=branch,
    )


def load_state_dict(repo: Repository, ref: str | None = None) -> dict[str, torch.Tensor]:
    """A commit's tensors as CPU torch tensors by name (tied names share one tensor)."""
    commit = repo.show(ref)
    weights = repo.get_all_weights(commit.commit_hash)
    state = {name: to_tensor(w.data) for name, w in weights.items()}
    for alias, name in tensor_aliases(commit).items():
        if name in state:
            state[alias] = state[name]
    return state


def load_model(
    repo: Repository, model: torch.nn.Module, ref: str | None = None, strict: bool = True
) -> Commit:
    """Copy a commit's tensors into ``model`` in place (on whatever device it is).

    Tensors are restored one at a time, so the extra memory is one tensor, not
    the model. Returns the commit loaded.

    Raises:
        StateDictMismatchError: with ``strict``, when names are missing or
            unexpected; always, when a name matches but its shape or dtype does
            not. The model is unchanged then.
    """
    commit = repo.show(ref)
    tree = repo.ls_tree(commit.commit_hash)
    ties = tensor_aliases(commit)
    targets = model.state_dict()
    stored = set(tree) | {alias for alias, name in ties.items() if name in tree}
    missing = [name for name in targets if name not in stored]
    unexpected = [name for name in stored if name not in targets]
    misshapen = [
        name
        for name, entry in tree.items()
        if name in targets
        and (
            tuple(targets[name].shape) != entry.shape
            or targets[name].dtype != TORCH_DTYPES.get(entry.dtype)
        )
    ]
    if misshapen or (strict and (missing or unexpected)):
        raise StateDictMismatchError(missing, unexpected, misshapen)
    with torch.no_grad():
        for weight in repo.iter_weights(commit.commit_hash):
            if weight.name not in targets:
                continue
            source = to_tensor(weight.data)
            targets[weight.name].copy_(source)
            for alias, name in ties.items():  # aliases the model does not tie itself
                if (
                    name == weight.name
                    and alias in targets
                    and not _same_memory(targets[alias], targets[name])
                ):
                    targets[alias].copy_(source)
    return commit


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
