"""Coral: git for neural-network weights. The versioning engine, framework-free."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from coral_core.checkpoint import Checkpoint, CheckpointConfig, CheckpointManager
from coral_core.config import FORMAT_VERSION, RepoConfig
from coral_core.delta import Delta, DeltaConfig, DeltaEncoder, DeltaType
from coral_core.diff import ChangeStats, CommitDiff, TensorDiff
from coral_core.dtypes import SUPPORTED_DTYPES, bit_view, dtype_name, numpy_dtype
from coral_core.errors import (
    AmbiguousRefError,
    BranchInUseError,
    ConfigError,
    CoralError,
    CorruptObjectError,
    DirtyIndexError,
    DiskError,
    InvalidKeyError,
    InvalidMetricError,
    InvalidRefNameError,
    LockTimeoutError,
    MissingObjectError,
    ModelFileError,
    NothingToCommitError,
    PrunedCommitError,
    ReadOnlyStoreError,
    RefExistsError,
    RefMovedError,
    RefNotFoundError,
    RepositoryNotFoundError,
    ShallowCommitError,
    TensorMismatchError,
    TensorNotFoundError,
    UnsafeModelFileError,
    UnsafePathError,
    UnsupportedDtypeError,
    UnsupportedFormatError,
    WeightsMismatchError,
)
from coral_core.formats import (
    SAFETENSORS,
    ModelFormat,
    UnknownModelFormatError,
    available_formats,
    format_for,
)
from coral_core.maintenance import GCResult, Problem, VerifyReport
from coral_core.merge import MergeConflictError, MergeOptions, MergeStrategy, SoupResult
from coral_core.model import Branch, Commit, CommitMetadata, Tag, TreeEntry
from coral_core.refs import ReflogEntry
from coral_core.remote import PushRejectedError, TransferResult, clone
from coral_core.repository import Repository, find_repository
from coral_core.similarity import DeduplicationResult, Deduplicator, LSHIndex, simhash
from coral_core.store import LocalStore, MemoryStore, WeightStore
from coral_core.store.packs import PackedStore
from coral_core.tensor import WeightMetadata, WeightTensor, as_weight
from coral_core.training_state import TrainingState

if TYPE_CHECKING:
    from coral_core.store import HDF5Store, S3Config, S3Store


def __getattr__(name: str) -> Any:
    """The optional backends (boto3, h5py) load on first use; see :mod:`coral_core.store`."""
    from coral_core import store

    if name in store._LAZY:
        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION",
    "SAFETENSORS",
    "SUPPORTED_DTYPES",
    "AmbiguousRefError",
    "Branch",
    "BranchInUseError",
    "ChangeStats",
    "Checkpoint",
    "CheckpointConfig",
    "CheckpointManager",
    "Commit",
    "CommitDiff",
    "CommitMetadata",
    "ConfigError",
    "CoralError",
    "CorruptObjectError",
    "Delta",
    "DeltaConfig",
    "DeltaEncoder",
    "DeltaType",
    "DeduplicationResult",
    "Deduplicator",
    "DirtyIndexError",
    "DiskError",
    "GCResult",
    "HDF5Store",
    "InvalidKeyError",
    "InvalidMetricError",
    "InvalidRefNameError",
    "LSHIndex",
    "LocalStore",
    "LockTimeoutError",
    "MemoryStore",
    "PackedStore",
    "MergeConflictError",
    "MergeOptions",
    "MergeStrategy",
    "MissingObjectError",
    "ModelFileError",
    "ModelFormat",
    "NothingToCommitError",
    "Problem",
    "PrunedCommitError",
    "PushRejectedError",
    "ReadOnlyStoreError",
    "RefExistsError",
    "RefMovedError",
    "RefNotFoundError",
    "ReflogEntry",
    "RepoConfig",
    "Repository",
    "RepositoryNotFoundError",
    "S3Config",
    "S3Store",
    "ShallowCommitError",
    "SoupResult",
    "Tag",
    "TensorDiff",
    "TensorMismatchError",
    "TensorNotFoundError",
    "TrainingState",
    "TransferResult",
    "TreeEntry",
    "UnknownModelFormatError",
    "UnsafeModelFileError",
    "UnsafePathError",
    "UnsupportedDtypeError",
    "UnsupportedFormatError",
    "VerifyReport",
    "WeightMetadata",
    "WeightStore",
    "WeightTensor",
    "WeightsMismatchError",
    "as_weight",
    "available_formats",
    "bit_view",
    "clone",
    "dtype_name",
    "find_repository",
    "format_for",
    "numpy_dtype",
    "simhash",
]
