"""Chunks stored as deltas against the parent commit: smaller, exact, bounded, gc-safe."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core import (
    CorruptObjectError,
    DeltaConfig,
    DeltaType,
    MemoryStore,
    Repository,
    WeightTensor,
    bit_view,
)
from coral_core.delta import encode_arrays
from coral_core.object_format import Codec
from coral_core.objects import ObjectDatabase
from coral_core.planes import encode_planes
from coral_core.testing.strategies import arrays

from .conftest import flip_bit

LOSSLESS = [t for t in DeltaType if t.is_lossless]


def exact(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bit_view(a), bit_view(b))


def training_run(steps: int, size: int = 8192, seed: int = 0) -> list[np.ndarray]:
    """Weights of a run: small updates on a fixed initialization."""
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal(size) * 0.05).astype(np.float32)]
    for _ in range(steps - 1):
        update = rng.standard_normal(size).astype(np.float32) * np.float32(2e-5)
        weights.append(weights[-1] + update)
    return weights


def stored_bytes(repo: Repository) -> int:
    return sum(f.stat().st_size for f in (repo.coral_dir / "objects").rglob("*") if f.is_file())


def chunk_codecs(objects: ObjectDatabase, tensor_id: str) -> list[tuple[Codec, int]]:
    """(codec, depth) of each chunk of a tensor."""
    found = []
    for chunk in objects.tensor_descriptor(tensor_id).chunks:
        codec, params = objects.chunk_params(chunk)
        found.append((codec, int(params.get("depth", 0))))
    return found


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(LOSSLESS),
    data=st.data(),
)
def test_chunks_round_trip_against_any_reference(kind: DeltaType, data: st.DataObject) -> None:
    current = data.draw(arrays(max_side=12))
    name = current.dtype.name if current.dtype.names is None else "x"
    reference = data.draw(
        arrays(dtype=WeightTensor(current, name=name).metadata.dtype_name, shape=current.shape)
    )
    objects = ObjectDatabase(
        MemoryStore(), chunk_size=1024, delta_config=DeltaConfig(delta_type=kind)
    )
    ref_id = objects.write_tensor(WeightTensor(reference)).tensor_id
    tensor_id = objects.write_tensor(WeightTensor(current), reference=ref_id).tensor_id
    assert exact(objects.read_tensor(tensor_id), current)


def test_fine_tuning_steps_are_stored_as_small_deltas(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    versions = training_run(6)
    sizes = []
    for i, weights in enumerate(versions):
        before = stored_bytes(repo)
        repo.commit(f"step {i}", weights={"w": weights})
        sizes.append(stored_bytes(repo) - before)
    assert max(sizes[1:]) < 0.8 * sizes[0]  # a step costs well under a standalone copy
    entry = repo.ls_tree()["w"]
    assert {codec for codec, _ in chunk_codecs(repo.objects, entry.tensor)} == {Codec.DELTA}
    for i, weights in enumerate(versions):
        assert exact(repo.get_weight("w", f"HEAD~{len(versions) - 1 - i}").data, weights)
    assert repo.verify().ok


@pytest.mark.parametrize("chain", [1, 3])
def test_delta_chains_are_bounded(tmp_path: Path, chain: int) -> None:
    repo = Repository(
        tmp_path, init=True, chunk_size=4096, delta_config=DeltaConfig(max_chain_length=chain)
    )
    for i, weights in enumerate(training_run(8)):
        repo.commit(f"step {i}", weights={"w": weights})
        depths = [depth for _, depth in chunk_codecs(repo.objects, repo.ls_tree()["w"].tensor)]
        assert max(depths) <= chain
    assert Repository(tmp_path).config.get("delta.max_chain_length") == chain


def test_gc_keeps_the_bases_of_deltas(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    base, tuned = training_run(2)
    base_id = repo.objects.write_tensor(WeightTensor(base)).tensor_id  # in no commit
    repo.objects.write_tensor(WeightTensor(tuned), reference=base_id)
    repo.commit("only the tuned tensor", weights={"w": tuned})
    result = repo.gc()
    assert result.removed_objects == 1  # the base's descriptor; its chunks are still needed
    assert exact(repo.get_weight("w").data, tuned)
    assert repo.verify().ok


def test_a_damaged_keyframe_is_reported_through_its_deltas(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    first, second = training_run(2)
    repo.commit("keyframe", weights={"w": first})
    later = repo.commit("delta", weights={"w": second})
    keyframe = repo.objects.tensor_descriptor(repo.ls_tree("HEAD~1")["w"].tensor).chunks[0]
    flip_bit(repo, keyframe, at=-5, bit=0x10)
    with pytest.raises(CorruptObjectError):
        repo.get_weight("w")
    report = repo.verify()
    assert later.commit_hash in report.affected_commits
    assert any(keyframe in p.message for p in report.problems)


LOSSY = [t for t in DeltaType if not t.is_lossless]


@pytest.mark.parametrize("kind", LOSSY)
def test_lossy_commits_are_opt_in_recorded_and_within_their_bound(
    tmp_path: Path, kind: DeltaType
) -> None:
    config = DeltaConfig(delta_type=kind, sparse_threshold=1e-5)
    repo = Repository(tmp_path, init=True, chunk_size=4096, delta_config=config)
    rng = np.random.default_rng(1)
    base = rng.standard_normal((96, 100)).astype(np.float32)  # rows straddle 4 KiB chunks
    tuned = base + rng.standard_normal(base.shape).astype(np.float32) * np.float32(1e-4)
    first = repo.commit("base", weights={"w": base, "step": np.arange(3)})
    assert first.lossy is None  # nothing to be a delta of: stored exactly
    second = repo.commit("tuned", weights={"w": tuned, "step": np.arange(3) + 1})

    assert second.lossy is not None
    assert second.lossy["type"] == [kind.value]
    assert second.lossy["tensors"] == ["w"]  # integers are never lossy
    restored = repo.get_weight("w").data
    error = float(np.max(np.abs(restored.astype(np.float64) - tuned.astype(np.float64))))
    assert error == second.lossy["max_abs_error"]
    assert error <= 4e-4  # a fraction of the change, for every strategy here
    entry = repo.ls_tree()["w"]
    assert entry.compression_info is not None
    assert entry.compression_info["coral.lossy"]["max_abs_error"] == error
    assert exact(repo.get_weight("step").data, np.arange(3) + 1)
    assert exact(repo.get_weight("w", "HEAD~1").data, base)
    assert exact(Repository(tmp_path).get_weight("w").data, restored)  # stable rebuild
    assert Repository(tmp_path).objects.delta_config == config
    assert repo.verify().ok


def test_lossy_deltas_are_much_smaller_than_lossless_ones(tmp_path: Path) -> None:
    sizes = {}
    for kind in (DeltaType.COMPRESSED, DeltaType.INT8_QUANTIZED):
        repo = Repository(
            tmp_path / kind.value, init=True, chunk_size=4096, delta_config=DeltaConfig(kind)
        )
        base, tuned = training_run(2, size=32768)
        repo.commit("base", weights={"w": base})
        before = stored_bytes(repo)
        repo.commit("tuned", weights={"w": tuned})
        sizes[kind] = stored_bytes(repo) - before
    assert sizes[DeltaType.INT8_QUANTIZED] < 0.6 * sizes[DeltaType.COMPRESSED]


@pytest.mark.parametrize("kind", [t for t in DeltaType if not t.is_lossless])
def test_a_lossy_commit_holds_chunks_not_the_model(tmp_path: Path, kind: DeltaType) -> None:
    """Its memory is bounded by chunk size x threads: the rebuild's content id is
    hashed chunk by chunk, never from a rebuild of the whole tensor."""
    repo = Repository(
        tmp_path, init=True, chunk_size=65536, delta_config=DeltaConfig(delta_type=kind)
    )
    rng = np.random.default_rng(3)
    base = {f"w{i}": rng.standard_normal(1 << 20).astype(np.float32) for i in range(8)}
    tuned = {name: w + np.float32(1e-4) * np.sign(w) for name, w in base.items()}
    repo.commit("base", weights=base)
    tracemalloc.start()
    try:
        commit = repo.commit("tuned", weights=tuned)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert commit.lossy is not None
    assert peak < 12 << 20  # the model is 32 MiB (a rebuild of it all once took more)
    assert repo.verify().ok  # every id is the hash of what is stored
    for name, w in tuned.items():
        restored = repo.get_weight(name).data.astype(np.float64)
        assert np.max(np.abs(restored - w)) <= commit.lossy["max_abs_error"]


def test_a_lossy_repository_keeps_values_it_cannot_quantize_exactly(tmp_path: Path) -> None:
    repo = Repository(
        tmp_path,
        init=True,
        chunk_size=4096,
        delta_config=DeltaConfig(delta_type=DeltaType.INT8_QUANTIZED),
    )
    base, tuned = training_run(2)
    repo.commit("base", weights={"w": base})
    tuned = tuned.copy()
    tuned[5] = np.nan  # in the first 4 KiB chunk only
    commit = repo.commit("with a NaN", weights={"w": tuned})
    restored = repo.get_weight("w").data
    assert exact(restored[:1024], tuned[:1024])  # that chunk kept bit for bit
    assert not exact(restored, tuned)  # the others quantized
    assert commit.lossy is not None
    assert repo.verify().ok


def test_a_new_branch_deltas_against_where_it_starts(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    base, tuned = training_run(2)
    repo.commit("base", weights={"w": base})
    repo.commit("fine-tune", weights={"w": tuned}, branch="task-a")
    codecs = {codec for codec, _ in chunk_codecs(repo.objects, repo.ls_tree("task-a")["w"].tensor)}
    assert codecs == {Codec.DELTA}


def test_a_tensor_without_namesake_deltas_against_a_similar_one_anywhere(
    tmp_path: Path,
) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    base, tuned = training_run(2)
    unrelated = training_run(1, seed=7)[0]
    repo.commit("base", weights={"encoder.w": base, "other": unrelated}, branch="pretrained")
    # another branch, another name (a renamed layer): no namesake in the parent
    repo.commit("renamed", weights={"backbone.w": tuned})
    entry = repo.ls_tree()["backbone.w"]
    assert {c for c, _ in chunk_codecs(repo.objects, entry.tensor)} == {Codec.DELTA}
    first_chunk = repo.objects.tensor_descriptor(entry.tensor).chunks[0]
    base_tensor = repo.ls_tree("pretrained")["encoder.w"].tensor
    base_chunk = repo.objects.tensor_descriptor(base_tensor).chunks[0]
    assert repo.objects.chunk_params(first_chunk)[1]["base"] == base_chunk
    assert exact(repo.get_weight("backbone.w").data, tuned)
    stats = repo._similar.get_statistics() if repo._similar else {}
    assert 0 < stats["candidates_checked"] <= 4  # not every stored tensor


def test_a_delta_that_saves_little_loses_to_a_keyframe_more_so_deeper(tmp_path: Path) -> None:
    """A delta must save more the deeper it sits: each link costs a read a decode."""
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    rng = np.random.default_rng(0)
    versions = [(rng.standard_normal(1024) * 0.05).astype(np.float32)]
    for _ in range(2):  # moves like training from scratch: every mantissa changes
        noise = rng.standard_normal(1024).astype(np.float32) * np.float32(5e-3)
        versions.append(versions[-1] + noise)
    for previous, current in itertools.pairwise(versions):  # the premise: deltas save 7.5-15%
        planes = len(encode_planes(current, 4))
        delta = len(encode_arrays(DeltaType.COMPRESSED, current, previous, DeltaConfig())[0])
        assert 0.85 < delta / planes < 0.925
    found = []
    for i, weights in enumerate(versions):
        repo.commit(f"v{i}", weights={"w": weights})
        found.append(chunk_codecs(repo.objects, repo.ls_tree()["w"].tensor))
    assert found[1] == [(Codec.DELTA, 1)]  # first link: saving over 7.5% is worth it
    assert found[2] == [(Codec.PLANES, 0)]  # second link needs 15%: a fresh keyframe
    for i, weights in enumerate(versions):
        assert exact(repo.get_weight("w", f"HEAD~{len(versions) - 1 - i}").data, weights)


def test_nothing_similar_means_stored_whole(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    repo.commit("a", weights={"a": training_run(1, seed=1)[0]})
    repo.commit("b", weights={"b": training_run(1, seed=2)[0]})
    codecs = {c for c, _ in chunk_codecs(repo.objects, repo.ls_tree()["b"].tensor)}
    assert Codec.DELTA not in codecs


def test_a_run_fingerprints_its_keyframes_not_every_checkpoint(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    steps = training_run(3)
    for index, weights in enumerate(steps):
        repo.commit(f"step {index}", weights={"w": weights})
    first = repo.ls_tree("HEAD~2")["w"].tensor
    assert [p.tensor_id for p in repo.fingerprints.read_all()] == [first]  # once, not 3 times
    moved = steps[-1] + np.float32(1e-6)  # a tensor of its own, close to the run's
    repo.commit("renamed", weights={"renamed.w": moved}, branch="other")  # no namesake
    codecs = {c for c, _ in chunk_codecs(repo.objects, repo.ls_tree("other")["renamed.w"].tensor)}
    assert Codec.DELTA in codecs  # found through the keyframe's fingerprint


def test_fingerprint_log_survives_torn_lines_gc_and_loss(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    base = training_run(1)[0]
    repo.commit("base", weights={"w": base}, branch="old")
    log = repo.fingerprints
    assert [p.tensor_id for p in log.read_all()] == [repo.ls_tree("old")["w"].tensor]
    with open(log.path, "ab") as handle:
        handle.write(b"0123abcd torn by a cra")  # a crash mid-append
    repo.commit("other", weights={"v": training_run(1, seed=3)[0]})
    assert len(log.read_all()) == 2  # the torn line is skipped, the next one intact

    repo.delete_branch("old")
    repo.gc()
    assert [p.tensor_id for p in log.read_all()] == [repo.ls_tree()["v"].tensor]

    log.path.unlink()  # a cache: repack rebuilds it from the tensor descriptors
    repo.repack()
    assert [p.tensor_id for p in log.read_all()] == [repo.ls_tree()["v"].tensor]
    assert repo.verify().ok


def test_a_fingerprint_of_a_deleted_tensor_is_skipped(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    base, tuned = training_run(2)
    repo.commit("base", weights={"w": base}, branch="gone")
    stale = list(repo.fingerprints.read_all())
    repo.delete_branch("gone")
    repo.gc()
    repo.fingerprints.append(stale)  # e.g. another process appended before gc rewrote it
    repo.commit("renamed", weights={"w2": tuned})
    assert exact(repo.get_weight("w2").data, tuned)
    assert repo.verify().ok


def test_repack_rebounds_chains_and_keeps_every_version(tmp_path: Path) -> None:
    repo = Repository(
        tmp_path, init=True, chunk_size=4096, delta_config=DeltaConfig(max_chain_length=6)
    )
    versions = training_run(7)
    for i, weights in enumerate(versions):
        repo.commit(f"step {i}", weights={"w": weights})
    deepest = max(d for _, d in chunk_codecs(repo.objects, repo.ls_tree()["w"].tensor))
    assert deepest == 6
    result = repo.repack(max_chain_length=2)
    assert result.chunks_rewritten == 7 * 8  # 7 versions x 8 chunks of 4 KiB
    assert Repository(tmp_path).config.get("delta.max_chain_length") == 2
    for i, weights in enumerate(versions):
        assert exact(repo.get_weight("w", f"HEAD~{6 - i}").data, weights)
        depths = [
            d for _, d in chunk_codecs(repo.objects, repo.ls_tree(f"HEAD~{6 - i}")["w"].tensor)
        ]
        assert max(depths) <= 2
    assert repo.verify().ok
    again = repo.repack()
    assert again.bytes_after == again.bytes_before  # already as good as it gets


@pytest.mark.slow
def test_a_tensor_past_two_gigabytes(tmp_path: Path) -> None:
    """More than 2**31 elements, from a memory-mapped sparse file so the test stays light:
    offsets past the int32 range commit, deduplicate, delta-encode and restore."""
    size = 2**31 + 8192
    path = tmp_path / "big.bin"
    with open(path, "wb") as handle:
        handle.truncate(size)  # a hole: zeros that take no disk
    first = np.memmap(path, dtype=np.uint8, mode="r", shape=(size,))
    second = np.memmap(path, dtype=np.uint8, mode="c", shape=(size,))
    second[size - 3] = 7  # copy-on-write: only this page is materialized
    repo = Repository(tmp_path / "repo", init=True, chunk_size=64 * 2**20)
    repo.commit("zeros", weights={"big": WeightTensor(first, name="big")})
    repo.commit("one byte set", weights={"big": WeightTensor(second, name="big")})
    assert stored_bytes(repo) < 2**20  # identical chunks once, the changed one as a delta
    restored = repo.get_weight("big").data
    assert restored.shape == (size,)
    assert restored[size - 3] == 7
    assert int(np.count_nonzero(restored)) == 1
    del restored
    older = repo.get_weight("big", "HEAD~1").data
    assert int(np.count_nonzero(older)) == 0


def test_bases_borrowed_from_the_last_commit_follow_changes_in_place(tmp_path: Path) -> None:
    """The last commit's arrays serve as the next commit's delta bases only while
    they still hold what was committed: a training loop that commits views of
    weights it then updates in place gets the same, exact history."""
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    versions = training_run(4, size=3000)
    live = versions[0].copy()
    for i, weights in enumerate(versions):
        live[:] = weights  # in place: the array the last commit saw changes
        repo.commit(f"step {i}", weights={"w": live})
    fresh = [v.copy() for v in training_run(4, size=3000, seed=1)]
    for i, weights in enumerate(fresh):  # new arrays each time: bases are borrowed
        repo.commit(f"run 2 step {i}", weights={"w": weights})
    history = versions + fresh
    for back, weights in enumerate(reversed(history)):
        assert exact(repo.get_weight("w", f"HEAD~{back}").data, weights)
    entry = repo.ls_tree()["w"]
    assert Codec.DELTA in {codec for codec, _ in chunk_codecs(repo.objects, entry.tensor)}
    assert repo.verify().ok


def test_a_borrowed_base_that_is_no_longer_stored_is_not_used(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    first, second = training_run(2)
    repo.commit("first", weights={"w": first})
    for chunk in repo.objects.tensor_descriptor(repo.ls_tree()["w"].tensor).chunks:
        repo.objects.delete(chunk)  # as if collected: the arrays are still in memory
    repo.commit("second", weights={"w": second})
    assert exact(repo.get_weight("w").data, second)
