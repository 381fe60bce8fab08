"""The book's storage examples (01-readme.md "Production Storage", 04-storage.md
"Compression Options" and "Garbage Collection"), run as written with our
package names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coral_core import CoralError, DeltaEncoder, Repository, WeightTensor

h5py = pytest.importorskip("h5py", reason="HDF5Store needs h5py (coral-core[hdf5])")
from coral_core.store.hdf5 import HDF5Store  # noqa: E402


def layers(count: int, seed: int = 0) -> list[WeightTensor]:
    rng = np.random.default_rng(seed)
    return [
        WeightTensor(rng.standard_normal((64, 64)).astype(np.float32), name=f"layer_{i}")
        for i in range(count)
    ]


def test_production_storage(tmp_path: Path) -> None:
    """01-readme.md: gzip 9 with a 1 GB chunk cache, a batch, the analytics."""
    weights = layers(100)
    with HDF5Store(
        tmp_path / "production_weights.h5",
        compression="gzip",
        compression_opts=9,
        chunk_cache_mem_size=1024**3,  # 1GB cache
    ) as store:
        weight_batch = {f"layer_{i}": weights[i] for i in range(100)}
        hashes = store.store_batch(weight_batch)
        info = store.get_storage_info()
        assert info["total_size"] == (tmp_path / "production_weights.h5").stat().st_size
        assert 0 < info["compression_ratio"] < 1
        assert info["total_weights"] == 100
        assert len(hashes) == 100
    with pytest.raises(ValueError, match="chunk_cache_mem_size"):
        HDF5Store(tmp_path / "bad.h5", chunk_cache_mem_size=-1)


def test_szip_where_h5py_has_it(tmp_path: Path) -> None:
    """04-storage.md: ``szip``, "specialized scientific data compression
    (requires additional library)"."""
    if "szip" not in h5py.filters.encode:
        with pytest.raises(CoralError, match="without szip"):
            HDF5Store(tmp_path / "szip.h5", compression="szip")
        return
    weight = layers(1)[0]
    with HDF5Store(tmp_path / "szip.h5", compression="szip") as store:
        key = store.store(weight)
        loaded = store.load(key)
    assert loaded is not None
    assert np.array_equal(loaded.data.view(np.uint32), weight.data.view(np.uint32))


def test_garbage_collection_of_a_store_against_the_repository(tmp_path: Path) -> None:
    """04-storage.md: remove the weights (and deltas) no commit references."""
    repo = Repository(tmp_path / "repo", init=True)
    first = layers(3)
    second = [WeightTensor(w.data + np.float32(1e-4), name=w.name) for w in first]
    stray = WeightTensor(first[0].data * 2, name="stray")  # in the store, in no commit
    store = HDF5Store(tmp_path / "weights.h5")
    encoder = DeltaEncoder()
    for version in (first, second):
        repo.commit("v", weights={w.name: w for w in version})
    for weight in (*first, *second, stray):
        store.store(weight)
    for weight, reference in [*zip(second, first, strict=True), (stray, first[0])]:
        store.store_delta(encoder.encode_delta(weight, reference), weight.compute_hash())

    all_hashes = set(store.list_weights())
    referenced_hashes = set(repo.get_all_referenced_weights())
    unreferenced = all_hashes - referenced_hashes
    for hash_key in unreferenced:
        store.delete(hash_key)
    assert unreferenced == {stray.compute_hash()}
    assert set(store.list_weights()) == {w.compute_hash() for w in (*first, *second)}

    all_delta_hashes = set(store.list_deltas())
    referenced_deltas = set(repo.get_all_referenced_deltas())
    unreferenced_deltas = all_delta_hashes - referenced_deltas
    for delta_hash in unreferenced_deltas:
        store.delete_delta(delta_hash)
    assert referenced_deltas == {w.compute_hash() for w in second}  # the repository's deltas
    assert set(store.list_deltas()) == {w.compute_hash() for w in second}
    store.close()
