"""HDF5Store: the store contract, the book's weight interface, repositories, compaction."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from coral_core import (
    CoralError,
    DeltaEncoder,
    InvalidKeyError,
    ReadOnlyStoreError,
    Repository,
    WeightMetadata,
    WeightStore,
    WeightTensor,
)
from coral_core.dtypes import SUPPORTED_DTYPES, bit_view
from coral_core.testing.store_tests import StoreTests
from coral_core.testing.strategies import arrays, special_values

from .conftest import make_weights

pytest.importorskip("h5py", reason="HDF5Store needs h5py (pip install h5py)")

from coral_core.store import HDF5Store


class TestHDF5Store(StoreTests):
    """HDF5Store keeps the shared store contract."""

    def make_store(self, tmp_path: Path) -> WeightStore:
        return HDF5Store(tmp_path / "store.h5")

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        return HDF5Store(tmp_path / "store.h5", mode="r")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.all(bit_view(a) == bit_view(b)))


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_weights_round_trip_bit_for_bit_in_every_dtype(
    tmp_path: Path, compression: str | None
) -> None:
    with HDF5Store(tmp_path / "w.h5", compression=compression) as store:  # type: ignore[arg-type]
        for dtype in SUPPORTED_DTYPES:
            rng = np.random.default_rng(len(dtype))
            raw = rng.integers(0, 256, 6 * 5 * np.dtype("complex128").itemsize, dtype=np.uint8)
            array = raw.view(WeightMetadata("x", (1,), dtype).dtype)[:30].reshape(6, 5)
            if dtype == "bool":
                array = raw[:30].reshape(6, 5) % 2 == 0
            weight = WeightTensor(array, name=f"layer.{dtype}")
            key = store.store(weight)
            assert key == weight.compute_hash()
            loaded = store.load(key)
            assert loaded is not None
            assert _same_bits(loaded.data, array), dtype
            assert loaded.metadata.dtype_name == dtype
        for dtype in ("float32", "bfloat16", "float8_e4m3fn", "float16"):
            specials = WeightTensor(special_values(dtype), name="specials")
            loaded = store.load(store.store(specials))
            assert loaded is not None
            assert _same_bits(loaded.data, specials.data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=arrays())
def test_any_array_round_trips(tmp_path_factory: pytest.TempPathFactory, array: np.ndarray) -> None:
    path = tmp_path_factory.mktemp("h5") / "w.h5"
    with HDF5Store(path) as store:
        loaded = store.load(store.store(WeightTensor(array, name="w")))
    assert loaded is not None
    assert _same_bits(loaded.data, array)


def test_the_books_weight_interface(tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    data = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    metadata = WeightMetadata(
        name="encoder.layer1.weight",
        shape=data.shape,
        dtype=data.dtype,
        layer_type="Linear",
        model_name="TransformerEncoder",
    )
    weight = WeightTensor(data, metadata)
    with HDF5Store(path, compression="gzip", compression_opts=4) as store:
        key = store.store(weight)
        assert store.store(weight) == key  # idempotent
        assert store.store(weight, hash_key="my_custom_hash") == "my_custom_hash"
        assert store.exists(key)
        assert not store.exists("absent")
        assert store.load("absent") is None
        assert store.get_metadata("absent") is None
        assert store.get_metadata(key) == metadata
        assert sorted(store.list_weights()) == sorted([key, "my_custom_hash"])
        batch = {f"layer{i}": WeightTensor(data * (i + 2), name=f"layer{i}") for i in range(5)}
        hashes = store.store_batch(batch)
        assert hashes == {name: w.compute_hash() for name, w in batch.items()}
        loaded = store.load_batch([*hashes.values(), "absent"])
        assert set(loaded) == set(hashes.values())
        assert loaded[hashes["layer3"]].data.tobytes() == batch["layer3"].data.tobytes()
        assert store.delete("my_custom_hash") is True
        assert store.delete("my_custom_hash") is False
        info = store.get_storage_info()
        assert info["filepath"] == str(path)
        assert info["total_weights"] == 6
        assert info["total_bytes"] == 6 * data.nbytes
        assert 0 < info["compressed_bytes"] < info["total_bytes"]
        assert info["compression_ratio"] == pytest.approx(
            1 - info["compressed_bytes"] / info["total_bytes"]
        )
        assert info["file_size"] == path.stat().st_size
        with pytest.raises(InvalidKeyError):
            store.store(weight, hash_key="a/b")
    with pytest.raises(CoralError, match="closed"):
        store.load(key)
    with HDF5Store(path, mode="r") as reopened:  # one portable file
        again = reopened.load(key)
        assert again is not None
        assert again.metadata == metadata
        assert again.data.tobytes() == data.tobytes()
        with pytest.raises(ReadOnlyStoreError):
            reopened.store(weight, hash_key="other")


def test_the_books_delta_interface(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal(1000).astype(np.float32)
    changed = base.copy()
    changed[::50] += 0.01
    reference = WeightTensor(base, name="w")
    encoder = DeltaEncoder()
    delta = encoder.encode_delta(WeightTensor(changed, name="w"), reference)
    with HDF5Store(tmp_path / "d.h5") as store:
        store.store(reference)
        assert store.store_delta(delta, "d1a5e9c3") == "d1a5e9c3"
        assert store.delta_exists("d1a5e9c3")
        assert not store.delta_exists("other")
        assert store.list_deltas() == ["d1a5e9c3"]
        loaded = store.load_delta("d1a5e9c3")
        assert loaded == delta
        assert store.load_delta("other") is None
        rebuilt = encoder.decode_delta(loaded, reference)
        assert rebuilt.data.tobytes() == changed.tobytes()
        assert store.get_delta_storage_info() == {
            "total_deltas": 1,
            "total_delta_bytes": delta.nbytes,
        }
        assert store.delete_delta("d1a5e9c3") is True
        assert store.delete_delta("d1a5e9c3") is False
        assert store.list_deltas() == []


def test_compression_options_shrink_the_file(tmp_path: Path) -> None:
    smooth = np.linspace(0, 1, 200_000, dtype=np.float32).reshape(400, 500)
    sizes = {}
    for name, compression, level in [("none", None, None), ("lzf", "lzf", None), ("gz", "gzip", 9)]:
        path = tmp_path / f"{name}.h5"
        with HDF5Store(path, compression=compression, compression_opts=level) as store:  # type: ignore[arg-type]
            store.store(WeightTensor(smooth, name="w"))
        sizes[name] = path.stat().st_size
    assert sizes["gz"] < sizes["lzf"] < sizes["none"]
    assert sizes["none"] > smooth.nbytes


def test_compact_gives_the_space_back(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    store = HDF5Store(path)
    payload = np.random.default_rng(2).integers(0, 256, 2**20, dtype=np.uint8).tobytes()
    for i in range(8):
        store.put(f"ab/big{i}", payload)
    store.put("keep/small", b"kept")
    store.store(WeightTensor(np.zeros(100_000, dtype=np.float32), name="w"))
    compressed = store.get_storage_info()["compressed_bytes"]
    full = path.stat().st_size
    for i in range(8):
        assert store.delete(f"ab/big{i}")
    assert path.stat().st_size >= full  # HDF5 alone gives nothing back
    freed = store.compact()
    assert freed > 7 * 2**20
    assert path.stat().st_size < 2**20
    assert list(store.list()) == ["keep/small"]
    assert store.get("keep/small") == b"kept"
    assert len(store.list_weights()) == 1
    assert store.get_storage_info()["compressed_bytes"] == compressed  # still compressed
    store.put("ab/after", b"still writable")
    assert store.get("ab/after") == b"still writable"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no temporary file left
    store.close()


def test_a_repository_on_hdf5_commits_checks_out_and_gc_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "objects.h5"
    repo = Repository(tmp_path / "repo", init=True, chunk_size=4096, store=HDF5Store(path))
    first, second = make_weights(seed=1), make_weights(seed=2, scale=50.0)
    one = repo.commit("first", weights=first)
    repo.create_branch("experiment")
    repo.commit("second", weights=second, branch="experiment")
    repo.objects.store.close()
    reopened = Repository(tmp_path / "repo", store=HDF5Store(path))
    for ref, weights in [(one.commit_hash, first), ("experiment", second)]:
        restored = reopened.get_all_weights(ref)
        assert set(restored) == set(weights)
        for name, weight in weights.items():
            assert _same_bits(restored[name].data, weight.data)
    assert reopened.verify().ok
    before = path.stat().st_size
    reopened.delete_branch("experiment")
    result = reopened.gc()
    assert result.removed_objects > 0
    assert path.stat().st_size < before
    restored = reopened.get_all_weights("main")
    assert all(_same_bits(restored[n].data, w.data) for n, w in first.items())
    assert reopened.verify().ok


def test_key_clashes_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    store = HDF5Store(tmp_path / "s.h5")
    store.put("ab/cdef", b"v")
    with pytest.raises(InvalidKeyError, match="'ab' clashes"):
        store.put("ab", b"folder")
    with pytest.raises(InvalidKeyError, match="'ab/cdef/deeper' clashes"):
        store.put_if_absent("ab/cdef/deeper", b"below a key")
    assert not store.has("ab")
    assert store.delete("ab") is False
    assert store.get("ab/cdef") == b"v"
    (tmp_path / "not.h5").write_bytes(b"not an HDF5 file")
    with pytest.raises(CoralError, match=r"not\.h5"):
        HDF5Store(tmp_path / "not.h5")
    with pytest.raises(CoralError, match=r"absent\.h5"):
        HDF5Store(tmp_path / "absent.h5", mode="r")


def test_readers_and_writers_on_many_threads(tmp_path: Path) -> None:
    store = HDF5Store(tmp_path / "s.h5")
    weights = [WeightTensor(np.full((50, 50), i, dtype=np.float32), name=f"w{i}") for i in range(8)]
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(10):
                key = store.store(weights[(worker + i) % 8])
                assert store.load(key) is not None
                store.put(f"t{worker}/k{i}", b"x" * i)
                assert list(store.list(f"t{worker}/"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(store.list_weights()) == 8
    assert len(list(store.list())) == 40
