"""``PrefixStore``: one store seen through a key prefix (a remote's ``objects/``)."""

from __future__ import annotations

from collections.abc import Iterator

from coral_core.store.base import WeightStore, validate_key


class PrefixStore(WeightStore):
    """Every key of ``inner`` under ``prefix/``, with the prefix taken off."""

    def __init__(self, inner: WeightStore, prefix: str) -> None:
        self.inner = inner
        self.prefix = validate_key(prefix.strip("/")) + "/"
        self.read_only = inner.read_only

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

    def reclaim(self) -> None:
        self.inner.reclaim()

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"PrefixStore({self.inner!r}, {self.prefix!r})"
