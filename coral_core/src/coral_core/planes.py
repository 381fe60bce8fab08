"""Byte-plane compression of tensor bytes (the idea behind ZipNN), bitwise lossless.

Float bytes look random to a general compressor, but their exponents are not:
most weights share a handful of exponents. Rotating each float left by one bit
moves the sign to the lowest bit, so the exponent of float32 and bfloat16
fills the top byte exactly. Splitting the elements into byte planes (all top
bytes, then all next bytes, ...) then hands zstd one very compressible plane
and a few noisy ones; a plane that does not shrink is kept raw. The same
transform makes XOR deltas compress well: bits that did not change become
zero bytes in the upper planes.

Layout: ``itemsize u8 | rotated u8 | per plane: mode u8 (0 raw, 1 zstd) | size u64 | bytes``.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from coral_core.compression import decompress_exact
from coral_core.errors import CorruptObjectError

_HEAD = struct.Struct("<BB")
_PLANE = struct.Struct("<BQ")
_RAW, _ZSTD = 0, 1
_MIN_SAVING = 0.97


def _uint(itemsize: int) -> np.dtype[np.unsignedinteger]:
    return np.dtype(f"<u{itemsize}")


def rotate_left(words: np.ndarray) -> np.ndarray:
    """Rotate each unsigned word left by one bit (sign bit to the bottom)."""
    bits = words.dtype.itemsize * 8
    return (words << 1) | (words >> (bits - 1))


def rotate_right(words: np.ndarray) -> np.ndarray:
    """Undo :func:`rotate_left`."""
    bits = words.dtype.itemsize * 8
    return (words >> 1) | (words << (bits - 1))


def split_planes(data: bytes | memoryview, itemsize: int, rotate: bool) -> np.ndarray:
    """Bytes of ``n`` little-endian items -> (itemsize, n) planes, most significant first."""
    words = np.frombuffer(data, dtype=_uint(itemsize))
    if rotate and itemsize > 1:
        words = rotate_left(words)
    planes = words.view(np.uint8).reshape(-1, itemsize).T[::-1]
    return np.ascontiguousarray(planes)


def join_planes(planes: np.ndarray, rotate: bool) -> bytes:
    """Inverse of :func:`split_planes`."""
    itemsize, count = planes.shape
    interleaved = np.empty((count, itemsize), dtype=np.uint8)
    for index in range(itemsize):  # column by column: ~3x faster than a transposed copy
        interleaved[:, itemsize - 1 - index] = planes[index]
    words = interleaved.view(_uint(itemsize)).reshape(-1)
    if rotate and itemsize > 1:
        words = rotate_right(words)
    return words.tobytes()


def encode_planes(
    data: bytes | memoryview, itemsize: int, level: int = 1, rotate: bool = True
) -> bytes:
    """Compress ``data`` (a whole number of ``itemsize``-byte items) plane by plane."""
    data = memoryview(data).cast("B")  # a numpy buffer's len() counts items, not bytes
    if len(data) % itemsize:
        raise ValueError(f"{len(data)} bytes are not a whole number of {itemsize}-byte items")
    compressor = zstandard.ZstdCompressor(level=level)
    parts = [_HEAD.pack(itemsize, rotate)]
    for plane in split_planes(data, itemsize, rotate):
        raw = plane.data
        packed = compressor.compress(raw)
        if len(packed) < _MIN_SAVING * len(raw):
            parts += [_PLANE.pack(_ZSTD, len(packed)), packed]
        else:
            parts += [_PLANE.pack(_RAW, len(raw)), bytes(raw)]
    return b"".join(parts)


def decode_planes(payload: bytes | memoryview, raw_size: int) -> bytes:
    """Inverse of :func:`encode_planes`; ``raw_size`` is the original byte count.

    Raises:
        CorruptObjectError: when the payload is malformed.
    """
    view = memoryview(payload)
    try:
        itemsize, rotate = _HEAD.unpack_from(view)
        if itemsize == 0 or raw_size % itemsize:
            raise ValueError(f"bad item size {itemsize} for {raw_size} bytes")
        count = raw_size // itemsize
        stored = []
        offset = _HEAD.size
        for _ in range(itemsize):  # every plane must hold ``count`` bytes: check, then allocate
            mode, size = _PLANE.unpack_from(view, offset)
            offset += _PLANE.size
            chunk = view[offset : offset + size]
            offset += size
            if mode == _RAW and len(chunk) != count:
                raise ValueError(f"a raw plane of {len(chunk)} bytes, expected {count}")
            if mode not in (_RAW, _ZSTD):
                raise ValueError(f"unknown plane mode {mode}")
            stored.append((mode, chunk))
        if offset != len(view):
            raise ValueError("trailing bytes after the last plane")
        planes = np.empty((itemsize, count), dtype=np.uint8)
        for index, (mode, chunk) in enumerate(stored):
            plane = decompress_exact(chunk, count) if mode == _ZSTD else chunk
            planes[index] = np.frombuffer(plane, dtype=np.uint8)
    except (struct.error, ValueError, CorruptObjectError) as exc:
        raise CorruptObjectError(f"byte-plane payload is malformed: {exc}") from None
    return join_planes(planes, bool(rotate))
