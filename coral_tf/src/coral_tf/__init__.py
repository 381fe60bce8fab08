"""Coral for Keras 3: a ``model.fit`` callback, weight adapters, ``.keras`` / ``.h5`` files.

The file format (:mod:`coral_tf.formats`, plugged into ``coral-ml`` through
the ``coral.formats`` entry point) needs only h5py; everything else imports
Keras, which happens when first used, so ``coral-ml add model.keras`` never
pays for importing TensorFlow.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from coral_core import WeightsMismatchError
from coral_tf.formats import KERAS_FORMAT, read_keras_file, write_keras_file

if TYPE_CHECKING:  # what __getattr__ imports on first use, for type checkers
    from coral_tf.callback import CoralKerasCallback
    from coral_tf.mlflow_keras import publish_keras_to_mlflow
    from coral_tf.weights import (
        MODEL_KEY,
        load_weights,
        model_weights,
        optimizer_state,
        save_weights,
        to_array,
    )

__all__ = [
    "KERAS_FORMAT",
    "MODEL_KEY",
    "CoralKerasCallback",
    "WeightsMismatchError",
    "load_weights",
    "model_weights",
    "optimizer_state",
    "publish_keras_to_mlflow",
    "read_keras_file",
    "save_weights",
    "to_array",
    "write_keras_file",
]

_LAZY = {
    "CoralKerasCallback": "coral_tf.callback",
    "MODEL_KEY": "coral_tf.weights",
    "load_weights": "coral_tf.weights",
    "model_weights": "coral_tf.weights",
    "optimizer_state": "coral_tf.weights",
    "publish_keras_to_mlflow": "coral_tf.mlflow_keras",
    "save_weights": "coral_tf.weights",
    "to_array": "coral_tf.weights",
}


def __getattr__(name: str) -> Any:
    """The Keras-dependent names, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'coral_tf' has no attribute {name!r}")
