"""The bytes of a pack and of its index, shared by folder and bucket packs.

A pack is ``PACK_MAGIC`` followed by records, each the key's length and the
object's size (``<HQ``), the key, then the object (which keeps its own header
and checksum). An index is ``INDEX_MAGIC``, a count, then per object its key's
length, offset and size (``<HQQ``) and the key, sorted by key, and an xxh3
checksum of all that. A pack describes itself, so a damaged index is rebuilt
from its pack's records. The layout is the same in a folder and in a bucket
(``packs/pack-<id>.pack`` beside ``packs/pack-<id>.idx``), so either can be
copied to the other as files.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import xxhash

from coral_core.errors import CorruptObjectError

#: The folder (key prefix) of the packs, beside the loose objects.
PACKS = "packs"
#: The file listing the packed copies gc deleted that are still in their packs.
HIDDEN = "hidden"
#: A pack is closed and another begun once it holds this many bytes.
PACK_SIZE = 64 * 1024 * 1024
PACK_MAGIC = b"CRLP\x01\x00\x00\x00"
_INDEX_MAGIC = b"CRLI\x01\x00\x00\x00"
_RECORD = struct.Struct("<HQ")  # key length, object size (the key and object follow)
_ENTRY = struct.Struct("<HQQ")  # key length, offset, size (the key follows)
_COUNT = struct.Struct("<Q")
_CHECKSUM = struct.Struct("<Q")

Entries = dict[str, tuple[int, int]]  # key -> (offset, size) in its pack


def byte_view(data: bytes | memoryview) -> memoryview:
    """``data`` as flat bytes (a memoryview of floats counts its items, not bytes)."""
    view = memoryview(data)
    if not view.contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def record_head(key: str, size: int) -> bytes:
    """What a pack holds before an object of ``size`` bytes stored as ``key``."""
    name = key.encode()
    return _RECORD.pack(len(name), size) + name


def encode_index(entries: Entries) -> bytes:
    """An index: ``{key: (offset, size)}`` of a pack, with a checksum at the end."""
    parts = [_INDEX_MAGIC, _COUNT.pack(len(entries))]
    for key, (offset, size) in sorted(entries.items()):
        name = key.encode()
        parts += [_ENTRY.pack(len(name), offset, size), name]
    body = b"".join(parts)
    return body + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))


def decode_index(data: bytes, where: object) -> Entries:
    """Inverse of :func:`encode_index`; ``where`` names the index in messages.

    Raises:
        CorruptObjectError: when the index is damaged.
    """
    body, trailer = data[: -_CHECKSUM.size], data[-_CHECKSUM.size :]
    if (
        len(data) < len(_INDEX_MAGIC) + _COUNT.size + _CHECKSUM.size
        or not body.startswith(_INDEX_MAGIC)
        or _CHECKSUM.unpack(trailer)[0] != xxhash.xxh3_64_intdigest(body)
    ):
        raise CorruptObjectError(f"pack index {where} is damaged")
    (count,) = _COUNT.unpack_from(body, len(_INDEX_MAGIC))
    entries: Entries = {}
    at = len(_INDEX_MAGIC) + _COUNT.size
    try:
        for _ in range(count):
            length, offset, size = _ENTRY.unpack_from(body, at)
            at += _ENTRY.size
            entries[body[at : at + length].decode()] = (offset, size)
            at += length
    except (struct.error, UnicodeDecodeError):
        raise CorruptObjectError(f"pack index {where} is damaged") from None
    return entries


def scan_pack(handle: BinaryIO, where: object) -> Entries:
    """The index of a pack, read from its records (to rebuild a damaged index):
    those up to the first record that is cut short.

    Raises:
        CorruptObjectError: when the file is not a pack.
    """
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    handle.seek(0)
    if handle.read(len(PACK_MAGIC)) != PACK_MAGIC:
        raise CorruptObjectError(f"{where} is not a pack")
    entries: Entries = {}
    at = len(PACK_MAGIC)
    while at < end:  # the records before a damaged or cut one are kept
        head = handle.read(_RECORD.size)
        if len(head) < _RECORD.size:
            break
        length, size = _RECORD.unpack(head)
        key = handle.read(length).decode(errors="replace")
        at += _RECORD.size + length
        if at + size > end:
            break
        entries[key] = (at, size)
        at += size
        handle.seek(at)
    return entries


def hidden_lines(hidden: set[tuple[str, str]]) -> bytes:
    """The ``hidden`` file: one ``<index name> <key>`` line per hidden copy."""
    return "".join(sorted(f"{index} {key}\n" for index, key in hidden)).encode()


def parse_hidden(text: bytes) -> set[tuple[str, str]]:
    """Inverse of :func:`hidden_lines` (lines that do not parse are skipped)."""
    pairs = set()
    for line in text.decode("ascii", errors="replace").splitlines():
        index, _, key = line.partition(" ")
        if index and key:
            pairs.add((index, key))
    return pairs
