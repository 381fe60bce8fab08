"""Publish a Coral commit to an MLflow model registry in MLflow's Keras flavour.

The commit's weights are loaded into a model of the right architecture and
logged with ``mlflow.keras.log_model`` (a ``.keras`` file MLflow loads back
with ``mlflow.keras.load_model``); registering, tags and metrics are
:func:`coral_core.mlflow_registry.publish_to_mlflow`'s.
"""

from __future__ import annotations

from typing import Any

import keras  # type: ignore[import-untyped]

from coral_core import Repository
from coral_core.mlflow_registry import PublishedVersion, publish_to_mlflow
from coral_tf.weights import load_weights


def publish_keras_to_mlflow(
    repo: Repository,
    name: str,
    model: keras.Model,
    ref: str | None = None,
    *,
    input_example: Any = None,
    **options: Any,
) -> PublishedVersion:
    """Register the commit ``ref`` (HEAD by default) as a Keras-flavoured version of ``name``.

    Args:
        repo: the repository.
        name: the registered model (created on first use).
        model: a built model the commit fits; its variables (and its optimizer's,
            when compiled and the commit holds them) are set to the commit's.
        ref: the commit, branch or tag to publish.
        input_example: passed to ``mlflow.keras.log_model`` (it infers the signature).
        options: ``tracking_uri``, ``registry_uri``, ``experiment``,
            ``artifact_location``, ``description``, as for ``publish_to_mlflow``.

    Raises:
        WeightsMismatchError: when the commit does not fit ``model``.
        ImportError: when mlflow is not installed.
    """
    commit = repo.show(ref)
    optimizer = getattr(model, "optimizer", None)
    state = repo.training_state(commit.commit_hash)
    with_optimizer = optimizer is not None and state is not None and state.optimizer_state
    load_weights(model, repo, commit.commit_hash, include_optimizer=bool(with_optimizer))
    if optimizer is not None and not optimizer.built:  # else Keras cannot load the file back
        optimizer.build(model.trainable_variables)

    def log_model() -> str:
        import mlflow.keras

        info = mlflow.keras.log_model(model, name="model", input_example=input_example)
        return str(info.model_uri)

    return publish_to_mlflow(repo, name, commit.commit_hash, log_model=log_model, **options)
