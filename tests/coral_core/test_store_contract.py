"""Every store keeps the contract of coral_core.testing; local-store specifics."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral_core import InvalidKeyError, LocalStore, MemoryStore, WeightStore
from coral_core.testing.store_tests import StoreTests


class TestLocalStore(StoreTests):
    def make_store(self, tmp_path: Path) -> WeightStore:
        return LocalStore(tmp_path / "objects")

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        return LocalStore(tmp_path / "objects", read_only=True)


class TestMemoryStore(StoreTests):
    def make_store(self, tmp_path: Path) -> WeightStore:
        return MemoryStore()


def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(20):
        store.put(f"ab/{i}", b"x" * i)
        store.put_if_absent(f"cd/{i}", b"y")
        store.put_if_absent(f"cd/{i}", b"z")
    assert list(store.temp_files()) == []
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []


def test_leftover_temporary_files_are_not_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("ab/real", b"1")
    (tmp_path / "ab" / ".tmp-123-abc").write_bytes(b"half")
    assert list(store.list()) == ["ab/real"]
    assert len(list(store.temp_files())) == 1


def test_keys_map_to_files_under_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("ab/cdef", b"v")
    assert (tmp_path / "root" / "ab" / "cdef").read_bytes() == b"v"
    with pytest.raises(InvalidKeyError):
        store.put("../outside", b"v")
    assert not (tmp_path / "outside").exists()
