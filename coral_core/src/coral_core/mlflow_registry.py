"""Publish a Coral commit as a version of an MLflow registered model.

:func:`publish_to_mlflow` opens an MLflow run named after the commit, logs the
commit's metrics, stores the model (through a framework's MLflow flavour
when the caller passes ``log_model``, else the commit's tensors as one
``model.safetensors`` artifact, no pickle), and registers it: the version
number comes from MLflow, and the version carries the commit id, its parents,
its tags and metrics as tags, so a registry entry always leads back to the
exact weights. Needs ``mlflow`` (imported only here, when called).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coral_core.formats import write_safetensors
from coral_core.runs import pointers_by_commit

if TYPE_CHECKING:
    from coral_core.repository import Repository

#: Tag names on the MLflow run and model version.
COMMIT_TAG, PARENTS_TAG, LABELS_TAG = "coral.commit", "coral.parents", "coral.tags"


@dataclass(frozen=True)
class PublishedVersion:
    """A registered model version made from a commit."""

    name: str
    version: str
    run_id: str
    source: str
    commit: str


@contextmanager
def _uris(tracking_uri: str | None, registry_uri: str | None) -> Iterator[Any]:
    """mlflow with these tracking and registry URIs for the duration, then as before."""
    import mlflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        registry = registry_uri or tracking_uri
        if registry is not None:
            mlflow.set_registry_uri(registry)
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def publish_to_mlflow(
    repo: Repository,
    name: str,
    ref: str | None = None,
    *,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    experiment: str = "coral",
    artifact_location: str | None = None,
    log_model: Callable[[], str] | None = None,
    description: str | None = None,
) -> PublishedVersion:
    """Register the commit ``ref`` (HEAD by default) as a new version of model ``name``.

    Args:
        repo: the repository.
        name: the registered model (created on first use).
        ref: the commit, branch or tag to publish.
        tracking_uri, registry_uri: where MLflow keeps runs and models
            (default: MLflow's own settings, e.g. ``MLFLOW_TRACKING_URI``).
        experiment: the MLflow experiment the run goes in (created if needed,
            with its artifacts at ``artifact_location`` when given).
        log_model: called inside the active run to log the model with a
            framework flavour (``mlflow.pytorch.log_model``, ...); returns the
            model URI to register. Default: the tensors as ``model.safetensors``.
        description: of the version; default the commit message.

    Raises:
        ImportError: when mlflow is not installed.
        RefNotFoundError: when ``ref`` names nothing.
    """
    commit = repo.show(ref)
    tags = {
        COMMIT_TAG: commit.commit_hash,
        PARENTS_TAG: ",".join(commit.parent_hashes),
        LABELS_TAG: ",".join(sorted({*commit.metadata.tags, *_tags_on(repo, commit.commit_hash)})),
    }
    with _uris(tracking_uri, registry_uri) as mlflow:
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=artifact_location)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"coral {commit.short_hash}", tags=tags) as run:
            numbers = {k: float(v) for k, v in commit.metrics.items() if _is_number(v)}
            if numbers:
                mlflow.log_metrics(numbers)
            mlflow.log_param("coral.message", commit.message[:500])
            if log_model is not None:
                source = log_model()
            else:
                source = _log_safetensors(mlflow, repo, commit.commit_hash)
        client = mlflow.MlflowClient()
        if not client.search_registered_models(filter_string=f"name = '{_quote(name)}'"):
            client.create_registered_model(name)
        version_tags = {**tags, **{f"metric.{k}": str(v) for k, v in commit.metrics.items()}}
        version = client.create_model_version(
            name,
            source,
            run_id=run.info.run_id,
            tags=version_tags,
            description=description or commit.message,
        )
    return PublishedVersion(name, str(version.version), run.info.run_id, source, commit.commit_hash)


def _log_safetensors(mlflow: Any, repo: Repository, commit: str) -> str:
    """Log the commit's tensors as ``model/model.safetensors``; the artifact folder's URI."""
    with tempfile.TemporaryDirectory(prefix="coral-mlflow-") as folder:
        arrays = {weight.name: weight.data for weight in repo.iter_weights(commit)}
        write_safetensors(Path(folder) / "model.safetensors", arrays)
        mlflow.log_artifacts(folder, artifact_path="model")
    return f"{mlflow.get_artifact_uri().rstrip('/')}/model"


def _tags_on(repo: Repository, commit: str) -> list[str]:
    """The tags and run pointers (``exp/best``, ``exp/<run>/best``) naming ``commit``."""
    tags = [tag.name for tag in repo.list_tags() if tag.commit == commit]
    return tags + pointers_by_commit(repo.refs, repo.read_commit).get(commit, [])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def tracking_store(folder: str | os.PathLike[str]) -> tuple[str, str]:
    """A local sqlite tracking/registry URI and an artifact folder under ``folder``
    (MLflow's plain file store is deprecated); for scripts and tests."""
    root = Path(folder).absolute()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
