"""Per-thread reusable buffers for the codecs' intermediate arrays.

A fresh multi-MiB array costs a page fault per 4 KiB page the first time it
is written, which is slower than the arithmetic done on it; codecs that
work chunk by chunk therefore take their temporaries from here. Each thread
keeps at most a few chunk-sized buffers, so memory stays bounded by chunk
size x threads; larger requests get fresh memory and are not kept.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

#: Requests above this size get fresh memory that is not kept.
MAX_KEPT = 16 << 20

_local = threading.local()


def scratch(slot: int, count: int, dtype: np.dtype[Any] | type) -> np.ndarray:
    """A 1-d array of ``count`` items of ``dtype`` from this thread's buffer ``slot``.

    The contents are undefined. Two live arrays must use different slots; an
    array is valid until the same thread asks for its slot again.
    """
    dtype = np.dtype(dtype)
    nbytes = count * dtype.itemsize
    if nbytes > MAX_KEPT:
        return np.empty(count, dtype)
    buffers: dict[int, np.ndarray] = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = buffers[slot] = np.empty(max(nbytes, 1 << 20), np.uint8)
    return buffer[:nbytes].view(dtype)
