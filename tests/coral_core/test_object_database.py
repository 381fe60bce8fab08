"""Objects: every dtype and bit pattern round-trips bitwise; damage is always detected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coral_core import (
    CorruptObjectError,
    LocalStore,
    MemoryStore,
    MissingObjectError,
    TensorMismatchError,
    UnsupportedDtypeError,
    WeightMetadata,
    WeightTensor,
    bit_view,
    dtype_name,
)
from coral_core.objects import ObjectDatabase, ObjectKind, object_key
from coral_core.testing.strategies import SPECIAL_BITS, arrays, special_values


def exact(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bit_view(a), bit_view(b))


@settings(max_examples=150, deadline=None)
@given(array=arrays(max_side=16))
def test_every_dtype_and_bit_pattern_round_trips(array: np.ndarray) -> None:
    objects = ObjectDatabase(MemoryStore(), chunk_size=1024)
    written = objects.write_tensor(WeightTensor(array))
    assert exact(objects.read_tensor(written.tensor_id), array)


@pytest.mark.parametrize("dtype", sorted(SPECIAL_BITS))
def test_special_values_across_chunk_boundaries(dtype: str) -> None:
    values = np.tile(special_values(dtype), 700)  # several 1 KiB chunks
    objects = ObjectDatabase(MemoryStore(), chunk_size=1024)
    written = objects.write_tensor(WeightTensor(values))
    assert len(objects.tensor_descriptor(written.tensor_id).chunks) > 1
    assert exact(objects.read_tensor(written.tensor_id), values)


def test_identical_chunks_are_stored_once() -> None:
    store = MemoryStore()
    objects = ObjectDatabase(store, chunk_size=1024)
    block = np.random.default_rng(0).standard_normal(256).astype(np.float32)  # one chunk
    repeated = np.tile(block, 10)
    first = objects.write_tensor(WeightTensor(repeated))
    assert len(objects.tensor_descriptor(first.tensor_id).chunks) == 10
    assert len(list(store.list())) == 2  # one chunk object and the descriptor
    again = objects.write_tensor(WeightTensor(repeated.copy()))
    assert again.deduplicated
    assert again.new_bytes == 0


def test_content_id_covers_dtype_and_shape() -> None:
    data = np.arange(12, dtype=np.int32)
    ids = {
        WeightTensor(data).compute_hash(),
        WeightTensor(data.reshape(3, 4)).compute_hash(),
        WeightTensor(data.view(np.float32)).compute_hash(),
        WeightTensor(data.view(np.uint32)).compute_hash(),
    }
    assert len(ids) == 4
    assert WeightTensor(data.copy()).compute_hash() == WeightTensor(data).compute_hash()
    assert len(WeightTensor(data).compute_hash()) == 32


def test_tensor_validation() -> None:
    with pytest.raises(TensorMismatchError, match="shape"):
        WeightTensor(np.zeros((2, 3)), WeightMetadata("w", (3, 2), np.float64))
    with pytest.raises(TensorMismatchError, match="dtype"):
        WeightTensor(np.zeros(3, np.float32), WeightMetadata("w", (3,), np.float64))
    with pytest.raises(UnsupportedDtypeError):
        WeightTensor(np.array(["a"]))
    with pytest.raises(UnsupportedDtypeError):
        dtype_name(object)
    assert dtype_name("bf16") == "bfloat16"
    assert dtype_name("torch.float16") == "float16"
    strided = np.arange(20, dtype=np.float32)[::2]
    tensor = WeightTensor(strided)
    assert tensor.data.flags.c_contiguous
    assert exact(tensor.data, strided)
    scalar = WeightTensor(np.array(1.5))
    assert scalar.shape == ()
    assert scalar.data.shape == ()


@pytest.fixture
def local(tmp_path: Path) -> tuple[ObjectDatabase, str, Path]:
    objects = ObjectDatabase(LocalStore(tmp_path), chunk_size=1024)
    array = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    tensor_id = objects.write_tensor(WeightTensor(array)).tensor_id
    return objects, tensor_id, tmp_path


def damage(path: Path, how: str, position: int) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[position % len(data)] ^= 1 << (position % 8)
    elif how == "truncate":
        del data[position % len(data) :]
    else:  # header
        data[:4] = b"JUNK"
    path.write_bytes(bytes(data))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # each example restores the file
)
@given(how=st.sampled_from(["flip", "truncate", "header"]), position=st.integers(0, 10**6))
def test_any_damage_is_detected(
    local: tuple[ObjectDatabase, str, Path], how: str, position: int
) -> None:
    objects, tensor_id, root = local
    descriptor = objects.tensor_descriptor(tensor_id)
    victim = descriptor.chunks[position % len(descriptor.chunks)]
    path = root / object_key(victim)
    original = path.read_bytes()
    try:
        damage(path, how, position)
        with pytest.raises(CorruptObjectError):
            objects.read_tensor(tensor_id)
        assert victim in objects.check_tensor(tensor_id)
    finally:
        path.write_bytes(original)


def test_damaged_descriptor_and_missing_chunk(local: tuple[ObjectDatabase, str, Path]) -> None:
    objects, tensor_id, root = local
    chunk = objects.tensor_descriptor(tensor_id).chunks[0]
    (root / object_key(chunk)).unlink()
    with pytest.raises(MissingObjectError, match=chunk):
        objects.read_tensor(tensor_id)
    assert list(objects.check_tensor(tensor_id)) == [chunk]
    damage(root / object_key(tensor_id), "flip", 40)
    with pytest.raises(CorruptObjectError, match=tensor_id):
        objects.read_tensor(tensor_id)


def test_documents_round_trip_and_check_their_kind() -> None:
    objects = ObjectDatabase(MemoryStore())
    doc_id = objects.write_document(ObjectKind.TREE, {"entries": {}, "note": "ü"})
    assert objects.read_document(ObjectKind.TREE, doc_id) == {"entries": {}, "note": "ü"}
    assert objects.kind_of(doc_id) == ObjectKind.TREE
    with pytest.raises(CorruptObjectError, match="tree"):
        objects.read_document(ObjectKind.COMMIT, doc_id)
