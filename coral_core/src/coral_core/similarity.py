"""Finding a good delta reference: exact ids, then SimHash + LSH for near-duplicates.

A tensor's SimHash is the sign pattern of its projections on 64 fixed random
directions (over a fixed sample of its positions, so large tensors cost the
same as small ones). Similar tensors (high cosine similarity) share most bits.
The LSH index cuts the 64 bits into bands; tensors that agree on a whole band
land in the same bucket, so a lookup inspects a few candidates instead of every
stored tensor, and only those get an exact cosine check.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from coral_core.delta import Delta, DeltaConfig, DeltaEncoder, cosine_similarity, kind_name
from coral_core.errors import CoralError
from coral_core.tensor import WeightTensor, as_weight

FINGERPRINT_BITS = 64
_SAMPLE = 4096  # positions projected per tensor
_BANDS = 8
_BAND_BITS = FINGERPRINT_BITS // _BANDS


def _group_key(weight: WeightTensor) -> tuple[str, tuple[int, ...]]:
    return weight.metadata.dtype_name, weight.shape


@lru_cache(maxsize=64)
def _sample_positions(size: int) -> np.ndarray:
    """The same positions for every tensor of one size (seeded by the size)."""
    if size <= _SAMPLE:
        return np.arange(size, dtype=np.int64)
    rng = np.random.default_rng(size)
    return np.sort(rng.choice(size, _SAMPLE, replace=False).astype(np.int64))


@lru_cache(maxsize=64)
def _directions(count: int) -> np.ndarray:
    """64 fixed random directions in ``count`` dimensions."""
    return np.random.default_rng(count).standard_normal((FINGERPRINT_BITS, count))


def simhash(weight: WeightTensor) -> int:
    """64-bit fingerprint; the Hamming distance of two estimates their angle."""
    flat = weight.data.reshape(-1)
    positions = _sample_positions(flat.size)
    with np.errstate(invalid="ignore"):  # signalling NaNs complain when widened
        sample = flat[positions].astype(np.float64)
    sample = np.nan_to_num(sample, nan=0.0, posinf=0.0, neginf=0.0)
    largest = np.abs(sample).max(initial=0.0)
    if largest > 0:
        sample /= largest  # signs of the projections do not change; huge values cannot overflow
    bits = (_directions(positions.size) @ sample) >= 0
    return int(np.packbits(bits).view(">u8")[0])


class LSHIndex:
    """Buckets fingerprints by band; ``candidates`` returns keys sharing any band."""

    def __init__(self) -> None:
        self._buckets: list[dict[int, list[str]]] = [defaultdict(list) for _ in range(_BANDS)]

    @staticmethod
    def _bands(fingerprint: int) -> list[int]:
        mask = (1 << _BAND_BITS) - 1
        return [(fingerprint >> (i * _BAND_BITS)) & mask for i in range(_BANDS)]

    def add(self, key: str, fingerprint: int) -> None:
        for band, value in enumerate(self._bands(fingerprint)):
            self._buckets[band][value].append(key)

    def candidates(self, fingerprint: int) -> list[str]:
        found: dict[str, None] = {}
        for band, value in enumerate(self._bands(fingerprint)):
            found.update(dict.fromkeys(self._buckets[band].get(value, ())))
        return list(found)


@dataclass
class DeduplicationStats:
    """Counts kept by a :class:`Deduplicator`."""

    total_weights: int = 0
    unique_weights: int = 0
    exact_duplicates: int = 0
    delta_encoded: int = 0
    bytes_seen: int = 0
    bytes_saved: int = 0
    candidates_checked: int = 0


@dataclass
class _Entry:
    weight: WeightTensor | None
    fingerprint: int
    names: list[str] = field(default_factory=list)


class DeduplicationResult(dict[str, tuple[str, dict[str, Any] | None]]):
    """What :meth:`Deduplicator.deduplicate` found: by name, ``(ref_hash,
    delta_info)`` as :meth:`Deduplicator.add_weight` returns them."""

    @property
    def deltas(self) -> dict[str, Delta]:
        """The deltas found, by the id of the tensor each encodes (the book's
        ``result.deltas``: store them with ``HDF5Store.store_delta``)."""
        return {key: info["delta"] for key, info in self.values() if info is not None}


class Deduplicator:
    """Finds, for each tensor added, an identical or similar one already seen.

    Args:
        similarity_threshold: cosine similarity a reference needs.
        enable_delta_encoding: encode similar tensors as deltas (lossless by default).
        batch_size: tensors per :meth:`deduplicate` batch (kept for the book's API).
        delta_config: strategy for the deltas.
        loader: loads a stored tensor by id, so the index need not keep data in memory.
        max_candidates: LSH candidates (nearest first) checked exactly per lookup.
    """

    def __init__(
        self,
        similarity_threshold: float = 0.98,
        enable_delta_encoding: bool = True,
        batch_size: int = 100,
        delta_config: DeltaConfig | None = None,
        loader: Callable[[str], WeightTensor] | None = None,
        max_candidates: int = 4,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        config = delta_config or DeltaConfig(similarity_threshold=similarity_threshold)
        self.encoder = DeltaEncoder(config)
        self.similarity_threshold = similarity_threshold
        self.enable_delta_encoding = enable_delta_encoding
        self.batch_size = batch_size
        self._loader = loader
        self.max_candidates = max_candidates
        self._entries: dict[str, _Entry] = {}
        self._index: dict[tuple[str, tuple[int, ...]], LSHIndex] = defaultdict(LSHIndex)
        self.stats = DeduplicationStats()

    def _data(self, key: str) -> WeightTensor:
        entry = self._entries[key]
        if entry.weight is not None:
            return entry.weight
        assert self._loader is not None
        return self._loader(key)

    def find_similar(self, weight: WeightTensor) -> tuple[str, float] | None:
        """The most similar indexed tensor of the same shape and dtype above the
        threshold, with its cosine similarity; None when there is none.

        Only the ``max_candidates`` LSH candidates nearest in Hamming distance
        get the exact cosine check; one the loader cannot read is skipped.
        """
        index = self._index.get(_group_key(weight))
        if index is None:
            return None
        fingerprint = simhash(weight)
        candidates = sorted(
            index.candidates(fingerprint),
            key=lambda key: (self._entries[key].fingerprint ^ fingerprint).bit_count(),
        )
        best: tuple[str, float] | None = None
        for key in candidates[: self.max_candidates]:
            try:
                data = self._data(key).data
            except CoralError:
                continue  # deleted by gc since it was indexed, or damaged
            self.stats.candidates_checked += 1
            similarity = cosine_similarity(weight.data, data)
            if similarity >= self.similarity_threshold and (best is None or similarity > best[1]):
                best = (key, similarity)
        return best

    def add_fingerprint(
        self, key: str, dtype: str, shape: tuple[int, ...], fingerprint: int
    ) -> None:
        """Index a stored tensor by its fingerprint alone; the loader reads it if
        it ever becomes a candidate."""
        if self._loader is None:
            raise ValueError("indexing by fingerprint alone needs a loader")
        if key not in self._entries:
            self._entries[key] = _Entry(None, fingerprint)
            self._index[(dtype, tuple(shape))].add(key, fingerprint)

    def index(self, weight: WeightTensor, name: str | None = None, keep_data: bool = True) -> str:
        """Add a tensor to the index without looking for a match; return its id."""
        key = weight.compute_hash()
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(weight if keep_data or self._loader is None else None, simhash(weight))
            self._entries[key] = entry
            self._index[_group_key(weight)].add(key, entry.fingerprint)
        entry.names.append(name or weight.name)
        return key

    def add_weight(self, weight: Any, name: str | None = None) -> tuple[str, dict[str, Any] | None]:
        """Register a tensor (a :class:`WeightTensor`, an array, or a framework's
        tensor such as those of a PyTorch ``state_dict()``); return ``(ref_hash,
        delta_info)``.

        ``ref_hash`` is the id the tensor is stored under: its own, or that of an
        identical tensor seen before. ``delta_info`` is set when a similar
        tensor was found: ``is_delta``, ``reference_hash``, ``similarity``,
        ``compression_ratio`` (fraction saved) and ``bytes_saved``.
        """
        weight = as_weight(weight, name or "")
        self.stats.total_weights += 1
        self.stats.bytes_seen += weight.nbytes
        key = weight.compute_hash()
        if key in self._entries:
            self.stats.exact_duplicates += 1
            self.stats.bytes_saved += weight.nbytes
            self._entries[key].names.append(name or weight.name)
            return key, None
        match = self.find_similar(weight) if self.enable_delta_encoding else None
        self.index(weight, name)
        self.stats.unique_weights += 1
        if match is None or not self.encoder.supports(weight.metadata.dtype_name):
            return key, None
        reference_key, similarity = match
        delta = self.encoder.encode_delta(weight, self._data(reference_key))
        saved = max(weight.nbytes - delta.nbytes, 0)
        self.stats.delta_encoded += 1
        self.stats.bytes_saved += saved
        return key, {
            "is_delta": True,
            "reference_hash": reference_key,
            "similarity": similarity,
            "delta_type": kind_name(delta.delta_type),
            "compression_ratio": delta.compression_ratio,
            "bytes_saved": saved,
            "delta": delta,
        }

    def deduplicate(self, weights: Mapping[str, Any]) -> DeduplicationResult:
        """``add_weight`` for every tensor of a model, in batches of ``batch_size``."""
        names = list(weights)
        results = DeduplicationResult()
        for start in range(0, len(names), self.batch_size):
            for name in names[start : start + self.batch_size]:
                results[name] = self.add_weight(weights[name], name)
        return results

    def get_statistics(self) -> dict[str, Any]:
        """Counts and savings so far, as a dict."""
        stats = self.stats
        return {
            "total_weights": stats.total_weights,
            "unique_weights": stats.unique_weights,
            "duplicate_weights": stats.exact_duplicates,
            "delta_encoded_weights": stats.delta_encoded,
            "bytes_seen": stats.bytes_seen,
            "bytes_saved": stats.bytes_saved,
            "candidates_checked": stats.candidates_checked,
            "compression_ratio": stats.bytes_saved / stats.bytes_seen if stats.bytes_seen else 0.0,
        }
