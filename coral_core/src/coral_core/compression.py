"""zstd frames of a known size, decoded without trusting a damaged size."""

from __future__ import annotations

import zstandard

from coral_core.errors import CorruptObjectError


def decompress_exact(frame: bytes | memoryview, size: int) -> bytes:
    """Decompress one zstd frame that must hold exactly ``size`` bytes.

    Coral writes every frame with its content size, so the frame's declared
    size is compared with ``size`` before anything is allocated: damage to
    either one is reported, never answered with a terabyte allocation.

    Raises:
        CorruptObjectError: when the frame is damaged or holds another size.
    """
    try:
        declared = zstandard.frame_content_size(frame)
        if declared != size:
            raise CorruptObjectError(f"zstd frame declares {declared} bytes, expected {size}")
        raw = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    except (zstandard.ZstdError, OverflowError) as exc:
        raise CorruptObjectError(f"zstd frame does not decompress: {exc}") from None
    if len(raw) != size:
        raise CorruptObjectError(f"zstd frame holds {len(raw)} bytes, expected {size}")
    return raw
