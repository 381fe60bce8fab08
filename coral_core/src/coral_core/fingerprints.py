"""The fingerprint log: which stored tensors look alike, known without reading them.

``.coral/fingerprints`` holds one line per stored float tensor big enough to be
worth a delta: ``<tensor id> <dtype> <shape> <simhash>``. It feeds the LSH
index of :class:`~coral_core.similarity.Deduplicator`, so a tensor with no
namesake in the parent commit (a renamed layer, another model) can still be
stored as a delta against a similar tensor anywhere in the repository.

It is a cache, never a source of truth: lines are appended after tensors are
written, a torn line is skipped, a line whose tensor ``gc`` deleted is ignored
when looked up, and ``repack`` rewrites it from the tensor descriptors (which
carry the fingerprint too).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coral_core.dtypes import FLOAT_DTYPES
from coral_core.errors import DiskError
from coral_core.files import append_lines, write_file_atomic
from coral_core.hashing import is_object_id

#: Smaller tensors are not worth looking for a reference (and cost little stored whole).
MIN_FINGERPRINT_ELEMENTS = 4096

_log = logging.getLogger("coral.fingerprints")


def worth_fingerprint(dtype: str, size: int) -> bool:
    """Whether a tensor of this dtype and element count gets a fingerprint."""
    return dtype in FLOAT_DTYPES and size >= MIN_FINGERPRINT_ELEMENTS


@dataclass(frozen=True)
class Fingerprint:
    """A stored tensor's SimHash, with what groups it (dtype and shape)."""

    tensor_id: str
    dtype: str
    shape: tuple[int, ...]
    simhash: int

    def to_line(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{self.tensor_id} {self.dtype} {shape} {self.simhash:016x}"

    @classmethod
    def from_line(cls, line: str) -> Fingerprint | None:
        """Parse one line; None for a torn or foreign one."""
        parts = line.split()
        if len(parts) != 4 or not is_object_id(parts[0]) or parts[1] not in FLOAT_DTYPES:
            return None
        try:
            shape = tuple(int(d) for d in parts[2].split("x")) if parts[2] else ()
            simhash = int(parts[3], 16)
        except ValueError:
            return None
        if len(parts[3]) != 16 or any(d < 0 for d in shape):
            return None
        return cls(parts[0], parts[1], shape, simhash)


class FingerprintLog:
    """Append-only, shared by every process writing to the repository.

    :meth:`read_new` returns only the lines added since its last call, so a
    long-lived :class:`~coral_core.Repository` keeps its index current cheaply.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None  # repack replaces the file: start over then
        self._lock = threading.Lock()

    def append(self, prints: Sequence[Fingerprint]) -> None:
        """Record fingerprints of newly stored tensors (no fsync: it is a cache)."""
        if not prints:
            return
        try:
            append_lines(self.path, [p.to_line() for p in prints], fsync=False)
        except DiskError as exc:  # a cache: the commit stands without these lines
            _log.warning("fingerprints of %d tensors not recorded: %s", len(prints), exc)

    def read_new(self) -> list[Fingerprint]:
        """Complete lines appended since the last call (all of them the first time)."""
        with self._lock:
            try:
                with open(self.path, "rb") as handle:
                    inode = os.fstat(handle.fileno()).st_ino
                    if inode != self._inode:
                        self._inode, self._offset = inode, 0
                    handle.seek(self._offset)
                    data = handle.read()
            except FileNotFoundError:
                return []
            end = data.rfind(b"\n") + 1  # a line still being written waits for next time
            self._offset += end
        return _parse(data[:end])

    def restart(self) -> None:
        """Make the next :meth:`read_new` return every line again."""
        with self._lock:
            self._inode, self._offset = None, 0

    def read_all(self) -> list[Fingerprint]:
        """Every complete line."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return _parse(data)

    def rewrite(self, prints: Sequence[Fingerprint]) -> None:
        """Replace the whole log (``repack`` does, from the tensor descriptors)."""
        text = "".join(f"{p.to_line()}\n" for p in prints)
        write_file_atomic(self.path, text.encode(), fsync=False)


def _parse(data: bytes) -> list[Fingerprint]:
    lines = data.decode(errors="replace").splitlines()
    return [p for p in map(Fingerprint.from_line, lines) if p is not None]
