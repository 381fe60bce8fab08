"""Coral for PyTorch Lightning: checkpoints as commits, by callback or by CheckpointIO."""

__version__ = "0.1.0"

from coral_lightning import conventions
from coral_lightning.callback import CoralCallback, policy_from_settings
from coral_lightning.checkpoint_io import CoralCheckpointIO
from coral_lightning.convert import (
    UnstorableCheckpointError,
    checkpoint_from_commit,
    checkpoint_to_commit,
)
from coral_lightning.filesystem import CoralFileSystem, CoralURL

conventions.install()

__all__ = [
    "CoralCallback",
    "CoralCheckpointIO",
    "CoralFileSystem",
    "CoralURL",
    "UnstorableCheckpointError",
    "checkpoint_from_commit",
    "checkpoint_to_commit",
    "policy_from_settings",
]
