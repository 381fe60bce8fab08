"""The Keras MLflow publisher against a real sqlite tracking store; the example and README run."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

from coral_core import Repository
from coral_core.mlflow_registry import tracking_store
from coral_tf import CoralKerasCallback, load_weights, publish_keras_to_mlflow

from .models import KERAS_SAVE_WARNING, data, mlp, same_bits, values

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.filterwarnings(KERAS_SAVE_WARNING)
# MLflow 3.17's sqlite store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
# Importing mlflow.pyfunc (which mlflow.keras.log_model does) warns about its own type hints.
@pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")
def test_a_checkpoint_becomes_a_keras_flavoured_registered_version(tmp_path: Path) -> None:
    keras_flavour = pytest.importorskip("mlflow.keras", reason="mlflow is not installed")
    from mlflow import MlflowClient, get_tracking_uri, set_registry_uri, set_tracking_uri

    repo = Repository(tmp_path / "repo", init=True)
    trained = mlp()
    callback = CoralKerasCallback(repo, "run", monitor="val_mae")
    inputs, targets = data()
    validation = data(seed=1, n=16)
    trained.fit(
        inputs, targets, epochs=2, verbose=0, validation_data=validation, callbacks=[callback]
    )
    tracking, artifacts = tracking_store(tmp_path / "mlflow")
    model = mlp()
    options = {"tracking_uri": tracking, "artifact_location": artifacts}
    first = publish_keras_to_mlflow(
        repo, "tiny-keras", model, callback.manager.checkpoints[0].commit_hash, **options
    )
    best = publish_keras_to_mlflow(repo, "tiny-keras", model, "run/best", **options)
    assert (first.version, best.version) == ("1", "2")
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    version = client.get_model_version("tiny-keras", best.version)
    assert version.tags["coral.commit"] == repo.resolve("run/best")
    assert "run/best" in version.tags["coral.tags"]
    assert float(version.tags["metric.val_mae"]) == repo.show("run/best").metrics["val_mae"]
    before = get_tracking_uri()
    set_tracking_uri(tracking)
    set_registry_uri(tracking)
    try:
        loaded = keras_flavour.load_model(f"models:/tiny-keras/{best.version}")
    finally:
        set_tracking_uri(before)
        set_registry_uri(before)
    assert loaded.weights[0].path == "d1/kernel"  # deserialized: no "mlp/" in front
    stored = {w.name.removeprefix("mlp/"): w.data for w in repo.iter_weights("run/best")}
    assert same_bits(values(loaded.weights), stored)
    load_weights(loaded, repo, "run/best")  # a commit fits such a model too


def test_the_keras_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["keras_fit.py", str(tmp_path / "example")])
    runpy.run_path(str(ROOT / "examples" / "keras_fit.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "restored bit for bit: True" in out
    assert out.count("  epoch ") >= 3
    assert Repository(tmp_path / "example").resolve("classifier/best")


def test_the_readme_fit_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "coral_tf" / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(block, "coral_tf/README.md", "exec"), namespace)
    repo = Repository(tmp_path / "runs")
    assert len(repo.log()) == 5
    assert repo.resolve("classifier/best")
