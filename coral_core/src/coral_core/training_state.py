"""``TrainingState``: what a training run needs besides its weights to resume exactly.

Epoch, step, loss, learning rate and metrics, plus nested state of the
optimizer, the scheduler, a gradient scaler and the random generators, in
whatever shape the framework hands it over (dicts, lists, tuples, scalars,
arrays). A commit stores it as JSON plus tensors, never as a pickle:
:meth:`TrainingState.to_storage` splits the nested values into a JSON
document, in which each array is a ``{"__tensor__": name}`` placeholder, and
the arrays by name; :meth:`TrainingState.from_storage` puts them back, bit for
bit (non-finite floats travel as their 64 bits, tuples and non-string keys are
marked, so every value comes back of the type it went in; a numpy scalar
comes back as a 0-d array).
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from coral_core.errors import TensorMismatchError

_TENSOR, _TUPLE, _PAIRS, _FLOAT = "__tensor__", "__tuple__", "__pairs__", "__float64__"
_MARKERS = frozenset({_TENSOR, _TUPLE, _PAIRS, _FLOAT})
#: Fields that hold nested state (their arrays become tensors of the commit).
NESTED_FIELDS = ("optimizer_state", "scheduler_state", "grad_scaler_state", "random_state", "extra")


@dataclass
class TrainingState:
    """Where a training run stands, and what it needs to go on exactly from there.

    The ``*_state`` fields and ``extra`` hold nested dicts, lists, tuples,
    scalars and numpy arrays (framework packages convert their tensors to
    arrays); ``None`` means not recorded.
    """

    epoch: int = 0
    global_step: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    optimizer_state: Any = None
    scheduler_state: Any = None
    grad_scaler_state: Any = None
    random_state: Any = None
    experiment_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    def to_storage(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A JSON document and the arrays it names (``optimizer_state/state/0/exp_avg``)."""
        tensors: dict[str, np.ndarray] = {}
        document = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in NESTED_FIELDS:
                document[item.name] = _pack(value, item.name, tensors)
            else:
                document[item.name] = _pack(value, item.name, None)
        return document, tensors

    @classmethod
    def from_storage(
        cls, document: Mapping[str, Any], tensors: Mapping[str, np.ndarray]
    ) -> TrainingState:
        """Rebuild a state from :meth:`to_storage`'s output.

        Raises:
            TensorMismatchError: when the document names an array ``tensors`` lacks.
        """
        known = {item.name for item in fields(cls)}
        values = {key: _unpack(value, tensors) for key, value in document.items() if key in known}
        return cls(**values)


def _pack(value: Any, path: str, tensors: dict[str, np.ndarray] | None) -> Any:
    """``value`` as JSON; arrays go to ``tensors`` under their path (refused when None)."""
    if isinstance(value, (np.ndarray, np.generic)):
        if tensors is None:
            raise TensorMismatchError(f"training state field {path!r} cannot hold an array")
        tensors[path] = np.asarray(value)
        return {_TENSOR: path}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {_FLOAT: struct.pack("<d", value).hex()}
    if isinstance(value, tuple):
        return {_TUPLE: [_pack(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_pack(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        items = [(key, _pack(v, f"{path}/{key}", tensors)) for key, v in value.items()]
        plain = all(isinstance(key, str) for key, _ in items)
        if plain and not (len(items) == 1 and items[0][0] in _MARKERS):
            return dict(items)
        return {_PAIRS: [[_pack(key, path, None), v] for key, v in items]}
    raise TensorMismatchError(
        f"training state entry {path!r} is a {type(value).__name__}; only dicts, lists, "
        "tuples, numbers, strings, None and arrays are stored (no pickles)"
    )


def _unpack(value: Any, tensors: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (key, inner), *_ = value.items()
        if key == _TENSOR:
            if inner not in tensors:
                raise TensorMismatchError(f"training state names tensor {inner!r}, not stored")
            return tensors[inner]
        if key == _TUPLE:
            return tuple(_unpack(v, tensors) for v in inner)
        if key == _PAIRS:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in inner}
        if key == _FLOAT:
            return float(struct.unpack("<d", bytes.fromhex(inner))[0])
    return {key: _unpack(v, tensors) for key, v in value.items()}
