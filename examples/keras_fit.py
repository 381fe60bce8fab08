"""Keras: checkpoints of a ``model.fit`` run as Coral commits, then the best one back.

Trains a tiny classifier on synthetic data for a few epochs with
``CoralKerasCallback`` (a commit per epoch, the best ``val_accuracy`` tagged),
lists the commits, restores the best checkpoint into a freshly built model and
checks it bit for bit.

    python examples/keras_fit.py [REPO_FOLDER]
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from coral_core import CheckpointConfig, Repository, bit_view
from coral_tf import CoralKerasCallback, load_weights
from coral_tf.weights import to_array


def build() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="classes"),
        ],
        name="classifier",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main(folder: str = "keras-repo") -> None:
    root = Path(folder)
    if (root / ".coral").is_dir():  # a previous run's demo repository: start over
        shutil.rmtree(root)
    repo = Repository(root, init=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((256, 8)).astype(np.float32)
    labels = (inputs[:, 0] > 0).astype(np.int64) + (inputs[:, 1] > 0.5)

    model = build()
    config = CheckpointConfig(save_on_best_metric="val_accuracy", max_checkpoints=3)
    callback = CoralKerasCallback(repo, "classifier", config)
    model.fit(
        inputs,
        labels,
        validation_split=0.25,
        epochs=5,
        batch_size=32,
        verbose=0,
        callbacks=[callback],
    )

    print("checkpoints kept (newest three and the best):")
    for checkpoint in callback.manager.checkpoints:
        print(
            f"  {checkpoint.commit_hash[:12]}  epoch {checkpoint.epoch}  step {checkpoint.step}"
            f"  val_accuracy {checkpoint.metrics['val_accuracy']:.3f}"
        )
    best = repo.show("classifier/best")
    print(
        f"best: {best.short_hash} ({best.message}), val_accuracy {best.metrics['val_accuracy']:.3f}"
    )

    restored = build()
    load_weights(restored, repo, "classifier/best", include_optimizer=True)
    stored = {weight.name: weight.data for weight in repo.iter_weights("classifier/best")}
    same = all(
        np.array_equal(bit_view(to_array(v)), bit_view(stored[v.path])) for v in restored.weights
    )
    print(f"restored bit for bit: {same}")
    accuracy = float(np.mean(restored.predict(inputs, verbose=0).argmax(1) == labels))
    print(f"restored model accuracy on all data: {accuracy:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
