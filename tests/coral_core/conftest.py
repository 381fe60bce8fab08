"""Shared fixtures of the coral_core tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coral_core import LocalStore, Repository, WeightStore, WeightTensor
from coral_core.object_format import object_key
from coral_core.store.packs import PackedStore
from coral_core.testing.s3_server import ACCESS_KEY, REGION, SECRET_KEY, s3_server  # noqa: F401


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


def flip_bit(repo: Repository, object_id: str, at: int = -1, bit: int = 0x01) -> None:
    """Damage a stored object in place, as a bad disk would: flip ``bit`` of
    its byte ``at`` (the last by default), in its pack or its file."""
    flip_stored_bit(repo.objects.store, object_key(object_id), at, bit)


def flip_stored_bit(store: WeightStore, key: str, at: int = -1, bit: int = 0x01) -> None:
    """:func:`flip_bit` of a key of a folder's store (a repository's, or a
    folder remote's ``objects/...``): in its pack or its file."""
    assert isinstance(store, LocalStore), store
    found = store.locate(key) if isinstance(store, PackedStore) else None
    path = found.pack if found is not None else store.root / key
    start, size = (found.offset, found.size) if found is not None else (0, path.stat().st_size)
    data = bytearray(path.read_bytes())
    data[start + (at % size)] ^= bit
    path.write_bytes(bytes(data))


def flip_last_bit(repo: Repository, object_id: str) -> None:
    """Damage a stored object's last byte in place, as a bad disk would."""
    flip_bit(repo, object_id)


@pytest.fixture(params=["folder", "s3"])
def remote_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A remote: a folder, or a bucket on the real S3 server of the test session
    (reached the way users reach theirs: the endpoint and credentials from the environment)."""
    if request.param == "folder":
        return str(tmp_path / "remote")
    server = request.getfixturevalue("s3_server")
    config = server.make_bucket()
    monkeypatch.setenv("CORAL_S3_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return f"s3://{config.bucket}/team/models"
