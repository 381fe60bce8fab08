"""torch.distributed.checkpoint into and out of Coral, in one process and across ranks."""

from __future__ import annotations

import dataclasses
import datetime
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from coral_core import ConfigError, RefNotFoundError, Repository, TensorNotFoundError, clone
from coral_torch.dcp import METADATA_KEY, CoralReader, CoralWriter, DCPCheckpointError

#: dcp.save / dcp.load without a process group say they assume a single process.
SINGLE_PROCESS = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled, unavailable or uninitialized:UserWarning"
)
_INT_VIEWS = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns, so NaN payloads and -0.0 compare exactly."""
    return tensor.view(_INT_VIEWS.get(tensor.dtype, tensor.dtype))


def assert_bitwise(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(bits(actual[name]), bits(tensor)), name


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 32)
        self.embed = torch.nn.Embedding(16, 8, dtype=torch.bfloat16)
        self.norm = torch.nn.BatchNorm1d(32)  # int64 num_batches_tracked
        self.register_buffer("positions", torch.arange(-3, 13, dtype=torch.int64))


def model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = Net().state_dict()
    state["linear.weight"][0, :4] = torch.tensor([float("nan"), -0.0, float("inf"), 1e-45])
    state["embed.weight"][0, 0] = float("-inf")
    state["norm.num_batches_tracked"].fill_(12345)
    return state


def zeros_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros_like(tensor) for name, tensor in state.items()}


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "repo", init=True)


@SINGLE_PROCESS
def test_save_and_load_bitwise_in_one_process(repo: Repository) -> None:
    state = model_state()
    writer = CoralWriter(repo, message="step 100", metrics={"loss": 0.5})
    saved = dcp.save({"model": state, "step": 100}, storage_writer=writer)

    assert writer.commit is not None
    commit = repo.show()
    assert (commit.commit_hash, commit.message, commit.metrics) == (
        writer.commit.commit_hash,
        "step 100",
        {"loss": 0.5},
    )
    assert set(repo.ls_tree()) == {f"model.{name}" for name in state} | {"step"}
    assert repo.ls_tree()["model.embed.weight"].dtype == "bfloat16"

    loaded = {"model": zeros_like(state), "step": 0}
    dcp.load(loaded, storage_reader=CoralReader(repo.path))
    assert_bitwise(loaded["model"], state)
    assert loaded["step"] == 100

    metadata = CoralReader(repo).read_metadata()
    assert metadata.storage_meta is not None
    assert metadata.storage_meta.load_id is not None
    assert dataclasses.replace(metadata, storage_meta=saved.storage_meta) == saved


@SINGLE_PROCESS
def test_next_save_deduplicates_and_delta_encodes(repo: Repository) -> None:
    state = model_state()
    dcp.save({"model": state}, storage_writer=CoralWriter(repo, message="first"))
    first, before = repo.ls_tree(), set(repo.objects.iter_ids())

    dcp.save({"model": state}, storage_writer=CoralWriter(repo, message="unchanged"))
    assert repo.ls_tree() == first
    assert len(set(repo.objects.iter_ids()) - before) == 1  # the commit; the tree is the same

    state["linear.weight"][1, :8] += 1e-3
    before = set(repo.objects.iter_ids())
    dcp.save({"model": state}, storage_writer=CoralWriter(repo, message="tuned"))
    tuned = repo.ls_tree()
    changed = {name for name in tuned if tuned[name].tensor != first[name].tensor}
    assert changed == {"model.linear.weight"}
    new_bytes = sum(repo.objects.stored_size(i) for i in set(repo.objects.iter_ids()) - before)
    assert new_bytes < state["linear.weight"].nbytes / 4  # a delta, not a second copy


@SINGLE_PROCESS
def test_checkpoint_id_names_the_branch_and_the_ref(repo: Repository) -> None:
    old, new = model_state(0), model_state(1)
    dcp.save(old, storage_writer=CoralWriter(repo, message="old"))
    dcp.save(new, storage_writer=CoralWriter(repo, message="new"), checkpoint_id="exp")
    assert repo.show("exp").message == "new"
    assert repo.show().message == "old"  # HEAD stays on main

    reader = CoralReader(repo)
    loaded = zeros_like(old)
    dcp.load(loaded, storage_reader=reader, checkpoint_id="exp")
    assert_bitwise(loaded, new)
    dcp.load(loaded, storage_reader=reader, checkpoint_id="main")
    assert_bitwise(loaded, old)


def test_unknown_ref_is_refused(repo: Repository) -> None:
    with pytest.raises(RefNotFoundError, match="nope"):
        CoralReader(repo, "nope")


def test_commit_without_dcp_metadata_is_refused(repo: Repository) -> None:
    repo.commit("plain", weights={"w": torch.ones(3).numpy()})
    with pytest.raises(DCPCheckpointError, match="holds no DCP checkpoint"):
        CoralReader(repo)


@SINGLE_PROCESS
def test_missing_tensor_is_named(repo: Repository) -> None:
    dcp.save({"w": torch.ones(4)}, storage_writer=CoralWriter(repo, message="dcp"))
    metadata = repo.show().metadata.metadata[METADATA_KEY]
    repo.commit("damaged", weights={}, metadata={METADATA_KEY: metadata})
    with pytest.raises(CheckpointException) as failure:
        dcp.load({"w": torch.zeros(4)}, storage_reader=CoralReader(repo))
    error = next(iter(failure.value.failures.values()))[0]
    assert isinstance(error, TensorNotFoundError)
    assert "'w'" in str(error)


# -- two ranks on gloo ---------------------------------------------------------------------


def full_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(8, 6, generator=generator),
        "e": torch.randn(7, 4, generator=generator).to(torch.bfloat16),  # 7 rows: 4 + 3
        "count": torch.arange(5),
    }


def _rank(rank: int, repo_path: str, init_file: str) -> None:
    warnings.simplefilter("error")  # as strict as the test process
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        mesh = init_device_mesh("cpu", (2,))
        full = full_tensors()
        state = {
            "w": distribute_tensor(full["w"], mesh, [Shard(0)]),
            "e": distribute_tensor(full["e"], mesh, [Shard(0)]),
            "count": full["count"].clone(),
        }
        with pytest.raises(DCPCheckpointError, match="use_collectives=True"):  # a commit per rank
            dcp.save(
                state, storage_writer=CoralWriter(repo_path, message="x"), use_collectives=False
            )
        dcp.save(state, storage_writer=CoralWriter(repo_path, message="sharded"))

        loaded = {
            "w": distribute_tensor(torch.zeros(8, 6), mesh, [Shard(1)]),
            "e": distribute_tensor(torch.zeros(7, 4, dtype=torch.bfloat16), mesh, [Replicate()]),
            "count": torch.zeros(5, dtype=torch.int64),
        }
        dcp.load(loaded, storage_reader=CoralReader(repo_path))
        assert_bitwise(
            {"w": loaded["w"].to_local(), "e": loaded["e"].to_local(), "count": loaded["count"]},
            {"w": full["w"].chunk(2, dim=1)[rank], "e": full["e"], "count": full["count"]},
        )
    finally:
        dist.destroy_process_group()


@SINGLE_PROCESS
def test_two_ranks_save_one_commit_and_load_resharded(repo: Repository, tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(repo.path), str(tmp_path / "init")), nprocs=2)

    [commit] = repo.log()
    assert commit.message == "sharded"
    assert set(repo.ls_tree()) == {"w@0.0", "w@4.0", "e@0.0", "e@4.0", "count"}

    loaded = {"w": torch.zeros(8, 6), "e": torch.zeros(7, 4, dtype=torch.bfloat16)}
    loaded["count"] = torch.zeros(5, dtype=torch.int64)
    dcp.load(loaded, storage_reader=CoralReader(repo))
    assert_bitwise(loaded, full_tensors())


@SINGLE_PROCESS
def test_push_to_sends_each_save_in_the_background(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such remote"):
        CoralWriter(repo, message="x", push_to="origin")  # refused before anything is saved
    repo.add_remote("origin", str(tmp_path / "remote"))
    state = model_state()
    for step in range(3):
        state["linear.weight"][0, step] += 1.0
        writer = CoralWriter(repo, message=f"step {step}", push_to="origin")
        dcp.save({"model": state}, storage_writer=writer)
    assert writer.wait_for_push()
    copy = clone(str(tmp_path / "remote"), tmp_path / "copy")
    assert [c.commit_hash for c in copy.log()] == [c.commit_hash for c in repo.log()]
