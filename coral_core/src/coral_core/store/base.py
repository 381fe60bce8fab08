"""``WeightStore``: the small key -> bytes surface every backend implements.

Everything clever (chunking, dedup, deltas, verification) sits above the store,
so a new backend only has to move bytes. Keys are ``/``-separated names made of
``[A-Za-z0-9._-]``; no segment is empty, ``.`` or ``..``, or starts with a dot.
"""

from __future__ import annotations

import contextlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar

from coral_core.errors import CoralError, InvalidKeyError, LockTimeoutError, ReadOnlyStoreError

KEY_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_KEY_LENGTH = 1024
#: A ref lock object older than this belongs to a writer that died; it is broken.
LOCK_LEASE_SECONDS = 30.0
#: How long :meth:`WeightStore.compare_and_swap` waits for a lock held by a live writer.
LOCK_WAIT_SECONDS = 60.0


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid store key.

    Raises:
        InvalidKeyError: for empty keys, absolute paths, ``..`` or odd characters.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"invalid store key {key!r}")
    for segment in key.split("/"):
        if not KEY_SEGMENT.fullmatch(segment):
            raise InvalidKeyError(
                f"invalid store key {key!r}: segment {segment!r} is empty, hidden, "
                "or has characters outside [A-Za-z0-9._-]"
            )
    return key


_Store = TypeVar("_Store", bound="WeightStore")


class WeightStore(ABC):
    """Immutable objects by key: put, get (optionally a byte range), has, delete, list.

    Writes are atomic: a reader sees the whole old value or the whole new one.
    """

    read_only: bool = False
    #: The store puts the objects of a write batch into packs itself (a folder
    #: of packs); a remote keeps packs in any other store through bucket packs.
    packs_objects: bool = False

    @abstractmethod
    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Return the value, or ``value[start:end]`` when ``byte_range=(start, end)``.

        Raises:
            MissingObjectError: when ``key`` is not in the store.
        """

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``key`` atomically, replacing any old value."""

    @abstractmethod
    def has(self, key: str) -> bool:
        """True when ``key`` is in the store."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; return False when it was not there."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key starting with ``prefix`` (in no particular order)."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Bytes stored under ``key``.

        Raises:
            MissingObjectError: when ``key`` is not in the store.
        """

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Store ``data`` unless ``key`` exists; return True when it was written.

        Backends with an atomic create override this; the default is check-then-put,
        which is enough for content-addressed objects (the same key, the same bytes).
        """
        if self.has(key):
            return False
        self.put(key, data)
        return True

    def compare_and_swap(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Set ``key`` to ``new`` only if it now holds ``expected`` (None: absent).

        Returns True when swapped, False when the value was something else;
        for refs, so two writers racing never silently overwrite each other.
        Backends with conditional writes override this; the default takes a
        lock object (``<key>.lock``, created with :meth:`put_if_absent`) around
        the read-compare-write, and breaks a lock older than
        :data:`LOCK_LEASE_SECONDS` (its writer died).

        Raises:
            LockTimeoutError: when the lock stays taken for ``LOCK_WAIT_SECONDS``.
        """
        return self._swap_under_lock(key, expected, lambda: self.put(key, new))

    def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Delete ``key`` only if it now holds ``expected``; True when deleted.

        The default takes the same lock object as :meth:`compare_and_swap`.

        Raises:
            LockTimeoutError: when the lock stays taken for ``LOCK_WAIT_SECONDS``.
        """
        return self._swap_under_lock(key, expected, lambda: self.delete(key))

    def _swap_under_lock(
        self, key: str, expected: bytes | None, change: Callable[[], object]
    ) -> bool:
        self._check_writable(key)
        lock = f"{key}.lock"
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not self.put_if_absent(lock, str(time.time()).encode()):
            self._break_stale_lock(lock)
            if time.monotonic() > deadline:
                raise LockTimeoutError(
                    f"{self!r}: {lock!r} has been taken for {LOCK_WAIT_SECONDS} s; if no "
                    "other writer is running, delete it"
                )
            time.sleep(0.05)
        try:
            current = self.get(key) if self.has(key) else None
            if current != expected:
                return False
            change()
            return True
        finally:
            self.delete(lock)

    def _break_stale_lock(self, lock: str) -> None:
        """Delete ``lock`` if its writer died (older than the lease, or garbage:
        an empty or torn lock is as good as dead). Breaking is itself
        exclusive (a ``.break`` lock object), and the lock is read again under
        it, so a slow breaker never deletes a lock taken fresh meanwhile."""
        held = self._lock_age(lock)
        if held is None or held <= LOCK_LEASE_SECONDS:
            return
        breaker = f"{lock}.break"
        if not self.put_if_absent(breaker, str(time.time()).encode()):
            age = self._lock_age(breaker)  # a breaker that died holding it
            if age is not None and age > LOCK_LEASE_SECONDS:
                with contextlib.suppress(CoralError):
                    self.delete(breaker)
            return
        try:
            again = self._lock_age(lock)
            if again is not None and again > LOCK_LEASE_SECONDS:
                self.delete(lock)
        finally:
            with contextlib.suppress(CoralError):
                self.delete(breaker)

    def _lock_age(self, lock: str) -> float | None:
        """Seconds since a lock object was taken; infinity for garbage; None if absent."""
        try:
            taken = self.get(lock)
        except CoralError:
            return None
        try:
            return time.time() - float(taken)
        except ValueError:
            return float("inf")

    @contextmanager
    def write_batch(self) -> Iterator[WriteBatch]:
        """Group many ``put_if_absent`` calls (from any thread) into one durable step.

        Objects written through the batch may stay invisible until the block
        ends; then all of them are durable before any of them is visible, at
        the cost of one flush instead of one per object. If the block raises,
        what was not yet visible is discarded.
        """
        batch = self._new_batch()
        try:
            yield batch
        except BaseException:
            batch.abort()
            raise
        batch.finish()

    def _new_batch(self) -> WriteBatch:
        """The batch :meth:`write_batch` uses; the default writes through at once."""
        return WriteBatch(self)

    def is_packed(self, key: str) -> bool:
        """Whether ``key`` lies in a pack, where deleting it takes effect only
        at :meth:`reclaim` (gc orders its deletions by that)."""
        return False

    def prefetch(self, keys: Iterable[str]) -> None:  # noqa: B027 (a no-op hook)
        """Read ``keys`` ahead where one request can bring many (packs in a
        bucket); a transfer calls it before it reads them one by one."""

    def refresh(self) -> None:  # noqa: B027 (a no-op hook for stores that cache a listing)
        """Look again at what other processes stored; a writer calls it once it
        holds the lock that keeps gc out."""

    def consolidate(self) -> int:
        """Move objects stored one by one (and small packs) into packs, where the
        store packs; how many objects moved. ``repack`` calls it, and
        ``gc --remote`` on a remote."""
        return 0

    def reclaim(self) -> None:  # noqa: B027 (a no-op hook; gc calls it after deleting)
        """Give back the space of deleted objects where deleting alone does not (HDF5)."""

    def close(self) -> None:  # noqa: B027 (a no-op hook for backends that hold resources)
        """Release resources; the default holds none."""

    def _check_writable(self, key: str) -> None:
        validate_key(key)
        if self.read_only:
            raise ReadOnlyStoreError(f"{self!r} is read-only; cannot write {key!r}")

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WriteBatch:
    """Writes of one :meth:`WeightStore.write_batch` block; this one writes through."""

    #: :meth:`barrier` orders the writes inside one batch; where it does not,
    #: what must be visible first goes in a batch of its own.
    ordered: bool = True

    def __init__(self, store: WeightStore) -> None:
        self.store = store

    def barrier(self) -> None:
        """Everything written so far becomes visible and durable before anything
        written after (chunks before the descriptors naming them). Writing
        through, it already is."""

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Store ``data`` unless ``key`` exists or is already in this batch;
        return True when it will be written."""
        return self.store.put_if_absent(key, data)

    def finish(self) -> None:
        """Make every write of the batch durable, then visible."""

    def abort(self) -> None:
        """Discard the writes not yet visible."""


def slice_range(data: bytes, byte_range: tuple[int, int] | None) -> bytes:
    """Apply a ``(start, end)`` byte range to ``data`` (shared by simple backends)."""
    if byte_range is None:
        return data
    start, end = byte_range
    if start < 0 or end < start:
        raise ValueError(f"invalid byte range {byte_range!r}")
    return data[start:end]
