"""The contract every :class:`~coral_core.store.WeightStore` must keep.

Subclass :class:`StoreTests` in a test module and override :meth:`make_store`;
pytest then runs every check against your backend::

    class TestMyStore(StoreTests):
        def make_store(self, tmp_path):
            return MyStore(tmp_path)
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from coral_core.errors import InvalidKeyError, MissingObjectError, ReadOnlyStoreError
from coral_core.store.base import WeightStore

BAD_KEYS = ["", "/abs", "a/../b", "..", "a//b", ".hidden", "a/.hidden", "with space", "a\\b", "ä"]


class StoreTests:
    """Checks for put/get/has/delete/list, byte ranges, atomicity and bad keys."""

    def make_store(self, tmp_path: Path) -> WeightStore:
        raise NotImplementedError("override make_store to return the store under test")

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        """The same data opened read-only; None when the backend has no such mode."""
        return None

    @pytest.fixture
    def store(self, tmp_path: Path) -> WeightStore:
        return self.make_store(tmp_path)

    def test_put_get_round_trip(self, store: WeightStore) -> None:
        store.put("ab/cdef", b"hello")
        store.put("ab/memory", memoryview(b"from a view"))
        assert store.get("ab/cdef") == b"hello"
        assert store.get("ab/memory") == b"from a view"
        assert store.size("ab/cdef") == 5

    def test_empty_and_large_values(self, store: WeightStore) -> None:
        big = bytes(range(256)) * (5 * 4096)  # 5 MiB
        store.put("e/empty", b"")
        store.put("e/big", big)
        assert store.get("e/empty") == b""
        assert store.get("e/big") == big

    def test_byte_ranges(self, store: WeightStore) -> None:
        store.put("r/x", b"0123456789")
        assert store.get("r/x", byte_range=(0, 4)) == b"0123"
        assert store.get("r/x", byte_range=(7, 10)) == b"789"
        assert store.get("r/x", byte_range=(8, 100)) == b"89"
        assert store.get("r/x", byte_range=(5, 5)) == b""

    def test_has_and_delete(self, store: WeightStore) -> None:
        assert not store.has("d/x")
        store.put("d/x", b"1")
        assert store.has("d/x")
        assert store.delete("d/x") is True
        assert store.delete("d/x") is False
        assert not store.has("d/x")

    def test_missing_key(self, store: WeightStore) -> None:
        with pytest.raises(MissingObjectError) as caught:
            store.get("no/such")
        assert isinstance(caught.value, LookupError)
        with pytest.raises(MissingObjectError):
            store.size("no/such")

    def test_list_by_prefix(self, store: WeightStore) -> None:
        keys = {"ab/cdef", "ab/cdxx", "ab/ffff", "ac/cdef", "zz"}
        for key in keys:
            store.put(key, b"v")
        assert set(store.list()) == keys
        assert set(store.list("ab/")) == {"ab/cdef", "ab/cdxx", "ab/ffff"}
        assert set(store.list("ab/cd")) == {"ab/cdef", "ab/cdxx"}
        assert set(store.list("a")) == keys - {"zz"}
        assert list(store.list("nothing/")) == []

    def test_put_replaces(self, store: WeightStore) -> None:
        store.put("p/x", b"old")
        store.put("p/x", b"new")
        assert store.get("p/x") == b"new"

    def test_put_if_absent_keeps_the_first_value(self, store: WeightStore) -> None:
        assert store.put_if_absent("i/x", b"first") is True
        assert store.put_if_absent("i/x", b"second") is False
        assert store.get("i/x") == b"first"

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_bad_keys_are_refused(self, store: WeightStore, key: str) -> None:
        for action in (
            lambda: store.put(key, b"x"),
            lambda: store.get(key),
            lambda: store.has(key),
            lambda: store.put_if_absent(key, b"x"),
        ):
            with pytest.raises(InvalidKeyError):
                action()
        assert list(store.list()) == []

    def test_concurrent_writers(self, store: WeightStore) -> None:
        def write(worker: int) -> None:
            for i in range(40):
                store.put(f"t{worker}/k{i}", f"{worker}-{i}".encode())

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(list(store.list())) == 160
        assert store.get("t3/k39") == b"3-39"

    def test_read_only(self, tmp_path: Path) -> None:
        writable = self.make_store(tmp_path)
        writable.put("ro/x", b"data")
        store = self.make_read_only_store(tmp_path)
        if store is None:
            return
        assert store.get("ro/x") == b"data"
        for action in (
            lambda: store.put("ro/y", b"x"),
            lambda: store.put_if_absent("ro/y", b"x"),
            lambda: store.delete("ro/x"),
        ):
            with pytest.raises(ReadOnlyStoreError):
                action()
        assert writable.get("ro/x") == b"data"
