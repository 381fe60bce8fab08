"""The store contract against every shipped backend, plus LocalStore specifics."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from coral_core import InvalidKeyError, LocalStore, MemoryStore, MissingObjectError, WeightStore
from coral_core.store.base import validate_key
from coral_core.testing.store_tests import StoreTests, put_in_a_batch


class TestLocalStore(StoreTests):
    """LocalStore keeps the shared store contract."""

    def make_store(self, tmp_path: Path) -> WeightStore:
        return LocalStore(tmp_path / "objects")

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        return LocalStore(tmp_path / "objects", read_only=True)


class TestLocalStoreWithoutFsync(StoreTests):
    """fsync=False changes durability, never the contract."""

    def make_store(self, tmp_path: Path) -> WeightStore:
        return LocalStore(tmp_path / "objects", fsync=False)

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        return LocalStore(tmp_path / "objects", read_only=True, fsync=False)


class TestMemoryStore(StoreTests):
    """MemoryStore keeps the shared store contract."""

    read_only_sees_writes = False  # a new MemoryStore starts empty

    def make_store(self, tmp_path: Path) -> WeightStore:
        return MemoryStore()

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        return MemoryStore(read_only=True)


# -- what every backend does beyond the shared contract ----------------------------


def _local(tmp_path: Path) -> WeightStore:
    return LocalStore(tmp_path / "objects")


def _memory(tmp_path: Path) -> WeightStore:
    return MemoryStore()


BACKENDS = [
    pytest.param(_memory, id="memory"),
    pytest.param(_local, id="local"),
]


@pytest.mark.parametrize("make", BACKENDS)
@pytest.mark.parametrize("key", ["ab", "ab/cdef/deeper"])
def test_keys_that_hold_no_object_are_missing(
    tmp_path: Path, make: Callable[[Path], WeightStore], key: str
) -> None:
    """A key naming a 'folder' of other keys, or a path below a key, holds nothing."""
    store = make(tmp_path)
    store.put("ab/cdef", b"value")
    assert not store.has(key)
    with pytest.raises(MissingObjectError):
        store.get(key)
    with pytest.raises(MissingObjectError):
        store.size(key)
    assert store.delete(key) is False
    assert store.get("ab/cdef") == b"value"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_memory, id="memory"),
        pytest.param(_local, id="local"),
    ],
)
def test_a_long_valid_segment_is_stored_or_refused_cleanly(
    tmp_path: Path, make: Callable[[Path], WeightStore]
) -> None:
    key = "ab/" + "c" * 300
    assert validate_key(key) == key
    store = make(tmp_path)
    try:
        store.put(key, b"v")
    except InvalidKeyError:
        return
    assert store.get(key) == b"v"


# -- LocalStore specifics -------------------------------------------------------------


def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(10):
        store.put(f"ab/k{i}", b"x" * i)
        store.put(f"ab/k{i}", b"replaced")
        assert store.put_if_absent(f"cd/k{i}", b"y") is True
        assert store.put_if_absent(f"cd/k{i}", b"z") is False
    store.delete("ab/k0")
    assert list(store.temp_files()) == []
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []
    assert len(list(store.list())) == 19


@pytest.mark.parametrize("has_syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_a_write_batch_shows_nothing_before_it_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_syncfs: bool
) -> None:
    if not has_syncfs:  # the path macOS and Windows take
        monkeypatch.setattr("coral_core.files._syncfs", lambda: None)
    store = LocalStore(tmp_path)
    with store.write_batch() as batch:
        for i in range(5):
            assert batch.put_if_absent(f"ab/k{i}", b"v%d" % i)
        assert not store.has("ab/k0")  # written, not yet visible
        assert len(list(store.temp_files())) == 5
    assert [store.get(f"ab/k{i}") for i in range(5)] == [b"v%d" % i for i in range(5)]
    assert list(store.temp_files()) == []


def test_a_failed_write_batch_removes_its_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        put_in_a_batch(store, "ab/k", b"never visible", then_raise=KeyboardInterrupt())
    assert not store.has("ab/k")
    assert list(store.temp_files()) == []


def test_a_write_batch_keeps_what_another_writer_stored_first(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with store.write_batch() as batch:
        assert batch.put_if_absent("ab/k", b"from the batch")
        LocalStore(tmp_path).put("ab/k", b"from elsewhere")  # same key, same bytes in practice
    assert store.get("ab/k") == b"from elsewhere"
    assert list(store.temp_files()) == []


def test_leftover_temporary_files_are_not_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("ab/real", b"1")
    (tmp_path / "ab" / ".tmp-123-abc").write_bytes(b"half")
    (tmp_path / ".tmp-456-def").write_bytes(b"half")
    (tmp_path / ".hidden-folder").mkdir()
    (tmp_path / ".hidden-folder" / "file").write_bytes(b"not an object")
    assert list(store.list()) == ["ab/real"]
    assert list(store.list("ab/")) == ["ab/real"]
    assert list(store.list("ab/.tmp")) == []
    assert len(list(store.temp_files())) == 2


def test_keys_map_to_files_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalStore(root)
    assert not root.exists()  # created on the first write
    store.put("ab/cdef", b"v")
    store.put("x/y/z", b"deep")
    assert (root / "ab" / "cdef").read_bytes() == b"v"
    assert (root / "x" / "y" / "z").read_bytes() == b"deep"
    assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} == {
        "ab/cdef",
        "x/y/z",
    }


@pytest.mark.parametrize(
    "key", ["../outside", "ab/../../outside", "/tmp/outside", "..", "ab/./../outside"]
)
def test_keys_never_escape_the_root(tmp_path: Path, key: str) -> None:
    (tmp_path / "outside").write_bytes(b"secret")
    store = LocalStore(tmp_path / "root")
    store.put("ab/cdef", b"v")
    for action in (
        lambda: store.put(key, b"overwrite"),
        lambda: store.put_if_absent(key, b"overwrite"),
        lambda: store.get(key),
        lambda: store.has(key),
        lambda: store.size(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(InvalidKeyError):
            action()
    assert (tmp_path / "outside").read_bytes() == b"secret"


def test_list_never_escapes_the_root(tmp_path: Path) -> None:
    (tmp_path / "outside").write_bytes(b"secret")
    store = LocalStore(tmp_path / "root")
    store.put("ab/cdef", b"v")
    for prefix in ["../", "ab/../../", "./"]:
        try:
            listed = list(store.list(prefix))
        except InvalidKeyError:
            continue
        assert all(key.startswith(prefix) for key in listed)
        for key in listed:
            assert validate_key(key) == key


def test_read_only_local_store_does_not_create_its_root(tmp_path: Path) -> None:
    root = tmp_path / "absent"
    store = LocalStore(root, read_only=True)
    assert list(store.list()) == []
    assert not store.has("ab/cdef")
    with pytest.raises(MissingObjectError):
        store.get("ab/cdef")
    assert not root.exists()


def test_replacing_keeps_open_readers_on_the_old_value(tmp_path: Path) -> None:
    """Replacement is a rename, so a file already open still reads the old bytes."""
    store = LocalStore(tmp_path)
    store.put("ab/x", b"old value")
    with open(tmp_path / "ab" / "x", "rb") as handle:
        store.put("ab/x", b"new value")
        assert handle.read() == b"old value"
    assert store.get("ab/x") == b"new value"


def test_local_stores_compare_by_root(tmp_path: Path) -> None:
    assert LocalStore(tmp_path) == LocalStore(os.fspath(tmp_path))
    assert hash(LocalStore(tmp_path)) == hash(LocalStore(tmp_path))
    assert LocalStore(tmp_path) != LocalStore(tmp_path / "other")
    assert str(tmp_path) in repr(LocalStore(tmp_path))
