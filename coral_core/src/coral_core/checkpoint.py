"""Checkpoint policy, framework-free: when to commit, what to keep, which is best.

Every framework package (the PyTorch ``CoralTrainer``, the Lightning, Hugging
Face and Keras callbacks) drives one :class:`CheckpointManager`: it asks
``should_save_step`` / ``should_save_epoch``, hands over a snapshot with
``save``, and the manager commits it with its :class:`TrainingState`, tags the
best, and forgets checkpoints the retention rules no longer keep by rewriting
the branch's history without them (``Repository.drop_commits``), so ``gc``
can free what only they used.

A checkpoint is a commit whose metadata holds ``coral.checkpoint`` (the
experiment's name, epoch and step); a manager opened on a branch that already
has checkpoints of its experiment picks up where the last process stopped.
A run resumed from an older checkpoint than the newest goes on a branch of its
own that starts there, so the history shows what each checkpoint descends
from and the newer checkpoints of the first run stay where they were.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from coral_core.errors import ConfigError, CoralError, RefNotFoundError
from coral_core.model import Commit
from coral_core.refnames import validate_ref_name
from coral_core.refs import HEADS
from coral_core.training_state import TrainingState

if TYPE_CHECKING:
    from coral_core.repository import Repository, Weight

_log = logging.getLogger("coral.checkpoint")

#: Commit metadata key that marks a checkpoint: ``{"experiment", "epoch", "step"}``.
CHECKPOINT_KEY = "coral.checkpoint"
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
        max_checkpoints: keep the n most recent checkpoints. The kept set is
            the union of both rules and always holds the newest checkpoint
            (and the tagged best); with neither set, every checkpoint stays.
        save_last: commit once more when training ends, unless the last
            checkpoint already holds the final step.
        auto_commit: commit on the schedule above; False commits only when asked.
        tag_best_checkpoints: keep a tag ``<experiment>/best`` on the best checkpoint.
        include_optimizer: store optimizer, scheduler and grad-scaler state too.
        branch: commit onto this branch (default: HEAD's branch when training starts).

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
    """One checkpoint of an experiment: its commit, epoch, step and metrics."""

    commit_hash: str
    epoch: int
    step: int
    metrics: dict[str, Any]


class CheckpointManager:
    """Commits a training run's checkpoints by a :class:`CheckpointConfig`.

    Args:
        repo: the repository.
        config: the policy.
        experiment_name: names the run's checkpoints (and the ``<name>/best`` tag).

    Raises:
        CoralError: when no branch is given and HEAD is detached.
    """

    def __init__(
        self, repo: Repository, config: CheckpointConfig, experiment_name: str = "training"
    ) -> None:
        if not experiment_name or not isinstance(experiment_name, str):
            raise ConfigError("experiment_name must be a non-empty string")
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
        self.best_tag = validate_ref_name(f"{experiment_name}/best", "tag")
        self._checkpoints = self._scan()

    # -- what is there -------------------------------------------------------------

    def _scan(self) -> list[Checkpoint]:
        """This experiment's checkpoints on the branch, oldest first (first parents)."""
        tip = self.repo.refs.read(HEADS + self.branch)
        found = []
        while tip is not None:
            commit = self.repo.read_commit(tip)
            record = _record(commit, self.experiment_name)
            if record is not None:
                found.append(record)
            tip = commit.parent_hashes[0] if commit.parent_hashes else None
        return found[::-1]

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """The kept checkpoints of this experiment, oldest first."""
        return list(self._checkpoints)

    @property
    def latest(self) -> Checkpoint | None:
        """The newest checkpoint, or None before the first."""
        return self._checkpoints[-1] if self._checkpoints else None

    @property
    def best(self) -> Checkpoint | None:
        """The checkpoint with the best value of ``save_on_best_metric`` (the
        earliest on ties), or None when no checkpoint has it."""
        ranked = self._ranked()
        return ranked[0] if ranked else None

    def _ranked(self) -> list[Checkpoint]:
        """Checkpoints that have the metric, best first."""
        metric = self.config.save_on_best_metric
        if metric is None:
            return []
        scored = [c for c in self._checkpoints if _number(c.metrics.get(metric)) is not None]
        sign = 1.0 if self.config.minimize else -1.0
        return sorted(scored, key=lambda c: sign * float(c.metrics[metric]))  # stable: earliest

    def is_improvement(self, metrics: Mapping[str, Any]) -> bool:
        """Whether ``metrics`` beat the best checkpoint on ``save_on_best_metric``
        (True for the first value; False when the metric is absent or not configured)."""
        metric = self.config.save_on_best_metric
        value = _number(metrics.get(metric)) if metric else None
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

    # -- saving --------------------------------------------------------------------

    def save(
        self,
        weights: Mapping[str, Weight],
        state: TrainingState,
        *,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Commit:
        """Commit a checkpoint, tag it if best, and apply the retention rules.

        Args:
            weights: the model's tensors (a full snapshot).
            state: epoch, step, metrics and the state to resume from.
            message: the commit message (default names the experiment, epoch, step).
            metadata: more commit metadata (a framework's own details).
        """
        self._branch_off_if_resumed(state.global_step)
        metrics = {**state.metrics}
        if state.loss is not None:
            metrics.setdefault("loss", state.loss)
        improved = self.is_improvement(metrics)
        details = {
            **(metadata or {}),
            CHECKPOINT_KEY: {
                "experiment": self.experiment_name,
                "epoch": state.epoch,
                "step": state.global_step,
            },
        }
        default = f"{self.experiment_name}: epoch {state.epoch}, step {state.global_step}"
        commit = self.repo.commit(
            message or default,
            metrics=metrics,
            metadata=details,
            weights=weights,
            branch=self.branch,
            training_state=state,
        )
        if self._moved_elsewhere(commit):  # another writer rewrote or added to the branch
            self._checkpoints = self._scan()
        else:
            self._checkpoints.append(_record(commit, self.experiment_name))  # type: ignore[arg-type]
        if improved and self.config.tag_best_checkpoints:
            self._tag_best()
        return self._retain(commit)

    def _branch_off_if_resumed(self, step: int) -> None:
        """A save at a step before the newest checkpoint's: training resumed from
        an older checkpoint (the one with the greatest step below ``step``).
        Later checkpoints go on a new branch ``<branch>-from-step-<k>`` started
        there, instead of after checkpoints they do not descend from."""
        latest = self.latest
        if latest is None or step <= 0 or step >= latest.step:
            return
        earlier = [c for c in self._checkpoints if c.step < step]
        if not earlier:
            return  # nothing it could have resumed from: a new run, kept on the branch
        origin = max(earlier, key=lambda c: c.step)
        name = f"{self.branch}-from-step-{origin.step}"
        taken = {b.name for b in self.repo.list_branches()}
        suffix = 2
        while name in taken:
            name = f"{self.branch}-from-step-{origin.step}-{suffix}"
            suffix += 1
        self.repo.create_branch(name, origin.commit_hash)
        _log.warning(
            "%s: step %d follows step %d, not the newest checkpoint (step %d) of branch %r: "
            "its checkpoints go on the new branch %r",
            self.experiment_name,
            step,
            origin.step,
            latest.step,
            self.branch,
            name,
        )
        self.branch = name
        self._checkpoints = self._scan()

    def _moved_elsewhere(self, commit: Commit) -> bool:
        """Whether the branch changed since this manager last looked: the new
        commit's parent is not the newest checkpoint it knows (a cheap test
        that spares a walk of the history on every save)."""
        parent = commit.parent_hashes[0] if commit.parent_hashes else None
        latest = self.latest
        return parent != (latest.commit_hash if latest is not None else None)

    def _tag_best(self) -> None:
        best = self.best
        if best is None:
            return
        metric = self.config.save_on_best_metric
        self.repo.tag_version(
            self.best_tag,
            f"best {metric} of {self.experiment_name} (epoch {best.epoch}, step {best.step})",
            metrics=best.metrics,
            ref=best.commit_hash,
            force=True,
        )

    def kept(self) -> list[Checkpoint]:
        """The checkpoints the retention rules keep: the newest, the
        ``max_checkpoints`` most recent and the ``keep_best_n_checkpoints`` best."""
        recent_n, best_n = self.config.max_checkpoints, self.config.keep_best_n_checkpoints
        if recent_n is None and best_n is None:
            return list(self._checkpoints)
        keep = {c.commit_hash for c in self._checkpoints[-(recent_n or 1) :]}
        ranked = self._ranked()
        if best_n is not None:
            keep |= {c.commit_hash for c in ranked[:best_n]}
        if self.config.tag_best_checkpoints and ranked:  # a tag is a promise to keep it
            keep.add(ranked[0].commit_hash)
        return [c for c in self._checkpoints if c.commit_hash in keep]

    def _retain(self, commit: Commit) -> Commit:
        """Drop what the rules no longer keep; the commit just made, as it is now."""
        kept = {c.commit_hash for c in self.kept()}
        dropped = [c.commit_hash for c in self._checkpoints if c.commit_hash not in kept]
        if not dropped:
            return commit
        mapping = self.repo.drop_commits(self.branch, dropped)
        self._checkpoints = [
            Checkpoint(str(mapping.get(c.commit_hash, c.commit_hash)), c.epoch, c.step, c.metrics)
            for c in self._checkpoints
            if c.commit_hash in kept
        ]
        return self.repo.read_commit(str(mapping.get(commit.commit_hash, commit.commit_hash)))

    def commit_of(self, load_best: bool = False, ref: str | None = None) -> str:
        """The commit to resume from: ``ref`` if given, else the best (with
        ``load_best``) or the newest checkpoint.

        Raises:
            RefNotFoundError: when there is no such checkpoint yet.
        """
        if ref is not None:
            return self.repo.resolve(ref)
        chosen = self.best if load_best else self.latest
        if chosen is None:
            what = f"a best {self.config.save_on_best_metric!r}" if load_best else "any"
            raise RefNotFoundError(
                f"experiment {self.experiment_name!r} has no checkpoint with {what} "
                f"on branch {self.branch!r} yet"
            )
        return chosen.commit_hash


def _record(commit: Commit, experiment: str) -> Checkpoint | None:
    info = commit.metadata.metadata.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or info.get("experiment") != experiment:
        return None
    return Checkpoint(
        commit.commit_hash, int(info.get("epoch", 0)), int(info.get("step", 0)), commit.metrics
    )


def _number(value: Any) -> float | None:
    """A metric value that can be ranked: a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
