"""Merges: three-way per tensor, every strategy on hand-computed values, conflicts, history."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from coral_core import (
    ConfigError,
    CoralError,
    DirtyIndexError,
    MergeConflictError,
    MergeStrategy,
    Repository,
    bit_view,
)
from coral_core.repository import MERGE_KEY

BASE = np.array([1, 1, 1, 1, 1], np.float32)
OURS = BASE + np.array([1, -2, 4, 0, 3], np.float32)  # task vector of ours
THEIRS = BASE + np.array([3, 1, -1, 0, 2], np.float32)  # task vector of theirs


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def diverged(
    repo: Repository, ours: dict[str, Any], theirs: dict[str, Any], base: dict[str, Any]
) -> None:
    """main at ``base``; branch ``ours`` (checked out) and ``theirs`` each one commit on."""
    repo.commit("base", weights=base)
    for name, weights in (("theirs", theirs), ("ours", ours)):
        repo.create_branch(name)
        repo.commit(name, weights=weights, branch=name)
    repo.checkout("ours")


def merged(
    repo: Repository, strategy: MergeStrategy | str, **options: Any
) -> dict[str, np.ndarray]:
    commit = repo.merge("theirs", strategy, **options)
    return {w.name: w.data for w in repo.get_all_weights(commit.commit_hash).values()}


@pytest.fixture
def conflict(repo: Repository) -> Repository:
    diverged(repo, {"w": OURS}, {"w": THEIRS}, {"w": BASE})
    return repo


@pytest.mark.parametrize(
    ("strategy", "options", "expected"),
    [
        (MergeStrategy.OURS, {}, OURS),
        (MergeStrategy.THEIRS, {}, THEIRS),
        (MergeStrategy.AVERAGE, {}, f32(3, 0.5, 2.5, 1, 3.5)),
        (MergeStrategy.AVERAGE, {"weights": [3, 1]}, f32(2.5, -0.25, 3.75, 1, 3.75)),
        (MergeStrategy.WEIGHTED, {"alpha": 0.75}, f32(2.5, -0.25, 3.75, 1, 3.75)),
        (MergeStrategy.TASK_ARITHMETIC, {"scaling": 0.5}, f32(3, 0.5, 2.5, 1, 3.5)),
        (MergeStrategy.TASK_ARITHMETIC, {}, f32(5, 0, 4, 1, 6)),
        (MergeStrategy.TIES, {"density": 1.0}, f32(3, -1, 5, 1, 3.5)),
        (MergeStrategy.TIES, {"density": 0.4}, f32(4, 1, 5, 1, 3.5)),
        (MergeStrategy.TIES, {"density": 0.4, "scaling": 2.0}, f32(7, 1, 9, 1, 6)),
        (MergeStrategy.DARE, {"drop_rate": 0.0}, f32(5, 0, 4, 1, 6)),
    ],
)
def test_strategies_on_hand_computed_values(
    conflict: Repository, strategy: MergeStrategy, options: dict[str, Any], expected: np.ndarray
) -> None:
    result = merged(conflict, strategy, **options)["w"]
    assert np.array_equal(result, expected), result


def test_dare_drops_and_rescales_reproducibly(conflict: Repository) -> None:
    first = conflict.merge("theirs", MergeStrategy.DARE, drop_rate=0.5, seed=7, no_ff=True)
    values = conflict.get_weight("w", first.commit_hash).data - BASE
    task_ours, task_theirs = OURS - BASE, THEIRS - BASE
    for i, value in enumerate(values):  # each task vector entry kept (doubled) or dropped
        allowed = {a * task_ours[i] + b * task_theirs[i] for a in (0, 2) for b in (0, 2)}
        assert value in allowed
    conflict.create_branch("again", "HEAD~1")
    conflict.checkout("again")
    second = conflict.merge("theirs", MergeStrategy.DARE, drop_rate=0.5, seed=7)
    assert second.tree_hash == first.tree_hash  # same seed, same result
    conflict.create_branch("other-seed", "HEAD~1")
    conflict.checkout("other-seed")
    third = conflict.merge("theirs", MergeStrategy.DARE, drop_rate=0.5, seed=8)
    assert third.tree_hash != first.tree_hash


def test_slerp(repo: Repository) -> None:
    diverged(repo, {"w": f32(1, 0)}, {"w": f32(0, 1)}, {"w": f32(0.5, 0.5)})
    halfway = merged(repo, MergeStrategy.SLERP, t=0.5)["w"]
    assert np.allclose(halfway, [math.sqrt(0.5)] * 2, rtol=0, atol=1e-7)
    repo.create_branch("t0", "ours~1")  # before the merge above
    repo.checkout("t0")
    assert np.array_equal(merged(repo, MergeStrategy.SLERP, t=0.0)["w"], f32(1, 0))


def test_one_sided_changes_merge_without_a_strategy(repo: Repository) -> None:
    base = {"w": BASE, "b": f32(0, 0), "gone": f32(9)}
    ours = {"w": OURS, "b": f32(0, 0), "gone": f32(9), "new": f32(5)}
    theirs = {"w": BASE, "b": f32(7, 7)}  # changes b, deletes "gone"
    diverged(repo, ours, theirs, base)
    commit = repo.merge("theirs")  # FAIL: fine, nothing conflicts
    result = {w.name: w.data for w in repo.get_all_weights().values()}
    assert set(result) == {"w", "b", "new"}
    assert np.array_equal(result["w"], OURS)
    assert np.array_equal(result["b"], f32(7, 7))
    assert len(commit.parent_hashes) == 2
    assert commit.parent_hashes[1] == repo.resolve("theirs")
    assert repo.merge_base("ours~1", "theirs") == repo.resolve("main")
    record = commit.metadata.metadata[MERGE_KEY]
    assert record["strategy"] == "fail"
    assert record["resolved"] == []


def test_fail_lists_every_conflict_and_changes_nothing(repo: Repository) -> None:
    base = {"w": BASE, "v": BASE, "s": f32(1, 2)}
    diverged(
        repo,
        {"w": OURS, "v": OURS, "s": f32(1, 2, 3)},
        {"w": THEIRS, "v": THEIRS, "s": f32(5, 6, 7, 8)},
        base,
    )
    head, log = repo.resolve("HEAD"), repo.log()
    with pytest.raises(MergeConflictError) as caught:
        repo.merge("theirs")
    assert set(caught.value.conflicts) == {"w", "v", "s"}
    with pytest.raises(MergeConflictError, match=r"s: shapes differ: \[3\] vs \[4\]") as mixed:
        repo.merge("theirs", MergeStrategy.AVERAGE)
    assert set(mixed.value.conflicts) == {"s"}  # the others could be averaged
    assert repo.resolve("HEAD") == head
    assert repo.log() == log
    picked = repo.merge("theirs", MergeStrategy.THEIRS)  # picking a side always works
    assert repo.get_weight("s", picked.commit_hash).shape == (4,)


def test_deleted_against_modified_and_dtype_changes_are_conflicts(repo: Repository) -> None:
    diverged(
        repo,
        {"w": OURS, "keep": f32(1)},
        {"w": THEIRS.astype(np.float64), "keep": f32(1), "x": f32(2)},
        {"w": BASE, "keep": f32(1), "x": f32(0)},
    )
    with pytest.raises(MergeConflictError) as caught:
        repo.merge("theirs", MergeStrategy.AVERAGE)
    assert "dtypes differ" in caught.value.conflicts["w"]
    assert "deleted on one side" in caught.value.conflicts["x"]


def test_integers_are_never_averaged_and_low_precision_floats_work(repo: Repository) -> None:
    bf16 = ml_dtypes.bfloat16
    diverged(
        repo,
        {"step": np.int64(10), "h": np.array([1, 2], bf16), "f": np.array([1, 4], np.float16)},
        {"step": np.int64(30), "h": np.array([3, 4], bf16), "f": np.array([3, 8], np.float16)},
        {"step": np.int64(0), "h": np.array([0, 0], bf16), "f": np.array([0, 0], np.float16)},
    )
    commit = repo.merge("theirs", MergeStrategy.AVERAGE)
    result = {w.name: w.data for w in repo.get_all_weights().values()}
    assert result["step"] == 10
    assert result["h"].dtype == bf16
    assert np.array_equal(bit_view(result["h"]), bit_view(np.array([2, 3], bf16)))
    assert np.array_equal(result["f"], np.array([2, 6], np.float16))
    record = commit.metadata.metadata[MERGE_KEY]
    assert record["kept_ours"] == ["step"]
    assert sorted(record["resolved"]) == ["f", "h"]
    assert record["options"]["alpha"] == 0.5


def test_fast_forward_up_to_date_and_no_ff(repo: Repository) -> None:
    repo.commit("base", weights={"w": BASE})
    repo.create_branch("ahead")
    ahead = repo.commit("ahead", weights={"w": OURS}, branch="ahead")
    assert repo.merge("ahead").commit_hash == ahead.commit_hash  # fast-forward
    assert repo.resolve("main") == ahead.commit_hash
    assert repo.reflog("main")[0].message == "merge ahead: fast-forward"
    assert repo.merge("main~1").commit_hash == ahead.commit_hash  # already up to date
    repo.create_branch("later")
    later = repo.commit("later", weights={"w": THEIRS}, branch="later")
    forced = repo.merge("later", no_ff=True)
    assert forced.parent_hashes == (ahead.commit_hash, later.commit_hash)


def test_criss_cross_history_merges(repo: Repository) -> None:
    diverged(repo, {"w": OURS, "a": f32(1)}, {"w": BASE, "b": f32(2)}, {"w": BASE})
    repo.merge("theirs")  # ours gets b
    repo.checkout("theirs")
    repo.merge("ours~1")  # theirs gets a: a criss-cross
    repo.commit("theirs moves on", weights={"w": BASE, "a": f32(1), "b": f32(3)})
    repo.checkout("ours")
    bases = {repo.resolve("ours~1"), repo.resolve("theirs~2")}
    assert repo.merge_base("ours", "theirs") in bases
    repo.merge("theirs")
    result = {w.name: w.data for w in repo.get_all_weights().values()}
    assert np.array_equal(result["w"], OURS)
    assert np.array_equal(result["b"], f32(3))
    assert result["a"] == 1


def test_soup_of_several_branches(repo: Repository) -> None:
    repo.commit("base", weights={"w": BASE})
    for i, vector in enumerate((f32(3, 0, 0, 0, 0), f32(0, 3, 0, 0, 0), f32(0, 0, 3, 0, 0))):
        repo.create_branch(f"ft{i}")
        repo.commit(f"ft{i}", weights={"w": BASE + vector}, branch=f"ft{i}")
    repo.checkout("ft0")
    commit = repo.merge(["ft1", "ft2"], MergeStrategy.AVERAGE)
    assert len(commit.parent_hashes) == 3
    assert np.array_equal(repo.get_weight("w").data, f32(2, 2, 2, 1, 1))
    repo.create_branch("weighted", "ft0~1")  # ft0 before the soup
    repo.checkout("weighted")
    repo.merge(["ft1", "ft2"], MergeStrategy.TASK_ARITHMETIC, weights=[1, 1, 0])
    assert np.array_equal(repo.get_weight("w").data, f32(4, 4, 1, 1, 1))


def test_greedy_soup_keeps_only_what_helps(repo: Repository) -> None:
    target = f32(2, 2, 2, 2, 2)
    repo.commit("base", weights={"w": BASE})
    for name, values in (
        ("good", f32(2, 2, 2, 2, 3)),
        ("ok", f32(2, 2, 2, 2, 1)),
        ("bad", f32(9, 9, 9, 9, 9)),
    ):
        repo.create_branch(name)
        repo.commit(name, weights={"w": values}, branch=name)
    commit, soup = repo.soup(["good", "ok", "bad"], lambda w: -float(np.abs(w["w"] - target).sum()))
    assert soup.ingredients == [repo.resolve("good"), repo.resolve("ok")]
    assert np.array_equal(repo.get_weight("w", commit.commit_hash).data, target)
    assert soup.score == 0.0
    assert commit.metrics["soup_score"] == 0.0
    assert repo.resolve("good") in commit.parent_hashes


def test_bad_arguments(conflict: Repository) -> None:
    with pytest.raises(ConfigError, match="unknown merge strategy"):
        conflict.merge("theirs", "nonsense")
    with pytest.raises(ConfigError, match="alpha"):
        conflict.merge("theirs", MergeStrategy.WEIGHTED, alpha=1.5)
    with pytest.raises(ConfigError, match="2 versions"):
        conflict.merge("theirs", MergeStrategy.AVERAGE, weights=[1, 2, 3])
    with pytest.raises(TypeError):
        conflict.merge("theirs", MergeStrategy.AVERAGE, alhpa=0.3)
    conflict.stage_weights({"x": f32(1)})
    with pytest.raises(DirtyIndexError):
        conflict.merge("theirs", MergeStrategy.AVERAGE)
    conflict.reset()
    conflict.checkout(conflict.resolve("HEAD"))
    with pytest.raises(CoralError, match="detached"):
        conflict.merge("theirs", MergeStrategy.AVERAGE)


def test_plugin_strategies_come_from_entry_points(
    conflict: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real installed distribution (a .dist-info on sys.path) adds a strategy."""
    site = tmp_path / "site"
    (site / "coral_maxmerge-1.0.dist-info").mkdir(parents=True)
    (site / "coral_maxmerge-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: coral-maxmerge\nVersion: 1.0\n"
    )
    (site / "coral_maxmerge-1.0.dist-info" / "entry_points.txt").write_text(
        "[coral.merge_strategies]\nelementwise_max = coral_maxmerge:merge\n"
    )
    (site / "coral_maxmerge.py").write_text(
        "import numpy as np\n"
        "def merge(versions, base, options, name):\n"
        "    return np.maximum.reduce(versions)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    result = merged(conflict, "elementwise_max")["w"]
    assert np.array_equal(result, np.maximum(OURS, THEIRS))
    sys.modules.pop("coral_maxmerge", None)
