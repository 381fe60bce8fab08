"""Publishing a commit to a real MLflow registry (sqlite) with the transformers flavour."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral_core import CoralError, Repository
from coral_core.formats import read_safetensors
from coral_core.mlflow_registry import tracking_store
from coral_hf import save_pretrained
from coral_hf.mlflow_registry import publish_to_mlflow

from .tiny import masked_lm, tokenizer

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed")
pytestmark = [
    # MLflow 3.17's sqlite store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
    # mlflow.types.responses warns about its own pydantic models when imported.
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]


def test_a_commit_becomes_a_transformers_model_version(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    base = save_pretrained(masked_lm(), repo, "base")
    tuned = save_pretrained(
        masked_lm(seed=1), repo, "tuned", tokenizer(tmp_path / "vocab"), metrics={"loss": 0.5}
    )
    repo.tag_version("v1", ref=tuned.commit_hash)
    tracking, artifacts = tracking_store(tmp_path / "mlflow")
    published = publish_to_mlflow(
        repo, "tiny-mlm", "v1", task="fill-mask", tracking_uri=tracking, artifact_location=artifacts
    )
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    version = client.get_model_version("tiny-mlm", published.version)
    assert version.tags["coral.commit"] == tuned.commit_hash
    assert version.tags["coral.parents"] == base.commit_hash
    assert version.tags["coral.tags"] == "v1"
    assert version.description == "tuned"

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)  # models:/ URIs resolve through the global settings
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(published.source, dst_path=str(tmp_path / "down"))
        )
    finally:
        mlflow.set_tracking_uri(before)
    assert (local / "MLmodel").read_text().count("transformers") > 1
    (weights,) = local.rglob("model.safetensors")
    logged = read_safetensors(weights)
    for name, entry in repo.ls_tree("v1").items():
        assert logged[name].tobytes() == repo.get_weight(name, "v1").data.tobytes(), entry
    assert tuned.commit_hash in (local / "model_card.md").read_text()


def test_a_commit_without_tokenizer_is_refused(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    save_pretrained(masked_lm(), repo, "no tokenizer")
    with pytest.raises(CoralError, match="carries no tokenizer"):
        publish_to_mlflow(
            repo, "tiny", task="fill-mask", tracking_uri=f"sqlite:///{tmp_path / 'unused.db'}"
        )
