"""``PrefixStore``: one store seen through a key prefix (a remote's ``objects/``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from coral_core.store.base import WeightStore, WriteBatch, validate_key


class PrefixStore(WeightStore):
    """Every key of ``inner`` under ``prefix/``, with the prefix taken off.

    Write batches, packs and reclaiming go through to ``inner``: a folder of
    packs seen through its ``objects/`` still packs what a push sends.
    """

    def __init__(self, inner: WeightStore, prefix: str) -> None:
        self.inner = inner
        self.prefix = validate_key(prefix.strip("/")) + "/"
        self.read_only = inner.read_only
        self.packs_objects = inner.packs_objects

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        return self.inner.get(self._key(key), byte_range)

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.inner.put(self._key(key), data)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        return self.inner.put_if_absent(self._key(key), data)

    def compare_and_swap(self, key: str, expected: bytes | None, new: bytes) -> bool:
        return self.inner.compare_and_swap(self._key(key), expected, new)

    def compare_and_delete(self, key: str, expected: bytes) -> bool:
        return self.inner.compare_and_delete(self._key(key), expected)

    def has(self, key: str) -> bool:
        return self.inner.has(self._key(key))

    def delete(self, key: str) -> bool:
        return self.inner.delete(self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        for key in self.inner.list(self.prefix + prefix):
            yield key[len(self.prefix) :]

    def size(self, key: str) -> int:
        return self.inner.size(self._key(key))

    def is_packed(self, key: str) -> bool:
        return self.inner.is_packed(self._key(key))

    def prefetch(self, keys: Iterable[str]) -> None:
        self.inner.prefetch(self._key(key) for key in keys)

    def refresh(self) -> None:
        self.inner.refresh()

    def reclaim(self) -> None:
        self.inner.reclaim()

    def consolidate(self) -> int:
        return self.inner.consolidate()

    def _new_batch(self) -> WriteBatch:
        return _PrefixWriteBatch(self, self.inner._new_batch())

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"PrefixStore({self.inner!r}, {self.prefix!r})"


class _PrefixWriteBatch(WriteBatch):
    """A batch of the inner store, the prefix put before each key."""

    store: PrefixStore

    def __init__(self, store: PrefixStore, inner: WriteBatch) -> None:
        super().__init__(store)
        self.inner = inner
        self.ordered = inner.ordered

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        return self.inner.put_if_absent(self.store._key(key), data)

    def barrier(self) -> None:
        self.inner.barrier()

    def finish(self) -> None:
        self.inner.finish()

    def abort(self) -> None:
        self.inner.abort()
