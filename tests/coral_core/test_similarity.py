"""SimHash, LSH and the Deduplicator: near-duplicates found without scanning everything."""

from __future__ import annotations

import numpy as np
import pytest

from coral_core import MissingObjectError, WeightTensor
from coral_core.similarity import Deduplicator, LSHIndex, simhash


def tensor(
    seed: int, shape: tuple[int, ...] = (128, 64), noise: float = 0.0, base: int = 0
) -> WeightTensor:
    rng = np.random.default_rng(base)
    data = rng.standard_normal(shape)
    if noise:
        data = data + np.random.default_rng(seed).standard_normal(shape) * noise
    return WeightTensor(data.astype(np.float32), name=f"t{seed}")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def test_simhash_distance_tracks_similarity() -> None:
    base = tensor(0)
    close = tensor(1, noise=0.05)
    far = tensor(0, base=99)
    assert hamming(simhash(base), simhash(close)) < hamming(simhash(base), simhash(far))
    assert hamming(simhash(base), simhash(base)) == 0


def test_lsh_finds_near_duplicates_among_many() -> None:
    index = LSHIndex()
    for seed in range(200):
        index.add(f"k{seed}", simhash(tensor(0, base=1000 + seed)))
    index.add("target", simhash(tensor(0)))
    candidates = index.candidates(simhash(tensor(7, noise=0.02)))
    assert "target" in candidates
    assert len(candidates) < 50  # sub-linear: most unrelated tensors are never looked at


def test_deduplicator_exact_similar_and_unrelated() -> None:
    dedup = Deduplicator(similarity_threshold=0.98)
    base = tensor(0)
    first, info = dedup.add_weight(base, "layer.weight")
    assert info is None
    again, info = dedup.add_weight(tensor(0), "copy.weight")
    assert (again, info) == (first, None)
    tuned = tensor(3, noise=0.01)
    tuned_id, info = dedup.add_weight(tuned, "tuned.weight")
    assert tuned_id == tuned.compute_hash()
    assert info is not None
    assert info["is_delta"]
    assert info["reference_hash"] == first
    assert info["similarity"] > 0.98
    assert 0 < info["compression_ratio"] < 1
    decoded = dedup.encoder.decode_delta(info["delta"], base)
    assert np.array_equal(decoded.data.view(np.uint32), tuned.data.view(np.uint32))
    _, info = dedup.add_weight(tensor(0, base=5), "other.weight")
    assert info is None
    _, info = dedup.add_weight(tensor(0, shape=(64, 128)), "transposed")
    assert info is None  # other shape: never a reference
    stats = dedup.get_statistics()
    assert stats["total_weights"] == 5
    assert stats["duplicate_weights"] == 1
    assert stats["delta_encoded_weights"] == 1
    assert stats["bytes_saved"] > base.nbytes


def test_deduplicate_a_model_in_batches_and_loader() -> None:
    stored = {t.compute_hash(): t for t in (tensor(0), tensor(0, base=1))}
    dedup = Deduplicator(batch_size=1, loader=stored.__getitem__)
    for weight in stored.values():
        dedup.index(weight, keep_data=False)
    results = dedup.deduplicate({"a": tensor(1, noise=0.01), "b": tensor(2, noise=0.01, base=1)})
    assert results["a"][1]["reference_hash"] == tensor(0).compute_hash()  # type: ignore[index]
    assert results["b"][1]["reference_hash"] == tensor(0, base=1).compute_hash()  # type: ignore[index]
    with pytest.raises(ValueError, match="batch_size"):
        Deduplicator(batch_size=0)


def test_index_by_fingerprint_alone_checks_only_the_nearest_candidates() -> None:
    near = [tensor(seed, noise=0.002 * seed) for seed in range(1, 9)]  # all in one bucket
    stored = {t.compute_hash(): t for t in near}
    loads: list[str] = []

    def load(key: str) -> WeightTensor:
        loads.append(key)
        if key == near[0].compute_hash():
            raise MissingObjectError("deleted by gc")
        return stored[key]

    dedup = Deduplicator(loader=load, max_candidates=3)
    for weight in near:
        dedup.add_fingerprint(weight.compute_hash(), "float32", weight.shape, simhash(weight))
    match = dedup.find_similar(tensor(0))
    assert match is not None
    assert match[0] == near[1].compute_hash()
    assert len(loads) == 3
    assert dedup.get_statistics()["candidates_checked"] == 2  # the missing one is skipped
    with pytest.raises(ValueError, match="loader"):
        Deduplicator().add_fingerprint("a" * 32, "float32", (1,), 0)
