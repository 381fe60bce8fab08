"""``coral-ml export`` of a Keras commit: files Keras itself loads, or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from coral_cli.main import cli
from coral_core import Repository
from coral_tf import CoralKerasCallback, save_weights
from coral_tf.formats import read_keras_file

from .models import KERAS_SAVE_WARNING, data, keras, odd_bits, optimizer_values, same_bits, values

pytestmark = pytest.mark.filterwarnings(KERAS_SAVE_WARNING)


def built_in_code() -> keras.Model:
    """What the user's script builds: Dense, Dropout, BatchNorm, a bfloat16 Dense."""
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="d1"),
            keras.layers.Dropout(0.2),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="d2", dtype="bfloat16"),
        ],
        name="mlp",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def export(repo: Path, ref: str, target: Path) -> Result:
    return CliRunner().invoke(cli, ["-C", str(repo), "export", ref, str(target)])


def test_a_callback_commit_exports_as_weights_h5_and_keras_that_keras_loads(
    tmp_path: Path,
) -> None:
    model = built_in_code()
    model.fit(
        *data(),
        epochs=2,
        batch_size=16,
        verbose=0,
        validation_split=0.25,
        callbacks=[CoralKerasCallback(tmp_path / "runs", "mlp")],
    )
    inputs = data(seed=1)[0]
    trained = model.predict(inputs, verbose=0)
    adam = optimizer_values(model)
    odd_bits(model)  # NaN payloads, -0.0, infinities, subnormals: bit for bit through Keras
    save_weights(Repository(tmp_path / "runs"), model, "odd bits")

    for ref, name in (("HEAD", "m.weights.h5"), ("mlp/last", "m.keras")):
        done = export(tmp_path / "runs", ref, tmp_path / name)
        assert done.exit_code == 0, done.output
        assert done.output.strip() == f"wrote {tmp_path / name}"
    fresh = built_in_code()  # built by the script's own code: Keras' names may differ
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "m.weights.h5")
    assert same_bits(values(fresh.weights), values(model.weights))
    loaded = keras.models.load_model(tmp_path / "m.keras")  # the training checkpoint
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert np.array_equal(loaded.predict(inputs, verbose=0), trained)
    assert same_bits(optimizer_values(loaded), adam)  # its optimizer's state, as model.save's
    # what Keras wrote is Keras' own layout, readable by coral-ml add too
    assert "layers/dense/vars/0" in read_keras_file(tmp_path / "m.weights.h5")


def test_a_commit_keras_cannot_rebuild_is_refused_with_the_python_to_write_it(
    tmp_path: Path,
) -> None:
    class Subclassed(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name="sub")
            self.dense = keras.layers.Dense(2)

        def call(self, inputs: object) -> object:
            return self.dense(inputs)

    repo = Repository(tmp_path / "repo", init=True)
    subclassed = Subclassed()
    subclassed(data()[0])
    save_weights(repo, subclassed, "subclassed")
    refused = export(tmp_path / "repo", "HEAD", tmp_path / "sub.weights.h5")
    assert refused.exit_code == 1
    assert "without its architecture" in refused.stderr
    assert "coral_tf.load_weights(model, repo" in refused.stderr
    assert not (tmp_path / "sub.weights.h5").exists()

    lambdas = keras.Sequential([keras.Input((6,)), keras.layers.Lambda(lambda x: x * 2)])
    save_weights(repo, lambdas, "a Lambda: code Keras' safe mode does not run")
    refused = export(tmp_path / "repo", "HEAD", tmp_path / "lambda.keras")
    assert refused.exit_code == 1
    assert "Keras cannot rebuild model" in refused.stderr
    assert not (tmp_path / "lambda.keras").exists()


def test_tensors_keras_would_not_read_are_not_written_as_a_keras_file(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("a torch model", weights={"0.weight": np.ones((2, 2), np.float32)})
    refused = export(tmp_path / "repo", "HEAD", tmp_path / "m.weights.h5")
    assert refused.exit_code == 1
    assert "are not Keras' file layout" in refused.stderr
    assert not (tmp_path / "m.weights.h5").exists()
