"""Delta codecs: the ways to store a tensor as its difference from a reference.

Every codec is a :class:`DeltaCodec` in one registry, under the name the
Coral book gives it (``compressed``, ``xor_float32``, ...), which is also the
name a stored delta records. The built-in ones are each a module of this
package; another package adds one through the ``coral.codecs`` entry point
group, whose entry points name a :class:`DeltaCodec`::

    [project.entry-points."coral.codecs"]
    my_codec = "my_package.codec:MY_CODEC"

A new codec is then one module plus that one registration. Entry points are
read the first time a name is not found, so a repository written with a
plugin's codec reads back wherever the plugin is installed, and elsewhere
fails with an error that names the codec.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import numpy as np

from coral_core.errors import UnknownCodecError

if TYPE_CHECKING:
    from coral_core.delta import DeltaConfig

#: The entry point group of codec plugins.
ENTRY_POINTS = "coral.codecs"

Encoded = tuple[bytes, dict[str, Any]]
#: ``encode(current, reference, config, rows)``: the payload and what decoding needs.
#: ``rows`` = ``(row_length, offset)`` says where a tensor's rows fall when the
#: arrays are one flat chunk of it, ``offset`` elements in (None: the first axis).
Encoder = Callable[[np.ndarray, np.ndarray, "DeltaConfig", tuple[int, int] | None], Encoded]
#: ``apply(payload, metadata, target)``: turn a copy of the reference into the tensor, in place.
Applier = Callable[[bytes | memoryview, dict[str, Any], np.ndarray], None]
#: ``decode(payload, metadata, reference)``: the tensor, as a new array.
Decoder = Callable[[bytes | memoryview, dict[str, Any], np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DeltaCodec:
    """One way to encode a tensor against a reference (give ``apply`` or ``decode``).

    Args:
        name: the name deltas record; the book's for the built-in codecs.
        lossless: decoding gives back every bit; a lossy codec records
            ``max_abs_error`` in the metadata it returns.
        encode: see :data:`Encoder`.
        apply: see :data:`Applier`; the faster form, for codecs that can.
        decode: see :data:`Decoder`.
        dtypes: the dtypes it encodes (by name); None for every dtype.
    """

    name: str
    lossless: bool
    encode: Encoder
    apply: Applier | None = None
    decode: Decoder | None = None
    dtypes: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if (self.apply is None) == (self.decode is None):
            raise ValueError(f"codec {self.name!r} needs exactly one of apply and decode")

    def supports(self, dtype: str) -> bool:
        """True when this codec can encode tensors of ``dtype``."""
        return self.dtypes is None or dtype in self.dtypes


_registry: dict[str, DeltaCodec] = {}
_lock = threading.Lock()
_plugins_loaded = False


def register(codec: DeltaCodec) -> DeltaCodec:
    """Add ``codec`` to the registry (a codec of the same name is replaced)."""
    with _lock:
        _registry[codec.name] = codec
    return codec


def codec_named(name: str) -> DeltaCodec:
    """The codec registered as ``name``, looking in the plugins once when unknown.

    Raises:
        UnknownCodecError: when no codec of that name is installed.
    """
    found = _registry.get(name)
    if found is None:
        _load_plugins()
        found = _registry.get(name)
    if found is None:
        raise UnknownCodecError(
            f"no delta codec named {name!r} is installed (known: {', '.join(codec_names())}); "
            f"one from a plugin needs that plugin, which registers it under {ENTRY_POINTS!r}"
        )
    return found


def codec_names() -> list[str]:
    """The names of every codec installed, built-in first."""
    _load_plugins()
    return list(_registry)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for point in entry_points(group=ENTRY_POINTS):
        loaded = point.load()
        if not isinstance(loaded, DeltaCodec):
            raise UnknownCodecError(
                f"entry point {point.name!r} of {ENTRY_POINTS!r} names {loaded!r}, not a DeltaCodec"
            )
        register(loaded)


def _register_builtins() -> None:
    from coral_core.codecs import (
        difference,
        exponent_mantissa,
        per_axis,
        quantized,
        sparse,
        xor,
    )

    for module in (difference, xor, exponent_mantissa, quantized, sparse, per_axis):
        for codec in module.CODECS:
            register(codec)


_register_builtins()
