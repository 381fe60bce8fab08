"""Keras models in and out of a Coral repository, bit for bit.

A model's variables are named by their ``v.path``
(``sequential/d1/kernel``) and kept in the dtype they have (float32, float16,
bfloat16, int counters). The commit records the model's name, and
:func:`load_weights` matches names without it, so a commit also fits a
rebuilt model Keras named ``sequential_1``, or one ``keras.models.load_model``
made (whose paths lack the model's name: ``d1/kernel``).
Optimizer variables (``optimizer.variables``: the step counter, learning rate,
moments) travel as :class:`~coral_core.TrainingState` tensors in the order
Keras creates them, as Keras' own files keep them.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras  # type: ignore[import-untyped]
import numpy as np

from coral_core import (
    Commit,
    Repository,
    TensorMismatchError,
    WeightMetadata,
    WeightsMismatchError,
    WeightTensor,
)
from coral_core.dtypes import dtype_name
from coral_tf.formats import FILE_LAYOUT, write_keras_file

#: Commit metadata key: ``{"name": model.name, "class": ..., "config": ...}`` of the
#: model committed (``config``: Keras' serialization of a built-in model's
#: architecture, absent for subclassed models), so ``coral-ml export`` can
#: rebuild it and have Keras write its own files.
MODEL_KEY = "coral_tf.model"
_NO_OPTIMIZER = "model {!r} has no optimizer to restore; compile it first"


#: ``TrainingState.extra`` key of :func:`model_state`.
MODEL_STATE_KEY = "coral_tf.model_state"


def to_array(value: Any) -> np.ndarray:
    """A variable's (or tensor's) value as a numpy array of its own dtype."""
    if hasattr(value, "numpy"):  # no keras.ops.convert_to_numpy: it warns under numpy 2
        return np.asarray(value.numpy())
    return np.asarray(keras.ops.convert_to_numpy(value))


def _layer_types(model: keras.Model) -> dict[int, str]:
    """``id(variable)`` -> class of the innermost layer holding it."""
    owners = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):  # outer first
        for variable in layer.weights:
            owners[id(variable)] = type(layer).__name__
    return owners


def model_weights(model: keras.Model) -> dict[str, WeightTensor]:
    """The model's variables (``model.weights``) as Coral tensors named by ``v.path``.

    Raises:
        TensorMismatchError: when two variables share a path.
    """
    owners = _layer_types(model)
    weights: dict[str, WeightTensor] = {}
    for variable in model.weights:
        name = variable.path
        if name in weights:
            raise TensorMismatchError(
                f"two variables of model {model.name!r} share the path {name!r}; "
                "give the layers distinct names"
            )
        array = to_array(variable)
        metadata = WeightMetadata(
            name=name,
            shape=array.shape,
            dtype=array.dtype,
            layer_type=owners.get(id(variable)),
            model_name=model.name,
        )
        weights[name] = WeightTensor(array, metadata=metadata)
    return weights


def model_details(model: keras.Model) -> dict[str, Any]:
    """Commit metadata naming the model, so :func:`load_weights` can match paths
    without it, with its architecture when Keras can rebuild it without user code."""
    details: dict[str, Any] = {"name": model.name, "class": type(model).__name__}
    config = architecture(model)
    if config is not None:
        details["config"] = config
    return {MODEL_KEY: details}


def architecture(model: keras.Model) -> dict[str, Any] | None:
    """Keras' serialization of a Sequential or functional model (what a
    ``.keras`` file's ``config.json`` holds), or None for a subclassed model,
    whose class only the user's code has."""
    if not _built_in(model):
        return None
    try:
        config = keras.saving.serialize_keras_object(model)
        json.dumps(config, allow_nan=False)
    except (NotImplementedError, TypeError, ValueError):  # a layer without get_config
        return None
    return config if isinstance(config, dict) else None


def _built_in(model: keras.Model) -> bool:
    """A Sequential or a functional model (``keras.Model(inputs, outputs)``)."""
    kind = type(model)
    return kind.__module__.startswith("keras.") and kind.__name__ in ("Sequential", "Functional")


def optimizer_state(model: keras.Model) -> dict[str, Any] | None:
    """The compiled optimizer's variables (none before it is built), for a
    :class:`~coral_core.TrainingState`; None for a model without an optimizer."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    variables = list(optimizer.variables)
    return {
        "class": type(optimizer).__name__,
        "paths": [v.path for v in variables],
        "values": [to_array(v) for v in variables],
    }


def model_state(model: keras.Model) -> dict[str, Any] | None:
    """The model's variables that are not weights (the states of Dropout's and
    other layers' seed generators), for a :class:`~coral_core.TrainingState`:
    without them a resumed run draws other dropout masks. None when there are none."""
    weights = {id(v) for v in model.weights}
    others = [v for v in model.variables if id(v) not in weights]
    if not others:
        return None
    return {"paths": [v.path for v in others], "values": [to_array(v) for v in others]}


def save_weights(
    repo: Repository,
    model: keras.Model,
    message: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    branch: str | None = None,
) -> Commit:
    """Commit a model's variables as one snapshot onto ``branch`` (HEAD's by default)."""
    details = {**(metadata or {}), **model_details(model)}
    return repo.commit(
        message, metrics=metrics, metadata=details, weights=model_weights(model), branch=branch
    )


def _relative(path: str, model_name: str | None) -> str:
    """``path`` without its leading ``<model_name>/``: Keras puts the model's name
    in front of some paths only (a Sequential's, not a deserialized copy's)
    and numbers the names of models built in one process."""
    prefix = f"{model_name}/"
    return path[len(prefix) :] if model_name and path.startswith(prefix) else path


def load_weights(
    model: keras.Model,
    repo: Repository,
    ref: str | None = None,
    strict: bool = True,
    *,
    include_optimizer: bool = False,
) -> Commit:
    """Assign a commit's tensors (HEAD by default) to a built model's variables.

    Args:
        model: a built model (called once, or given an ``Input``).
        repo: the repository.
        ref: the commit, branch or tag.
        strict: refuse a commit that lacks some of the model's variables or
            holds others; False assigns those that match by name (and
            still refuses a commit none of whose names match).
        include_optimizer: restore the compiled optimizer's variables too
            (built first if needed) from the commit's training state.

    Layer names Keras made up differ between models a process builds
    (``dense`` in the first, ``dense_3`` in the next): names that differ only
    in those numbers are matched in order, the n-th ``dense`` to the n-th, as
    Keras' own files are.

    A commit of a Keras file's weights (``coral-ml add model.keras``: names
    like ``layers/dense/vars/0``) is loaded by Keras' own loader, which knows
    that layout; its optimizer variables are then part of the file's, and a
    mismatch is Keras' error (as a ``TensorMismatchError``).

    Returns:
        the commit loaded.

    Raises:
        WeightsMismatchError: with ``strict``, when names are missing or
            unexpected; always, when a name matches but its shape or dtype
            does not, or the optimizer's variables do not fit. The model is
            unchanged then.
        TensorMismatchError: when the model is not built; with
            ``include_optimizer``, when it has no optimizer or the commit no
            optimizer state.
    """
    if not model.built:
        raise TensorMismatchError(
            f"model {model.name!r} is not built, so it has no variables to load into; "
            "give it a keras.Input or call it on a batch first"
        )
    commit = repo.show(ref)
    stored = commit.metadata.metadata.get(MODEL_KEY)
    stored_model = stored.get("name") if isinstance(stored, dict) else None
    tree = repo.ls_tree(commit.commit_hash)
    if stored is None and tree and all(FILE_LAYOUT.fullmatch(name) for name in tree):
        _load_file_layout(model, repo, commit, strict, include_optimizer)
        return commit
    targets = {_relative(v.path, model.name): v for v in model.weights}
    names = {stored: _relative(stored, stored_model) for stored in tree}
    if set(names.values()) != set(targets):  # numbered otherwise: dense_3 then, dense_7 now
        names = _matched_by_numbering(names, targets) or names
    known = set(names.values())
    missing = [v.path for key, v in targets.items() if key not in known]
    unexpected = [stored for stored, key in names.items() if key not in targets]
    misshapen = [
        stored
        for stored, key in names.items()
        if key in targets and not _fits(targets[key], tree[stored].shape, tree[stored].dtype)
    ]
    nothing_fits = bool(targets) and not known & targets.keys()
    if misshapen or nothing_fits or (strict and (missing or unexpected)):
        raise WeightsMismatchError(missing, unexpected, misshapen)
    optimizer = _optimizer_values(model, repo, commit) if include_optimizer else None
    rng = _model_state_values(model, repo, commit) if include_optimizer else []
    for weight in repo.iter_weights(commit.commit_hash):
        key = names[weight.name]
        if key in targets:
            targets[key].assign(weight.data)
    for variable, value in [*(optimizer or []), *rng]:
        variable.assign(value)
    return commit


_NUMBER = re.compile(r"_(\d+)$")


def _numbering(path: str) -> tuple[str, tuple[int, ...]]:
    """A path without the numbers Keras appends to names (``dense_3/kernel`` ->
    ``dense/kernel``) and those numbers (``(3,)``; -1 for a name without one)."""
    stems, numbers = [], []
    for segment in path.split("/"):
        found = _NUMBER.search(segment)
        stems.append(segment[: found.start()] if found else segment)
        numbers.append(int(found.group(1)) if found else -1)
    return "/".join(stems), tuple(numbers)


def _ranked(paths: Sequence[str]) -> dict[tuple[str, int], str]:
    """Each path by (its path without numbers, its rank among the paths that share it)."""
    groups: dict[str, list[tuple[tuple[int, ...], str]]] = {}
    for path in paths:
        stem, numbers = _numbering(path)
        groups.setdefault(stem, []).append((numbers, path))
    return {
        (stem, rank): path
        for stem, members in groups.items()
        for rank, (_, path) in enumerate(sorted(members))
    }


def _matched_by_numbering(
    names: dict[str, str], targets: Mapping[str, Any]
) -> dict[str, str] | None:
    """Stored names mapped to the model's, when the two differ only in the
    numbers Keras gave layers it named itself (it counts every layer a process
    makes: a sweep's second model has ``dense_3`` where the first had
    ``dense``), matching the n-th ``dense`` of one to the n-th of the other as
    Keras' own files do; None when that is no one-to-one match."""
    stored = _ranked(list(names.values()))
    wanted = _ranked(list(targets))
    if stored.keys() != wanted.keys():
        return None
    renamed = {path: wanted[key] for key, path in stored.items()}
    return {name: renamed[relative] for name, relative in names.items()}


def _model_state_values(
    model: keras.Model, repo: Repository, commit: Commit
) -> list[tuple[Any, np.ndarray]]:
    """The model's seed-generator variables paired with the commit's values, by
    position (their paths are numbered per process), each checked; none when the
    commit holds none."""
    state = repo.training_state(commit.commit_hash)
    saved = state.extra.get(MODEL_STATE_KEY) if state is not None else None
    if not isinstance(saved, dict):
        return []
    weights = {id(v) for v in model.weights}
    variables = [v for v in model.variables if id(v) not in weights]
    values = list(saved.get("values") or [])
    misfits = [
        path
        for path, variable, value in zip(saved.get("paths") or [], variables, values, strict=False)
        if not _fits(variable, np.shape(value), dtype_name(np.asarray(value).dtype))
    ]
    if len(values) != len(variables) or misfits:
        raise WeightsMismatchError(
            misshapen=misfits or [v.path for v in variables], what="model's seed generators"
        )
    return list(zip(variables, values, strict=True))


def _load_file_layout(
    model: keras.Model, repo: Repository, commit: Commit, strict: bool, include_optimizer: bool
) -> None:
    """Load a commit in Keras' file layout through ``model.load_weights``."""
    optimizer = getattr(model, "optimizer", None)
    if include_optimizer:
        if optimizer is None:
            raise TensorMismatchError(_NO_OPTIMIZER.format(model.name))
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
    arrays = {weight.name: weight.data for weight in repo.iter_weights(commit.commit_hash)}
    if include_optimizer and not any(name.startswith("optimizer/") for name in arrays):
        raise TensorMismatchError(f"commit {commit.short_hash} holds no optimizer variables")
    skip = [optimizer] if optimizer is not None and not include_optimizer else None
    with tempfile.TemporaryDirectory(prefix="coral-tf-") as folder:
        path = Path(folder) / "commit.weights.h5"
        write_keras_file(path, arrays)
        try:
            model.load_weights(path, skip_mismatch=not strict, objects_to_skip=skip)
        except ValueError as exc:
            raise TensorMismatchError(
                f"commit {commit.short_hash} (a Keras file's weights) does not fit model "
                f"{model.name!r}: {exc}"
            ) from None


def _fits(variable: Any, shape: Sequence[int], dtype: str) -> bool:
    return tuple(variable.shape) == tuple(shape) and dtype_name(variable.dtype) == dtype


def _optimizer_values(
    model: keras.Model, repo: Repository, commit: Commit
) -> list[tuple[Any, np.ndarray]]:
    """The model's optimizer variables paired with the commit's values, checked."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise TensorMismatchError(_NO_OPTIMIZER.format(model.name))
    state = repo.training_state(commit.commit_hash)
    saved = state.optimizer_state if state is not None else None
    if not isinstance(saved, dict) or "values" not in saved:
        raise TensorMismatchError(
            f"commit {commit.short_hash} holds no optimizer state "
            "(committed without CheckpointConfig(include_optimizer=True))"
        )
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = list(optimizer.variables)
    paths, values = list(saved["paths"]), list(saved["values"])
    if len(values) != len(variables):
        raise WeightsMismatchError(
            missing=[v.path for v in variables[len(values) :]],
            unexpected=paths[len(variables) :],
            what=f"optimizer {type(optimizer).__name__}",
        )
    misshapen = [
        path
        for path, variable, value in zip(paths, variables, values, strict=True)
        if not _fits(variable, value.shape, dtype_name(value.dtype))
    ]
    if misshapen:
        raise WeightsMismatchError(
            misshapen=misshapen, what=f"optimizer {type(optimizer).__name__}"
        )
    return list(zip(variables, values, strict=True))
