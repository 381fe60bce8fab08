"""ObjectDatabase: bitwise round trips for every dtype, dedup, and damage detection."""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coral_core import (
    CorruptObjectError,
    LocalStore,
    MemoryStore,
    MissingObjectError,
    WeightTensor,
    bit_view,
    numpy_dtype,
)
from coral_core.object_format import HEADER_SIZE, Codec, ObjectKind, object_key, parse_header
from coral_core.objects import ObjectDatabase
from coral_core.testing.strategies import (
    FLOAT_DTYPE_NAMES,
    arrays,
    special_float_bits,
    special_values,
)

CHUNK = 1024
DAMAGE = (CorruptObjectError, MissingObjectError)
# Header layout "<4sBBHQQQ": magic, kind, codec, params size, then the raw size as
# the u64 at bytes 8..16. Flipping one of its top 32 bits (bytes 12..16) makes
# decoders try to allocate terabytes; test_huge_raw_size_is_reported_as_corruption
# covers those bits, the other damage tests leave them out.
RAW_SIZE_HIGH_BITS = frozenset(range(12 * 8, 16 * 8))
HEADER_BITS = [bit for bit in range(HEADER_SIZE * 8) if bit not in RAW_SIZE_HIGH_BITS]
ON_DISK = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, same shape, same bits (NaN payloads and -0.0 included)."""
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert np.array_equal(bit_view(actual), bit_view(expected))


def memory_db() -> ObjectDatabase:
    return ObjectDatabase(MemoryStore(), chunk_size=CHUNK)


def stored_bytes(db: ObjectDatabase) -> int:
    return sum(db.store.size(key) for key in db.store.list())


def header_of(db: ObjectDatabase, object_id: str) -> Any:
    return parse_header(object_id, db.store.get(object_key(object_id), (0, HEADER_SIZE)))


# -- round trips -----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(array=arrays(max_side=16))
def test_every_dtype_round_trips_bitwise(array: np.ndarray) -> None:
    db = memory_db()
    written = db.write_tensor(WeightTensor(array))
    assert written.tensor_id == WeightTensor(array).compute_hash()
    assert not written.deduplicated
    assert written.new_bytes == stored_bytes(db)
    assert_bitwise_equal(db.read_tensor(written.tensor_id), array)
    assert len(db.tensor_descriptor(written.tensor_id).chunks) == math.ceil(array.nbytes / CHUNK)
    assert db.check_tensor(written.tensor_id) == {}


@settings(max_examples=60, deadline=None)
@given(array=special_float_bits(max_size=700))
def test_special_bit_patterns_round_trip(array: np.ndarray) -> None:
    db = memory_db()
    written = db.write_tensor(WeightTensor(array))
    assert_bitwise_equal(db.read_tensor(written.tensor_id), array)


@pytest.mark.parametrize("dtype", FLOAT_DTYPE_NAMES)
def test_special_values_across_many_chunks(dtype: str) -> None:
    row = special_values(dtype)
    values = np.tile(row, (1000, 1))
    db = memory_db()
    written = db.write_tensor(WeightTensor(values))
    assert len(db.tensor_descriptor(written.tensor_id).chunks) > 2
    assert_bitwise_equal(db.read_tensor(written.tensor_id), values)


@pytest.mark.parametrize(
    "dtype", ["float32", "bfloat16", "float8_e5m2", "int8", "complex128", "bool"]
)
@pytest.mark.parametrize("shape", [(), (1,), (0,), (0, 7), (5, 0, 2)])
def test_scalar_and_empty_tensors_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    array = np.ones(shape, dtype=np.uint8).astype(numpy_dtype(dtype))
    db = memory_db()
    written = db.write_tensor(WeightTensor(array))
    assert_bitwise_equal(db.read_tensor(written.tensor_id), array)
    assert len(db.tensor_descriptor(written.tensor_id).chunks) == (1 if array.size else 0)
    assert db.write_tensor(WeightTensor(array.copy())).deduplicated


@settings(max_examples=40, deadline=None)
@given(batch=st.lists(arrays(max_side=12), min_size=1, max_size=4))
def test_batches_with_repeats_round_trip_and_count_bytes_once(batch: list[np.ndarray]) -> None:
    db = memory_db()
    items: list[tuple[WeightTensor, str | None]] = [(WeightTensor(a), None) for a in batch]
    items.append((WeightTensor(batch[0].copy()), None))  # the same tensor twice in one batch
    results = db.write_tensors(items)
    assert sum(r.new_bytes for r in results) == stored_bytes(db)
    restored = db.read_tensors([r.tensor_id for r in results])
    for array, result, back in zip([*batch, batch[0]], results, restored, strict=True):
        assert result.tensor_id == WeightTensor(array).compute_hash()
        assert_bitwise_equal(back, array)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_deltas_against_a_reference_round_trip(data: st.DataObject) -> None:
    old = data.draw(arrays(max_side=16), label="old")
    name = WeightTensor(old).metadata.dtype_name
    new = data.draw(arrays(dtype=name, shape=old.shape), label="new")
    db = memory_db()
    old_id = db.write_tensor(WeightTensor(old)).tensor_id
    new_id = db.write_tensor(WeightTensor(new), reference=old_id).tensor_id
    assert_bitwise_equal(db.read_tensor(new_id), new)
    assert_bitwise_equal(db.read_tensor(old_id), old)


def test_similar_tensors_are_stored_as_deltas() -> None:
    rng = np.random.default_rng(1)
    old = rng.standard_normal(2048).astype(np.float32)
    new = old.copy()
    new[::50] += np.float32(1e-3)
    db = memory_db()
    old_id = db.write_tensor(WeightTensor(old)).tensor_id
    new_id = db.write_tensor(WeightTensor(new), reference=old_id).tensor_id
    codecs = {db.chunk_params(c)[0] for c in db.tensor_descriptor(new_id).chunks}
    assert Codec.DELTA in codecs
    assert_bitwise_equal(db.read_tensor(new_id), new)


# -- deduplication ---------------------------------------------------------------------


def test_identical_chunks_are_stored_once() -> None:
    rng = np.random.default_rng(0)
    block = rng.standard_normal(CHUNK // 4).astype(np.float32)  # exactly one chunk
    repeated = np.tile(block, 8)
    distinct = rng.standard_normal(repeated.size).astype(np.float32)
    db = memory_db()
    first = db.write_tensor(WeightTensor(repeated))
    chunks = db.tensor_descriptor(first.tensor_id).chunks
    assert len(chunks) == 8
    assert len(set(chunks)) == 1
    assert len(list(db.store.list())) == 2  # one chunk and the descriptor
    other = memory_db()
    second = other.write_tensor(WeightTensor(distinct))
    assert len(list(other.store.list())) == 9
    assert first.new_bytes < second.new_bytes
    assert_bitwise_equal(db.read_tensor(first.tensor_id), repeated)


def test_writing_a_tensor_twice_adds_nothing() -> None:
    array = np.random.default_rng(2).standard_normal(3000).astype(np.float32)
    db = memory_db()
    db.write_tensor(WeightTensor(array))
    keys, size = set(db.store.list()), stored_bytes(db)
    again = db.write_tensor(WeightTensor(array.copy(), name="another name"))
    assert again.deduplicated
    assert again.new_bytes == 0
    assert set(db.store.list()) == keys
    assert stored_bytes(db) == size


def test_same_bytes_in_another_shape_add_only_a_descriptor() -> None:
    array = np.random.default_rng(3).standard_normal(1024).astype(np.float32)
    db = memory_db()
    db.write_tensor(WeightTensor(array))
    keys = set(db.store.list())
    reshaped = db.write_tensor(WeightTensor(array.reshape(32, 32)))
    added = set(db.store.list()) - keys
    assert added == {object_key(reshaped.tensor_id)}
    assert reshaped.new_bytes == db.stored_size(reshaped.tensor_id)


def test_a_changed_chunk_adds_one_chunk() -> None:
    array = np.random.default_rng(4).standard_normal(2048).astype(np.float32)  # 8 chunks
    db = memory_db()
    db.write_tensor(WeightTensor(array))
    count = len(list(db.store.list()))
    changed = array.copy()
    changed[-1] = np.float32(7.0)
    db.write_tensor(WeightTensor(changed))
    assert len(list(db.store.list())) == count + 2  # the new last chunk and a descriptor


# -- damage on disk --------------------------------------------------------------------


@dataclass
class Corpus:
    """Tensors in a LocalStore, with the objects each one needs."""

    db: ObjectDatabase
    root: Path
    arrays: dict[str, np.ndarray]
    ids: dict[str, str]
    needs: dict[str, set[str]] = field(default_factory=dict)

    def path(self, object_id: str) -> Path:
        return self.root / object_key(object_id)

    def objects(self) -> list[str]:
        return sorted(self.db.iter_ids())

    def affected(self, object_id: str) -> Iterator[str]:
        return (name for name, needed in self.needs.items() if object_id in needed)

    def assert_detected(self, object_id: str) -> None:
        """Every tensor that needs ``object_id`` refuses to load and names it."""
        affected = list(self.affected(object_id))
        assert affected
        for name in affected:
            with pytest.raises(DAMAGE):
                self.db.read_tensor(self.ids[name])
            problems = self.db.check_tensor(self.ids[name])
            assert object_id in problems or any(object_id in m for m in problems.values())

    def assert_sound(self) -> None:
        for name, tensor_id in self.ids.items():
            assert_bitwise_equal(self.db.read_tensor(tensor_id), self.arrays[name])
            assert self.db.check_tensor(tensor_id) == {}


def closure(db: ObjectDatabase, tensor_id: str) -> set[str]:
    """The ids of a tensor's descriptor, chunks and delta bases."""
    seen = {tensor_id}
    todo = [(tensor_id, ObjectKind.TENSOR)]
    while todo:
        for child, kind in db.references(*todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append((child, kind))
    return seen


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    rng = np.random.default_rng(5)
    weights = (np.round(rng.standard_normal(600) * 64) / 64).astype(np.float32)  # compressible
    tweaked = weights.copy()
    tweaked[::40] += np.float32(1e-3)
    arrays_: dict[str, np.ndarray] = {
        "weights": weights,  # byte-plane chunks
        "noise": rng.integers(0, 256, 1500, dtype=np.uint8),  # raw chunks
        "scalar": np.array(np.float64(-0.0)),
        "special": special_values("bfloat16"),
    }
    root = tmp_path / "objects"
    db = ObjectDatabase(LocalStore(root), chunk_size=CHUNK)
    ids = {name: db.write_tensor(WeightTensor(a)).tensor_id for name, a in arrays_.items()}
    arrays_["tweaked"] = tweaked  # delta chunks against "weights"
    ids["tweaked"] = db.write_tensor(WeightTensor(tweaked), reference=ids["weights"]).tensor_id
    result = Corpus(db, root, arrays_, ids)
    result.needs = {name: closure(db, tensor_id) for name, tensor_id in ids.items()}
    chunk_codecs = {
        header_of(db, c).codec for c in db.iter_ids() if header_of(db, c).kind == ObjectKind.CHUNK
    }
    assert chunk_codecs == {Codec.RAW, Codec.PLANES, Codec.DELTA}
    assert result.needs["tweaked"] & result.needs["weights"]  # shares delta bases
    return result


def flip(path: Path, bit: int) -> bytes:
    """Flip one bit of a file; return its old bytes."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(damaged))
    return original


def test_every_header_bit_flip_is_detected(corpus: Corpus) -> None:
    for object_id in corpus.objects():
        path = corpus.path(object_id)
        for bit in HEADER_BITS:
            original = flip(path, bit)
            try:
                corpus.assert_detected(object_id)
            finally:
                path.write_bytes(original)
    corpus.assert_sound()


@ON_DISK
@given(data=st.data())
def test_a_bit_flip_anywhere_is_detected(corpus: Corpus, data: st.DataObject) -> None:
    object_id = data.draw(st.sampled_from(corpus.objects()), label="object")
    path = corpus.path(object_id)
    size = path.stat().st_size
    bit = data.draw(
        st.integers(0, size * 8 - 1).filter(lambda b: b not in RAW_SIZE_HIGH_BITS), label="bit"
    )
    original = flip(path, bit)
    try:
        corpus.assert_detected(object_id)
    finally:
        path.write_bytes(original)


@ON_DISK
@given(data=st.data())
def test_truncation_is_detected(corpus: Corpus, data: st.DataObject) -> None:
    object_id = data.draw(st.sampled_from(corpus.objects()), label="object")
    path = corpus.path(object_id)
    original = path.read_bytes()
    length = data.draw(
        st.sampled_from([0, 1, HEADER_SIZE - 1, HEADER_SIZE, len(original) - 1])
        | st.integers(0, len(original) - 1),
        label="length",
    )
    path.write_bytes(original[:length])
    try:
        corpus.assert_detected(object_id)
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("tail", [b"\0", b"extra bytes"])
def test_appended_bytes_are_detected(corpus: Corpus, tail: bytes) -> None:
    for object_id in corpus.objects():
        path = corpus.path(object_id)
        original = path.read_bytes()
        path.write_bytes(original + tail)
        try:
            corpus.assert_detected(object_id)
        finally:
            path.write_bytes(original)


@pytest.mark.parametrize("magic", [b"CRL2", b"\0\0\0\0", b"PK\x03\x04", b"crl1"])
def test_replaced_magic_is_detected(corpus: Corpus, magic: bytes) -> None:
    for object_id in corpus.objects():
        path = corpus.path(object_id)
        original = path.read_bytes()
        path.write_bytes(magic + original[4:])
        try:
            corpus.assert_detected(object_id)
        finally:
            path.write_bytes(original)


def test_an_object_stored_under_another_id_is_detected(corpus: Corpus) -> None:
    """Each object is checked against its id, not only against its own checksum."""
    objects = corpus.objects()
    for object_id, impostor in zip(objects, objects[1:] + objects[:1], strict=True):
        path = corpus.path(object_id)
        original = path.read_bytes()
        path.write_bytes(corpus.path(impostor).read_bytes())
        try:
            corpus.assert_detected(object_id)
        finally:
            path.write_bytes(original)


def test_a_deleted_object_is_missing(corpus: Corpus) -> None:
    for object_id in corpus.objects():
        path = corpus.path(object_id)
        original = path.read_bytes()
        path.unlink()
        try:
            corpus.assert_detected(object_id)
            for name in corpus.affected(object_id):
                with pytest.raises(MissingObjectError):
                    corpus.db.read_tensor(corpus.ids[name])
        finally:
            path.write_bytes(original)
    corpus.assert_sound()


@pytest.mark.parametrize(
    ("codec", "bit"), [(Codec.PLANES, 62), (Codec.ZSTD, 63)], ids=["planes-bit62", "zstd-bit63"]
)
def test_huge_raw_size_is_reported_as_corruption(corpus: Corpus, codec: Codec, bit: int) -> None:
    object_id = next(o for o in corpus.objects() if header_of(corpus.db, o).codec == codec)
    flip(corpus.path(object_id), 8 * 8 + bit)  # the raw size is the u64 at byte 8
    corpus.assert_detected(object_id)


# -- documents -------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
DOCUMENTS = st.dictionaries(st.text(max_size=10), JSON, max_size=6)
DOCUMENT_KINDS = [ObjectKind.TREE, ObjectKind.COMMIT, ObjectKind.TAG]


@settings(max_examples=80, deadline=None)
@given(document=DOCUMENTS, kind=st.sampled_from(DOCUMENT_KINDS))
def test_documents_round_trip(document: dict[str, Any], kind: ObjectKind) -> None:
    db = memory_db()
    object_id = db.write_document(kind, document)
    assert db.read_document(kind, object_id) == document
    reordered = dict(reversed(list(document.items())))
    assert db.write_document(kind, reordered) == object_id  # canonical form: one id
    assert db.kind_of(object_id) == kind
    db.check_object(object_id)


def test_document_ids_depend_on_their_kind() -> None:
    db = memory_db()
    document = {"entries": {}, "note": "same bytes"}
    ids = {db.write_document(kind, document) for kind in DOCUMENT_KINDS}
    assert len(ids) == len(DOCUMENT_KINDS)


def test_a_document_read_as_another_kind_is_corrupt() -> None:
    db = memory_db()
    tree = db.write_document(ObjectKind.TREE, {"entries": {}})
    tensor = db.write_tensor(WeightTensor(np.arange(4, dtype=np.int32))).tensor_id
    for kind in (ObjectKind.COMMIT, ObjectKind.TAG):
        with pytest.raises(CorruptObjectError):
            db.read_document(kind, tree)
    with pytest.raises(CorruptObjectError):
        db.read_document(ObjectKind.TREE, tensor)
    with pytest.raises(CorruptObjectError):
        db.read_tensor(tree)
    with pytest.raises(CorruptObjectError):
        db.read_chunk(tree)


def test_a_missing_document_is_missing() -> None:
    db = memory_db()
    with pytest.raises(MissingObjectError):
        db.read_document(ObjectKind.COMMIT, "0" * 32)
    with pytest.raises(MissingObjectError):
        db.read_tensor("f" * 32)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_damaged_document_is_detected(data: st.DataObject) -> None:
    db = memory_db()
    object_id = db.write_document(ObjectKind.COMMIT, data.draw(DOCUMENTS, label="document"))
    key = object_key(object_id)
    blob = db.store.get(key)
    bit = data.draw(
        st.integers(0, len(blob) * 8 - 1).filter(lambda b: b not in RAW_SIZE_HIGH_BITS),
        label="bit",
    )
    damaged = bytearray(blob)
    damaged[bit // 8] ^= 1 << (bit % 8)
    db.store.put(key, bytes(damaged))
    with pytest.raises(CorruptObjectError):
        db.read_document(ObjectKind.COMMIT, object_id)


def test_reading_keeps_nothing_alive() -> None:
    """Decoding must release every payload it read (a C extension that leaks a
    reference to its input once kept a whole compressed model alive per read)."""
    db = memory_db()
    base = np.random.default_rng(0).standard_normal(200 * CHUNK // 4).astype(np.float32)
    first = db.write_tensor(WeightTensor(base)).tensor_id
    second = db.write_tensor(WeightTensor(base + np.float32(1e-3)), reference=first).tensor_id
    db.read_tensors([first, second])  # warm the per-thread scratch buffers
    tracemalloc.start()
    try:
        for _ in range(5):
            db.read_tensors([first, second])
        leaked, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert leaked < base.nbytes // 4


def test_pool_work_keeps_order_under_uneven_costs_and_stops_at_an_error() -> None:
    db = ObjectDatabase(MemoryStore(), chunk_size=CHUNK, threads=2)
    done: list[int] = []

    def uneven(item: int) -> int:
        time.sleep(0.002 if item % 7 == 0 else 0)
        done.append(item)
        return item * item

    assert db._map(uneven, range(50)) == [i * i for i in range(50)]

    def failing(item: int) -> int:
        if item == 3:
            raise ValueError("item 3")
        time.sleep(0.001)
        return uneven(item)

    done.clear()
    with pytest.raises(ValueError, match="item 3"):
        db._map(failing, range(1000))
    assert len(done) < 100  # the other thread stopped soon after, not at the end


def test_a_checkout_shares_one_aligned_allocation() -> None:
    db = memory_db()
    arrays_in = [np.arange(n, dtype=np.float32) for n in (3, 1000, 5 * CHUNK)]
    ids = [db.write_tensor(WeightTensor(a)).tensor_id for a in arrays_in]
    out = db.read_tensors(ids)
    for restored, original in zip(out, arrays_in, strict=True):
        assert np.array_equal(bit_view(restored), bit_view(original))
        assert restored.ctypes.data % 64 == 0
    out[0][:] = -1  # the views do not overlap
    assert np.array_equal(out[1], arrays_in[1])
    assert np.array_equal(out[2], arrays_in[2])
