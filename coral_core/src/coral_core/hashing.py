"""Content ids: xxh3-128 over a kind prefix and the bytes, as 32 hex digits."""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

ID_LENGTH = 32
_HEX = frozenset("0123456789abcdef")


def tensor_hasher(dtype: str, shape: Sequence[int]) -> xxhash.xxh3_128:
    """Start the content id of a tensor: dtype and shape first, then its bytes.

    Equal bytes with another dtype or shape give another id.
    """
    hasher = xxhash.xxh3_128()
    hasher.update(f"coral-tensor\0{dtype}\0{','.join(map(str, shape))}\0".encode())
    return hasher


def chunk_id(data: bytes | memoryview) -> str:
    """Id of a chunk of raw tensor bytes."""
    hasher = xxhash.xxh3_128(b"coral-chunk\0")
    hasher.update(data)
    return hasher.hexdigest()


def document_id(kind: str, payload: bytes) -> str:
    """Id of a JSON document object (tree, commit, tag, tensor descriptor)."""
    hasher = xxhash.xxh3_128(f"coral-{kind}\0".encode())
    hasher.update(payload)
    return hasher.hexdigest()


def is_object_id(text: str) -> bool:
    """True when ``text`` is a full object id (32 lowercase hex digits)."""
    return len(text) == ID_LENGTH and set(text) <= _HEX


def is_id_prefix(text: str) -> bool:
    """True when ``text`` could abbreviate an object id (4 to 32 hex digits)."""
    return 4 <= len(text) <= ID_LENGTH and set(text) <= _HEX
