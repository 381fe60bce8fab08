"""Packs in a bucket: a push of one checkpoint is two uploads, not one per object.

A remote that is not a folder (an S3 bucket, any key -> bytes store) keeps
what a write batch sends in packs, laid out and encoded as a folder's are
(:mod:`coral_core.store.pack_format`): ``packs/pack-<id>.pack``, then
``packs/pack-<id>.idx``. A pack counts once its index is there, and the index
goes up only after the pack, so a push cut off leaves a pack nobody sees
(``gc --remote`` removes it). Objects from before packs stay loose keys and
are read as before. The first pack sent to a remote without loose objects
comes with the marker ``packs/packed``: every object is in a pack, so a lookup
answers from the indexes alone, with no request per object.

Indexes are immutable, named uniquely and checksummed; given a cache folder,
each is kept there and read from the remote once. A lookup lists ``packs/``
once, at its first use (a push does so under its lock, so no gc changes the
packs meanwhile); a pack that a gc removed since is looked for again.

Deleting a packed object (``gc --remote``) hides it; :meth:`BucketPacks.reclaim`
records the hidden copies in ``packs/hidden`` and writes the packs that are
at least half hidden again without them. gc holds the remote's exclusive
lock while it does, so no push is between its pack and its index.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from coral_core.errors import CoralError, CorruptObjectError, InvalidKeyError, MissingObjectError
from coral_core.files import write_file_atomic
from coral_core.store.base import WeightStore, WriteBatch, slice_range, validate_key
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

#: The marker of a remote whose every object is in a pack.
PACKED_ONLY = f"{PACKS}/packed"
_HIDDEN = f"{PACKS}/{HIDDEN}"
#: The names of packs and their indexes (a listing's other names are not trusted).
_PACK_NAME = re.compile(rf"{PACKS}/(pack-[0-9a-f]{{32}})\.(pack|idx)")
#: The most bytes :meth:`BucketPacks.prefetch` holds for reads to come.
PREFETCH_BYTES = 256 * 1024 * 1024
#: Objects of one pack this close together are read in one request, with
#: what lies between them.
_GAP = 1024 * 1024


@dataclass(frozen=True)
class _Packed:
    """Where an object lies: the key of its pack, its offset and size there."""

    pack: str
    offset: int
    size: int


class BucketPackBatch(WriteBatch):
    """Objects appended to a pack in memory; a full pack goes up at once, the
    last at :meth:`finish` (each visible when its index follows it)."""

    store: BucketPacks

    def __init__(self, store: BucketPacks) -> None:
        super().__init__(store)
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        self._buffer = bytearray(PACK_MAGIC)
        self._entries: Entries = {}

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self.store._check_object_key(key)
        return not self.store.has(key) and self.append(key, data)

    def append(self, key: str, data: bytes | memoryview) -> bool:
        """Put ``key`` into the batch's pack, even if stored elsewhere; False when
        the batch has it already. A full pack is sent before this returns, so
        whatever a caller writes after it names only what is visible."""
        data = byte_view(data)
        with self._lock:
            if key in self._claimed:
                return False
            self._claimed.add(key)
            self._buffer += record_head(key, len(data))
            self._entries[key] = (len(self._buffer), len(data))
            self._buffer += data
            full = self._take() if len(self._buffer) >= self.store.pack_size else None
        if full is not None:
            self.store._publish(*full)
        return True

    def _take(self) -> tuple[bytearray, Entries]:
        taken = self._buffer, self._entries
        self._buffer, self._entries = bytearray(PACK_MAGIC), {}
        return taken

    def finish(self) -> None:
        with self._lock:
            last = self._take() if self._entries else None
        if last is not None:
            self.store._publish(*last)

    def abort(self) -> None:
        with self._lock:
            self._take()
            self._claimed.clear()


class BucketPacks(WeightStore):
    """The objects of ``inner`` (a remote's ``objects/``), written in packs (see the module).

    Args:
        inner: the store the packs and any loose objects are in.
        cache: a folder that keeps the indexes read, so each is fetched once.
        pack_size: a pack is sent once it holds this many bytes.
    """

    packs_objects = True

    def __init__(
        self, inner: WeightStore, cache: Path | None = None, pack_size: int = PACK_SIZE
    ) -> None:
        self.inner = inner
        self.read_only = inner.read_only
        self.cache = cache
        self.pack_size = pack_size
        self._guard = threading.RLock()
        self._single = threading.Lock()  # one put_if_absent outside a batch at a time
        self._indexes: dict[str, Entries] = {}  # index key -> entries
        self._where: dict[str, list[str]] = {}  # object key -> the indexes listing a copy
        self._deleted: set[tuple[str, str]] = set()  # (index key, object key) hidden
        self._damaged: set[str] = set()  # indexes rebuilt from their packs: never rewritten
        self._orphans: set[str] = set()  # packs without an index
        self._prefetched: dict[str, memoryview] = {}  # read ahead, until read whole
        self._held = 0  # their bytes
        self._listed = False
        self._packed_only = False
        self._loose_seen = False

    # -- the indexes ------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        with self._guard:
            if self._listed and not force:
                return
            names = set(self.inner.list(f"{PACKS}/"))
            found = {m.group(1): m.group(2) for m in map(_PACK_NAME.fullmatch, names) if m}
            indexes = {f"{PACKS}/{n}.idx" for n in found if f"{PACKS}/{n}.idx" in names}
            packs = {f"{PACKS}/{n}.pack" for n in found if f"{PACKS}/{n}.pack" in names}
            self._orphans = {p for p in packs if p.removesuffix(".pack") + ".idx" not in indexes}
            for index in set(self._indexes) - indexes:
                del self._indexes[index]
            for index in sorted(indexes - set(self._indexes)):
                self._indexes[index] = self._read_index(index)
            self._forget_gone()
            self._packed_only = PACKED_ONLY in names
            if not self._packed_only and not self._indexes and not self._loose_seen:
                self._loose_seen = any(not k.startswith(f"{PACKS}/") for k in self.inner.list(""))
                self._packed_only = not self._loose_seen  # empty: its marker comes with a pack
            if _HIDDEN in names:
                self._read_hidden()
            self._listed = True

    def _forget_gone(self) -> None:
        """Rebuild the lookups from ``_indexes`` after indexes left or came
        (caller holds the guard)."""
        self._where = {}
        for index, entries in self._indexes.items():
            for key in entries:
                self._where.setdefault(key, []).append(index)
        self._deleted = {(i, k) for i, k in self._deleted if i in self._indexes}

    def refresh(self) -> None:
        """List the packs again now (a writer calls it once it holds the remote's lock)."""
        self._refresh(force=True)

    def _read_index(self, index: str) -> Entries:
        """An index, from the cache when it is there; a damaged one rebuilt from its pack."""
        cached = self.cache / index.removeprefix(f"{PACKS}/") if self.cache else None
        if cached is not None:
            with contextlib.suppress(OSError, CorruptObjectError):
                return decode_index(cached.read_bytes(), cached)
        try:
            data = self.inner.get(index)
            entries = decode_index(data, f"{index} of {self.inner!r}")
        except MissingObjectError:
            return {}  # removed by a gc since the listing
        except CorruptObjectError:
            self._damaged.add(index)
            return self._rebuilt_index(index)
        self._keep(index, data)
        return entries

    def _keep(self, index: str, data: bytes) -> None:
        if self.cache is not None:
            with contextlib.suppress(CoralError, OSError):  # a cache that cannot be written
                self.cache.mkdir(parents=True, exist_ok=True)
                write_file_atomic(self.cache / index.removeprefix(f"{PACKS}/"), data, fsync=False)

    def _rebuilt_index(self, index: str) -> Entries:
        """The entries of a damaged index, from its pack: none when that is
        damaged too, or bigger than a writer makes one (it is read whole)."""
        pack = index.removesuffix(".idx") + ".pack"
        try:
            if self.inner.size(pack) > 2 * PACK_SIZE:
                return {}
            return scan_pack(io.BytesIO(self.inner.get(pack)), index)
        except (MissingObjectError, CorruptObjectError):
            return {}

    def _read_hidden(self) -> None:
        try:
            text = self.inner.get(_HIDDEN)
        except MissingObjectError:
            return
        for name, key in parse_hidden(text):
            index = f"{PACKS}/{name}"
            if key in self._indexes.get(index, {}):
                self._deleted.add((index, key))

    def _write_hidden(self) -> None:
        with self._guard:
            hidden = {(i.removeprefix(f"{PACKS}/"), k) for i, k in self._deleted}
        if hidden or self.inner.has(_HIDDEN):
            self.inner.put(_HIDDEN, hidden_lines(hidden))

    def _find(self, key: str) -> _Packed | None:
        self._refresh()
        with self._guard:
            for index in self._where.get(key, ()):
                if (index, key) not in self._deleted:
                    offset, size = self._indexes[index][key]
                    return _Packed(index.removesuffix(".idx") + ".pack", offset, size)
        return None

    def _check_object_key(self, key: str) -> None:
        self._check_writable(key)
        if key.startswith(f"{PACKS}/"):
            raise InvalidKeyError(f"{key!r} is a name of the packs, not of an object")

    # -- writing packs -----------------------------------------------------------------

    def _publish(self, pack: bytearray, entries: Entries) -> None:
        """Send a pack, then its index: the objects visible from then on."""
        self._refresh()
        with self._guard:
            if self._packed_only and not self._indexes:  # a remote that was empty
                self._mark_packed_only()
        name = f"{PACKS}/pack-{uuid.uuid4().hex}"
        self.inner.put(f"{name}.pack", memoryview(pack))
        index = encode_index(entries)
        self.inner.put(f"{name}.idx", index)
        self._keep(f"{name}.idx", index)
        with self._guard:
            self._indexes[f"{name}.idx"] = entries
            for key in entries:
                self._where.setdefault(key, []).insert(0, f"{name}.idx")  # the newest copy first

    def _mark_packed_only(self) -> None:
        """Write the marker, from now on (the first pack of a remote that was
        empty, or a gc that packed every loose object)."""
        self.inner.put(PACKED_ONLY, b"every object of this remote is in a pack\n")
        self._packed_only = True

    # -- the store's surface -------------------------------------------------------------

    def _new_batch(self) -> WriteBatch:
        return BucketPackBatch(self)

    def prefetch(self, keys: Iterable[str]) -> None:
        """Read the packed objects of ``keys`` ahead, one request for each run of
        neighbours in a pack, holding at most :data:`PREFETCH_BYTES`; each is
        held until read whole (a transfer reads a chunk's head, then all of it)."""
        with self._guard:
            room = PREFETCH_BYTES - self._held
            wanted = [key for key in dict.fromkeys(keys) if key not in self._prefetched]
        by_pack: dict[str, list[tuple[int, int, str]]] = {}
        for key in wanted:
            found = self._find(key)
            if found is not None and 0 < found.size <= room:
                room -= found.size
                by_pack.setdefault(found.pack, []).append((found.offset, found.size, key))
        for pack, items in by_pack.items():
            for run in _runs(sorted(items)):
                start, end = run[0][0], run[-1][0] + run[-1][1]
                try:
                    data = memoryview(self.inner.get(pack, (start, end)))
                except MissingObjectError:
                    continue  # rewritten meanwhile: read one by one
                with self._guard:
                    for offset, size, key in run:
                        piece = data[offset - start : offset - start + size]
                        if len(piece) == size and key not in self._prefetched:
                            self._prefetched[key] = piece
                            self._held += size

    def _take_prefetched(self, key: str, byte_range: tuple[int, int] | None) -> bytes | None:
        with self._guard:
            held = self._prefetched.get(key)
            if held is None:
                return None
            if byte_range is None:
                del self._prefetched[key]
                self._held -= len(held)
                return bytes(held)
        return slice_range(bytes(held[: byte_range[1]]), byte_range)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        validate_key(key)
        held = self._take_prefetched(key, byte_range)
        if held is not None:
            return held
        for _ in range(2):
            found = self._find(key)
            if found is None:
                break
            start, end = 0, found.size
            if byte_range is not None:
                if byte_range[0] < 0 or byte_range[1] < byte_range[0]:
                    raise ValueError(f"invalid byte range {byte_range!r}")
                start, end = min(byte_range[0], found.size), min(byte_range[1], found.size)
            if start == end:
                return b""
            with contextlib.suppress(MissingObjectError):  # its pack was rewritten meanwhile
                return self.inner.get(found.pack, (found.offset + start, found.offset + end))
            self.refresh()
        if self._packed_only:
            raise MissingObjectError(f"object {key!r} is not in {self.inner!r}")
        return self.inner.get(key, byte_range)

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` in a pack of its own; the copies there were are hidden here."""
        self._check_object_key(key)
        self._refresh()
        with self._guard:
            old = {(index, key) for index in self._where.get(key, ())}
        batch = BucketPackBatch(self)
        batch.append(key, data)
        batch.finish()
        with self._guard:
            self._deleted |= old

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """A pack of its own, unless ``key`` is there (in this process: one winner)."""
        with self._single, self.write_batch() as batch:
            return batch.put_if_absent(key, data)

    def has(self, key: str) -> bool:
        validate_key(key)
        return self._find(key) is not None or (not self._packed_only and self.inner.has(key))

    def is_packed(self, key: str) -> bool:
        return self._find(key) is not None

    def size(self, key: str) -> int:
        found = self._find(validate_key(key))
        if found is not None:
            return found.size
        if self._packed_only:
            raise MissingObjectError(f"object {key!r} is not in {self.inner!r}")
        return self.inner.size(key)

    def delete(self, key: str) -> bool:
        """Hide every packed copy of ``key`` until :meth:`reclaim`, and remove a loose one."""
        self._check_writable(key)
        self._refresh()
        with self._guard:
            copies = {(index, key) for index in self._where.get(key, ())} - self._deleted
            self._deleted |= copies
        loose = not self._packed_only and self.inner.delete(key)
        return bool(copies) or loose

    def list(self, prefix: str = "") -> Iterator[str]:
        self._refresh()
        seen = set()
        if not self._packed_only:
            for key in self.inner.list(prefix):
                if not key.startswith(f"{PACKS}/"):
                    seen.add(key)
                    yield key
        with self._guard:
            packed = [
                key
                for key, where in self._where.items()
                if key.startswith(prefix) and any((i, key) not in self._deleted for i in where)
            ]
        for key in packed:
            with contextlib.suppress(InvalidKeyError):  # a name a hostile index made up
                if validate_key(key) not in seen:
                    yield key

    def reclaim(self) -> None:
        """Give back the space of what :meth:`delete` hid (under the remote's gc lock):
        the hidden copies recorded in ``packs/hidden`` first, then each pack at
        least half hidden written again without them; packs left without an
        index by a push cut off are removed."""
        if self.read_only:
            return
        with self._guard:
            self._refresh()
            if self._deleted:
                self._write_hidden()  # first: all of a gc's packed garbage out of sight
                by_index: dict[str, set[str]] = {}
                for index, key in self._deleted:
                    by_index.setdefault(index, set()).add(key)
                for index, gone in by_index.items():
                    entries = self._indexes.get(index, {})
                    hidden = sum(entries[key][1] for key in gone if key in entries)
                    if index not in self._damaged and hidden * 2 >= sum(
                        size for _, size in entries.values()
                    ):
                        self._rewrite(index, gone)
                self._write_hidden()  # without the copies that left with their packs
            for pack in sorted(self._orphans):
                self.inner.delete(pack)
            self._orphans.clear()

    def _rewrite(self, index: str, gone: set[str]) -> None:
        self._merge([index], {(index, key) for key in gone}, [])

    def consolidate(self, small: int = PACK_SIZE // 2) -> int:
        """Write the loose objects (a bucket from before packs) and the packs
        holding less than ``small`` bytes (a push each) into as few packs as
        they fill; the old keys go once the new packs are up, and then a
        bucket of packs only gets its marker. Under the remote's gc lock.
        Returns how many objects moved."""
        if self.read_only:
            return 0
        with self._guard:
            self._refresh()
            small_packs = [
                index
                for index, entries in self._indexes.items()
                if index not in self._damaged and sum(s for _, s in entries.values()) < small
            ]
            if len(small_packs) < 2:
                small_packs = []  # one small pack merged with nothing gains nothing
            loose: Sequence[str] = []
            if not self._packed_only:
                loose = [k for k in self.inner.list("") if not k.startswith(f"{PACKS}/")]
            moved = self._merge(small_packs, set(self._deleted), loose)
            for key in loose:
                self.inner.delete(key)
            if not self._packed_only:  # only now: every object is in a pack
                self._mark_packed_only()
            self._write_hidden()
        return moved

    def _merge(
        self, indexes: Sequence[str], hidden: set[tuple[str, str]], loose: Sequence[str]
    ) -> int:
        """Write the objects of the packs ``indexes`` (but the ``hidden`` ones) and
        the ``loose`` ones (unless packed already) into new packs, then remove
        those packs, the index first. Returns how many objects the new packs hold."""
        batch = BucketPackBatch(self)
        moved = 0
        for index in indexes:
            data = self.inner.get(index.removesuffix(".idx") + ".pack")
            for key, (offset, size) in sorted(self._indexes[index].items(), key=lambda kv: kv[1]):
                if (index, key) not in hidden:
                    moved += batch.append(key, data[offset : offset + size])
        for key in loose:
            if all(i in indexes for i in self._where.get(key, ())):  # not in a pack that stays
                with contextlib.suppress(MissingObjectError):
                    moved += batch.append(key, self.inner.get(key))
        batch.finish()
        for index in indexes:
            self.inner.delete(index)
            self.inner.delete(index.removesuffix(".idx") + ".pack")
            del self._indexes[index]
        self._forget_gone()
        return moved

    def close(self) -> None:
        self.inner.close()
        with self._guard:
            self._prefetched.clear()
            self._held = 0

    def __repr__(self) -> str:
        return f"BucketPacks({self.inner!r})"


def _runs(items: list[tuple[int, int, str]]) -> Iterator[list[tuple[int, int, str]]]:
    """``(offset, size, key)`` sorted by offset, in runs read with one request each:
    neighbours at most :data:`_GAP` apart, a run at most :data:`PACK_SIZE` long."""
    run: list[tuple[int, int, str]] = []
    for item in items:
        if run and (item[0] - (run[-1][0] + run[-1][1]) > _GAP or item[0] - run[0][0] > PACK_SIZE):
            yield run
            run = []
        run.append(item)
    if run:
        yield run
