"""Tiny real Keras models and data for the coral_tf tests.

Importing this module skips the test module that imports it when TensorFlow
or Keras 3 is not installed. All coral_tf tests run in one process, so
TensorFlow is imported once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="coral_tf tests need TensorFlow: pip install tensorflow")
keras = pytest.importorskip("keras", minversion="3.0", reason="coral_tf tests need Keras 3")

from coral_core import bit_view  # noqa: E402
from coral_tf.weights import to_array  # noqa: E402

#: Keras' own saving (``model.save``) converts variables with
#: ``np.array(v, copy=False)``, which numpy 2 deprecates for TensorFlow's ``__array__``.
KERAS_SAVE_WARNING = (
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def mlp(name: str | None = "mlp", half: str = "float16") -> keras.Model:
    """A compiled Sequential model: Dense, BatchNorm and a Dense layer in ``half``."""
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="d2", dtype=half),
        ],
        name=name,
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    return model


def data(seed: int = 0, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((n, 6)).astype(np.float32)
    return inputs, (inputs[:, :2] * 0.5 + 0.1).astype(np.float32)


def odd_bits(model: keras.Model) -> None:
    """Put NaN payloads, -0.0, infinities and subnormals into d1's kernel and d2's bias."""
    kernel = model.get_layer("d1").kernel
    odd = np.zeros(kernel.shape, np.float32).reshape(-1)
    odd[:4] = np.array([0x7FC12345, 0xFF800001, 0x80000000, 0x00000001], np.uint32).view(np.float32)
    odd[4:6] = (np.inf, -np.inf)
    kernel.assign(odd.reshape(kernel.shape))
    bias = model.get_layer("d2").bias
    bits = np.array([0x7E01, 0x0001], np.uint16)
    bias.assign(bits.view(to_array(bias).dtype))
    assert np.array_equal(bit_view(to_array(kernel).reshape(-1)), bit_view(odd))  # as put in
    assert np.array_equal(bit_view(to_array(bias)), bits)


def values(variables: object) -> dict[str, np.ndarray]:
    """``{v.path: value}`` of Keras variables."""
    return {v.path: to_array(v) for v in variables}  # type: ignore[attr-defined]


def optimizer_values(model: keras.Model) -> dict[int, np.ndarray]:
    """The optimizer's variables by position (paths differ: ``adam/...``, ``adam_1/...``)."""
    return dict(enumerate(to_array(v) for v in model.optimizer.variables))


def same_bits(a: Mapping[Any, np.ndarray], b: Mapping[Any, np.ndarray]) -> bool:
    """Whether two arrays-by-name hold the same names, dtypes, shapes and bits."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and np.array_equal(bit_view(np.asarray(a[k])), bit_view(np.asarray(b[k])))
        for k in a
    )
