"""``CoralTrainerCallback``: every checkpoint ``transformers.Trainer`` saves becomes a commit.

The Trainer decides when (``save_strategy``, ``save_steps``); at each
``on_save`` the callback hands the model's tensors and a
:class:`~coral_core.TrainingState` to a :class:`~coral_core.CheckpointManager`,
which commits, moves the run's ``best`` pointer (``<experiment>/best``; the
metric and direction come from ``metric_for_best_model`` /
``greater_is_better``) and prunes what the retention rules no longer keep.
The state holds the optimizer, scheduler, grad-scaler and random-generator
state as tensors and JSON, plus the Trainer's own ``TrainerState`` as JSON;
no pickle goes into the repository.

To resume, :func:`checkout_checkpoint` writes a commit out as the folder the
Trainer reads (``trainer.train(resume_from_checkpoint=folder)``): the weights
bit for bit as ``model.safetensors``, and ``optimizer.pt``, ``scheduler.pt``,
``rng_state.pth`` and ``trainer_state.json`` made from the stored state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    ConfigError,
    CoralError,
    Repository,
    TrainingState,
)
from coral_hf.pretrained import FILES_KEY, config_files, write_model_folder
from coral_torch import (
    TIES_KEY,
    capture_rng,
    state_dict_to_weights,
    to_numpy_tree,
    to_tensor,
    to_torch_tree,
)

#: ``TrainingState.extra`` key of the Trainer's ``TrainerState`` (its ``trainer_state.json``).
TRAINER_STATE_KEY = "coral_hf.trainer_state"


class CoralTrainerCallback(TrainerCallback):
    """Commits each checkpoint the Trainer saves into a Coral repository.

    Args:
        repo: a :class:`~coral_core.Repository`, or the folder of one (created if needed).
        experiment_name: names the run's checkpoints and its ``<name>/best`` pointer
            (default ``"training"``).
        config: retention (``max_checkpoints``, ``keep_best_n_checkpoints``),
            ``tag_best_checkpoints``, ``include_optimizer`` and ``branch``. When to
            save is the Trainer's ``save_strategy``, so the ``save_every_*`` and
            ``save_last`` fields are not used; ``save_on_best_metric`` and its
            direction come from ``metric_for_best_model`` / ``greater_is_better``
            when those are set.
        push_to, push_strategy: push the run as it trains (see
            :class:`~coral_core.CheckpointConfig`; the Trainer's ``push_to_hub`` /
            ``hub_strategy`` for a Coral remote); the end of ``train`` waits.
        hyperparameters: recorded with each checkpoint (default: the
            ``TrainingArguments`` a sweep varies, and the model's type).

    Only the main process (``state.is_world_process_zero``) commits. The
    manager exists from ``on_train_begin`` on (``callback.manager``).
    """

    def __init__(
        self,
        repo: Repository | str | os.PathLike[str],
        experiment_name: str | None = None,
        config: CheckpointConfig | None = None,
        *,
        push_to: str | None = None,
        push_strategy: Literal["every_save", "end"] = "every_save",
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.repo = repo if isinstance(repo, Repository) else Repository(repo, init=True)
        self.experiment_name = experiment_name or "training"
        config = config or CheckpointConfig()
        if push_to is not None:
            config = dataclasses.replace(config, push_to=push_to, push_strategy=push_strategy)
        self.hyperparameters = dict(hyperparameters) if hyperparameters is not None else None
        self._requested = config
        self.config = self._requested
        self.manager: CheckpointManager | None = None
        self._metrics: dict[str, Any] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Set up the checkpoint manager with the Trainer's notion of best; a
        resumed run (``resume_from_checkpoint``) goes on with the run of the
        checkpoint at its step."""
        self.config = policy_for(args, self._requested)
        values = self.hyperparameters
        if values is None:
            values = trainer_hyperparameters(args, kwargs.get("model"))
        self.manager = CheckpointManager(
            self.repo, self.config, self.experiment_name, hyperparameters=values
        )
        self.manager.resume_at_step(state.global_step)
        self._metrics = {}

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Wait for the background pushes of ``push_to``."""
        if self.manager is not None and state.is_world_process_zero:
            self.manager.finish()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the logged values (loss, learning rate, ...) for the next checkpoint."""
        self._record(logs)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the evaluation metrics for the next checkpoint."""
        self._record(metrics)

    def _record(self, values: dict[str, Any] | None) -> None:
        for key, value in (values or {}).items():
            if isinstance(value, (bool, int, float, str)):
                self._metrics[key] = value

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        """Commit the checkpoint the Trainer just saved, with the metrics since the last one."""
        if not state.is_world_process_zero:
            return
        if self.manager is None or model is None:
            raise CoralError("CoralTrainerCallback.on_save ran before on_train_begin, or no model")
        weights, ties = state_dict_to_weights(model.state_dict(), model)
        metadata: dict[str, Any] = {FILES_KEY: config_files(model)}
        if ties:
            metadata[TIES_KEY] = ties
        self.manager.save(weights, self._state(state, optimizer, lr_scheduler), metadata=metadata)
        self._metrics = {}

    def _state(self, state: TrainerState, optimizer: Any, scheduler: Any) -> TrainingState:
        include = self.config.include_optimizer
        scaler = getattr(optimizer, "scaler", None)  # accelerate's optimizer wrapper holds it

        def nested(obj: Any) -> Any:
            return (
                to_numpy_tree(obj.state_dict(), copy=True) if include and obj is not None else None
            )

        lr = None
        if optimizer is not None and optimizer.param_groups:
            lr = float(optimizer.param_groups[0]["lr"])
        loss = self._metrics.get("loss")
        return TrainingState(
            epoch=max(math.ceil(state.epoch or 0) - 1, 0),
            global_step=state.global_step,
            loss=float(loss) if isinstance(loss, (int, float)) else None,
            learning_rate=lr,
            metrics=dict(self._metrics),
            optimizer_state=nested(optimizer),
            scheduler_state=nested(scheduler),
            grad_scaler_state=nested(scaler),
            random_state=capture_rng(),
            experiment_name=self.experiment_name,
            extra={TRAINER_STATE_KEY: json.loads(json.dumps(dataclasses.asdict(state)))},
        )

    def checkout(
        self, folder: str | os.PathLike[str], ref: str | None = None, load_best: bool = False
    ) -> Path:
        """:func:`checkout_checkpoint` of this run's newest checkpoint (or the best,
        or ``ref``), for ``trainer.train(resume_from_checkpoint=...)``."""
        manager = self.manager or CheckpointManager(self.repo, self.config, self.experiment_name)
        return checkout_checkpoint(self.repo, manager.commit_of(load_best, ref), folder)


#: The ``TrainingArguments`` a run records (the ones a sweep varies).
TRAINING_ARGUMENTS = (
    "learning_rate",
    "weight_decay",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "optim",
    "seed",
)


def trainer_hyperparameters(args: TrainingArguments, model: Any = None) -> dict[str, Any]:
    """What a Trainer run records: the arguments sweeps vary, and the model's type."""
    found = {}
    for name in TRAINING_ARGUMENTS:
        value = getattr(args, name, None)
        value = getattr(value, "value", value)  # enums (lr_scheduler_type, optim)
        if isinstance(value, (bool, int, float, str)):
            found[name] = value
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if isinstance(model_type, str):
        found["model_type"] = model_type
    return found


def policy_for(args: TrainingArguments, config: CheckpointConfig) -> CheckpointConfig:
    """``config`` with the Trainer's ``metric_for_best_model`` (named as the
    Trainer logs it, ``eval_...``) and ``greater_is_better``.

    Raises:
        ConfigError: when ``config.save_on_best_metric`` names another metric.
    """
    metric = args.metric_for_best_model
    if metric is None:
        return config
    name = metric if metric.startswith("eval_") else f"eval_{metric}"
    if config.save_on_best_metric not in (None, name):
        raise ConfigError(
            f"CheckpointConfig.save_on_best_metric={config.save_on_best_metric!r} but the "
            f"Trainer's metric_for_best_model is {metric!r}; leave save_on_best_metric unset"
        )
    return dataclasses.replace(
        config,
        save_on_best_metric=name,
        minimize_metric=not args.greater_is_better,
        mode="auto",
    )


def checkout_checkpoint(repo: Repository, ref: str | None, folder: str | os.PathLike[str]) -> Path:
    """Write a checkpoint commit as the folder ``Trainer.train(resume_from_checkpoint=)`` reads.

    ``model.safetensors`` and ``config.json`` come from the commit bit for bit;
    ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` and ``rng_state.pth`` are
    written with ``torch.save`` from the stored tensors and JSON (the Trainer
    reads them with ``weights_only=True``), ``trainer_state.json`` from the
    stored ``TrainerState``. Returns the folder.

    Raises:
        RefNotFoundError: when ``ref`` names nothing.
        CoralError: when the commit was not made by :class:`CoralTrainerCallback`,
            or ``folder`` exists and is not empty.
    """
    commit = repo.show(ref)
    state = repo.training_state(commit.commit_hash)
    if state is None or TRAINER_STATE_KEY not in state.extra:
        raise CoralError(
            f"commit {commit.short_hash} ({ref or 'HEAD'}) holds no Trainer state; "
            "only checkpoints committed by CoralTrainerCallback can be resumed from"
        )
    target = Path(folder)
    write_model_folder(repo, commit.commit_hash, target)
    trainer_state = json.dumps(state.extra[TRAINER_STATE_KEY], indent=2, sort_keys=True)
    (target / "trainer_state.json").write_text(trainer_state + "\n")
    for name, value in (
        ("optimizer.pt", state.optimizer_state),
        ("scheduler.pt", state.scheduler_state),
        ("scaler.pt", state.grad_scaler_state),
    ):
        if value is not None:
            torch.save(to_torch_tree(value), target / name)
    if state.random_state is not None:
        torch.save(_trainer_rng(state.random_state), target / "rng_state.pth")
    return target


def _trainer_rng(stored: dict[str, Any]) -> dict[str, Any]:
    """:func:`coral_torch.capture_rng`'s state in the layout of the Trainer's ``rng_state.pth``."""
    version, internal, gauss = stored["python"]
    kind, keys, pos, has_gauss, cached = stored["numpy"]
    rng: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": (kind, np.array(keys), pos, has_gauss, cached),
        "cpu": to_tensor(np.array(stored["torch"])),
    }
    if "cuda" in stored:  # one device: the state the Trainer's non-distributed resume sets
        devices = [to_tensor(np.array(s)) for s in stored["cuda"]]
        rng["cuda"] = devices[0] if len(devices) == 1 else devices
    return rng
