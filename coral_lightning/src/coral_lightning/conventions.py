"""Two Lightning conventions that assume ``.ckpt`` files, taught about Coral.

Lightning resolves ``ckpt_path="best"`` and ``"last"`` before any plugin or
callback sees them: "best" is the first checkpoint callback's
``best_model_path`` (empty in a process that has not trained), "last" the
newest ``last*.ckpt`` file of each ``ModelCheckpoint`` on disk (where, with
CoralCheckpointIO, there is none). Without help a new process's
``fit(ckpt_path="last")`` starts a fresh run at epoch 0 with a warning.
And ``Trainer(enable_checkpointing=False)`` beside a CoralCallback raises
"found ``ModelCheckpoint`` in callbacks list", naming a callback the user
never gave. A Trainer without CoralCheckpointIO given the path a
ModelCheckpoint saved into Coral says only "Checkpoint file not found".

:func:`install` (run when ``coral_lightning`` is imported, or a ``Trainer``
is made: see :func:`installed_callbacks`) wraps the two
private methods of Lightning's connectors that do this, so that "best" and
"last" name the Coral experiment's checkpoints when Lightning's own
bookkeeping has none, and the errors name the Coral fix. Everything else
goes to Lightning unchanged; a Lightning without those methods is left as
it is (``tests/coral_lightning`` checks the installed one has them).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.trainer.connectors.callback_connector import _CallbackConnector
from pytorch_lightning.trainer.connectors.checkpoint_connector import _CheckpointConnector

from coral_lightning.callback import CoralCallback
from coral_lightning.checkpoint_io import CoralCheckpointIO, find_saved
from coral_lightning.filesystem import SCHEME, locate, url_for

_WRAPPED = "_coral_wrapped"


def coral_ckpt_path(trainer: pl.Trainer, name: str) -> str | None:
    """The ``coral://`` URL ``ckpt_path=name`` ("best" or "last") means, or
    None where Lightning's own lookup answers (or Coral has nothing).

    "best": the first checkpoint callback's best when it has one (a
    CoralCallback reads its experiment's best from the repository), else the
    best of CoralCheckpointIO's experiment. "last": the newest checkpoint of
    the CoralCallbacks' and CoralCheckpointIO's experiments, unless
    ModelCheckpoint files are written to disk (no CoralCheckpointIO), which
    Lightning compares itself.
    """
    plugin = trainer.strategy.checkpoint_io
    coral_io = plugin if isinstance(plugin, CoralCheckpointIO) else None
    if name == "best":
        callback = trainer.checkpoint_callback
        known: str = getattr(callback, "best_model_path", "") if callback is not None else ""
        if known:
            return None
        return coral_io.pointer_url("best") if coral_io is not None else None
    file_writers = (ModelCheckpoint, OnExceptionCheckpoint)
    if coral_io is None and any(isinstance(cb, file_writers) for cb in callbacks_of(trainer)):
        return None
    urls = [cb.last_model_path for cb in callbacks_of(trainer) if isinstance(cb, CoralCallback)]
    if coral_io is not None:
        urls.append(coral_io.pointer_url("last") or "")
    found = [url for url in urls if url]
    return max(found, key=_commit_time) if found else None


def refuse_a_path_only_coral_has(trainer: pl.Trainer, ckpt_path: Any) -> None:
    """Say how to load a ``ckpt_path`` that has no file because CoralCheckpointIO
    saved it into a repository, when the Trainer reads files.

    Raises:
        FileNotFoundError: naming the repository, the commit and the two fixes.
    """
    if not isinstance(ckpt_path, (str, os.PathLike)) or isinstance(
        trainer.strategy.checkpoint_io, CoralCheckpointIO
    ):
        return
    text = os.fspath(ckpt_path)
    if text.startswith(SCHEME) or "://" in text or os.path.exists(text):
        return
    found = find_saved(text)
    if found is not None:
        repo, commit = found
        raise FileNotFoundError(
            f"{text} has no file: CoralCheckpointIO saved that checkpoint into {repo.path} "
            f"(commit {commit[:12]}). Give the Trainer plugins=[CoralCheckpointIO("
            f"{str(repo.path)!r})], or ckpt_path={url_for(repo, commit)!r}"
        )


def callbacks_of(trainer: pl.Trainer) -> list[pl.Callback]:
    """The trainer's callbacks (an attribute Lightning's connector sets)."""
    callbacks: list[pl.Callback] = getattr(trainer, "callbacks", [])
    return callbacks


def _commit_time(url: str) -> float:
    repo, commit = locate(url)
    return repo.read_commit(commit).timestamp


def installed_callbacks() -> list[pl.Callback]:
    """Lightning's ``pytorch_lightning.callbacks_factory`` entry point, which
    every ``Trainer`` calls: it installs these conventions in scripts that never
    import coral_lightning (an evaluation script given a path Coral saved), and
    adds no callback."""
    install()
    return []


def install() -> None:
    """Wrap Lightning's resolution of "best"/"last" and its
    ``enable_checkpointing`` check (once; idempotent)."""
    parse = getattr(_CheckpointConnector, "_parse_ckpt_path", None)
    if parse is not None and not getattr(parse, _WRAPPED, False):

        @functools.wraps(parse)
        def parse_ckpt_path(
            self: _CheckpointConnector, state_fn: Any, ckpt_path: Any, *args: Any, **kwargs: Any
        ) -> Any:
            if ckpt_path in ("best", "last"):
                found = coral_ckpt_path(self.trainer, ckpt_path)
                if found:
                    return found
            parsed = parse(self, state_fn, ckpt_path, *args, **kwargs)
            refuse_a_path_only_coral_has(self.trainer, parsed)
            return parsed

        setattr(parse_ckpt_path, _WRAPPED, True)
        _CheckpointConnector._parse_ckpt_path = parse_ckpt_path  # type: ignore[method-assign]

    configure = getattr(_CallbackConnector, "_configure_checkpoint_callbacks", None)
    if configure is not None and not getattr(configure, _WRAPPED, False):

        @functools.wraps(configure)
        def configure_checkpoint_callbacks(
            self: _CallbackConnector, enable_checkpointing: bool
        ) -> Any:
            if not enable_checkpointing and any(
                isinstance(cb, CoralCallback) for cb in callbacks_of(self.trainer)
            ):
                raise MisconfigurationException(
                    "Trainer(enable_checkpointing=False) turns checkpointing off, but a "
                    "CoralCallback is in callbacks: it is this run's checkpointing. Drop "
                    "enable_checkpointing=False: with a CoralCallback Lightning adds no "
                    "ModelCheckpoint and writes no .ckpt files"
                )
            return configure(self, enable_checkpointing)

        setattr(configure_checkpoint_callbacks, _WRAPPED, True)
        _CallbackConnector._configure_checkpoint_callbacks = configure_checkpoint_callbacks  # type: ignore[method-assign]
