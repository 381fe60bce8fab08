"""Stores: where objects live. See :class:`WeightStore`.

``S3Store``/``S3Config`` (boto3) and ``HDF5Store`` (h5py) load on first use, so
importing Coral never imports those optional packages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from coral_core.store.base import WeightStore, validate_key
from coral_core.store.local import LocalStore
from coral_core.store.memory import MemoryStore

if TYPE_CHECKING:
    from coral_core.store.hdf5 import HDF5Store
    from coral_core.store.s3 import S3Config, S3Store

#: Exports imported on first use, by the module that holds them.
_LAZY = {
    "HDF5Store": "coral_core.store.hdf5",
    "S3Config": "coral_core.store.s3",
    "S3Store": "coral_core.store.s3",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HDF5Store",
    "LocalStore",
    "MemoryStore",
    "S3Config",
    "S3Store",
    "WeightStore",
    "validate_key",
]
