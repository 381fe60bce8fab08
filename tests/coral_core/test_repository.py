"""Repository behaviour: staging, commits, history, branches, tags, diff, gc, verify."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from coral_core import (
    BranchInUseError,
    ConfigError,
    CoralError,
    CorruptObjectError,
    DirtyIndexError,
    InvalidMetricError,
    InvalidRefNameError,
    NothingToCommitError,
    RefExistsError,
    RefNotFoundError,
    Repository,
    TensorNotFoundError,
    WeightMetadata,
    WeightTensor,
    bit_view,
)
from tests.coral_core.conftest import flip_last_bit, make_weights


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bit_view(a), bit_view(b))


def object_files(repo: Repository) -> set[Path]:
    return {p for p in (repo.coral_dir / "objects").rglob("*") if p.is_file()}


def disk_usage(repo: Repository) -> int:
    return sum(p.stat().st_size for p in object_files(repo))


# -- init and layout -----------------------------------------------------------------


def test_init_creates_the_documented_layout(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    for name in ("config", "HEAD", "objects", "refs/heads", "refs/tags", "logs"):
        assert (tmp_path / ".coral" / name).exists(), name
    assert (tmp_path / ".coral" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert repo.current_branch == "main"
    assert repo.log() == []
    assert Repository(tmp_path / ".coral").path == tmp_path.absolute()


# -- staging and committing ----------------------------------------------------------


def test_every_dtype_round_trips_bitwise(repo: Repository) -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**16, size=(7, 5), dtype=np.uint16)
    arrays = {
        "f64": rng.standard_normal(300),
        "f32": np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45], dtype=np.float32),
        "f16": bits.view(np.float16),
        "bf16": bits.view(ml_dtypes.bfloat16),
        "f8e4m3": bits.astype(np.uint8).view(ml_dtypes.float8_e4m3fn),
        "f8e5m2": bits.astype(np.uint8).view(ml_dtypes.float8_e5m2),
        "i8": np.arange(-5, 5, dtype=np.int8),
        "i64": np.array([2**62, -(2**63)], dtype=np.int64),
        "u8": np.arange(256, dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    nan_payload = np.array([0x7FC00123, 0xFFA00001], dtype=np.uint32).view(np.float32)
    arrays["nan_payloads"] = nan_payload
    repo.stage_weights(arrays)
    repo.commit("all dtypes")
    restored = Repository(repo.path).get_all_weights()
    assert set(restored) == set(arrays)
    for name, array in arrays.items():
        assert bitwise_equal(restored[name].data, array), name


def test_staging_survives_a_new_process(repo: Repository) -> None:
    repo.stage_weights(make_weights())
    code = (
        "import sys; from coral_core import Repository; "
        "print(sorted(Repository(sys.argv[1]).staged().entries))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(repo.path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(sorted(make_weights()))


def test_commit_from_staged_tensors_writes_no_tensor_again(repo: Repository) -> None:
    repo.stage_weights(make_weights())
    before = object_files(repo)
    repo.commit("first")
    assert len(object_files(repo) - before) == 2  # the tree and the commit, nothing else


def test_nothing_to_commit(repo: Repository) -> None:
    with pytest.raises(NothingToCommitError):
        repo.commit("empty")
    commit = repo.commit("marker", allow_empty=True)
    assert repo.ls_tree(commit.commit_hash) == {}


def test_partial_stage_keeps_the_parents_other_tensors(repo: Repository) -> None:
    repo.stage_weights(make_weights(0))
    repo.commit("v1")
    new_bias = np.full(64, 3.0, dtype=np.float32)
    repo.stage_weights({"encoder.bias": new_bias})
    repo.commit("v2")
    tree = repo.ls_tree()
    assert set(tree) == set(make_weights())
    assert bitwise_equal(repo.get_weight("encoder.bias").data, new_bias)
    repo.remove_weights(["step"])
    repo.commit("drop step")
    assert "step" not in repo.ls_tree()
    repo.stage_weights({"only": np.ones(3)}, replace=True)
    repo.commit("replace")
    assert list(repo.ls_tree()) == ["only"]


def test_identical_tensors_are_stored_once_across_branches(repo: Repository) -> None:
    weights = make_weights()
    repo.commit("v1", weights=weights)
    before = object_files(repo)
    repo.commit("same weights elsewhere", weights=weights, branch="copy")
    added = object_files(repo) - before
    assert len(added) == 1  # only the commit: tensors, chunks and tree are shared


def test_commit_records_metadata(repo: Repository) -> None:
    commit = repo.commit(
        "epoch 3",
        author="ada",
        metrics={"loss": np.float32(0.5), "acc": 0.9, "run": "lr-sweep"},
        metadata={"epoch": 3},
        tags=["candidate"],
        weights=make_weights(),
    )
    shown = repo.show()
    assert shown == commit
    assert shown.author == "ada"
    assert shown.metrics == {"loss": 0.5, "acc": 0.9, "run": "lr-sweep"}
    assert shown.metadata.metadata == {"epoch": 3}
    assert shown.metadata.tags == ("candidate",)
    assert shown.metadata.environment["coral_core"]
    with pytest.raises(InvalidMetricError, match="metric 'bad'"):
        repo.commit("x", metrics={"bad": [1, 2]}, allow_empty=True)


def test_metadata_survives(repo: Repository) -> None:
    meta = WeightMetadata("w", (2, 2), np.float32, layer_type="Linear", model_name="tiny")
    repo.commit("meta", weights={"w": WeightTensor(np.eye(2, dtype=np.float32), meta)})
    loaded = repo.get_weight("w")
    assert loaded.metadata.layer_type == "Linear"
    assert loaded.metadata.model_name == "tiny"


# -- history and refs ----------------------------------------------------------------


def test_log_and_revision_syntax(repo: Repository) -> None:
    commits = [repo.commit(f"v{i}", weights=make_weights(i)) for i in range(4)]
    assert [c.message for c in repo.log()] == ["v3", "v2", "v1", "v0"]
    assert [c.message for c in repo.log(max_count=2)] == ["v3", "v2"]
    assert repo.resolve("HEAD~2") == commits[1].commit_hash
    assert repo.resolve("main^") == commits[2].commit_hash
    assert repo.resolve("HEAD~1^") == commits[1].commit_hash
    assert repo.resolve(commits[0].commit_hash[:8]) == commits[0].commit_hash
    assert bitwise_equal(
        repo.get_weight("encoder.weight", "HEAD~3").data, make_weights(0)["encoder.weight"].data
    )
    with pytest.raises(RefNotFoundError, match="no parent"):
        repo.resolve("HEAD~4")
    with pytest.raises(RefNotFoundError, match="nope") as caught:
        repo.resolve("nope")
    assert isinstance(caught.value, LookupError)
    with pytest.raises(TensorNotFoundError, match="missing"):
        repo.get_weight("missing")


def test_branches(repo: Repository) -> None:
    repo.commit("v1", weights=make_weights())
    repo.create_branch("exp/lr-0.1")
    with pytest.raises(RefExistsError):
        repo.create_branch("exp/lr-0.1")
    with pytest.raises(RefExistsError):
        repo.create_branch("exp")  # a folder of branches has that name
    for bad in ("../escape", "a..b", "-x", "with space", "x.lock", "", "a/", ".hidden", "HEAD"):
        with pytest.raises(InvalidRefNameError):
            repo.create_branch(bad)
    assert not (repo.coral_dir.parent / "escape").exists()
    for outside in ("../config", "refs/../../x", "../../etc/passwd"):
        with pytest.raises((RefNotFoundError, InvalidRefNameError)):
            repo.checkout(outside)
        with pytest.raises(InvalidRefNameError):
            repo.reflog(outside)
    assert [(b.name, b.current) for b in repo.list_branches()] == [
        ("exp/lr-0.1", False),
        ("main", True),
    ]
    repo.checkout("exp/lr-0.1")
    second = repo.commit("on the branch", weights=make_weights(2))
    assert repo.resolve("exp/lr-0.1") == second.commit_hash
    assert repo.resolve("main") == second.parent_hashes[0]
    with pytest.raises(BranchInUseError):
        repo.delete_branch("exp/lr-0.1")
    repo.checkout("main")
    repo.delete_branch("exp/lr-0.1")
    with pytest.raises(RefNotFoundError):
        repo.delete_branch("exp/lr-0.1")
    assert [b.name for b in repo.list_branches()] == ["main"]


def test_commit_onto_another_branch_leaves_head(repo: Repository) -> None:
    base = repo.commit("v1", weights=make_weights())
    run = repo.commit("run 2 step 1", weights=make_weights(5), branch="run-2")
    assert run.parent_hashes == (base.commit_hash,)
    assert repo.current_branch == "main"
    assert repo.resolve("HEAD") == base.commit_hash


def test_detached_head(repo: Repository) -> None:
    first = repo.commit("v1", weights=make_weights(1))
    repo.commit("v2", weights=make_weights(2))
    repo.checkout(first.commit_hash[:10])
    assert repo.head.detached
    detached = repo.commit("experiment", weights=make_weights(3))
    assert repo.resolve("HEAD") == detached.commit_hash
    assert repo.log(max_count=1)[0].message == "experiment"
    assert [c.message for c in repo.log("main")] == ["v2", "v1"]


def test_checkout_refuses_to_drop_staged_changes(repo: Repository) -> None:
    repo.commit("v1", weights=make_weights())
    repo.create_branch("other")
    repo.stage_weights({"x": np.ones(2)})
    with pytest.raises(DirtyIndexError):
        repo.checkout("other")
    repo.checkout("other", force=True)
    assert repo.staged().empty


def test_tags(repo: Repository) -> None:
    first = repo.commit("v1", weights=make_weights(1))
    repo.tag_version("production_api_v1", "API server", metrics={"accuracy": 0.923})
    repo.commit("v2", weights=make_weights(2))
    repo.tag_version("production_mobile_v1", "Mobile", {"accuracy": 0.915, "size_mb": 25})
    repo.tag_version("nightly")
    with pytest.raises(RefExistsError):
        repo.tag_version("nightly")
    tags = repo.list_tags(pattern="production_*")
    assert [t.name for t in tags] == ["production_api_v1", "production_mobile_v1"]
    assert tags[0].commit == first.commit_hash
    assert tags[0].description == "API server"
    assert tags[0].metadata["accuracy"] == 0.923
    assert repo.resolve("production_api_v1") == first.commit_hash
    repo.checkout("production_api_v1")
    assert repo.head.detached
    assert bitwise_equal(repo.get_weight("encoder.bias").data, make_weights(1)["encoder.bias"].data)
    repo.delete_tag("nightly")
    assert [t.name for t in repo.list_tags()] == ["production_api_v1", "production_mobile_v1"]


def test_find_commits(repo: Repository) -> None:
    repo.commit("a", metrics={"val_accuracy": 0.90}, weights=make_weights(1))
    b = repo.commit("b", metrics={"val_accuracy": 0.95}, weights=make_weights(2), tags=["prod"])
    c = repo.commit("c", metrics={"val_accuracy": 0.93}, weights=make_weights(3))
    repo.tag_version("release", ref=c.commit_hash)
    found = repo.find_commits(metric_filter={"val_accuracy": (">", 0.92)})
    assert [x.message for x in found] == ["c", "b"]
    assert repo.find_commits({"val_accuracy": (">", 0.92)}, tag_filter=["prod"]) == [b]
    assert [x.message for x in repo.find_commits(tag_filter=["release"])] == ["c"]
    assert repo.find_commits({"missing_metric": ("<", 1)}) == []
    with pytest.raises(InvalidMetricError):
        repo.find_commits({"val_accuracy": ("~", 1)})


def test_reflog_records_every_move(repo: Repository) -> None:
    repo.commit("v1", weights=make_weights(1))
    repo.commit("v2", weights=make_weights(2))
    repo.create_branch("b")
    repo.checkout("b")
    messages = [entry.message for entry in repo.reflog()]
    assert messages == ["checkout: moving from main to b", "commit: v2", "commit: v1"]
    assert [e.message for e in repo.reflog("main")] == ["commit: v2", "commit: v1"]
    assert repo.reflog("main")[1].old is None


def test_diff_statuses_and_statistics(repo: Repository) -> None:
    before = {"w": np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), "gone": np.zeros(2)}
    repo.commit("a", weights=before)
    after = {"w": np.array([1.0, 2.0, 3.0, 6.0], dtype=np.float32), "new": np.ones(2)}
    repo.commit("b", weights=after)
    diff = repo.diff("HEAD~1", "HEAD")
    assert diff.added == ["new"]
    assert diff.removed == ["gone"]
    assert diff.modified == ["w"]
    stats = diff.tensors["w"].stats
    assert stats is not None
    assert stats.changed_elements == 1
    assert stats.max_abs_change == pytest.approx(2.0)
    assert stats.relative_l2 == pytest.approx(2.0 / np.sqrt(30.0))
    expected_cos = (1 + 4 + 9 + 24) / (np.sqrt(30.0) * np.sqrt(1 + 4 + 9 + 36))
    assert stats.cosine_similarity == pytest.approx(expected_cos)
    same = repo.diff("HEAD", "HEAD")
    assert same.unchanged == ["new", "w"]


# -- maintenance ---------------------------------------------------------------------


def test_gc_frees_disk_and_keeps_what_is_referenced(repo: Repository) -> None:
    repo.commit("keep", weights=make_weights(1))
    repo.create_branch("scratch")
    big = {"big": np.random.default_rng(0).standard_normal(50_000)}
    repo.commit("throwaway", weights=big, branch="scratch")
    repo.stage_weights({"staged": np.arange(10.0)})
    assert repo.gc().removed_objects == 0
    repo.delete_branch("scratch")
    usage = disk_usage(repo)
    dry = repo.gc(dry_run=True)
    assert dry.removed_objects > 0
    assert disk_usage(repo) == usage
    result = repo.gc()
    assert result.removed_objects == dry.removed_objects
    overhead = (usage - result.freed_bytes) - disk_usage(repo)  # their pack records went too
    assert 0 <= overhead <= 128 * result.removed_objects
    assert result.freed_bytes > 400_000 * 0.8  # the 400 kB tensor, compressed a little
    assert repo.verify().ok
    assert bitwise_equal(
        repo.get_weight("encoder.weight").data, make_weights(1)["encoder.weight"].data
    )
    assert "staged" in repo.staged().entries
    repo.commit("staged survives gc")
    assert bitwise_equal(repo.get_weight("staged").data, np.arange(10.0))


def test_verify_names_damaged_objects_and_what_they_affect(repo: Repository) -> None:
    commit = repo.commit("v1", weights=make_weights())
    assert repo.verify().ok
    entry = repo.ls_tree()["encoder.weight"]
    chunk = repo.objects.tensor_descriptor(entry.tensor).chunks[1]
    flip_last_bit(repo, chunk)
    report = repo.verify()
    assert not report.ok
    assert [p.object_id for p in report.problems] == [chunk]
    assert f"commit {commit.commit_hash}: tensor encoder.weight" in report.problems[0].used_by
    assert report.affected_commits == [commit.commit_hash]
    with pytest.raises(CorruptObjectError, match=r"encoder\.weight") as caught:
        repo.get_weight("encoder.weight")
    assert isinstance(caught.value, OSError)
    assert bitwise_equal(repo.get_weight("encoder.bias").data, make_weights()["encoder.bias"].data)


def test_config(repo: Repository) -> None:
    repo.config.set("user.name", "grace")
    assert Repository(repo.path).config.get("user.name") == "grace"
    assert repo.commit("x", allow_empty=True).author == "grace"
    with pytest.raises(ConfigError):
        repo.config.set("core.format_version", 9)
    with pytest.raises(ConfigError):
        repo.config.get("no.such")
    with pytest.raises(ConfigError):
        repo.config.set("core.chunk_size", "big")


def test_errors_share_one_base(repo: Repository) -> None:
    for error in (RefNotFoundError, CorruptObjectError, InvalidRefNameError, ConfigError):
        assert issubclass(error, CoralError)


def test_importing_the_core_imports_no_framework() -> None:
    code = (
        "import sys, coral_core; "
        "print([m for m in ('torch', 'tensorflow', 'keras', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_are_importable() -> None:
    import coral_core

    missing = [name for name in coral_core.__all__ if not hasattr(coral_core, name)]
    assert missing == []


def test_long_maintenance_reports_progress(repo: Repository) -> None:
    for seed in range(3):
        repo.commit(f"v{seed}", weights=make_weights(seed))
    repo.create_branch("gone")
    repo.commit("only on gone", weights=make_weights(9), branch="gone")
    repo.delete_branch("gone")
    seen: dict[str, list[tuple[int, int | None]]] = {"verify": [], "repack": [], "gc": []}
    repo.verify(lambda done, total: seen["verify"].append((done, total)))
    repo.repack(progress=lambda done, total: seen["repack"].append((done, total)))
    result = repo.gc(progress=lambda done, total: seen["gc"].append((done, total)))
    assert seen["verify"] == [(1, None), (2, None), (3, None)]
    assert seen["repack"] == [(1, 3), (2, 3), (3, 3)]
    assert seen["gc"][-1] == (result.removed_objects, result.removed_objects)
