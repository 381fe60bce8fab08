"""Byte-plane compression of tensor bytes (the idea behind ZipNN), bitwise lossless.

Float bytes look random to a general compressor, but their exponents are not:
most weights share a handful of exponents. Splitting the items into byte
planes (all top bytes, then all next bytes, ...) hands zstd one very
compressible plane and a few noisy ones. The same transform makes XOR and
difference deltas compress well: bits that did not change become zero bytes
in the upper planes.

Blosc does the work: a SIMD byte shuffle, then zstd over the shuffled
block (Blosc 1 does not split zstd blocks into one stream per plane; zstd's
own blocks mostly fall within one plane) and the block kept as it is when it
does not shrink. It releases the GIL, so the codec pool runs one chunk per
core. A payload is one Blosc frame holding a whole chunk as a single block
(small blocks would cut the planes into pieces too short for zstd to find
their patterns).
"""

from __future__ import annotations

import struct

import blosc
import numpy as np

from coral_core.errors import CorruptObjectError

blosc.set_releasegil(True)
#: Blosc compresses blocks independently; one block per chunk up to this size.
BLOCK_SIZE = 4 << 20
#: The largest buffer one Blosc frame holds.
MAX_PLANES_SIZE = blosc.MAX_BUFFERSIZE
_FRAME_HEADER = 16
#: Blosc 1 frame header after its 4 flag bytes: raw size, block size, frame size.
_SIZES = struct.Struct("<III")
#: What Blosc raises on a damaged frame (its own ``blosc_extension.error`` among them).
_BLOSC_ERRORS = (ValueError, RuntimeError, blosc.blosc_extension.error)


def encode_planes(data: bytes | memoryview | np.ndarray, itemsize: int, level: int = 1) -> bytes:
    """Compress ``data`` (a whole number of ``itemsize``-byte items) plane by plane.

    ``level`` is the zstd effort, 1 (fastest) to 9; values outside are clamped.
    """
    if isinstance(data, np.ndarray):
        data = data.data
    data = memoryview(data).cast("B")  # a typed buffer's len() counts items, not bytes
    if len(data) % itemsize:
        raise ValueError(f"{len(data)} bytes are not a whole number of {itemsize}-byte items")
    if len(data) > MAX_PLANES_SIZE:
        raise ValueError(f"{len(data)} bytes exceed the {MAX_PLANES_SIZE}-byte limit of a frame")
    blosc.set_blocksize(BLOCK_SIZE)  # process-wide; set on every call in case it changed
    frame: bytes = blosc.compress(
        data,
        typesize=min(itemsize, blosc.MAX_TYPESIZE),
        clevel=max(1, min(9, level)),
        shuffle=blosc.SHUFFLE,
        cname="zstd",
    )
    return frame


def decode_planes(payload: bytes | memoryview, raw_size: int) -> bytes:
    """Inverse of :func:`encode_planes`; ``raw_size`` is the original byte count.

    Raises:
        CorruptObjectError: when the payload is malformed.
    """
    frame = _checked_frame(payload, raw_size)
    try:
        raw: bytes = blosc.decompress(bytes(frame))
    except _BLOSC_ERRORS as exc:
        raise CorruptObjectError(f"byte-plane payload does not decode: {exc}") from None
    return raw


def decode_planes_into(payload: bytes | memoryview, out: np.ndarray) -> None:
    """:func:`decode_planes` straight into ``out`` (writable, C-contiguous, of the
    original byte count), with no other copy.

    Raises:
        CorruptObjectError: when the payload is malformed.
    """
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("decode_planes_into needs a writable C-contiguous array")
    frame = _checked_frame(payload, out.nbytes)
    if out.nbytes == 0:
        return
    try:
        blosc.decompress_ptr(frame, out.ctypes.data)
    except _BLOSC_ERRORS as exc:
        raise CorruptObjectError(f"byte-plane payload does not decode: {exc}") from None


def _checked_frame(payload: bytes | memoryview, raw_size: int) -> memoryview:
    """The payload, once its header proves it a whole frame of ``raw_size`` bytes:
    nothing is decoded or allocated on the word of a damaged header. Read here
    (blosc.get_cbuffer_sizes takes only bytes, a copy of each payload, and
    blosc.cbuffer_validate would leak a reference)."""
    frame = memoryview(payload).cast("B")
    if len(frame) < _FRAME_HEADER:
        raise CorruptObjectError("byte-plane payload is malformed: not a whole Blosc frame")
    nbytes, _, cbytes = _SIZES.unpack_from(frame, 4)
    if nbytes != raw_size or cbytes != len(frame):
        raise CorruptObjectError(
            f"byte-plane payload is malformed: it holds {nbytes} bytes in {cbytes}, "
            f"expected {raw_size} bytes in {len(frame)}"
        )
    return frame
