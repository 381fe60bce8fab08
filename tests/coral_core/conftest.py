"""Shared fixtures of the coral_core tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coral_core import Repository, WeightTensor
from coral_core.objects import object_key


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A fresh repository with a small chunk size, so small tensors span chunks."""
    return Repository(tmp_path / "repo", init=True, chunk_size=4096)


def make_weights(seed: int = 0, scale: float = 1.0) -> dict[str, WeightTensor]:
    """A tiny model's weights: a matrix spanning several chunks, a bias, a scalar."""
    rng = np.random.default_rng(seed)
    arrays = {
        "encoder.weight": (rng.standard_normal((64, 48)) * scale).astype(np.float32),
        "encoder.bias": rng.standard_normal(64).astype(np.float32),
        "step": np.array(seed, dtype=np.int64),
    }
    return {name: WeightTensor(array, name=name) for name, array in arrays.items()}


def flip_last_bit(repo: Repository, object_id: str) -> None:
    """Damage a stored object in place, as a bad disk would."""
    path = repo.coral_dir / "objects" / object_key(object_id)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
