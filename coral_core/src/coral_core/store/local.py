"""The default store: one file per object under a folder (``.coral/objects``)."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from coral_core.errors import InvalidKeyError, MissingObjectError, ReadOnlyStoreError
from coral_core.files import (
    TEMP_PREFIX,
    disk_errors,
    flush_paths,
    fsync_dir,
    write_file_atomic,
    write_temp_file,
)
from coral_core.locks import file_lock
from coral_core.store.base import (
    KEY_SEGMENT,
    MAX_KEY_LENGTH,
    WeightStore,
    WriteBatch,
    validate_key,
)

#: The lock a folder's compare-and-swap takes (a repository's refs lock in ``.coral``).
REF_LOCK = "locks/refs.lock"
#: The readers-writer lock of storing objects and collecting them (``.coral``'s gc lock).
GC_LOCK = "locks/gc.lock"
#: The longest file name (one key segment) common local file systems accept.
MAX_FILE_NAME = 255
#: A valid key whose segments all fit in a file name (what validate_key and
#: the MAX_FILE_NAME check accept together).
_PLAIN_KEY = re.compile(
    r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}(?:/[A-Za-z0-9_-][A-Za-z0-9._-]{0,254})*"
)


class LocalWriteBatch(WriteBatch):
    """Temporary files now; at :meth:`finish` one flush, the renames, one more flush.

    Hundreds of objects of one commit cost two file-system flushes instead of
    two ``fsync`` calls each, and still none is visible before it is durable.
    """

    store: LocalStore

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store)
        self._lock = threading.Lock()
        self._pending: dict[str, Path | None] = {}  # key -> temporary file
        self._before: set[str] = set()  # keys made visible (and durable) before the rest

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self.store._check_writable(key)
        path = self.store._confined(key)
        with self._lock:
            if key in self._pending or path.is_file():
                return False
            self._pending[key] = None  # claimed: a second writer of the key skips it
        try:
            with disk_errors(f"write {path}"):
                tmp = write_temp_file(path.parent, data, fsync=False)
        except BaseException:
            with self._lock:
                del self._pending[key]
            raise
        with self._lock:
            self._pending[key] = tmp
        return True

    def barrier(self) -> None:
        """Everything written so far becomes visible and durable before anything
        written after (chunks before the descriptors naming them): one flush
        more at :meth:`finish`, one fewer than a second batch would cost."""
        with self._lock:
            self._before.update(self._pending)

    def _written(self) -> list[tuple[str, Path]]:
        with self._lock:
            return [(key, tmp) for key, tmp in self._pending.items() if tmp is not None]

    def finish(self) -> None:
        written = self._written()
        if not written:
            return
        try:
            with disk_errors(f"write objects into {self.store.root}"):
                self._finish(written)
        finally:
            self.abort()

    def _finish(self, written: list[tuple[str, Path]]) -> None:
        flush_paths(self.store.root, (tmp for _, tmp in written))
        first = [(key, tmp) for key, tmp in written if key in self._before]
        if first:
            self._publish(first)
        self._publish([(key, tmp) for key, tmp in written if key not in self._before])

    def _publish(self, written: list[tuple[str, Path]]) -> None:
        """Rename durable temporary files into place, then make the renames durable."""
        folders: dict[Path, None] = {}
        for key, tmp in written:  # in the order written: chunks before what names them
            path = self.store._path(key)
            with contextlib.suppress(FileExistsError):  # someone else stored it meanwhile
                os.link(tmp, path)
            folders[path.parent] = None
        flush_paths(self.store.root, iter(folders))

    def abort(self) -> None:
        for _, tmp in self._written():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with self._lock:
            self._pending.clear()
            self._before.clear()


class LocalStore(WeightStore):
    """Objects as files under ``root``; the key ``ab/cdef`` is the file ``root/ab/cdef``.

    Args:
        root: the folder; created on first write.
        read_only: refuse every write.
        fsync: flush each object to disk before it becomes visible.
    """

    def __init__(self, root: str | os.PathLike[str], read_only: bool = False, fsync: bool = True):
        self.root = Path(root)
        self.read_only = read_only
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        return Path(self._file(key))

    def _confined(self, key: str) -> Path:
        """The file of ``key``, refused if a symlink on the way leads it out of
        the folder (a remote's ``refs/heads`` linked elsewhere, say).

        Raises:
            InvalidKeyError: naming where it would have gone.
        """
        path = self._path(key)
        folder = os.path.realpath(path.parent)
        root = os.path.realpath(self.root)
        if folder != root and not folder.startswith(root + os.sep):
            raise InvalidKeyError(
                f"store key {key!r} leads out of {self.root} (to {folder}) through a symlink"
            )
        return path

    def _file(self, key: str) -> str:
        """The file of ``key`` as a string (cheaper than a Path on the hot paths)."""
        if len(key) > MAX_KEY_LENGTH or not _PLAIN_KEY.fullmatch(key):  # one match, usually
            validate_key(key)
            if any(len(segment) > MAX_FILE_NAME for segment in key.split("/")):
                raise InvalidKeyError(
                    f"store key {key!r} has a segment longer than {MAX_FILE_NAME} characters, "
                    "the longest file name a local file system takes"
                )
        return os.path.join(self.root, key)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        path = self._file(key)
        try:
            with disk_errors(f"read {path}"), open(path, "rb") as handle:
                if byte_range is None:
                    return handle.read()
                start, end = byte_range
                if start < 0 or end < start:
                    raise ValueError(f"invalid byte range {byte_range!r}")
                handle.seek(start)
                return handle.read(end - start)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingObjectError(f"object {key!r} is not in {self.root}") from None

    def read_into(self, key: str, allocate: Callable[[int], np.ndarray]) -> memoryview:
        """:meth:`get` into ``allocate(size)`` (a uint8 array of that many bytes,
        which a caller may reuse) instead of fresh memory; returns a view of it."""
        path = self._file(key)
        try:
            with disk_errors(f"read {path}"):
                fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingObjectError(f"object {key!r} is not in {self.root}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise MissingObjectError(f"object {key!r} is not in {self.root}")
            view = allocate(info.st_size).data.cast("B")
            done = 0
            while done < len(view):  # objects are immutable (replaced by rename, if ever)
                count = os.readv(fd, [view[done:]])
                if count == 0:
                    break
                done += count
        finally:
            os.close(fd)
        return view[:done]

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._check_writable(key)
        write_file_atomic(self._confined(key), data, fsync=self.fsync)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self._check_writable(key)
        path = self._confined(key)
        if path.exists():
            return False
        with disk_errors(f"write {path}"):
            return self._create(path, data)

    def _create(self, path: Path, data: bytes | memoryview) -> bool:
        tmp = write_temp_file(path.parent, data, self.fsync)
        try:
            try:
                os.link(tmp, path)  # atomic exclusive create
            except FileExistsError:
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if self.fsync:
            fsync_dir(path.parent)
        return True

    def has(self, key: str) -> bool:
        return os.path.isfile(self._file(key))

    def compare_and_swap(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Under the folder's ``locks/refs.lock`` (an ``flock``: the kernel drops
        it when its holder dies, so no lock is ever stale); for a repository's
        ``.coral``, the very lock its own commits take."""
        with self._ref_lock():
            if self._current(key) != expected:
                return False
            self.put(key, new)
            return True

    def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Under the same lock as :meth:`compare_and_swap`."""
        with self._ref_lock():
            if self._current(key) != expected:
                return False
            return self.delete(key)

    def _ref_lock(self) -> contextlib.AbstractContextManager[None]:
        if self.read_only:
            raise ReadOnlyStoreError(f"{self!r} is read-only")
        return file_lock(self.root / REF_LOCK)

    def _current(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except MissingObjectError:
            return None

    def _new_batch(self) -> WriteBatch:
        return LocalWriteBatch(self) if self.fsync else WriteBatch(self)

    def delete(self, key: str) -> bool:
        self._check_writable(key)
        path = self._confined(key)
        if not path.is_file():  # a folder of other keys, or a path below a key
            return False
        try:
            with disk_errors(f"delete {path}"):
                path.unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        folder, slash, partial = prefix.rpartition("/")
        complete = folder.split("/") if slash else []
        if not all(KEY_SEGMENT.fullmatch(s) for s in complete) or (
            partial and not KEY_SEGMENT.fullmatch(partial)
        ):
            return  # no valid key starts with this prefix (``../``, ``ab/.tmp``)
        start = self.root / folder if folder else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else rel + "/"
            for name in filenames:
                key = base + name
                if not name.startswith(".") and key.startswith(prefix):
                    yield key

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            if path.is_file():
                return path.stat().st_size
        except FileNotFoundError:
            pass
        raise MissingObjectError(f"object {key!r} is not in {self.root}")

    def temp_files(self) -> Iterator[Path]:
        """Leftover temporary files of interrupted writes."""
        if self.root.is_dir():
            yield from self.root.rglob(f"{TEMP_PREFIX}*")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalStore) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)
