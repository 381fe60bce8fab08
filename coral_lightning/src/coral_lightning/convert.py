"""Lightning's checkpoint dict in and out of a Coral commit, without pickles.

A Lightning checkpoint (what ``trainer.save_checkpoint`` hands a
``CheckpointIO``) is a dict: the model's ``state_dict``, ``optimizer_states``,
``lr_schedulers``, ``loops``, ``callbacks``, the precision plugin's state,
hyper-parameters and whatever ``on_save_checkpoint`` hooks add. In a commit
the ``state_dict`` becomes the commit's tensors (tied weights stored once);
the optimizer and scheduler states, the random generators' state (Lightning's
own checkpoints do not hold it) and every other entry become a
:class:`~coral_core.TrainingState`, stored as JSON and tensors.
:func:`checkpoint_from_commit` rebuilds the dict Lightning expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from coral_core import CoralError, Repository, TensorMismatchError, TrainingState, WeightTensor
from coral_torch import (
    TIES_KEY,
    capture_rng,
    load_state_dict,
    restore_rng,
    state_dict_to_weights,
    to_numpy_tree,
    to_torch_tree,
)

#: ``TrainingState.extra`` key of the checkpoint entries that have no field of their own.
ENTRIES_KEY = "coral_lightning.checkpoint"
#: Checkpoint entry naming the commit a loaded checkpoint came from (so the
#: run that resumes knows it; it is never stored).
COMMIT_KEY = "coral_commit"
#: Checkpoint entry with the random generators' state at the save (Lightning's
#: own checkpoints hold none); taken out when restored.
RANDOM_STATE_KEY = "coral_random_state"
#: Checkpoint entries that live elsewhere in the commit (or nowhere).
_OWN_PLACES = (
    "state_dict",
    "optimizer_states",
    "lr_schedulers",
    "epoch",
    "global_step",
    COMMIT_KEY,
    RANDOM_STATE_KEY,
)


class UnstorableCheckpointError(CoralError, TypeError):
    """A Lightning checkpoint holds a value Coral cannot store without a pickle."""


def check_storable(name: str, value: Any) -> None:
    """Refuse now what a checkpoint could not store later (hyperparameters that
    are classes or Namespaces, say): before the first epoch trains, not after.

    Raises:
        UnstorableCheckpointError: naming the entry.
    """
    try:
        TrainingState(extra={name: to_numpy_tree(value)}).to_storage()
    except TensorMismatchError as error:
        where = str(error).replace("extra/", "")
        raise UnstorableCheckpointError(
            f"cannot commit {name}: {where}. Coral stores checkpoints as JSON and tensors, "
            "never as pickles: make it a plain value (for hyper-parameters, "
            "save_hyperparameters() of numbers, strings, lists and dicts)"
        ) from None


def checkpoint_to_commit(
    checkpoint: Mapping[str, Any],
    model: torch.nn.Module | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> tuple[dict[str, WeightTensor], TrainingState, dict[str, Any]]:
    """The weights, training state and commit metadata for a Lightning checkpoint.

    Args:
        checkpoint: the dict Lightning builds (``state_dict`` required).
        model: the LightningModule, to record each tensor's layer type.
        metrics: the numbers to record with the commit.

    Raises:
        UnstorableCheckpointError: naming the entry that is not a dict, list,
            tuple, number, string, None or tensor (a class, a Namespace, ...).
    """
    if not isinstance(checkpoint.get("state_dict"), Mapping):
        raise UnstorableCheckpointError(
            "the Lightning checkpoint has no 'state_dict'; Coral commits the model's tensors"
        )
    try:
        weights, ties = state_dict_to_weights(checkpoint["state_dict"], model)
        optimizers = checkpoint.get("optimizer_states")
        rest = {key: value for key, value in checkpoint.items() if key not in _OWN_PLACES}
        state = TrainingState(
            epoch=int(checkpoint.get("epoch", 0)),
            global_step=int(checkpoint.get("global_step", 0)),
            learning_rate=_learning_rate(optimizers),
            metrics=plain_metrics(metrics or {}),
            optimizer_state=to_numpy_tree(optimizers),
            scheduler_state=to_numpy_tree(checkpoint.get("lr_schedulers")),
            random_state=capture_rng(),
            extra={ENTRIES_KEY: to_numpy_tree(rest)},
        )
        state.to_storage()  # refuse before anything is written
    except TensorMismatchError as error:
        where = str(error).replace(f"extra/{ENTRIES_KEY}/", "")  # Lightning's own key names
        raise UnstorableCheckpointError(
            f"cannot commit this Lightning checkpoint: {where}. Coral stores checkpoints as "
            "JSON and tensors, never as pickles: make that entry a plain value (for "
            "hyper-parameters, save_hyperparameters() of numbers, strings, lists and dicts)"
        ) from None
    metadata: dict[str, Any] = {TIES_KEY: ties} if ties else {}
    return weights, state, metadata


def checkpoint_from_commit(repo: Repository, commit: str) -> dict[str, Any]:
    """The Lightning checkpoint dict a commit holds.

    A commit without a training state (``coral_torch.save_model``, ``coral-ml
    commit``) gives a weights-only checkpoint, enough for ``validate``/``test``/
    ``predict`` or fine-tuning from it.

    The dict also names the commit (:data:`COMMIT_KEY`), so a run that resumes
    from it goes on with the run that made it, and carries the random
    generators' state at the save (:data:`RANDOM_STATE_KEY`; see
    :func:`restore_random_state`). Every value is a tensor or a plain Python
    value: ``torch.load(weights_only=True)`` takes the dict ``torch.save`` makes.

    Raises:
        PrunedCommitError: when retention pruned the commit's weights.
    """
    state = repo.training_state(commit)
    checkpoint: dict[str, Any] = {"pytorch-lightning_version": pl.__version__}  # type: ignore[attr-defined]
    if state is not None:
        checkpoint.update(to_torch_tree(state.extra.get(ENTRIES_KEY) or {}))
        checkpoint["epoch"], checkpoint["global_step"] = state.epoch, state.global_step
        if state.optimizer_state is not None:
            checkpoint["optimizer_states"] = to_torch_tree(state.optimizer_state)
        if state.scheduler_state is not None:
            checkpoint["lr_schedulers"] = to_torch_tree(state.scheduler_state)
        if state.random_state is not None:
            checkpoint[RANDOM_STATE_KEY] = to_torch_tree(state.random_state)
    checkpoint["state_dict"] = load_state_dict(repo, commit)
    checkpoint[COMMIT_KEY] = commit
    return checkpoint


def restore_random_state(checkpoint: dict[str, Any]) -> bool:
    """Put the random generators back as they were when a Coral checkpoint was
    saved, once: the state leaves the dict. False when it holds none (a
    ``.ckpt`` file's, or one restored already)."""
    state = checkpoint.pop(RANDOM_STATE_KEY, None)
    if not isinstance(state, Mapping):
        return False
    restore_rng(to_numpy_tree(state))
    return True


def _learning_rate(optimizers: Any) -> float | None:
    try:
        return float(optimizers[0]["param_groups"][0]["lr"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def plain_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int | str | bool]:
    """Scalar metrics as Python numbers; tensors of more than one value and
    non-finite numbers are left out (a commit's metrics are ranked and shown)."""
    plain: dict[str, float | int | str | bool] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, (int, float, str, bool)):
            plain[str(name)] = value
    return plain
