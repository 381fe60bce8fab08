"""Keras commits written as the files Keras loads (``coral-ml export``).

A commit of :class:`~coral_tf.CoralKerasCallback` or :func:`~coral_tf.save_weights`
names its tensors by variable path (``sequential/dense/kernel``), which is not
the layout of Keras' files (``layers/dense/vars/0``, numbered in the order
Keras saves each layer's variables). Rather than rebuild that order, the
exporter rebuilds the model from the architecture the commit records (with
Keras' ``safe_mode``: no Lambda or other code from the commit runs), loads
the commit into it, and lets Keras write the file: ``.weights.h5`` for
``model.load_weights``, ``.keras`` for ``keras.models.load_model``. A commit
of a subclassed model records no architecture; exporting it is refused with
the Python to write it instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import keras  # type: ignore[import-untyped]

from coral_core import Commit, CoralError, Repository
from coral_core.exports import CommitExport
from coral_tf.weights import MODEL_KEY, load_weights

#: Written by Keras itself, in its own layout.
SUFFIXES = (".keras", ".weights.h5")


def rebuild_model(repo: Repository, commit: Commit) -> Any:
    """The Keras model a commit recorded, built from its architecture and
    holding the commit's weights, and its optimizer's state when the model was
    compiled and the commit holds that state (as Keras' own files of a
    training model do).

    Raises:
        CoralError: when the commit records no architecture (a subclassed
            model) or Keras cannot rebuild it (a layer class of the user's
            code, a Lambda), saying how to export it from Python.
    """
    details = commit.metadata.metadata.get(MODEL_KEY)
    name = details.get("name") if isinstance(details, dict) else None
    config = details.get("config") if isinstance(details, dict) else None
    from_python = (
        "export it from Python, where the model's code is: "
        f"coral_tf.load_weights(model, repo, {commit.short_hash!r}); "
        "model.save_weights('model.weights.h5')"
    )
    if not isinstance(config, dict):
        raise CoralError(
            f"commit {commit.short_hash} holds model {name!r} without its architecture "
            f"(a subclassed model, or committed by an older coral-tf); {from_python}"
        )
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except (TypeError, ValueError, KeyError) as exc:
        raise CoralError(
            f"commit {commit.short_hash}: Keras cannot rebuild model {name!r} here ({exc}); "
            f"{from_python}"
        ) from None
    state = repo.training_state(commit.commit_hash)
    resumable = getattr(model, "optimizer", None) is not None and bool(
        state is not None and state.optimizer_state
    )
    load_weights(model, repo, commit.commit_hash, include_optimizer=resumable)
    return model


def write_keras_export(repo: Repository, commit: Commit, target: Path) -> list[Path]:
    """Write ``commit`` to ``target`` (``.keras`` or ``.weights.h5``) as Keras
    would have, atomically."""
    model = rebuild_model(repo, commit)
    suffix = ".keras" if target.name.lower().endswith(".keras") else ".weights.h5"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".coral-export-") as folder:
        written = Path(folder) / f"model{suffix}"
        if suffix == ".keras":
            model.save(written)
        else:
            model.save_weights(written)
        os.replace(written, target)
    return [target]


#: The ``coral.exports`` entry point ``coral_tf.model``.
KERAS_EXPORT = CommitExport("Keras", SUFFIXES, write_keras_export)
