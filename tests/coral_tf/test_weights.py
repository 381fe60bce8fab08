"""Keras variables in and out of a repository: names, dtypes, bits, mismatches, optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral_core import Repository, TensorMismatchError
from coral_tf import WeightsMismatchError, load_weights, model_weights, save_weights

from .models import data, keras, mlp, odd_bits, same_bits, to_array, values


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "repo", init=True)


def test_names_are_paths_and_every_dtype_comes_back_bit_for_bit(repo: Repository) -> None:
    model = mlp(half="bfloat16")
    model.fit(*data(), epochs=1, batch_size=16, verbose=0)
    odd_bits(model)
    weights = model_weights(model)
    assert list(weights) == [v.path for v in model.weights]
    assert "mlp/d1/kernel" in weights
    assert "mlp/bn/moving_mean" in weights
    assert str(weights["mlp/d2/kernel"].dtype) == "bfloat16"
    assert weights["mlp/bn/gamma"].metadata.layer_type == "BatchNormalization"
    assert weights["mlp/d1/kernel"].metadata.model_name == "mlp"
    commit = save_weights(repo, model, "trained", metrics={"loss": 0.5})
    assert repo.show().metrics == {"loss": 0.5}
    fresh = mlp(half="bfloat16")
    load_weights(fresh, repo, commit.commit_hash)
    assert same_bits(values(fresh.weights), values(model.weights))


def test_a_rebuilt_model_with_another_automatic_name_loads(repo: Repository) -> None:
    model = mlp(name=None)
    save_weights(repo, model, "auto-named")
    again = mlp(name=None)
    assert again.name != model.name  # Keras numbers models built in one process
    load_weights(again, repo)
    assert same_bits(
        {k.split("/", 1)[1]: v for k, v in values(again.weights).items()},
        {k.split("/", 1)[1]: v for k, v in values(model.weights).items()},
    )


def test_a_commit_that_does_not_fit_names_what_differs_and_changes_nothing(
    repo: Repository,
) -> None:
    save_weights(repo, mlp(), "float16 head")
    other = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, name="d1"), keras.layers.Dense(3, name="d3")],
        name="mlp",
    )
    before = values(other.weights)
    with pytest.raises(WeightsMismatchError) as caught:
        load_weights(other, repo)
    error = caught.value
    assert error.missing == ["mlp/d3/bias", "mlp/d3/kernel"]
    assert "mlp/bn/gamma" in error.unexpected
    assert "mlp/d2/kernel" in error.unexpected
    assert "mlp/d3/kernel" in str(error)
    assert "mlp/bn/gamma" in str(error)
    assert same_bits(values(other.weights), before)
    load_weights(other, repo, strict=False)  # the matching d1 only
    assert same_bits(
        {"k": to_array(other.weights[0])},
        {"k": repo.get_weight("mlp/d1/kernel").data},
    )
    unbuilt = keras.Sequential([keras.layers.Dense(2)], name="mlp")
    with pytest.raises(TensorMismatchError, match="'mlp' is not built"):
        load_weights(unbuilt, repo)
    float32_head = mlp(half="float32")
    with pytest.raises(WeightsMismatchError, match="2 of another shape or dtype: mlp/d2/bias"):
        load_weights(float32_head, repo, strict=False)  # d2 is float16 in the commit


def test_optimizer_variables_are_asked_for_and_checked(repo: Repository) -> None:
    model = mlp()
    save_weights(repo, model, "no training state")
    with pytest.raises(TensorMismatchError, match="holds no optimizer state"):
        load_weights(model, repo, include_optimizer=True)
    bare = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)], name="bare")
    save_weights(repo, bare, "bare")
    with pytest.raises(TensorMismatchError, match="has no optimizer"):
        load_weights(bare, repo, include_optimizer=True)


class TwoOfAName(keras.layers.Layer):  # type: ignore[misc]
    """A layer that gives two of its variables one name."""

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.a = self.add_weight(shape=(2,), name="w")
        self.b = self.add_weight(shape=(2,), name="w")

    def call(self, inputs: object) -> object:
        return inputs * self.a * self.b  # type: ignore[operator]


def test_duplicate_paths_are_refused() -> None:
    model = keras.Sequential([keras.Input((2,)), TwoOfAName(name="twice")], name="dup")
    with pytest.raises(TensorMismatchError, match="share the path 'dup/twice/w'"):
        model_weights(model)


def test_layers_keras_named_itself_match_in_order_across_a_sweep(repo: Repository) -> None:
    def unnamed() -> keras.Model:  # names left to Keras: dense, dense_1, ... per process
        return keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(12),
                keras.layers.Dense(2),
            ]
        )

    sweep = [unnamed() for _ in range(11)]  # dense_30.. in the eleventh
    best = sweep[10]
    save_weights(repo, best, "the sweep's best")
    fresh = unnamed()  # dense_33, dense_34, dense_35: other numbers, same order
    assert {v.path.split("/")[1] for v in fresh.weights} != {
        v.path.split("/")[1] for v in best.weights
    }
    load_weights(fresh, repo)
    assert same_bits(
        dict(enumerate(to_array(v) for v in fresh.weights)),
        dict(enumerate(to_array(v) for v in best.weights)),
    )
    two_layers = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    with pytest.raises(WeightsMismatchError):  # not the same layers: no match by order
        load_weights(two_layers, repo)
    unrelated = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="other")])
    with pytest.raises(WeightsMismatchError, match="missing from the commit"):
        load_weights(unrelated, repo, strict=False)  # nothing at all fits: not a silent no-op
