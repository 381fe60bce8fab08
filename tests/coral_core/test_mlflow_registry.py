"""Publishing commits to a real MLflow registry (a local sqlite tracking store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coral_core import Repository, bit_view
from coral_core.formats import read_safetensors
from coral_core.mlflow_registry import publish_to_mlflow, tracking_store

from .conftest import make_weights

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed")
# MLflow 3.17's sqlite store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def test_commits_become_registered_versions_that_lead_back(
    tmp_path: Path, repo: Repository
) -> None:
    tracking, artifacts = tracking_store(tmp_path / "mlflow")
    first = repo.commit("base", weights=make_weights(0), metrics={"val_accuracy": 0.8})
    second = repo.commit("tuned", weights=make_weights(1), metrics={"val_accuracy": 0.9})
    repo.tag_version("v1", ref=second.commit_hash)
    options = {"tracking_uri": tracking, "artifact_location": artifacts}
    one = publish_to_mlflow(repo, "tiny-model", first.commit_hash, **options)
    two = publish_to_mlflow(repo, "tiny-model", "v1", **options)
    assert (one.version, two.version) == ("1", "2")  # numbered by MLflow
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    version = client.get_model_version("tiny-model", two.version)
    assert version.tags["coral.commit"] == second.commit_hash
    assert version.tags["coral.parents"] == first.commit_hash
    assert version.tags["coral.tags"] == "v1"
    assert version.tags["metric.val_accuracy"] == "0.9"
    assert version.description == "tuned"
    run = client.get_run(two.run_id)
    assert run.data.metrics["val_accuracy"] == 0.9
    local = Path(client.download_artifacts(two.run_id, "model", str(tmp_path / "down")))
    restored = read_safetensors(local / "model.safetensors")
    for name, weight in make_weights(1).items():
        assert np.array_equal(bit_view(restored[name]), bit_view(weight.data))
    assert mlflow.get_tracking_uri() != tracking  # the global settings are left as they were
