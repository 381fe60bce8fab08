"""``CoralTrainer``: a PyTorch training loop whose checkpoints are Coral commits.

Call :meth:`CoralTrainer.step` after each optimizer step and
:meth:`CoralTrainer.epoch_end` after each epoch (or let :meth:`CoralTrainer.fit`
run a plain loop); the :class:`~coral_core.CheckpointManager` decides when to
commit. Each checkpoint holds the model's ``state_dict`` and a
:class:`~coral_core.TrainingState` with the optimizer, scheduler, grad-scaler
and random-generator state, so :meth:`CoralTrainer.load_checkpoint` in a new
process resumes exactly: the weights after resuming and training on equal,
bit for bit, those of a run that never stopped.

With ``async_commit=True`` a checkpoint costs the training thread one copy of
the tensors; encoding and writing happen on a background thread, errors are
raised at the next call, and :meth:`CoralTrainer.wait` flushes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    Commit,
    ConfigError,
    Repository,
    TrainingState,
    WeightTensor,
)
from coral_core.exports import TIES_KEY
from coral_torch.state_dict import load_model, state_dict_to_weights
from coral_torch.training_state import capture_rng, restore_rng, to_numpy_tree, to_torch_tree


@dataclass(frozen=True)
class _Snapshot:
    """The arrays an async checkpoint copied: the model's by name, and its state."""

    model: dict[str, Any]
    state: TrainingState


def optimizer_hyperparameters(optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """An optimizer's class and the plain settings of its first parameter group
    (``lr``, ``weight_decay``, ``momentum``, ``betas``, ...): what a run records."""
    if optimizer is None:
        return {}
    found: dict[str, Any] = {"optimizer": type(optimizer).__name__}
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    for key, value in group.items():
        if isinstance(value, (bool, int, float, str)):
            found[key] = value
        elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
            found[key] = list(value)
    return found


#: ``TrainingState.extra`` key of the loop's own position (for exact resume by ``fit``).
LOOP_KEY = "coral_torch.loop"
CheckpointCallback = Callable[[TrainingState, str], None]


class CoralTrainer:
    """Checkpoints a PyTorch model (and its optimizer) into a Coral repository.

    Args:
        model: the module being trained.
        repo: a :class:`~coral_core.Repository`, or the folder of one (created if needed).
        experiment_name: names the run's checkpoints and its ``<name>/best`` pointer.
        config: when to commit and what to keep (default: every epoch, keep all).
        optimizer, scheduler, grad_scaler: saved and restored with the model
            when ``config.include_optimizer``.
        repo_path: the repository folder, when ``repo`` is not given.
        async_commit: commit on a background thread.
        hyperparameters: recorded with each checkpoint of the run (default: the
            optimizer's class and settings: ``lr``, ``weight_decay``, ...).
        max_pending: with ``async_commit``, how many snapshots may wait to be
            written before the next checkpoint waits for the oldest (bounds memory).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        repo: Repository | str | os.PathLike[str] | None = None,
        experiment_name: str = "training",
        config: CheckpointConfig | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        *,
        grad_scaler: Any = None,
        repo_path: str | os.PathLike[str] | None = None,
        async_commit: bool = False,
        max_pending: int = 1,
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> None:
        if repo is None and repo_path is None:
            raise ConfigError("CoralTrainer needs a repository: repo=Repository(...) or repo_path=")
        if max_pending < 1:
            raise ConfigError("max_pending must be at least 1")
        if isinstance(repo, Repository):
            self.repo = repo
        else:
            self.repo = Repository(repo if repo is not None else repo_path, init=True)  # type: ignore[arg-type]
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_scaler = grad_scaler
        self.config = config or CheckpointConfig()
        self._hyperparameters_given = hyperparameters is not None
        if hyperparameters is None:
            hyperparameters = optimizer_hyperparameters(optimizer)
        self.manager = CheckpointManager(
            self.repo, self.config, experiment_name, hyperparameters=hyperparameters
        )
        self.state = TrainingState(experiment_name=experiment_name)
        self._callbacks: list[CheckpointCallback] = []
        self._pool = ThreadPoolExecutor(1, "coral-commit") if async_commit else None
        self._max_pending = max_pending
        self._pending: list[tuple[Future[Commit], _Snapshot]] = []
        self._spare: list[_Snapshot] = []
        self._epoch_done = False
        self._batch_in_epoch = 0
        self._epoch_start_rng: dict[str, Any] | None = None

    @property
    def experiment_name(self) -> str:
        return self.manager.experiment_name

    def register_checkpoint_callback(self, callback: CheckpointCallback) -> None:
        """Call ``callback(state, commit_hash)`` after each checkpoint commit (on
        the training thread; with ``async_commit``, at the first call after the
        commit finished, and the state's arrays are reused by the next
        snapshot: copy what you keep)."""
        self._callbacks.append(callback)

    # -- the loop's hooks ----------------------------------------------------------

    def step(self, loss: float | None = None, *, batches: int = 1, **metrics: Any) -> Commit | None:
        """Record one optimizer step; commits when ``save_every_n_steps`` says so.

        The first step after :meth:`epoch_end` starts the next epoch (and clears
        the metrics, so a checkpoint never carries another epoch's values).
        ``batches`` is how many batches the step took (gradient accumulation),
        so a resume knows how many of the epoch's batches are done.

        Returns the checkpoint commit (None when none was made, or with ``async_commit``).
        """
        self._deliver()
        if self._epoch_done:  # the first step of a new epoch: the last one's metrics are done
            self.state.epoch += 1
            self.state.metrics = {}
            self._epoch_done = False
        self.state.global_step += 1
        self._batch_in_epoch += batches
        if loss is not None:
            self.state.loss = float(loss)
        self.state.metrics.update(metrics)
        if self.manager.should_save_step(self.state.global_step):
            return self.save_checkpoint()
        return None

    def epoch_end(self, epoch: int, **metrics: Any) -> Commit | None:
        """Record the end of epoch ``epoch`` (0-based) and its metrics; commits
        on the epoch schedule or when ``save_on_best_metric`` improved."""
        self._deliver()
        self.state.epoch = int(epoch)
        self.state.metrics.update(metrics)
        self._epoch_done = True
        self._batch_in_epoch = 0
        if self.manager.should_save_epoch(epoch, self.state.metrics):
            return self.save_checkpoint()
        return None

    # -- saving --------------------------------------------------------------------

    def save_checkpoint(self, message: str | None = None) -> Commit | None:
        """Commit a checkpoint now, whatever the schedule says.

        Returns the commit, or None with ``async_commit`` (it arrives through
        the callbacks; :meth:`wait` waits for it).
        """
        self._deliver()
        snapshot = self._pool is not None
        while snapshot and len(self._pending) >= self._max_pending:
            self._finish(*self._pending.pop(0))
        spare = self._spare.pop() if self._spare else None  # a finished snapshot's arrays
        model_state = self.model.state_dict()
        weights, ties = state_dict_to_weights(model_state, self.model)
        if snapshot:
            arrays = to_numpy_tree(model_state, copy=True, reuse=spare.model if spare else None)
            weights = {n: WeightTensor(arrays[n], w.metadata) for n, w in weights.items()}
        state = self._snapshot_state(copy=snapshot, reuse=spare.state if spare else None)
        metadata = {TIES_KEY: ties} if ties else None

        def commit() -> Commit:
            return self.manager.save(weights, state, message=message, metadata=metadata)

        if self._pool is None:
            done = commit()
            self._notify(state, done)
            return done
        taken = _Snapshot({n: w.data for n, w in weights.items()}, state)
        self._pending.append((self._pool.submit(commit), taken))
        return None

    def _snapshot_state(self, copy: bool, reuse: TrainingState | None = None) -> TrainingState:
        lr = None
        if self.optimizer is not None and self.optimizer.param_groups:
            lr = float(self.optimizer.param_groups[0]["lr"])
        include = self.config.include_optimizer

        def nested(obj: Any, field: str) -> Any:
            if not include or obj is None:
                return None
            earlier = getattr(reuse, field) if reuse is not None else None
            return to_numpy_tree(obj.state_dict(), copy, earlier)

        loop: dict[str, Any] = {
            "epoch_done": self._epoch_done,
            "batch_in_epoch": self._batch_in_epoch,
        }
        if self._epoch_start_rng is not None:
            loop["epoch_start_random_state"] = self._epoch_start_rng
        return replace(
            self.state,
            learning_rate=lr,
            metrics=dict(self.state.metrics),
            optimizer_state=nested(self.optimizer, "optimizer_state"),
            scheduler_state=nested(self.scheduler, "scheduler_state"),
            grad_scaler_state=nested(self.grad_scaler, "grad_scaler_state"),
            random_state=capture_rng(),
            extra={**self.state.extra, LOOP_KEY: loop},
            timestamp=time.time(),
        )

    def _notify(self, state: TrainingState, commit: Commit) -> None:
        for callback in self._callbacks:
            callback(state, commit.commit_hash)

    def _finish(self, future: Future[Commit], taken: _Snapshot) -> None:
        self._notify(taken.state, future.result())  # a failed commit raises here
        self._spare = [taken]  # its arrays take the next snapshot (one set kept)

    def _deliver(self) -> None:
        """Hand finished background commits to the callbacks; raise a failed one's error."""
        while self._pending and self._pending[0][0].done():
            self._finish(*self._pending.pop(0))

    def wait(self) -> None:
        """Wait until every checkpoint is committed; raise the first error of one that failed."""
        while self._pending:
            self._finish(*self._pending.pop(0))

    def close(self) -> None:
        """Flush pending commits (and pushes, with ``push_to``) and stop the background thread."""
        try:
            self.wait()
            self.manager.finish()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> CoralTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loading -------------------------------------------------------------------

    def load_checkpoint(self, load_best: bool = False, ref: str | None = None) -> TrainingState:
        """Restore model, optimizer, scheduler, grad scaler and random generators.

        Args:
            load_best: the best checkpoint by ``save_on_best_metric`` instead of the newest.
            ref: this commit (a ref) instead.

        Returns:
            the restored state; the trainer continues counting from it.

        Raises:
            RefNotFoundError: when there is no checkpoint to load.
            StateDictMismatchError: when the model does not fit the commit.
        """
        self.wait()
        commit = self.manager.commit_of(load_best, ref)
        load_model(self.repo, self.model, commit, strict=True)
        self.manager.resume_from(commit)
        state = self.repo.training_state(commit) or TrainingState(
            experiment_name=self.experiment_name
        )
        for target, stored in (
            (self.optimizer, state.optimizer_state),
            (self.scheduler, state.scheduler_state),
            (self.grad_scaler, state.grad_scaler_state),
        ):
            if target is not None and stored is not None:
                target.load_state_dict(to_torch_tree(stored))
        if state.random_state is not None:
            restore_rng(state.random_state)
        loop = state.extra.get(LOOP_KEY) or {}
        self._epoch_done = bool(loop.get("epoch_done", True))
        self._batch_in_epoch = int(loop.get("batch_in_epoch", 0))
        self._epoch_start_rng = loop.get("epoch_start_random_state")
        self.state = replace(
            state, optimizer_state=None, scheduler_state=None, grad_scaler_state=None
        )
        return state

    # -- the simple case -----------------------------------------------------------

    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        epochs: int = 1,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        *,
        max_steps: int | None = None,
        accumulate: int = 1,
        clip_grad_norm: float | None = None,
        autocast: torch.dtype | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> TrainingState:
        """Train for ``epochs`` on ``(inputs, targets)`` batches, checkpointing as configured.

        After :meth:`load_checkpoint` it goes on where the checkpoint left off,
        mid-epoch too: the epoch's data order is drawn again from the random
        state the epoch began with, the batches already trained on are skipped,
        and the checkpoint's random state is restored before the next one.
        Evaluates ``val_loader`` into ``val_loss`` (and ``val_accuracy`` for
        class scores) per epoch. Stops early after ``max_steps`` optimizer steps.

        Args:
            accumulate: batches whose gradients add up to one optimizer step
                (the epoch's last step takes what is left).
            clip_grad_norm: clip the gradients' total norm to this before each
                step (unscaled first, with a grad scaler).
            autocast: run the forward pass and the loss under
                ``torch.autocast`` with this dtype (``torch.bfloat16``,
                ``torch.float16``); with ``grad_scaler`` the loss is scaled.
            scheduler_interval: step the scheduler after every ``"epoch"`` or
                every optimizer ``"step"``.

        All of it resumes exactly: the scaler's and the scheduler's state are
        in every checkpoint, and checkpoints fall on optimizer steps.

        Without an optimizer, it makes one as the Hugging Face Trainer does:
        AdamW over the trainable parameters, with PyTorch's defaults (lr 1e-3),
        kept as ``optimizer`` and saved with the checkpoints.

        Raises:
            ConfigError: for a bad setting.
        """
        if self.optimizer is None:  # as the Hugging Face Trainer does: AdamW by default
            self.optimizer = torch.optim.AdamW(
                [p for p in self.model.parameters() if p.requires_grad]
            )
            if not self._hyperparameters_given:  # recorded from the optimizer
                self.manager.hyperparameters = optimizer_hyperparameters(self.optimizer)
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ConfigError(f"accumulate must be a positive int, not {accumulate!r}")
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(
                f"scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}"
            )
        device = next(self.model.parameters()).device.type if autocast is not None else "cpu"
        loss_fn = loss_fn or torch.nn.functional.cross_entropy
        resumed = self.manager.latest is not None and self.state.global_step > 0
        first_epoch = self.state.epoch + 1 if resumed and self._epoch_done else self.state.epoch
        skip = 0 if not resumed or self._epoch_done else self._batch_in_epoch
        resume_rng = capture_rng() if skip else None
        stopped = False
        for epoch in range(first_epoch, epochs):
            if skip and self._epoch_start_rng is not None:
                restore_rng(self._epoch_start_rng)
            else:
                self._epoch_start_rng = capture_rng()
            self.model.train()
            losses: list[float] = []
            pending = 0  # batches whose gradients wait for the next optimizer step
            for index, (inputs, targets) in enumerate(train_loader):
                if index < skip:
                    continue
                if resume_rng is not None:
                    restore_rng(resume_rng)
                    resume_rng = None
                if pending == 0:
                    self.optimizer.zero_grad()
                with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
                    loss = loss_fn(self.model(inputs), targets)
                scaled = loss / accumulate
                if self.grad_scaler is not None:
                    scaled = self.grad_scaler.scale(scaled)
                scaled.backward()  # type: ignore[no-untyped-call]
                losses.append(loss.item())
                pending += 1
                if pending == accumulate:
                    self._optimizer_step(clip_grad_norm, scheduler_interval == "step")
                    self.step(loss=losses[-1], batches=pending)
                    pending = 0
                    if max_steps is not None and self.state.global_step >= max_steps:
                        stopped = True
                        break
            if pending:  # what is left of the epoch's batches: one more step
                self._optimizer_step(clip_grad_norm, scheduler_interval == "step")
                self.step(loss=losses[-1], batches=pending)
                stopped = stopped or (max_steps is not None and self.state.global_step >= max_steps)
            if resume_rng is not None:  # the checkpoint was taken after the epoch's last batch
                restore_rng(resume_rng)
                resume_rng = None
            skip = 0
            if stopped:
                break
            if self.scheduler is not None and scheduler_interval == "epoch":
                self.scheduler.step()
            metrics = {"train_loss": sum(losses) / len(losses)} if losses else {}
            if val_loader is not None:
                metrics.update(self.evaluate(val_loader, loss_fn))
            self.epoch_end(epoch, **metrics)
        if self.manager.needs_final_save(self.state.global_step):
            self.save_checkpoint()
        self.wait()
        self.manager.finish()
        return self.state

    def _optimizer_step(self, clip_grad_norm: float | None, step_scheduler: bool) -> None:
        """One optimizer step of what the gradients hold: unscaled and clipped
        when asked, through the grad scaler when there is one; then the
        scheduler, when it steps with the optimizer."""
        assert self.optimizer is not None
        scaler = self.grad_scaler
        if clip_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip_grad_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        if step_scheduler and self.scheduler is not None:
            self.scheduler.step()

    def evaluate(
        self, loader: Iterable[Any], loss_fn: Callable[[Any, Any], torch.Tensor]
    ) -> dict[str, float]:
        """Mean ``val_loss`` over ``loader``, and ``val_accuracy`` for class scores."""
        self.model.eval()
        total = correct = count = 0.0
        classes = True
        with torch.no_grad():
            for inputs, targets in loader:
                outputs = self.model(inputs)
                total += float(loss_fn(outputs, targets)) * len(targets)
                count += len(targets)
                classes = classes and outputs.dim() == 2 and targets.dim() == 1
                classes = classes and not targets.is_floating_point()
                if classes:
                    correct += float((outputs.argmax(dim=1) == targets).sum())
        if not count:
            return {}
        metrics = {"val_loss": total / count}
        if classes:
            metrics["val_accuracy"] = correct / count
        return metrics
