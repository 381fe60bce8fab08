"""Checkpoint policy, framework-free: when to commit, what to keep, which is best.

Every framework package (the PyTorch ``CoralTrainer``, the Lightning, Hugging
Face and Keras callbacks) drives one :class:`CheckpointManager`: it asks
``should_save_step`` / ``should_save_epoch``, hands over a snapshot with
``save``, and the manager commits it with its :class:`TrainingState`, moves
the run's ``best`` and ``last`` pointers in the same step, and prunes the
weights of checkpoints the retention rules no longer keep. History is
append-only: a pruned checkpoint keeps its commit (message, metrics, step,
parents, run); only its weights and training state are freed, at once.

Each manager is one training run with an id of its own (see
:mod:`coral_core.runs`), so a rerun under the same experiment name neither
shares retention with an earlier run nor hides it. A process that resumes
tells its manager with :meth:`CheckpointManager.resume_from`: resumed from
the run's newest checkpoint, it goes on with that run; resumed from an older
one, it becomes a new run on a branch of its own that starts there, so the
first run's newer checkpoints stay where they were. With
``CheckpointConfig(push_to="origin")`` checkpoints are pushed in the
background as they are made (see :mod:`coral_core.pusher`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from coral_core.availability import KEPT
from coral_core.errors import ConfigError, CoralError, RefNotFoundError
from coral_core.model import Commit
from coral_core.pusher import BackgroundPusher, pusher_for
from coral_core.refnames import validate_ref_name
from coral_core.runs import (
    BEST,
    CHECKPOINT_KEY,
    LAST,
    LEGACY_RUN,
    CheckpointRecord,
    experiment_pointer,
    find_run,
    metric_value,
    new_run_id,
    pointer_ref,
    validate_run_id,
)
from coral_core.training_state import TrainingState

if TYPE_CHECKING:
    from coral_core.repository import Repository, Weight

__all__ = ["CHECKPOINT_KEY", "Checkpoint", "CheckpointConfig", "CheckpointManager"]

_log = logging.getLogger("coral.checkpoint")
#: Substrings of metric names that ``mode="auto"`` maximizes (as Keras' ``auto``).
_HIGHER_IS_BETTER = ("acc", "auc", "f1", "precision", "recall", "score", "bleu", "rouge", "iou")


@dataclass(frozen=True)
class CheckpointConfig:
    """When to commit checkpoints and which to keep; checked when made.

    Args:
        save_every_n_epochs: commit after every n-th epoch (None: never by epoch).
        save_every_n_steps: commit after every n-th optimizer step (None: never by step).
        save_on_best_metric: commit after an epoch whose value of this metric
            beats every earlier checkpoint's.
        minimize_metric: True when lower is better; None leaves it to ``mode``.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (max for accuracy-like names,
            min for the rest, as Keras does).
        keep_best_n_checkpoints: keep the n best checkpoints by the metric.
        max_checkpoints: with ``keep_best_n_checkpoints``, keep at most n in all
            (as the Coral book reads it): the newest and the tagged best always,
            then the best ones, then the most recent. Alone, keep the n most
            recent (and the tagged best). With neither set, every checkpoint
            stays. A pruned checkpoint keeps its commit; its weights are freed.
        save_last: commit once more when training ends, unless the last
            checkpoint already holds the final step.
        auto_commit: commit on the schedule above; False commits only when asked.
        tag_best_checkpoints: keep the run's ``best`` pointer (``<experiment>/best``)
            on its best checkpoint, and that checkpoint's weights.
        include_optimizer: store optimizer, scheduler and grad-scaler state too.
        branch: commit onto this branch (default: HEAD's branch when training starts).
        push_to: a remote to push the run to (``"origin"``), in the background:
            a training step waits no longer than for the commit itself, a
            remote that is down is retried with backoff, and the end of
            training waits for the pushes (as the Hugging Face Trainer's
            ``push_to_hub``).
        push_strategy: ``"every_save"`` (push after each checkpoint) or
            ``"end"`` (once, when training ends); as ``hub_strategy``.

    Raises:
        ConfigError: for a value of the wrong type or out of range, or
            settings that contradict each other.
    """

    save_every_n_epochs: int | None = 1
    save_every_n_steps: int | None = None
    save_on_best_metric: str | None = None
    minimize_metric: bool | None = None
    mode: Literal["auto", "min", "max"] = "auto"
    keep_best_n_checkpoints: int | None = None
    max_checkpoints: int | None = None
    save_last: bool = True
    auto_commit: bool = True
    tag_best_checkpoints: bool = True
    include_optimizer: bool = True
    branch: str | None = None
    push_to: str | None = None
    push_strategy: Literal["every_save", "end"] = "every_save"

    def __post_init__(self) -> None:
        for name in (
            "save_every_n_epochs",
            "save_every_n_steps",
            "keep_best_n_checkpoints",
            "max_checkpoints",
        ):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"CheckpointConfig.{name} must be a positive int or None")
        for name in ("save_last", "auto_commit", "tag_best_checkpoints", "include_optimizer"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"CheckpointConfig.{name} must be True or False")
        if self.minimize_metric is not None and not isinstance(self.minimize_metric, bool):
            raise ConfigError("CheckpointConfig.minimize_metric must be True, False or None")
        if self.mode not in ("auto", "min", "max"):
            raise ConfigError(
                f"CheckpointConfig.mode must be 'auto', 'min' or 'max', not {self.mode!r}"
            )
        if (
            self.minimize_metric is not None
            and self.mode != "auto"
            and self.minimize_metric != (self.mode == "min")
        ):
            raise ConfigError(
                f"CheckpointConfig: minimize_metric={self.minimize_metric} contradicts "
                f"mode={self.mode!r}; give one of them"
            )
        metric = self.save_on_best_metric
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ConfigError("CheckpointConfig.save_on_best_metric must be a metric name")
        if self.keep_best_n_checkpoints is not None and metric is None:
            raise ConfigError(
                "CheckpointConfig.keep_best_n_checkpoints needs save_on_best_metric: "
                "the metric that says which checkpoints are best"
            )
        if self.branch is not None:
            if not isinstance(self.branch, str):
                raise ConfigError("CheckpointConfig.branch must be a branch name or None")
            validate_ref_name(self.branch)
        if self.push_to is not None:
            if not isinstance(self.push_to, str):
                raise ConfigError("CheckpointConfig.push_to must be a remote's name or None")
            validate_ref_name(self.push_to, "remote")
        if self.push_strategy not in ("every_save", "end"):
            raise ConfigError(
                "CheckpointConfig.push_strategy must be 'every_save' or 'end', not "
                f"{self.push_strategy!r}"
            )

    @property
    def minimize(self) -> bool:
        """Whether a lower value of ``save_on_best_metric`` is better."""
        if self.minimize_metric is not None:
            return self.minimize_metric
        if self.mode != "auto":
            return self.mode == "min"
        name = (self.save_on_best_metric or "").lower()
        return not any(part in name for part in _HIGHER_IS_BETTER)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CheckpointConfig:
        """A config from plain values (a YAML/JSON file); unknown keys are refused."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown CheckpointConfig key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**values)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a run: its commit, epoch, step and metrics; ``kept``
    is False once retention pruned its weights."""

    commit_hash: str
    epoch: int
    step: int
    metrics: dict[str, Any]
    run_id: str = ""
    kept: bool = True


class CheckpointManager:
    """Commits one training run's checkpoints by a :class:`CheckpointConfig`.

    Args:
        repo: the repository.
        config: the policy.
        experiment_name: names the run's checkpoints (and ``<name>/best``).
        run_id: go on with this run (its checkpoints, retention and pointers);
            default: a new run with a fresh id.
        hyperparameters: recorded in every checkpoint of the run (JSON values).

    Raises:
        CoralError: when no branch is given and HEAD is detached.
        ConfigError: for a bad name, run id or hyperparameters, or a
            ``push_to`` remote the repository does not know.
    """

    def __init__(
        self,
        repo: Repository,
        config: CheckpointConfig,
        experiment_name: str = "training",
        *,
        run_id: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> None:
        if not experiment_name or not isinstance(experiment_name, str):
            raise ConfigError("experiment_name must be a non-empty string")
        validate_ref_name(f"{experiment_name}/best", "experiment name")
        self.repo = repo
        self.config = config
        self.experiment_name = experiment_name
        branch = config.branch or repo.current_branch
        if branch is None:
            raise CoralError(
                "HEAD is detached, so checkpoints have no branch to go on; "
                "check out a branch or give CheckpointConfig(branch=...)"
            )
        self.branch = branch
        self._hyperparameters = _json_values(hyperparameters or {})
        self.run_id = validate_run_id(run_id) if run_id is not None else new_run_id()
        self.parent_run: str | None = None
        self._history: list[Checkpoint] = []
        self._best_id: str | None = None
        if run_id is not None:
            self._adopt(run_id)
        self._resumed_from: str | None = None
        self._held: list[str] = []  # pruned, but a ref still holds their weights
        self._pusher = pusher_for(repo, config.push_to) if config.push_to else None

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """What the run records with each checkpoint (JSON values)."""
        return dict(self._hyperparameters)

    @hyperparameters.setter
    def hyperparameters(self, values: Mapping[str, Any]) -> None:
        self._hyperparameters = _json_values(values)

    @property
    def pusher(self) -> BackgroundPusher | None:
        """The background pusher of ``push_to`` (None without it)."""
        return self._pusher

    # -- what is there -------------------------------------------------------------

    def _adopt(self, run_id: str) -> None:
        """Go on with run ``run_id``: its checkpoints, best, hyperparameters and parent."""
        self.run_id = run_id
        self._history = self._scan()
        self._best_id = self._stored_best()
        if self._history:
            record = CheckpointRecord.of(self.repo.read_commit(self._history[-1].commit_hash))
            if record is not None:
                self._hyperparameters = self._hyperparameters or record.hyperparameters
                self.parent_run = record.parent_run

    def _pointer(self, pointer: str) -> str:
        return pointer_ref(self.experiment_name, self.run_id, pointer)

    def _scan(self) -> list[Checkpoint]:
        """This run's checkpoints, oldest first: first parents from its last pointer."""
        found: list[Checkpoint] = []
        tip = self.repo.refs.read(self._pointer(LAST))
        if tip is None and self.run_id == LEGACY_RUN:  # a run format 1 made
            tip = self.repo.branch_tip(self.branch)
        while tip is not None:
            commit = self.repo.read_commit(tip)
            record = CheckpointRecord.of(commit)
            if record and record.experiment == self.experiment_name and record.run == self.run_id:
                kept = self.repo.weights_status(tip) == KEPT
                found.append(_checkpoint(commit, record, kept))
                if record.index == 1:
                    break
            tip = commit.parent_hashes[0] if commit.parent_hashes else None
        return found[::-1]

    def _stored_best(self) -> str | None:
        stored = self.repo.refs.read(self._pointer(BEST)) if self._history else None
        if stored is not None:
            return stored
        ranked = self._ranked()
        return ranked[0].commit_hash if ranked else None

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """The run's checkpoints whose weights are kept, oldest first."""
        return [c for c in self._history if c.kept]

    @property
    def history(self) -> list[Checkpoint]:
        """Every checkpoint of the run, pruned ones too, oldest first."""
        return list(self._history)

    @property
    def latest(self) -> Checkpoint | None:
        """The run's newest checkpoint, or None before the first."""
        return self._history[-1] if self._history else None

    @property
    def best(self) -> Checkpoint | None:
        """The run's best checkpoint by ``save_on_best_metric`` (the earliest on
        ties; the one its ``best`` pointer names), or None when none has the metric."""
        for checkpoint in self._history:
            if checkpoint.commit_hash == self._best_id:
                return checkpoint
        return None

    def _ranked(self) -> list[Checkpoint]:
        """The run's checkpoints that have the metric, best first."""
        metric = self.config.save_on_best_metric
        if metric is None:
            return []
        scored = [c for c in self._history if metric_value(c.metrics.get(metric)) is not None]
        sign = 1.0 if self.config.minimize else -1.0
        return sorted(scored, key=lambda c: sign * float(c.metrics[metric]))  # stable: earliest

    def is_improvement(self, metrics: Mapping[str, Any]) -> bool:
        """Whether ``metrics`` beat the run's best checkpoint on ``save_on_best_metric``
        (True for the first value; False when the metric is absent or not configured)."""
        metric = self.config.save_on_best_metric
        value = metric_value(metrics.get(metric)) if metric else None
        if value is None:
            return False
        best = self.best
        if best is None:
            return True
        previous = float(best.metrics[metric])  # type: ignore[index]
        return value < previous if self.config.minimize else value > previous

    # -- when to save --------------------------------------------------------------

    def should_save_step(self, global_step: int) -> bool:
        """Whether the schedule commits after optimizer step ``global_step`` (1-based)."""
        n = self.config.save_every_n_steps
        return (
            self.config.auto_commit and n is not None and global_step > 0 and global_step % n == 0
        )

    def should_save_epoch(self, epoch: int, metrics: Mapping[str, Any] | None = None) -> bool:
        """Whether the schedule commits after epoch ``epoch`` (0-based) ended with ``metrics``."""
        if not self.config.auto_commit:
            return False
        n = self.config.save_every_n_epochs
        return (n is not None and (epoch + 1) % n == 0) or self.is_improvement(metrics or {})

    def needs_final_save(self, global_step: int) -> bool:
        """Whether ``save_last`` asks for a commit at the end of training."""
        latest = self.latest
        return self.config.save_last and (latest is None or latest.step != global_step)

    # -- resuming ------------------------------------------------------------------

    def resume_from(self, commit_hash: str) -> None:
        """Say that training resumed from this commit's state.

        A checkpoint of this experiment: the manager takes over its run (its
        checkpoints, best, retention). If it is not the run's newest
        checkpoint, the next save starts a new run instead, on a new branch
        ``<branch>-from-step-<k>`` at it, whose record names the first run as
        its parent; the first run's newer checkpoints stay where they are.
        Any other commit starts this run from its weights, changing nothing.
        """
        record = CheckpointRecord.of(self.repo.read_commit(commit_hash))
        if record is None or record.experiment != self.experiment_name:
            return
        if record.run != self.run_id:
            self._adopt(record.run)
        latest = self.latest
        if (
            latest is not None
            and record.branch not in (None, self.branch)
            and self.repo.branch_tip(str(record.branch)) == latest.commit_hash
        ):
            self.branch = str(record.branch)  # go on where the run was going
        self._resumed_from = commit_hash

    def resume_at_step(self, step: int) -> bool:
        """Say that training resumed at optimizer step ``step`` with state the
        framework restored itself (Keras weights, a Trainer's folder): the
        newest checkpoint of this experiment at that step is taken as where it
        came from (see :meth:`resume_from`). Returns whether one was found."""
        if step <= 0 or self._history:
            return False
        found = [
            c
            for run in find_run(self.repo, self.experiment_name)
            for c in run.checkpoints
            if c.record.step == step
        ]
        if not found:
            return False
        self.resume_from(max(found, key=lambda c: c.commit.timestamp).commit.commit_hash)
        return True

    def _branch_off_if_resumed_earlier(self) -> None:
        """The first save after resuming from an older checkpoint than the run's
        newest: a new run, on a new branch started at that checkpoint."""
        origin, self._resumed_from = self._resumed_from, None
        latest = self.latest
        if origin is None or latest is None or origin == latest.commit_hash:
            return
        start = next(c for c in self._history if c.commit_hash == origin)
        if start.step == latest.step:
            return  # the same step (a best and a last of one moment): no other lineage
        name = f"{self.branch}-from-step-{start.step}"
        taken = {b.name for b in self.repo.list_branches()}
        suffix = 2
        while name in taken:
            name = f"{self.branch}-from-step-{start.step}-{suffix}"
            suffix += 1
        self.repo.create_branch(name, origin)
        _log.warning(
            "%s: resumed from step %d, not from the newest checkpoint (step %d) of run %s: "
            "a new run goes on the new branch %r",
            self.experiment_name,
            start.step,
            latest.step,
            self.run_id,
            name,
        )
        self.parent_run, self.run_id = self.run_id, new_run_id()
        self.branch = name
        self._history, self._best_id = [], None

    # -- saving --------------------------------------------------------------------

    def save(
        self,
        weights: Mapping[str, Weight],
        state: TrainingState,
        *,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        best: bool | None = None,
    ) -> Commit:
        """Commit a checkpoint, move the run's pointers, prune what retention lets go.

        Args:
            weights: the model's tensors (a full snapshot).
            state: epoch, step, metrics and the state to resume from.
            message: the commit message (default names the experiment, epoch, step).
            metadata: more commit metadata (a framework's own details).
            best: whether it is the run's best; default: by ``save_on_best_metric``
                (a framework that ranks checkpoints itself says so).
        """
        self._branch_off_if_resumed_earlier()
        metrics = {**state.metrics}
        if state.loss is not None:
            metrics.setdefault("loss", state.loss)
        improved = self.is_improvement(metrics) if best is None else best
        record = CheckpointRecord(
            experiment=self.experiment_name,
            run=self.run_id,
            index=len(self._history) + 1,
            epoch=state.epoch,
            step=state.global_step,
            branch=self.branch,
            monitor=self.config.save_on_best_metric,
            minimize=self.config.minimize if self.config.save_on_best_metric else None,
            hyperparameters=self._hyperparameters,
            parent_run=self.parent_run,
        )
        details = {**(metadata or {}), CHECKPOINT_KEY: record.to_dict()}
        latest = self.latest
        pointers = {self._pointer(LAST): latest.commit_hash if latest else None}
        if improved and self.config.tag_best_checkpoints:
            pointers[self._pointer(BEST)] = self.repo.refs.read(self._pointer(BEST))
        default = f"{self.experiment_name}: epoch {state.epoch}, step {state.global_step}"
        commit = self.repo.commit(
            message or default,
            metrics=metrics,
            metadata=details,
            weights=weights,
            branch=self.branch,
            training_state=state,
            pointers=pointers,
        )
        self._history.append(_checkpoint(commit, record, kept=True))
        if improved:
            self._best_id = commit.commit_hash
        self._retain()
        if self._pusher is not None:
            if self.config.push_strategy == "every_save":
                self._pusher.request(self.branch, self._pointers())
            else:  # at finish(), or when the process exits without one
                self._pusher.request_at_end(self.branch, self._pointers())
        return commit

    def kept(self) -> list[Checkpoint]:
        """The checkpoints the retention rules keep: the newest and the run's
        best always; with ``keep_best_n_checkpoints``, the n best, then the
        most recent up to ``max_checkpoints`` in all; with ``max_checkpoints``
        alone, that many most recent."""
        total, best_n = self.config.max_checkpoints, self.config.keep_best_n_checkpoints
        if total is None and best_n is None:
            return self.checkpoints
        keep = {self._best_id} if self._best_id is not None else set()
        recent = [c.commit_hash for c in reversed(self._history)]  # newest first
        if best_n is None:  # max_checkpoints alone: that many most recent
            keep.update(recent[: total or 1])
        elif total is None:
            keep.update(recent[:1])
            keep.update(c.commit_hash for c in self._ranked()[:best_n])
        else:  # both: the book's reading, max_checkpoints in all
            keep.update(recent[:1])
            for commit in [*(c.commit_hash for c in self._ranked()[:best_n]), *recent]:
                if len(keep) >= total:
                    break
                keep.add(commit)
        return [c for c in self._history if c.commit_hash in keep and c.kept]

    def _retain(self) -> None:
        """Prune the weights of the run's checkpoints the rules no longer keep."""
        keep = {c.commit_hash for c in self.kept()}
        self.prune([c.commit_hash for c in self._history if c.kept and c.commit_hash not in keep])

    def prune(self, commits: Sequence[str]) -> None:
        """Let go of the weights of these checkpoints of the run (their commits
        stay); for frameworks that decide retention themselves (Lightning's
        ``save_top_k`` through ``CoralCheckpointIO``). A checkpoint a ref still
        holds (the branch's tip) keeps its weights until the ref moves on: the
        next save frees them. Commits of other runs are left alone."""
        ours = {c.commit_hash for c in self._history}
        commits = [c for c in commits if c in ours]
        held = [c for c in self._held if self.repo.weights_status(c) == KEPT]
        if not commits and not held:
            return
        self.repo.prune([*commits, *held])
        gone = set(commits)
        self._history = [
            replace(c, kept=False) if c.commit_hash in gone else c for c in self._history
        ]
        still = dict.fromkeys([*held, *commits])
        self._held = [c for c in still if self.repo.weights_status(c) == KEPT]

    def _pointers(self) -> list[str]:
        refs = [self._pointer(LAST)]
        if self._best_id is not None and self.config.tag_best_checkpoints:
            refs.append(self._pointer(BEST))
        return refs

    def finish(self, timeout: float | None = None) -> bool:
        """The end of training: push (``push_strategy="end"``) and wait for the
        background pushes, showing progress on a terminal. True when everything
        was pushed (or nothing is pushed); a remote still down after ``timeout``
        seconds leaves the checkpoints here, with a warning."""
        if self._pusher is None:
            return True
        return self._pusher.flush(timeout)

    def commit_of(self, load_best: bool = False, ref: str | None = None) -> str:
        """The commit to resume from: ``ref`` if given, else the best (with
        ``load_best``) or the newest checkpoint: of this run once it has one,
        else of the experiment (its best run, or its newest run's last).

        Raises:
            RefNotFoundError: when there is no such checkpoint yet.
        """
        if ref is not None:
            return self.repo.resolve(ref)
        if self._history:
            chosen = self.best if load_best else self.latest
            if chosen is not None:
                return chosen.commit_hash
        else:
            pointer = BEST if load_best else LAST
            found = experiment_pointer(
                self.repo.refs, self.repo.read_commit, self.experiment_name, pointer
            )
            if found is not None:
                return found
        what = f"a best {self.config.save_on_best_metric!r}" if load_best else "any"
        raise RefNotFoundError(
            f"experiment {self.experiment_name!r} has no checkpoint with {what} yet; "
            "see `coral-ml experiment list`"
        )


def _checkpoint(commit: Commit, record: CheckpointRecord, kept: bool) -> Checkpoint:
    return Checkpoint(
        commit.commit_hash, record.epoch, record.step, commit.metrics, record.run, kept
    )


def _json_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as JSON would keep them (numbers, strings, lists, dicts);
    other values become their ``repr``, so any config object can be recorded."""
    try:
        return dict(json.loads(json.dumps(dict(values), default=repr)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"hyperparameters must map names to values: {exc}") from None
