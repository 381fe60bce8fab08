"""Publish a commit to an MLflow registry with MLflow's ``transformers`` flavour.

:func:`publish_to_mlflow` wraps :func:`coral_core.mlflow_registry.publish_to_mlflow`
(the run, the metrics, the registered version tagged with the commit id,
parents and tags) and logs the model with ``mlflow.transformers.log_model``:
the commit's model (its class from ``config.json``'s ``architectures``) and
tokenizer, loaded with :func:`~coral_hf.from_pretrained`, with the Coral model
card (:func:`~coral_hf.model_card`) as the MLflow model card, so nothing is
looked up on the Hub. Needs ``mlflow`` (imported only when called).
"""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any

import transformers
from huggingface_hub import ModelCard

from coral_core import CoralError, Repository
from coral_core.mlflow_registry import PublishedVersion
from coral_core.mlflow_registry import publish_to_mlflow as publish_commit
from coral_hf.hub import model_card
from coral_hf.pretrained import files_of, from_pretrained

#: Files that mean the commit carries a tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def publish_to_mlflow(
    repo: Repository,
    name: str,
    ref: str | None = None,
    *,
    task: str,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    experiment: str = "coral",
    artifact_location: str | None = None,
    pip_requirements: list[str] | None = None,
    description: str | None = None,
) -> PublishedVersion:
    """Register commit ``ref`` (HEAD by default) as a version of model ``name``,
    logged with ``mlflow.transformers`` for pipeline task ``task`` (``"fill-mask"``,
    ``"text-classification"``, ...).

    Args:
        repo, name, ref, tracking_uri, registry_uri, experiment, artifact_location,
            description: as in :func:`coral_core.mlflow_registry.publish_to_mlflow`.
        task: the ``transformers.pipeline`` task the logged model serves.
        pip_requirements: of the logged model; default pins this transformers
            and torch (MLflow's own default also asks for torchvision).

    Raises:
        CoralError: when the commit carries no ``config.json`` naming a
            transformers class, or no tokenizer.
    """
    import mlflow

    commit = repo.show(ref)
    files = files_of(commit)
    if "config.json" not in files:
        raise CoralError(
            f"commit {commit.short_hash} ({ref or 'HEAD'}) carries no config.json; "
            "commit the model with coral_hf.save_pretrained"
        )
    if not any(file in files for file in _TOKENIZER_FILES):
        raise CoralError(
            f"commit {commit.short_hash} ({ref or 'HEAD'}) carries no tokenizer, which an "
            "MLflow transformers pipeline needs; save_pretrained(model, repo, message, tokenizer)"
        )
    architectures = json.loads(files["config.json"]).get("architectures") or []
    model_class: Any = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        raise CoralError(
            f"config.json of commit {commit.short_hash} names no transformers model class "
            f"(architectures: {architectures})"
        )
    requirements = pip_requirements or [
        f"transformers=={version('transformers')}",
        f"torch=={version('torch').split('+')[0]}",
    ]

    def log_model() -> str:
        components = {
            "model": from_pretrained(model_class, repo, commit.commit_hash),
            "tokenizer": from_pretrained(transformers.AutoTokenizer, repo, commit.commit_hash),
        }
        info = mlflow.transformers.log_model(
            components,
            name="model",
            task=task,
            model_card=ModelCard(model_card(repo, commit)),
            pip_requirements=requirements,
        )
        return str(info.model_uri)

    return publish_commit(
        repo,
        name,
        commit.commit_hash,
        tracking_uri=tracking_uri,
        registry_uri=registry_uri,
        experiment=experiment,
        artifact_location=artifact_location,
        log_model=log_model,
        description=description,
    )
