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

``load_best_model_at_end`` reads the best checkpoint's folder
(``TrainerState.best_model_checkpoint``) when training ends. A run resumed
where that folder is gone (a new machine) gets it back from the commit at the
Trainer's ``best_global_step``; with ``keep_trainer_checkpoints=False`` Coral
holds every checkpoint, the Trainer's ``checkpoint-N`` folders are deleted once
committed, ``save_total_limit`` becomes Coral's retention, and the best folder
is written for the Trainer to load only when training ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    ConfigError,
    CoralError,
    Repository,
    TrainingState,
)
from coral_core.availability import KEPT
from coral_core.files import confined_path
from coral_core.runs import CheckpointRecord
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

_log = logging.getLogger("coral.hf")


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
        keep_trainer_checkpoints: keep the Trainer's ``checkpoint-N`` folders
            beside the commits (default). False: Coral holds the checkpoints;
            each folder is deleted once committed, ``save_total_limit`` (when
            ``config`` sets no retention of its own) prunes the commits as the
            Trainer rotates its folders, and for ``load_best_model_at_end`` the
            best checkpoint's weights are written where the Trainer reads them
            just before it does, and deleted after. Resume with
            :func:`checkout_checkpoint`.

    Only the main process (``state.is_world_process_zero``) commits. The
    manager exists from ``on_train_begin`` on (``callback.manager``).

    Raises:
        ConfigError: for a ``keep_trainer_checkpoints`` that is not a bool; at
            ``on_train_begin``, for ``keep_trainer_checkpoints=False`` with
            ``push_to_hub`` (the Trainer uploads the folders in the background),
            a hyperparameter search, or ``load_best_model_at_end`` in several
            processes.
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
        keep_trainer_checkpoints: bool = True,
    ) -> None:
        if not isinstance(keep_trainer_checkpoints, bool):
            raise ConfigError("keep_trainer_checkpoints must be True or False")
        self.keep_trainer_checkpoints = keep_trainer_checkpoints
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
        self._save_total_limit: int | None = None  # the Trainer's, when Coral rotates for it
        self._written_best: Path | None = None  # the best folder written for the Trainer to load

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Set up the checkpoint manager with the Trainer's notion of best; a
        resumed run (``resume_from_checkpoint``) goes on with the run of the
        checkpoint at its step, and gets its best checkpoint's folder back
        when the Trainer found it gone."""
        self.config = policy_for(args, self._requested)
        self._save_total_limit = None
        self._written_best = None
        if not self.keep_trainer_checkpoints:
            self._save_total_limit = self._hold_checkpoints(args, state)
        values = self.hyperparameters
        if values is None:
            values = trainer_hyperparameters(args, kwargs.get("model"))
        self.manager = CheckpointManager(
            self.repo, self.config, self.experiment_name, hyperparameters=values
        )
        self.manager.resume_at_step(state.global_step)
        self._metrics = {}
        self._restore_best(args, state)

    def _hold_checkpoints(self, args: TrainingArguments, state: TrainerState) -> int | None:
        """Check that Coral can hold the checkpoints for this run; the
        ``save_total_limit`` Coral's retention follows (None: its own)."""
        problem = None
        if args.push_to_hub:
            problem = "push_to_hub uploads the Trainer's checkpoint folders in the background"
        elif state.is_hyper_param_search:
            problem = "a hyperparameter search keeps its checkpoints in run-* folders"
        elif args.load_best_model_at_end and args.world_size > 1:
            problem = (
                f"load_best_model_at_end in {args.world_size} processes would read the best "
                "folder while the main process writes it"
            )
        if problem is not None:
            raise ConfigError(
                f"keep_trainer_checkpoints=False: {problem}; keep the Trainer's folders "
                "(keep_trainer_checkpoints=True)"
            )
        limit = args.save_total_limit
        own = self.config.max_checkpoints, self.config.keep_best_n_checkpoints
        return limit if limit is not None and limit > 0 and own == (None, None) else None

    def _folder(self, args: TrainingArguments, step: int) -> Path:
        """The Trainer's folder of the checkpoint at ``step``, ``<output_dir>/checkpoint-N``."""
        return confined_path(
            Path(args.output_dir or "trainer_output"), f"{PREFIX_CHECKPOINT_DIR}-{step}"
        )

    def _checkpoint_at(self, step: int) -> str | None:
        """The commit of this experiment's checkpoint at optimizer step ``step``
        on the first-parent line of the run's newest checkpoint (where a resumed
        run's earlier checkpoints are), if its weights are here."""
        latest = self.manager.latest if self.manager is not None else None
        tip = latest.commit_hash if latest is not None else None
        while tip is not None:
            commit = self.repo.read_commit(tip)
            record = CheckpointRecord.of(commit)
            if record is not None and record.experiment == self.experiment_name:
                if record.step == step:
                    return tip if self.repo.weights_status(tip) == KEPT else None
                if record.step < step:
                    return None
            tip = commit.parent_hashes[0] if commit.parent_hashes else None
        return None

    def _restore_best(self, args: TrainingArguments, state: TrainerState) -> None:
        """Point ``best_model_checkpoint`` at the Trainer's folder of its best
        step again when a resume dropped it (the folder the resumed state named
        is gone), writing that folder from the commit at that step; with
        ``keep_trainer_checkpoints=False`` the folder is written at the end."""
        step = _step(state.best_global_step)
        if not args.load_best_model_at_end or state.best_model_checkpoint is not None or not step:
            return
        folder = self._folder(args, step)
        if not folder.is_dir():
            commit = self._checkpoint_at(step)
            if commit is None:
                _log.warning(
                    "%s: the best checkpoint (step %d) is neither in %s nor in %s with its "
                    "weights; load_best_model_at_end will end on the last weights",
                    self.experiment_name,
                    step,
                    args.output_dir,
                    self.repo.path,
                )
                return
            if self.keep_trainer_checkpoints and state.is_world_process_zero:
                checkout_checkpoint(self.repo, commit, folder)
        state.best_model_checkpoint = str(folder)

    def _write_best(self, args: TrainingArguments, state: TrainerState) -> None:
        """With ``keep_trainer_checkpoints=False``: write the best checkpoint's
        weights where ``best_model_checkpoint`` says, for ``load_best_model_at_end``."""
        step = _step(state.best_global_step)
        named = state.best_model_checkpoint
        if not args.load_best_model_at_end or not step or named is None or os.path.isdir(named):
            return
        folder = self._folder(args, step)
        if os.path.normpath(named) != os.path.normpath(folder):
            return  # not a folder of this run's: the Trainer says it is missing
        commit = self._checkpoint_at(step)
        if commit is None:
            raise CoralError(
                f"{self.experiment_name}: the Trainer's best checkpoint (step {step}) has no "
                f"commit with weights in {self.repo.path}, so load_best_model_at_end cannot load it"
            )
        write_model_folder(self.repo, commit, folder)
        self._written_best = folder

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Wait for the background pushes of ``push_to``; delete the best folder
        written for ``load_best_model_at_end`` (``keep_trainer_checkpoints=False``)."""
        if self._written_best is not None:
            shutil.rmtree(self._written_best, ignore_errors=True)
            self._written_best = None
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
        """Keep the logged values (loss, learning rate, ...) for the next checkpoint.

        The Trainer's last log (``train_loss``, ``total_flos``) comes just before it
        loads the best model: with ``keep_trainer_checkpoints=False`` the best
        folder is written then."""
        self._record(logs)
        last = logs is not None and "train_loss" in logs and "total_flos" in logs
        if last and not self.keep_trainer_checkpoints and state.is_world_process_zero:
            self._write_best(args, state)

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
        if not self.keep_trainer_checkpoints:
            self._rotate(state)
            folder = self._folder(args, state.global_step)
            if folder.is_dir():
                shutil.rmtree(folder)

    def _rotate(self, state: TrainerState) -> None:
        """Prune the run's checkpoints as the Trainer rotates its folders for
        ``save_total_limit``: keep that many, the newest and the best always."""
        limit = self._save_total_limit
        if limit is None or self.manager is None:
            return
        kept = self.manager.checkpoints
        best = self.manager.best
        step = _step(state.best_global_step)
        protected = {kept[-1].commit_hash, *(c.commit_hash for c in kept if c.step == step)}
        if best is not None:
            protected.add(best.commit_hash)
        excess = len(kept) - max(limit, len(protected))
        older = [c.commit_hash for c in kept if c.commit_hash not in protected]
        if excess > 0:
            self.manager.prune(older[:excess])

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


def _step(value: Any) -> int | None:
    """A step from a ``TrainerState`` (data a checkpoint carried): a positive int, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


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
