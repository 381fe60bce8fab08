"""An in-memory store, for tests and scratch work."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from coral_core.errors import MissingObjectError
from coral_core.store.base import WeightStore, slice_range, validate_key


class MemoryStore(WeightStore):
    """Keeps every object in a dict; thread-safe, gone when the process ends."""

    def __init__(self, read_only: bool = False) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.read_only = read_only

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        validate_key(key)
        try:
            data = self._objects[key]
        except KeyError:
            raise MissingObjectError(f"object {key!r} is not in the memory store") from None
        return slice_range(data, byte_range)

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._check_writable(key)
        with self._lock:
            self._objects[key] = bytes(data)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self._check_writable(key)
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = bytes(data)
            return True

    def compare_and_swap(self, key: str, expected: bytes | None, new: bytes) -> bool:
        self._check_writable(key)
        with self._lock:
            if self._objects.get(key) != expected:
                return False
            self._objects[key] = bytes(new)
            return True

    def compare_and_delete(self, key: str, expected: bytes) -> bool:
        self._check_writable(key)
        with self._lock:
            if self._objects.get(key) != expected:
                return False
            del self._objects[key]
            return True

    def has(self, key: str) -> bool:
        return validate_key(key) in self._objects

    def delete(self, key: str) -> bool:
        self._check_writable(key)
        with self._lock:
            return self._objects.pop(key, None) is not None

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = [k for k in self._objects if k.startswith(prefix)]
        yield from keys

    def size(self, key: str) -> int:
        return len(self.get(key))

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._objects)} objects)"
