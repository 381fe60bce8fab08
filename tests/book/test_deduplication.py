"""The book's deduplication and delta examples (01-readme.md "Advanced
Deduplication", 02-introduction.md "Similarity-Based Deduplication" and
"Perfect reconstruction", 04-storage.md "Delta Encoding Storage Workflow"),
run as written with ``from coral import`` as our package names."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from coral_core import (
    Deduplicator,
    DeltaConfig,
    Repository,
    WeightMetadata,
    WeightTensor,
    as_weight,
    bit_view,
)
from coral_core.delta import DeltaEncoder
from coral_core.store.hdf5 import HDF5Store


def test_a_state_dict_goes_through_add_weight() -> None:
    """01-readme.md: ``for name, weight in model.state_dict().items():
    ref_hash, delta_info = dedup.add_weight(weight, name)``."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 128)
    dedup = Deduplicator(similarity_threshold=0.98, enable_delta_encoding=True, batch_size=100)
    for name, weight in model.state_dict().items():
        dedup.add_weight(weight, name)
    with torch.no_grad():  # one small step: a fine-tuned copy
        model.weight.add_(torch.randn_like(model.weight) * 1e-4)
        model.bias.add_(torch.randn_like(model.bias) * 1e-4)
    total_savings = 0
    lines = []
    for name, weight in model.state_dict().items():
        ref_hash, delta_info = dedup.add_weight(weight, name)
        assert ref_hash == as_weight(weight).compute_hash()
        if delta_info:
            lines.append(f"{name}: {delta_info['compression_ratio']:.1%} compression")
            total_savings += delta_info["bytes_saved"]
    assert len(lines) == 2
    assert total_savings > 0
    bf16 = model.weight.detach().to(torch.bfloat16)
    bits = bf16.view(torch.int16).numpy().view(ml_dtypes.bfloat16)  # numpy has no bfloat16
    assert dedup.add_weight(bf16, "weight.bf16")[0] == WeightTensor(bits).compute_hash()


def test_print_delta_info_is_short() -> None:
    """02-introduction.md: ``print(delta_info)`` shows the delta's facts."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((512, 512)).astype(np.float32)
    dedup = Deduplicator(similarity_threshold=0.98, enable_delta_encoding=True, batch_size=100)
    dedup.add_weight(WeightTensor(base, name="fc.weight"), "fc.weight")
    fine_tuned_weight = WeightTensor(base + np.float32(1e-4), name="fc.weight")
    fine_tuned_hash, delta_info = dedup.add_weight(fine_tuned_weight, "fc.weight")
    assert fine_tuned_hash == fine_tuned_weight.compute_hash()
    assert delta_info is not None
    assert delta_info["is_delta"] is True
    printed = str(delta_info)
    assert "reference_hash" in printed
    assert "compression_ratio" in printed
    assert len(printed) < 1000  # not the delta's megabyte of bytes


def test_the_storage_workflow_of_deltas(tmp_path: Path) -> None:
    """04-storage.md: deduplicate, store the reference and ``result.deltas``,
    load back through ``reconstruct``."""
    rng = np.random.default_rng(1)
    data_a = rng.standard_normal((128, 64)).astype(np.float32)
    data_b = data_a + np.float32(1e-3) * rng.standard_normal((128, 64)).astype(np.float32)
    metadata_a = WeightMetadata(name="a", shape=data_a.shape, dtype=data_a.dtype)
    metadata_b = WeightMetadata(name="b", shape=data_b.shape, dtype=data_b.dtype)
    config = DeltaConfig()
    deduplicator = Deduplicator(
        similarity_threshold=0.98, delta_config=config, enable_delta_encoding=True
    )
    store = HDF5Store(tmp_path / "weights.h5")
    weight_a = WeightTensor(data_a, metadata_a)  # Reference weight
    weight_b = WeightTensor(data_b, metadata_b)  # 99% similar to weight_a
    result = deduplicator.deduplicate({"a": weight_a, "b": weight_b})
    store.store(weight_a)
    assert result.deltas
    for delta_hash, delta_obj in result.deltas.items():
        store.store_delta(delta_obj, delta_hash)
    delta_encoder = DeltaEncoder(config)

    def load_with_delta(hash_key: str) -> WeightTensor:
        if store.delta_exists(hash_key):
            delta = store.load_delta(hash_key)
            assert delta is not None
            reference = store.load(delta.reference_hash)
            assert reference is not None
            reconstructed = delta_encoder.reconstruct(delta, reference.data)
            return WeightTensor(data=reconstructed, metadata=metadata_b)
        loaded = store.load(hash_key)
        assert loaded is not None
        return loaded

    again = load_with_delta(weight_b.compute_hash())
    assert np.array_equal(bit_view(again.data), bit_view(data_b))
    assert np.array_equal(bit_view(load_with_delta(weight_a.compute_hash()).data), bit_view(data_a))
    store.close()


def test_a_loaded_weight_equals_the_array(tmp_path: Path) -> None:
    """02-introduction.md: ``assert np.array_equal(loaded, weight_v2)``."""
    repo = Repository(tmp_path, init=True)
    rng = np.random.default_rng(2)
    weight_v1 = rng.standard_normal(1000).astype(np.float32)
    weight_v2 = weight_v1 + np.float32(1e-4)
    repo.stage_weights({"layer1": weight_v1})
    repo.commit("Base model")
    repo.stage_weights({"layer1": weight_v2})  # Stored as delta
    repo.commit("After 1 epoch")
    loaded = repo.get_weight("layer1")  # Exactly equals weight_v2!
    assert np.array_equal(loaded, weight_v2)
    assert np.asarray(loaded).dtype == np.float32
