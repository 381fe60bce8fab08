"""``CoralCheckpointIO``: Lightning's own checkpointing, into Coral commits.

``Trainer(plugins=[CoralCheckpointIO(repo)])`` makes every checkpoint Lightning
writes (``ModelCheckpoint``, ``trainer.save_checkpoint``) a commit on a branch
instead of a ``.ckpt`` file, through one :class:`~coral_core.CheckpointManager`
run. The path Lightning chose is kept in the commit (``coral_lightning.path``),
so ModelCheckpoint's bookkeeping (``best_model_path``, ``save_top_k``,
``last.ckpt``) works unchanged: saving to a path again prunes the weights of
the commit saved there before, and ``remove_checkpoint`` prunes that commit's
weights. History is append-only: every checkpoint stays in ``log``, and only
the checkpoints ModelCheckpoint keeps hold weights; a new run never touches
an earlier run's. ModelCheckpoint's best is the run's ``best`` pointer
(``<experiment>/best``). ``ckpt_path`` accepts those paths, ``coral://`` URLs
and commit ids.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from pytorch_lightning.plugins.io import CheckpointIO

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    Commit,
    CoralError,
    RefNotFoundError,
    Repository,
)
from coral_core.repository import CORAL_DIR
from coral_core.runs import CheckpointRecord
from coral_lightning.convert import (
    RANDOM_STATE_KEY,
    checkpoint_from_commit,
    checkpoint_to_commit,
    restore_random_state,
)
from coral_lightning.filesystem import SCHEME, CoralURL, known_repositories, remember, url_for

#: Commit metadata key: the checkpoint path Lightning saved to.
PATH_KEY = "coral_lightning.path"


class CoralCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` plugin that saves checkpoints as Coral commits.

    Args:
        repo: a :class:`~coral_core.Repository`, or its folder (created on the
            first save if needed).
        experiment_name: names the checkpoints (commit metadata, and the
            ``<name>/best`` pointer on ModelCheckpoint's best one).
        branch: commit onto this branch (default: HEAD's branch).
        restore_random_state: on load, put Python's, numpy's and torch's random
            generators back as they were at the save, so a resumed run draws
            the same data order and dropout as one that never stopped.
        push_to, push_strategy: push the run to this remote as it trains (see
            :class:`~coral_core.CheckpointConfig`); the end of ``fit`` waits for it.
    """

    def __init__(
        self,
        repo: Repository | str | os.PathLike[str],
        experiment_name: str = "lightning",
        branch: str | None = None,
        restore_random_state: bool = True,
        *,
        push_to: str | None = None,
        push_strategy: Literal["every_save", "end"] = "every_save",
    ) -> None:
        self._repo = repo if isinstance(repo, Repository) else None
        self._repo_path = repo.path if isinstance(repo, Repository) else Path(repo)
        self.experiment_name = experiment_name
        self._branch = branch
        self.restore_random_state = restore_random_state
        self.config = CheckpointConfig(  # Lightning decides when to save and what to keep
            save_every_n_epochs=None,
            save_last=False,
            auto_commit=False,
            branch=branch,
            push_to=push_to,
            push_strategy=push_strategy,
        )
        self._manager: CheckpointManager | None = None

    @property
    def repo(self) -> Repository:
        """The repository (created on first use if the folder holds none)."""
        return self._open(create=True)

    def _open(self, create: bool) -> Repository:
        if self._repo is None:
            self._repo = Repository(self._repo_path, init=create)
        remember(self._repo)
        return self._repo

    @property
    def manager(self) -> CheckpointManager:
        """The run the checkpoints are committed to (made on first use)."""
        if self._manager is None:
            try:
                self._manager = CheckpointManager(self.repo, self.config, self.experiment_name)
            except CoralError as exc:
                if self.repo.current_branch is not None or self._branch is not None:
                    raise
                raise CoralError(
                    f"HEAD of {self.repo.path} is detached, so checkpoints have no branch to go "
                    "on; check out a branch or give CoralCheckpointIO(branch=...)"
                ) from exc
        return self._manager

    @property
    def branch(self) -> str:
        """The branch checkpoints go on."""
        return self.manager.branch

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        """Commit ``checkpoint`` as the one saved at ``path`` (replacing an earlier one there).

        Raises:
            TypeError: for ``storage_options`` (Coral takes none).
            UnstorableCheckpointError: for an entry that would need a pickle.
        """
        if storage_options is not None:
            raise TypeError(
                f"CoralCheckpointIO.save_checkpoint takes no storage_options, got "
                f"{storage_options!r}"
            )
        key = _path_key(path)
        weights, state, metadata = checkpoint_to_commit(checkpoint, metrics=_monitored(checkpoint))
        state.experiment_name = self.experiment_name
        metadata[PATH_KEY] = key
        earlier = self._commits_at(key, self.manager.run_id)
        if not self.manager.hyperparameters and checkpoint.get("hyper_parameters"):
            self.manager.hyperparameters = dict(checkpoint["hyper_parameters"])
        monitors = [s["monitor"] for s in _callback_states(checkpoint)]
        if monitors and self.manager.config.save_on_best_metric is None:  # ModelCheckpoint's
            self.manager.config = dataclasses.replace(
                self.manager.config, save_on_best_metric=str(monitors[0])
            )
        message = f"{self.experiment_name}: {os.path.basename(key)} (epoch {state.epoch}, "
        message += f"step {state.global_step})"
        self.manager.save(
            weights, state, message=message, metadata=metadata, best=key in _best_paths(checkpoint)
        )
        self.manager.prune(earlier)  # an overwrite: one checkpoint with weights per path and run

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Any = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """The checkpoint dict saved at ``path``, or held by a ``coral://`` URL
        or a commit id, with the random generators put back as they were at
        the save (unless ``restore_random_state`` is off).

        Tensors come back on the CPU (Lightning moves them to the model's
        device); nothing is unpickled, so ``weights_only`` changes nothing.

        Raises:
            RepositoryNotFoundError: when the folder holds no repository.
            RefNotFoundError: when ``path`` names no checkpoint of this repository.
        """
        self._open(create=False)  # every rank loads: none of them creates
        commit = self.resolve(path)
        loaded = checkpoint_from_commit(self.repo, commit)
        if self.restore_random_state:
            restore_random_state(loaded)
        loaded.pop(RANDOM_STATE_KEY, None)  # restored here or not at all
        if self._manager is not None or self.repo.current_branch or self._branch:
            self.manager.resume_from(commit)  # a fit that goes on saves into that run
        return loaded

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Prune the weights of the checkpoint saved at ``path`` (no-op when none):
        its commit stays in history."""
        if self._repo is None and not self._repo_path.exists():
            return
        self.manager.prune(self._commits_at(_path_key(path), self.manager.run_id))

    def teardown(self) -> None:
        """The end of ``fit``: wait for the background pushes (``push_to``)."""
        if self._manager is not None:
            self._manager.finish()

    def resolve(self, path: str | os.PathLike[str]) -> str:
        """The commit id a ``ckpt_path`` names: a ``coral://`` URL of this
        repository, a path saved to, or a ref or commit id of the repository.

        Raises:
            CoralError: for a URL of another repository.
            RefNotFoundError: when it names no checkpoint here.
        """
        text = os.fspath(path)
        if text.startswith(SCHEME):
            url = CoralURL.parse(text)
            if url.folder is not None and url.folder.absolute() != self.repo.path:
                raise CoralError(
                    f"{text} is a checkpoint of {url.folder.absolute()}, but this "
                    f"CoralCheckpointIO saves to {self.repo.path}: resume where the run saves, "
                    "or give CoralCheckpointIO that repository"
                )
            return self.repo.resolve(url.ref)
        saved = self._commits_at(_path_key(text))
        if saved:
            return saved[0]  # a pruned one raises PrunedCommitError when loaded
        try:
            return self.repo.resolve(text)
        except RefNotFoundError:
            raise RefNotFoundError(
                f"no checkpoint {text!r} in {self.repo.path}: not a path saved on branch "
                f"{self.branch!r}, nor a ref or commit id; give ckpt_path='coral://<ref>' "
                "(a branch, tag or commit) or a path ModelCheckpoint saved"
            ) from None

    def pointer_url(self, pointer: Literal["best", "last"]) -> str | None:
        """The URL of the experiment's ``best`` or ``last`` checkpoint (over
        its runs), or None before there is one: what ``ckpt_path="best"``
        and ``"last"`` mean in a process that did not save them."""
        if self._repo is None and not (self._repo_path / ".coral").is_dir():
            return None
        try:
            commit = self._open(create=False).resolve(f"{self.experiment_name}/{pointer}")
        except RefNotFoundError:
            return None
        return url_for(self.repo, commit)

    def _commits_at(self, key: str, run: str | None = None) -> list[str]:
        """Commits saved at ``key`` on the branch, newest first: all of them, or
        those of ``run`` that hold weights."""
        found = []
        tip = self.repo.branch_tip(self.branch)
        while tip is not None:
            commit = self.repo.read_commit(tip)
            if commit.metadata.metadata.get(PATH_KEY) == key and (
                run is None or (_run_of(commit) == run and self.repo.weights_status(tip) == "kept")
            ):
                found.append(tip)
            tip = commit.parent_hashes[0] if commit.parent_hashes else None
        return found


def find_saved(path: str | os.PathLike[str]) -> tuple[Repository, str] | None:
    """The repository and commit CoralCheckpointIO saved at ``path`` most
    recently, among the repositories this process knows (see
    :func:`~coral_lightning.filesystem.known_repositories`) and those up to two
    folders below the current folder and below each of the three folders above
    ``path`` (where a training script's ``checkpoints/`` and repository sit
    side by side), or None."""
    key = _path_key(path)
    found: list[tuple[float, Repository, str]] = []
    for folder in dict.fromkeys([*known_repositories(), *_nearby_repositories(Path(key))]):
        try:
            repo = Repository(folder)
            history = repo.log(all_refs=True)
        except (CoralError, OSError):
            continue  # a repository that cannot be read is not where it went
        for commit in history:
            if commit.metadata.metadata.get(PATH_KEY) == key:
                found.append((commit.timestamp, repo, commit.commit_hash))
                break  # the log is newest first
    if not found:
        return None
    _, repo, commit_id = max(found, key=lambda item: item[0])
    return repo, commit_id


def _nearby_repositories(path: Path) -> list[Path]:
    roots = [root for root in (Path.cwd(), *path.parents[:3]) if root != Path(root.anchor)]
    patterns = (f"*/{CORAL_DIR}", f"*/*/{CORAL_DIR}")
    return [
        coral.parent
        for root in dict.fromkeys(roots)
        for pattern in patterns
        for coral in sorted(root.glob(pattern))
    ]


def _run_of(commit: Commit) -> str | None:
    record = CheckpointRecord.of(commit)
    return record.run if record is not None else None


def _path_key(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _callback_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The states of ModelCheckpoint-like callbacks that monitor a metric."""
    states = checkpoint.get("callbacks") or {}
    return [s for s in states.values() if isinstance(s, dict) and s.get("monitor")]


def _monitored(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``{monitor: current score}`` of each ModelCheckpoint in the checkpoint."""
    return {
        s["monitor"]: s["current_score"]
        for s in _callback_states(checkpoint)
        if s.get("current_score") is not None
    }


def _best_paths(checkpoint: dict[str, Any]) -> set[str]:
    return {
        _path_key(s["best_model_path"])
        for s in _callback_states(checkpoint)
        if s.get("best_model_path")
    }
