"""``CoralCallback``: a Lightning callback that commits checkpoints to Coral.

``Trainer(callbacks=[CoralCallback("./repo", monitor="val_loss")])`` drives one
:class:`~coral_core.CheckpointManager`: it commits after every N epochs or
optimizer steps, when the monitored metric improves and once more at the
end, moves the run's best pointer (``<experiment>/best``) and prunes the
weights of what the retention rules no longer keep (the commits stay).
Each commit holds the model's tensors, the logged metrics
(``trainer.callback_metrics``), epoch and step, and a
:class:`~coral_core.TrainingState` with everything Lightning's own
checkpoint holds (optimizer, scheduler, loop and callback state) plus the
random generators' state, so ``trainer.fit(model, ckpt_path="coral://<ref>")``
resumes from any of them exactly, and ``ckpt_path="best"`` / ``"last"``
name the experiment's in a new process too.

Under a distributed strategy only global rank 0 opens the repository and
commits; the other ranks do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    Commit,
    ConfigError,
    RefNotFoundError,
    Repository,
)
from coral_core.runs import experiment_names
from coral_lightning.convert import (
    COMMIT_KEY,
    check_storable,
    checkpoint_to_commit,
    plain_metrics,
    restore_random_state,
)
from coral_lightning.filesystem import remember, url_for

#: Lightning ``ModelCheckpoint`` argument names and the CheckpointConfig fields they set
#: (``save_top_k`` maps to ``keep_best_n_checkpoints`` with ``monitor``, else ``max_checkpoints``).
ALIASES = {
    "monitor": "save_on_best_metric",
    "every_n_epochs": "save_every_n_epochs",
    "every_n_train_steps": "save_every_n_steps",
}


class CoralCallback(Checkpoint):
    """Commits a LightningModule's checkpoints into a Coral repository.

    Args:
        repo: a :class:`~coral_core.Repository`, or its folder (created if needed).
        experiment_name: names the checkpoints and the ``<name>/best`` pointer
            (default: the LightningModule's class name).
        config: the policy, as a :class:`~coral_core.CheckpointConfig`; or give
            its fields as keyword arguments instead, or ModelCheckpoint's names:
            ``monitor`` (``save_on_best_metric``), ``mode`` (``"min"``/``"max"``;
            Coral's default ``"auto"`` maximizes accuracy-like names),
            ``save_top_k`` (``keep_best_n_checkpoints``; ``-1`` keeps all, ``0``
            commits only ``save_last``; without ``monitor``, the k newest),
            ``every_n_epochs`` / ``every_n_train_steps`` (``0`` turns one off;
            giving only steps turns epoch commits off, as in ModelCheckpoint)
            and ``save_last``.
        hyperparameters: recorded with each checkpoint (default: the module's
            ``hparams``, what ``save_hyperparameters()`` recorded).

    Raises:
        ConfigError: for unknown or contradicting settings, naming them.
    """

    def __init__(
        self,
        repo: Repository | str | os.PathLike[str],
        experiment_name: str | None = None,
        config: CheckpointConfig | None = None,
        *,
        hyperparameters: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and settings:
            raise ConfigError(
                f"CoralCallback: give config= or settings ({', '.join(sorted(settings))}), not both"
            )
        self.config = config if config is not None else policy_from_settings(settings)
        self._repo = repo
        self._experiment_name = experiment_name
        self._hyperparameters = hyperparameters
        self.manager: CheckpointManager | None = None
        self.last_commit: Commit | None = None
        self._last_step_checked = -1
        self._best_model_path = ""
        self._resumed = False

    @property
    def state_key(self) -> str:
        """Lightning's key for this callback in a checkpoint (one per experiment)."""
        return self._generate_state_key(experiment_name=self._experiment_name)

    @property
    def best_model_path(self) -> str:
        """The ``coral://`` URL of the best checkpoint (the newest without
        ``monitor``, as in ModelCheckpoint; "" before one), so
        ``trainer.test(ckpt_path="best")`` and ``LitModel.load_from_checkpoint``
        load it. Before ``fit`` (a new process): the experiment's best so far.

        Raises:
            ConfigError: before ``fit`` without ``experiment_name``, when the
                repository holds runs of several experiments.
        """
        if self.manager is None:
            return self._best_model_path or self._pointer_url("best" if self._monitor else "last")
        chosen = self.manager.best if self._monitor else self.manager.latest
        return url_for(self.manager.repo, chosen.commit_hash) if chosen is not None else ""

    @best_model_path.setter
    def best_model_path(self, path: str) -> None:
        """Lightning's spawn launchers hand rank 0's best path back to the main process."""
        self._best_model_path = path

    @property
    def last_model_path(self) -> str:
        """The ``coral://`` URL of the newest checkpoint ("" before one): what
        ``ckpt_path="last"`` resumes from, in this process or a new one."""
        if self.manager is None:
            return self._pointer_url("last")
        latest = self.manager.latest
        return url_for(self.manager.repo, latest.commit_hash) if latest is not None else ""

    @property
    def _monitor(self) -> str | None:
        return self.config.save_on_best_metric

    def _pointer_url(self, pointer: str) -> str:
        """The experiment's ``best``/``last`` over its runs, read from the
        repository without opening a run ("" when there is none yet)."""
        if isinstance(self._repo, Repository):
            repo = self._repo
        elif (Path(self._repo) / ".coral").is_dir():
            repo = Repository(self._repo)
        else:
            return ""
        name = self._experiment_name
        if name is None:
            names = experiment_names(repo.refs)
            if len(names) > 1:
                raise ConfigError(
                    f"{repo.path} holds runs of several experiments ({', '.join(names)}): give "
                    "CoralCallback(experiment_name=...) to say whose best or last to load"
                )
            if not names:
                return ""
            name = names[0]
        try:
            return url_for(repo, repo.resolve(f"{name}/{pointer}"))
        except RefNotFoundError:
            return ""

    # -- Lightning's hooks -------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Open the repository and the manager (rank 0, when fitting)."""
        if stage != "fit" or not is_writer(trainer):
            return
        repo = (
            self._repo if isinstance(self._repo, Repository) else Repository(self._repo, init=True)
        )
        name = self._experiment_name or type(pl_module).__name__
        values = self._hyperparameters
        if values is None:  # what save_hyperparameters() recorded
            values = dict(getattr(pl_module, "hparams", None) or {})
        check_storable("hyper_parameters", values)  # at the start, not after an epoch
        self.manager = CheckpointManager(repo, self.config, name, hyperparameters=values)
        remember(repo)
        self._last_step_checked = -1
        self._resumed = False

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """A fit resumed from a Coral commit: its checkpoints go on in the run
        that made it, and the random generators are put back as they were
        (CoralCheckpointIO did that already; Lightning's own CheckpointIO,
        which read a ``coral://`` URL, did not)."""
        if not isinstance(checkpoint.get(COMMIT_KEY), str) or trainer.state.fn != "fit":
            return
        restore_random_state(checkpoint)  # on every rank
        if self.manager is not None:
            self.manager.resume_from(checkpoint[COMMIT_KEY])
            self._resumed = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A fit resumed from elsewhere (a ``.ckpt`` file): the run of the
        experiment's checkpoint at that step, if there is one."""
        if self.manager is not None and not self._resumed and trainer.global_step > 0:
            self.manager.resume_at_step(trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Commit when ``save_every_n_steps`` says so (once per optimizer step)."""
        if self.manager is None or _dry_run(trainer):
            return
        step = trainer.global_step
        if step != self._last_step_checked:
            self._last_step_checked = step
            if self.manager.should_save_step(step):
                self.save(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Commit on the epoch schedule, or when the monitored metric improved."""
        if self.manager is None or _dry_run(trainer):
            return
        metrics = logged_metrics(trainer)
        monitor = self._monitor
        validated = trainer.fit_loop.epoch_loop.val_loop._has_run
        if monitor is not None and monitor not in metrics and validated:  # as ModelCheckpoint
            raise ConfigError(
                f"CoralCallback(monitor={monitor!r}) could not find the monitored key in the "
                f"logged metrics: {sorted(metrics)}. HINT: did you call self.log({monitor!r}, "
                "value) in the LightningModule?"
            )
        if self.manager.should_save_epoch(trainer.current_epoch, metrics):
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Commit once more with ``save_last`` unless the newest commit holds the final step."""
        if self.manager is None or _dry_run(trainer):
            return
        if self.manager.needs_final_save(trainer.global_step):
            self.save(trainer, pl_module)
        self.manager.finish()

    # -- saving -------------------------------------------------------------------------

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Commit:
        """Commit a checkpoint now, whatever the schedule says (rank 0 only).

        Raises:
            ConfigError: on another rank, or before the trainer set this callback up.
        """
        if self.manager is None:
            raise ConfigError(
                "CoralCallback.save: no repository open; it opens in setup() when "
                "trainer.fit starts, on global rank 0 only"
            )
        weights_only = not self.config.include_optimizer
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only)
        weights, state, metadata = checkpoint_to_commit(
            checkpoint, pl_module, logged_metrics(trainer)
        )
        state.experiment_name = self.manager.experiment_name
        self.last_commit = self.manager.save(weights, state, metadata=metadata)
        return self.last_commit


def is_writer(trainer: pl.Trainer) -> bool:
    """Whether this process commits: global rank 0 of the run."""
    return bool(trainer.is_global_zero)


def _dry_run(trainer: pl.Trainer) -> bool:
    """``fast_dev_run`` commits nothing (as ModelCheckpoint saves nothing)."""
    return bool(trainer.fast_dev_run)  # type: ignore[attr-defined]


def logged_metrics(trainer: pl.Trainer) -> dict[str, float | int | str | bool]:
    """What the run logged so far (``trainer.callback_metrics``), as Python numbers."""
    return plain_metrics(trainer.callback_metrics)


def policy_from_settings(settings: dict[str, Any]) -> CheckpointConfig:
    """A :class:`~coral_core.CheckpointConfig` from its fields and ModelCheckpoint's names.

    Raises:
        ConfigError: for unknown names, a name given twice, or bad values.
    """
    known = {item.name for item in fields(CheckpointConfig)}
    unknown = sorted(set(settings) - known - set(ALIASES) - {"save_top_k"})
    if unknown:
        raise ConfigError(
            f"CoralCallback: unknown setting(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known | set(ALIASES) | {'save_top_k'}))}"
        )
    values = {name: value for name, value in settings.items() if name in known}
    for alias, field in ALIASES.items():
        if alias in settings:
            if field in values:
                raise ConfigError(
                    f"CoralCallback: {alias}= and {field}= set the same thing; give one"
                )
            values[field] = None if settings[alias] == 0 else settings[alias]  # 0: off
    if values.get("save_every_n_steps") and "save_every_n_epochs" not in values:
        values["save_every_n_epochs"] = None  # steps only, as in ModelCheckpoint
    top_k = settings.get("save_top_k")
    if top_k == 0:
        values["auto_commit"] = False
    elif top_k is not None and top_k != -1:
        field = (
            "keep_best_n_checkpoints" if values.get("save_on_best_metric") else "max_checkpoints"
        )
        if field in values:
            raise ConfigError(f"CoralCallback: save_top_k= and {field}= set the same thing")
        values[field] = top_k
    return CheckpointConfig(**values)
