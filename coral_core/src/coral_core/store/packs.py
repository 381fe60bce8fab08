"""Pack files: the objects of one commit in a few files, found through an index.

A commit writes one object per chunk, one per tensor descriptor, a tree and
a commit: for a model of many small tensors, hundreds of files, each costing
an open, a block of disk and (on a remote) a request. As git, restic and
kopia do, :class:`PackedStore` writes the objects of one write batch into
*packs*: ``packs/pack-<id>.pack`` holds the objects one after the other
(up to :data:`PACK_SIZE` each; a bigger batch makes several), and
``packs/pack-<id>.idx`` says where each is. Objects written outside a batch,
and every object of a repository made before packs, stay loose files and are
read as before; ``repack`` packs them.

A pack is immutable and describes itself: each record is the key, the size
and the object (which keeps its own header and checksum), so a damaged
index is rebuilt from its pack, and the index carries a checksum of its own.
A pack becomes visible when its index is renamed into place, after both are
durable; a crash leaves the whole pack or nothing that counts (a pack
without an index is a leftover, which ``gc`` removes). Deleting a packed
object (``gc``) hides it at once in this process; :meth:`PackedStore.reclaim`,
which ``gc`` calls when it is done, writes the packs that lost objects again
without them. A crash before that leaves only garbage the next ``gc`` finds.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coral_core.errors import CorruptObjectError, MissingObjectError
from coral_core.files import TEMP_PREFIX, disk_errors, flush_paths, write_file_atomic
from coral_core.store.base import WriteBatch
from coral_core.store.local import LocalStore
from coral_core.store.pack_format import (
    HIDDEN,
    PACK_MAGIC,
    PACK_SIZE,
    PACKS,
    Entries,
    byte_view,
    decode_index,
    encode_index,
    hidden_lines,
    parse_hidden,
    record_head,
    scan_pack,
)

#: Nanoseconds a folder's time may lag behind its last change (file times tick
#: coarsely: a few milliseconds on local file systems).
_COARSE_CLOCK = 100_000_000


@dataclass(frozen=True)
class PackedObject:
    """Where an object lies: its pack file, the offset of its bytes, their count."""

    pack: Path
    offset: int
    size: int


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class _PackWriter:
    """One pack being written: a hidden temporary file, records appended."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.name = f"pack-{uuid.uuid4().hex}"
        self.tmp = folder / f"{TEMP_PREFIX}{os.getpid()}-{self.name}.pack"
        self.tmp_index = folder / f"{TEMP_PREFIX}{os.getpid()}-{self.name}.idx"
        self.handle = open(self.tmp, "xb")  # noqa: SIM115 (closed in close())
        self.handle.write(PACK_MAGIC)
        self.size = len(PACK_MAGIC)
        self.entries: Entries = {}

    def append(self, key: str, data: bytes | memoryview) -> None:
        data = byte_view(data)
        head = record_head(key, len(data))
        self.handle.write(head)
        offset = self.size + len(head)
        self.handle.write(data)
        self.entries[key] = (offset, len(data))
        self.size = offset + len(data)

    def close(self) -> None:
        """Finish the pack file and write its index beside it (neither visible yet)."""
        self.handle.close()
        with open(self.tmp_index, "xb") as index:
            index.write(encode_index(self.entries))

    def publish(self, folder: Path) -> Path:
        """Rename the pack, then its index, into place; returns the index."""
        os.replace(self.tmp, folder / f"{self.name}.pack")
        index = folder / f"{self.name}.idx"
        os.replace(self.tmp_index, index)
        return index

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        for path in (self.tmp, self.tmp_index):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class PackWriteBatch(WriteBatch):
    """A write batch whose objects go into packs; visible at :meth:`finish`,
    all at once, after one flush."""

    store: PackedStore

    def __init__(self, store: PackedStore) -> None:
        super().__init__(store)
        self._lock = threading.Lock()
        self._packs: list[_PackWriter] = []
        self._claimed: set[str] = set()

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self.store._check_writable(key)
        self.store._confined(key)
        if self.store.packed_name(key) is None:  # a ref beside the objects: a file
            return self.store.put_if_absent(key, data)
        return not self.store.has(key) and self.append(key, data)

    def barrier(self) -> None:
        """Nothing to do: a pack's objects become visible together, chunks
        with the descriptors naming them."""

    def append(self, key: str, data: bytes | memoryview) -> bool:
        """Put ``key`` (one the store packs) into the batch's pack, even if
        stored elsewhere (a pack being written again); False when the batch
        has it already."""
        name = self.store.packed_name(key)
        assert name is not None, key
        with self._lock:
            if name in self._claimed:
                return False
            self._claimed.add(name)
            with disk_errors(f"write a pack in {self.store.packs}"):
                if not self._packs or self._packs[-1].size >= PACK_SIZE:
                    self._packs.append(_PackWriter(self.store.packs))
                self._packs[-1].append(name, data)
        return True

    def finish(self) -> None:
        try:
            if self._packs:
                with disk_errors(f"write a pack in {self.store.packs}"):
                    for pack in self._packs:
                        pack.close()
                    if self.store.fsync:
                        flush_paths(self.store.root, (p.tmp for p in self._packs))
                    indexes = [pack.publish(self.store.packs) for pack in self._packs]
                    if self.store.fsync:
                        flush_paths(self.store.root, iter([self.store.packs]))
                self.store._loaded(indexes)
        finally:
            self.abort()

    def abort(self) -> None:
        for pack in self._packs:
            pack.discard()
        self._packs.clear()
        self._claimed.clear()


class PackedStore(LocalStore):
    """:class:`LocalStore` whose write batches go into packs (see the module).

    Args:
        root: the folder; created on first write.
        read_only: refuse every write.
        fsync: flush each pack and loose object to disk before it becomes visible.
        area: the key prefix of the objects that may be packed (``""``: all, as
            in ``.coral/objects``; ``"objects/"`` for a repository folder seen
            as a remote, whose refs stay files). The packs are in
            ``<root>/<area>packs``, and name objects relative to the area, so a
            repository and its folder seen as a remote share them.
    """

    packs_objects = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        read_only: bool = False,
        fsync: bool = True,
        area: str = "",
    ) -> None:
        super().__init__(root, read_only, fsync)
        self.area = area
        self.packs = self.root / area / PACKS
        self._guard = threading.RLock()
        self._indexes: dict[Path, Entries] = {}  # index file -> entries
        self._where: dict[str, list[Path]] = {}  # key -> the indexes listing a copy
        self._deleted: set[tuple[Path, str]] = set()  # (index, key) hidden until reclaim
        self._damaged: set[Path] = set()  # indexes rebuilt from their packs: never rewritten
        self._stamp: int | None = None  # the folder's time at the last listing
        self._listed = 0  # when that listing began (ns)

    # -- the indexes ------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        """Read the indexes other processes added and forget those they removed.

        Unless ``force``, a glance at the folder's time first: unchanged since
        the last listing, which came :data:`_COARSE_CLOCK` or more after that
        time, means nothing changed (file times tick coarsely, so a change
        just after a listing can carry the time of the one before).
        """
        listed = time.time_ns()
        try:
            stamp: int | None = os.stat(self.packs).st_mtime_ns
        except FileNotFoundError:
            stamp = None
        with self._guard:
            settled = stamp is None or self._listed - stamp > _COARSE_CLOCK
            if stamp == self._stamp and settled and not force:
                return
            self._stamp, self._listed = stamp, listed
            present = set(self.packs.glob("pack-*.idx")) if stamp is not None else set()
            gone = set(self._indexes) - present
            for index in gone:
                del self._indexes[index]
            self._read_indexes(present - set(self._indexes))
            if gone:
                self._forget_gone()
            self._read_hidden()

    def refresh(self) -> None:
        """Look at the packs again now. A writer calls this once it holds the
        gc lock (shared): no ``gc`` can then delete or rewrite a pack, so what
        it finds stored stays stored while it writes what names it."""
        self._refresh(force=True)

    def _loaded(self, indexes: Iterable[Path]) -> None:
        """Take in the indexes this process just published."""
        with self._guard:
            self._read_indexes(indexes)

    def _read_indexes(self, indexes: Iterable[Path]) -> None:
        for index in indexes:
            try:
                entries = decode_index(index.read_bytes(), index)
            except FileNotFoundError:
                continue  # reclaimed meanwhile
            except CorruptObjectError:
                entries = self._rebuilt_index(index)
                self._damaged.add(index)
            self._indexes[index] = entries
            for key in entries:
                self._where.setdefault(key, []).append(index)

    def _rebuilt_index(self, index: Path) -> Entries:
        """The entries of a damaged index, from its pack (none if that is damaged too)."""
        try:
            with open(index.with_suffix(".pack"), "rb") as handle:
                return scan_pack(handle, index.with_suffix(".pack"))
        except (OSError, CorruptObjectError):
            return {}

    def packed_name(self, key: str) -> str | None:
        """The name a pack gives ``key`` (it without the area), or None for a
        key that is never packed."""
        if not key.startswith(self.area):
            return None
        name = key[len(self.area) :]
        return None if name.startswith(f"{PACKS}/") else name

    def locate(self, key: str, force: bool = False) -> PackedObject | None:
        """Where a packed object lies (None: not packed, or deleted); with
        ``force``, the folder is listed again before saying None."""
        found = self._find(key)
        if found is None:
            self._refresh(force)
            found = self._find(key)
        return found

    def is_packed(self, key: str) -> bool:
        return self.locate(key) is not None

    def _find(self, key: str) -> PackedObject | None:
        name = self.packed_name(key)
        if name is None:
            return None
        with self._guard:
            for index in self._where.get(name, ()):
                if (index, name) not in self._deleted:
                    offset, size = self._indexes[index][name]
                    return PackedObject(index.with_suffix(".pack"), offset, size)
        return None

    def _read_hidden(self) -> None:
        """Take in the packed copies a ``gc`` hid durably (caller holds the guard)."""
        try:
            text = (self.packs / HIDDEN).read_bytes()
        except FileNotFoundError:
            return
        by_name = {index.name: index for index in self._indexes}
        for index_name, name in parse_hidden(text):
            index = by_name.get(index_name)
            if index is not None and name in self._indexes[index]:
                self._deleted.add((index, name))

    def _write_hidden(self) -> None:
        """Make the hidden copies durable, at once (caller holds the guard): from
        then on no process sees them, whatever happens to the packs after."""
        lines = hidden_lines({(i.name, name) for i, name in self._deleted if i in self._indexes})
        if lines or (self.packs / HIDDEN).exists():
            write_file_atomic(self.packs / HIDDEN, lines, fsync=self.fsync)

    def _forget_gone(self) -> None:
        """Rebuild the lookups after indexes left ``_indexes`` (caller holds the guard)."""
        where: dict[str, list[Path]] = {}
        for index, entries in self._indexes.items():
            for name in entries:
                where.setdefault(name, []).append(index)
        self._where = where
        self._deleted = {(i, k) for i, k in self._deleted if i in self._indexes}

    def _read_packed(self, key: str, read: Callable[[PackedObject], memoryview]) -> memoryview:
        """``read(where)`` of a packed object, looking again if its pack went
        away meanwhile (another process's ``reclaim``).

        Raises:
            MissingObjectError: when the object is in no pack and no file.
        """
        for _ in range(2):
            found = self.locate(key, force=True)
            if found is None:
                break
            try:
                return read(found)
            except FileNotFoundError:
                self._refresh(force=True)
        if super().has(key):  # moved out of its pack meanwhile (another process's repack)
            return memoryview(super().get(key))
        raise MissingObjectError(f"object {key!r} is not in {self.root}")

    # -- the store's surface --------------------------------------------------------------

    def _new_batch(self) -> WriteBatch:
        return PackWriteBatch(self)

    def has(self, key: str) -> bool:
        return self._find(key) is not None or super().has(key) or self.locate(key) is not None

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        if self._find(key) is None:
            with contextlib.suppress(MissingObjectError):
                return super().get(key, byte_range)

        def read(where: PackedObject) -> memoryview:
            start, end = 0, where.size
            if byte_range is not None:
                if byte_range[0] < 0 or byte_range[1] < byte_range[0]:
                    raise ValueError(f"invalid byte range {byte_range!r}")
                start, end = min(byte_range[0], where.size), min(byte_range[1], where.size)
            with disk_errors(f"read {where.pack}"), open(where.pack, "rb") as handle:
                handle.seek(where.offset + start)
                return memoryview(handle.read(end - start))

        return bytes(self._read_packed(key, read))

    def read_into(self, key: str, allocate: Callable[[int], np.ndarray]) -> memoryview:
        if self._find(key) is None:
            with contextlib.suppress(MissingObjectError):
                return super().read_into(key, allocate)

        def read(where: PackedObject) -> memoryview:
            view = allocate(where.size).data.cast("B")[: where.size]
            with disk_errors(f"read {where.pack}"):
                fd = os.open(where.pack, os.O_RDONLY)
            try:
                done = 0
                while done < where.size:
                    count = os.preadv(fd, [view[done:]], where.offset + done)
                    if count == 0:
                        raise CorruptObjectError(f"pack {where.pack} is truncated")
                    done += count
            finally:
                os.close(fd)
            return view

        return self._read_packed(key, read)

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` as a loose file, hiding a packed copy (``repack``
        writing an object in another form); :meth:`reclaim` drops that copy."""
        super().put(key, data)
        self.delete_packed(key)

    def delete_packed(self, key: str) -> bool:
        """Hide the packed copy of ``key`` until :meth:`reclaim`; False when none."""
        name = self.packed_name(key)
        if name is None:
            return False
        with self._guard:  # every copy: two writers may have packed the same object
            copies = {(i, name) for i in self._where.get(name, ())} - self._deleted
            self._deleted |= copies
        return bool(copies)

    def size(self, key: str) -> int:
        found = self.locate(key)
        if found is not None:
            return found.size
        try:
            return super().size(key)
        except MissingObjectError:
            found = self.locate(key, force=True)  # packed a moment ago by another process
            if found is None:
                raise
            return found.size

    def delete(self, key: str) -> bool:
        self._check_writable(key)
        loose = super().delete(key)
        return self.delete_packed(key) or loose

    def list(self, prefix: str = "") -> Iterator[str]:
        seen = set()
        packs = f"{self.area}{PACKS}/"
        for key in super().list(prefix):
            if not key.startswith(packs):
                seen.add(key)
                yield key
        self._refresh()
        with self._guard:
            hidden = self._deleted
            packed = [n for n, at in self._where.items() if any((i, n) not in hidden for i in at)]
        for name in packed:
            key = self.area + name
            if key.startswith(prefix) and key not in seen:
                yield key

    def temp_files(self) -> Iterator[Path]:
        """Leftovers of interrupted writes: temporary files, and packs whose
        index never made it into place."""
        yield from super().temp_files()
        if self.packs.is_dir():
            for pack in self.packs.glob("pack-*.pack"):
                if not pack.with_suffix(".idx").exists():
                    yield pack

    def reclaim(self) -> None:
        """Give back the space of what :meth:`delete` hid: first the hidden copies
        are recorded durably (``packs/hidden``), so a crash from here on shows
        none of them again; then each pack that is at least half hidden is
        written again without them (the old pack goes once the new one is in
        place). The rest stay hidden until a later ``gc`` or ``repack``."""
        if self.read_only:
            return
        with self._guard:  # one reclaim at a time, and no delete while it runs
            if not self._deleted:
                return
            self._write_hidden()  # first, durably: all of a gc's packed garbage out of sight
            by_index: dict[Path, set[str]] = {}
            for index, name in self._deleted:
                by_index.setdefault(index, set()).add(name)
            for index, gone in by_index.items():
                entries = self._indexes.get(index, {})
                hidden = sum(entries[name][1] for name in gone if name in entries)
                total = sum(size for _, size in entries.values())
                # a rebuilt index may lack records: such a pack is kept whole
                if index not in self._damaged and hidden * 2 >= total:
                    self._rewrite(index, gone)
            self._write_hidden()  # without the copies that left with their packs

    def _rewrite(self, index: Path, gone: set[str]) -> None:
        self._merge([index], {(index, name) for name in gone}, [])

    def consolidate(self, small: int = PACK_SIZE // 2) -> int:
        """Write the loose objects (a repository from before packs, objects
        written one by one) and the packs smaller than ``small`` bytes (one a
        commit, after a long run) into as few packs as they fill; returns how
        many objects moved. The old files go once the new packs are in place."""
        self.refresh()
        with self._guard:
            small_packs = [
                index
                for index in self._indexes
                if _size(index.with_suffix(".pack")) < small and index not in self._damaged
            ]
            hidden = set(self._deleted)
        loose = [key for key in super().list(self.area) if self.packed_name(key) is not None]
        moved = self._merge(small_packs, hidden, loose)
        for key in loose:
            super().delete(key)
        with self._guard:
            self._write_hidden()
        return moved

    def _merge(
        self, indexes: Sequence[Path], hidden: set[tuple[Path, str]], loose: Sequence[str]
    ) -> int:
        """Write the objects of the packs ``indexes`` (but the ``hidden`` ones) and
        the ``loose`` ones into new packs, then remove those packs: first from
        sight, then their bytes. Returns how many objects the new packs hold."""
        with self._guard:
            sources = [(index, dict(self._indexes.get(index, {}))) for index in indexes]
        batch = PackWriteBatch(self)
        moved = 0
        with disk_errors(f"write packs in {self.packs}"):
            for index, entries in sources:
                with open(index.with_suffix(".pack"), "rb") as source:
                    for name, (offset, size) in sorted(entries.items(), key=lambda item: item[1]):
                        if (index, name) not in hidden:
                            source.seek(offset)
                            moved += batch.append(self.area + name, source.read(size))
            for key in loose:
                with contextlib.suppress(MissingObjectError):
                    moved += batch.append(key, super().get(key))
            batch.finish()
            for index in indexes:
                index.unlink(missing_ok=True)
                index.with_suffix(".pack").unlink(missing_ok=True)
        with self._guard:
            for index in indexes:
                self._indexes.pop(index, None)
            self._forget_gone()
        return moved

    def __repr__(self) -> str:
        return f"PackedStore({str(self.root)!r})"
