"""``CoralKerasCallback``: ``model.fit`` checkpoints as Coral commits.

The callback drives one :class:`~coral_core.CheckpointManager`: it asks it
after every batch and epoch whether the policy commits, and hands it the
model's variables (named by ``v.path``), the ``logs`` metrics, epoch and step,
and, with ``include_optimizer``, the optimizer's variables as training state.
The manager moves the run's best pointer (``<experiment>/best``) and applies the
retention rules. ``monitor``, ``mode``, ``save_best_only`` and ``save_freq``
mean what they mean to Keras' ``ModelCheckpoint``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import keras  # type: ignore[import-untyped]
import numpy as np

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    Commit,
    ConfigError,
    CoralError,
    Repository,
    TrainingState,
)
from coral_tf.weights import (
    MODEL_STATE_KEY,
    model_details,
    model_state,
    model_weights,
    optimizer_state,
    to_array,
)

_KERAS_DEFAULTS = {"monitor": "val_loss", "mode": "auto", "save_best_only": False}


class CoralKerasCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Commits a Keras model's checkpoints into a Coral repository during ``fit``.

    Args:
        repo: a :class:`~coral_core.Repository`, or the folder of one (created if needed).
        experiment_name: names the checkpoints and the ``<name>/best`` pointer
            (default: the model's name).
        config: the full policy; or leave it out and give the Keras-style
            arguments below, which build one.
        monitor: the ``logs`` metric that ranks checkpoints (``val_loss``).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy-like names).
        save_best_only: commit only when ``monitor`` improved (and not at the end).
        save_freq: ``"epoch"``, or commit every this many batches.
        push_to, push_strategy: push the run to this remote as it trains (see
            :class:`~coral_core.CheckpointConfig`), with either way of configuring.
        hyperparameters: recorded with each checkpoint (default: the optimizer's
            settings, ``learning_rate`` and the like).

    Each ``fit`` that starts from scratch (the optimizer at step 0) is a run of
    its own, so one callback can serve a sweep; a ``fit`` that goes on from
    restored weights goes on with the run whose checkpoint is at that step.

    Raises:
        ConfigError: for Keras-style arguments beside ``config``, or a bad ``save_freq``.
    """

    def __init__(
        self,
        repo: Repository | str | os.PathLike[str],
        experiment_name: str | None = None,
        config: CheckpointConfig | None = None,
        *,
        monitor: str = "val_loss",
        mode: Literal["auto", "min", "max"] = "auto",
        save_best_only: bool = False,
        save_freq: Literal["epoch"] | int = "epoch",
        push_to: str | None = None,
        push_strategy: Literal["every_save", "end"] = "every_save",
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.repo = repo if isinstance(repo, Repository) else Repository(repo, init=True)
        given = {"monitor": monitor, "mode": mode, "save_best_only": save_best_only}
        if config is None:
            config = _config(monitor, mode, save_best_only, save_freq)
        elif given != _KERAS_DEFAULTS or save_freq != "epoch":
            raise ConfigError(
                "give either config=CheckpointConfig(...) or the Keras-style monitor, "
                "mode, save_best_only and save_freq, not both"
            )
        if push_to is not None:
            config = dataclasses.replace(config, push_to=push_to, push_strategy=push_strategy)
        self.config = config
        self.experiment_name = experiment_name
        self.hyperparameters = dict(hyperparameters) if hyperparameters is not None else None
        self._manager: CheckpointManager | None = None
        self._epoch = 0
        self._step = 0
        self._logs: dict[str, Any] = {}
        self._warned = False

    @property
    def manager(self) -> CheckpointManager:
        """The checkpoint manager (there from the start of the first ``fit``).

        Raises:
            CoralError: before training started.
        """
        if self._manager is None:
            raise CoralError("CoralKerasCallback has no manager before model.fit starts")
        return self._manager

    # -- Keras' hooks --------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        step = self._optimizer_step()
        if self._manager is None or (step == 0 and self._manager.history):  # a new run
            self._manager = CheckpointManager(
                self.repo,
                self.config,
                self.experiment_name or self.model.name,
                hyperparameters=(
                    self.hyperparameters
                    if self.hyperparameters is not None
                    else optimizer_hyperparameters(self.model)
                ),
            )
        self._step = step
        self.manager.resume_at_step(step)  # a fit going on from restored weights
        self._warned = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = int(epoch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        before, self._step = self._step, self._optimizer_step(self._step + 1)
        self._logs = dict(logs or {})
        if any(self.manager.should_save_step(s) for s in range(before + 1, self._step + 1)):
            self.save_checkpoint()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = int(epoch)
        self._logs = dict(logs or {})
        metric = self.config.save_on_best_metric
        if self._scheduled_by_metric_only() and metric not in self._logs and not self._warned:
            self._warned = True
            warnings.warn(
                f"CoralKerasCallback commits only when {metric!r} improves, but the logs "
                f"hold only {', '.join(sorted(self._logs)) or 'nothing'}; pass "
                "validation data or another monitor=",
                UserWarning,
                stacklevel=2,
            )
        if self.manager.should_save_epoch(self._epoch, self._metrics()):
            self.save_checkpoint()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.manager.needs_final_save(self._step):
            self.save_checkpoint()
        self.manager.finish()

    # -- saving --------------------------------------------------------------------

    def save_checkpoint(self, message: str | None = None) -> Commit:
        """Commit a checkpoint of the model now, whatever the schedule says."""
        metrics = self._metrics()
        optimizer = getattr(self.model, "optimizer", None)
        learning_rate = float(to_array(optimizer.learning_rate)) if optimizer else None
        state = TrainingState(
            epoch=self._epoch,
            global_step=self._step,
            loss=metrics.get("loss"),
            learning_rate=learning_rate,
            metrics=metrics,
            optimizer_state=optimizer_state(self.model) if self.config.include_optimizer else None,
            experiment_name=self.manager.experiment_name,
        )
        seeds = model_state(self.model) if self.config.include_optimizer else None
        if seeds is not None:  # Dropout's seed generators: the same masks after a resume
            state.extra[MODEL_STATE_KEY] = seeds
        return self.manager.save(
            model_weights(self.model),
            state,
            message=message,
            metadata=model_details(self.model),
        )

    # -- helpers -------------------------------------------------------------------

    def _optimizer_step(self, fallback: int = 0) -> int:
        """The optimizer's step counter (it survives a resumed fit), else ``fallback``."""
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or not optimizer.built:
            return fallback
        return int(to_array(optimizer.iterations))

    def _metrics(self) -> dict[str, float]:
        """The latest logs' numbers as floats (arrays, like per-class scores, left out)."""
        metrics = {}
        for key, value in self._logs.items():
            array = np.asarray(value)
            if array.ndim == 0 and array.dtype.kind in "biuf":
                metrics[key] = float(array)
        return metrics

    def _scheduled_by_metric_only(self) -> bool:
        return (
            self.config.save_on_best_metric is not None
            and self.config.save_every_n_epochs is None
            and self.config.save_every_n_steps is None
        )


def optimizer_hyperparameters(model: keras.Model) -> dict[str, Any]:
    """The compiled optimizer's settings that are plain values (its name,
    ``learning_rate``, ``beta_1``, ``weight_decay``, ...)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return {}
    found: dict[str, Any] = {"optimizer": type(optimizer).__name__}
    try:
        settings = optimizer.get_config()
    except (AttributeError, TypeError, ValueError, NotImplementedError):
        return found
    for key, value in settings.items():
        if isinstance(value, (bool, int, float, str)) and key != "name":
            found[key] = value
    return found


def _config(
    monitor: str, mode: Literal["auto", "min", "max"], save_best_only: bool, save_freq: Any
) -> CheckpointConfig:
    """The policy Keras' ``ModelCheckpoint`` arguments describe."""
    if save_freq != "epoch" and (
        isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
    ):
        raise ConfigError(f"save_freq must be 'epoch' or a positive int, not {save_freq!r}")
    by_epoch = save_freq == "epoch" and not save_best_only
    return CheckpointConfig(
        save_every_n_epochs=1 if by_epoch else None,
        save_every_n_steps=None if save_freq == "epoch" or save_best_only else int(save_freq),
        save_on_best_metric=monitor,
        mode=mode,
        save_last=not save_best_only,
    )
