"""CoralKerasCallback in real model.fit runs: the policy, metrics, best tag, optimizer, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coral_core import CheckpointConfig, ConfigError, CoralError, Repository, clone
from coral_tf import CoralKerasCallback, load_weights
from coral_tf.weights import MODEL_KEY

from .models import data, keras, mlp, optimizer_values, same_bits, to_array, values


def fit(
    model: keras.Model, callback: CoralKerasCallback, epochs: int = 3, **kwargs: object
) -> None:
    inputs, targets = data()
    kwargs.setdefault("validation_data", data(seed=1, n=16))
    model.fit(
        inputs, targets, epochs=epochs, batch_size=16, verbose=0, callbacks=[callback], **kwargs
    )


def test_every_epoch_a_commit_with_logs_epoch_step_and_the_best_tagged(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = mlp()
    callback = CoralKerasCallback(tmp_path / "repo")  # a folder: created
    history: list[dict[str, float]] = []
    logger = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: history.append(logs))
    inputs, targets = data()
    model.fit(
        inputs,
        targets,
        epochs=3,
        batch_size=16,
        verbose=0,
        validation_data=data(seed=1, n=16),
        callbacks=[callback, logger],
    )
    repo = callback.repo
    checkpoints = callback.manager.checkpoints
    assert [(c.epoch, c.step) for c in checkpoints] == [(0, 3), (1, 6), (2, 9)]
    assert callback.manager.experiment_name == "mlp"  # the model's name by default
    for checkpoint, logs in zip(checkpoints, history, strict=True):
        assert checkpoint.metrics == pytest.approx(logs)
        assert set(checkpoint.metrics) == {"loss", "mae", "val_loss", "val_mae"}
    best = min(range(3), key=lambda i: history[i]["val_loss"])
    assert repo.resolve("mlp/best") == checkpoints[best].commit_hash
    latest = repo.show(checkpoints[-1].commit_hash)
    assert latest.metadata.metadata[MODEL_KEY]["name"] == "mlp"
    state = repo.training_state(latest.commit_hash)
    assert state is not None
    assert (state.epoch, state.global_step) == (2, 9)
    assert state.learning_rate == pytest.approx(0.01)
    # the newest checkpoint holds the model as fit left it, every dtype bit for bit
    assert same_bits({w.name: w.data for w in repo.iter_weights()}, values(model.weights))
    assert str(repo.get_weight("mlp/d2/kernel").dtype) == "float16"


def test_optimizer_state_restores_and_training_goes_on_identically(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    model = mlp()
    callback = CoralKerasCallback(tmp_path / "repo", "run", save_freq=2)
    fit(model, callback, epochs=1, validation_data=None)
    assert [c.step for c in callback.manager.checkpoints] == [2, 3]  # every 2 batches + the end
    state = callback.repo.training_state()
    assert state is not None
    assert state.optimizer_state["class"] == "Adam"
    assert state.optimizer_state["paths"][0].endswith("/iteration")

    resumed = mlp()
    load_weights(resumed, callback.repo, include_optimizer=True)
    assert same_bits(values(resumed.weights), values(model.weights))
    iterations = [to_array(m.optimizer.iterations) for m in (model, resumed)]
    assert iterations[0] == iterations[1] == 3
    assert iterations[1].dtype == np.int64
    inputs, targets = data(seed=2)
    for each in (model, resumed):
        each.fit(inputs, targets, epochs=2, batch_size=16, verbose=0, shuffle=False)
    assert same_bits(values(resumed.weights), values(model.weights))


def test_save_best_only_commits_improvements_and_keeps_the_best(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    model = mlp()
    callback = CoralKerasCallback(repo, "best", monitor="val_mae", save_best_only=True)
    fit(model, callback, epochs=5)
    maes = [c.metrics["val_mae"] for c in callback.manager.checkpoints]
    assert maes
    assert maes == sorted(maes, reverse=True)
    assert repo.resolve("best/best") == callback.manager.checkpoints[-1].commit_hash

    config = CheckpointConfig(
        save_on_best_metric="val_loss", keep_best_n_checkpoints=1, max_checkpoints=1
    )
    kept = CoralKerasCallback(repo, "kept", config)
    fit(mlp(), kept, epochs=4)
    assert 1 <= len(kept.manager.checkpoints) <= 2  # the best and the newest
    assert repo.resolve("kept/best") == kept.manager.best.commit_hash  # type: ignore[union-attr]


def test_a_monitor_the_logs_lack_is_said_once(tmp_path: Path) -> None:
    callback = CoralKerasCallback(tmp_path / "repo", save_best_only=True)
    with pytest.warns(UserWarning, match="'val_loss' improves, but the logs hold only loss, mae"):
        fit(mlp(), callback, epochs=2, validation_data=None)
    assert callback.manager.checkpoints == []


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        CoralKerasCallback(tmp_path, config=CheckpointConfig(), monitor="val_accuracy")
    with pytest.raises(ConfigError, match="save_freq"):
        CoralKerasCallback(tmp_path, save_freq=0)
    with pytest.raises(CoralError, match=r"before model\.fit"):
        CoralKerasCallback(tmp_path).manager  # noqa: B018
    mode = CoralKerasCallback(tmp_path, monitor="val_acc", mode="min").config
    assert mode.save_on_best_metric == "val_acc"
    assert mode.minimize


def test_mixed_precision_runs_keep_the_loss_scale_optimizer(tmp_path: Path) -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = mlp()
        callback = CoralKerasCallback(tmp_path / "repo", "mixed")
        fit(model, callback, epochs=1, validation_data=None)
        state = callback.repo.training_state()
        assert state is not None
        assert state.optimizer_state["class"] == "LossScaleOptimizer"
        resumed = mlp()
        load_weights(resumed, callback.repo, include_optimizer=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert same_bits(values(resumed.weights), values(model.weights))
    assert same_bits(optimizer_values(resumed), optimizer_values(model))


def test_a_resumed_fit_goes_on_counting_and_steps_per_execution_is_met(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    model = mlp()
    model.compile(optimizer="adam", loss="mse", steps_per_execution=2)
    # three batches an epoch, two per execution: Keras reports steps 2, 3, then 5, 6
    fit(model, CoralKerasCallback(repo, "run", save_freq=4), epochs=1, validation_data=None)
    resumed = CoralKerasCallback(repo, "run", save_freq=4)  # as a new process would
    fit(model, resumed, epochs=2, validation_data=None, initial_epoch=1)
    steps = [(c.epoch, c.step) for c in resumed.manager.checkpoints]
    assert steps == [(0, 3), (1, 5), (1, 6)]  # the end; step 4 passed by at 5; the end


def test_push_to_sends_the_run_as_fit_goes(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.add_remote("origin", str(tmp_path / "remote"))
    callback = CoralKerasCallback(repo, "run", config=CheckpointConfig(push_to="origin"))
    fit(mlp(), callback)
    copy = clone(str(tmp_path / "remote"), tmp_path / "copy")
    assert [c.commit_hash for c in copy.log()] == [c.commit_hash for c in repo.log()]
    assert copy.resolve("run/last") == repo.resolve("run/last") == repo.resolve("main")


def test_one_callback_over_a_sweep_makes_a_run_per_fit(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    callback = CoralKerasCallback(repo, "sweep", save_best_only=True)
    runs = []
    for rate in (1e-2, 1e-3):
        model = mlp()
        model.compile(optimizer=keras.optimizers.Adam(rate), loss="mse", metrics=["mae"])
        fit(model, callback)
        runs.append(callback.manager.run_id)
        assert callback.manager.hyperparameters["learning_rate"] == pytest.approx(rate)
        assert callback.manager.hyperparameters["optimizer"] == "Adam"
    assert runs[0] != runs[1]  # a fit from scratch is a run of its own
    record = repo.show(callback.manager.latest.commit_hash).metadata.metadata["coral.checkpoint"]
    assert record["hyperparameters"]["learning_rate"] == pytest.approx(1e-3)


def test_a_resume_with_dropout_draws_the_same_masks(tmp_path: Path) -> None:
    def model() -> keras.Model:
        built = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(16, activation="relu", name="d1"),
                keras.layers.Dropout(0.5, name="drop"),
                keras.layers.Dense(2, name="d2"),
            ],
            name="dropout",
        )
        built.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        return built

    keras.utils.set_random_seed(3)
    first = model()
    callback = CoralKerasCallback(tmp_path / "repo", "run")
    fit(first, callback, epochs=1, validation_data=None, shuffle=False)
    resumed = model()
    load_weights(resumed, callback.repo, include_optimizer=True)  # as a new process would
    inputs, targets = data(seed=2)
    for each in (first, resumed):
        each.fit(inputs, targets, epochs=3, batch_size=16, verbose=0, shuffle=False)
    assert same_bits(values(resumed.weights), values(first.weights))
