"""The book's command reference (03-developer-guide.md, "CLI Commands") and its
team workflow (02-introduction.md, "Team Collaboration"), run as written."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from coral_cli.main import cli
from coral_core import CheckpointConfig, CheckpointManager, Repository, TrainingState, bit_view
from coral_core.formats import write_safetensors


def run(line: str, ok: bool = True) -> Result:
    """One book line, ``coral-ml`` and all, through the real command."""
    words = shlex.split(line)
    assert words[0] == "coral-ml"
    result = CliRunner().invoke(cli, words[1:], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


def as_json(line: str) -> Any:
    return json.loads(run(line + " --json").stdout)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repository:
    """A repository with two commits of a small model, the current folder."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    weights = {"fc.weight": rng.standard_normal((32, 16)).astype(np.float32)}
    write_safetensors(tmp_path / "v1.safetensors", weights)
    weights["fc.weight"] = weights["fc.weight"] + np.float32(1e-3)
    write_safetensors(tmp_path / "v2.safetensors", weights)
    run("coral-ml init")
    run("coral-ml add v1.safetensors")
    run("coral-ml commit -m first --metric accuracy=0.8")
    run("coral-ml add v2.safetensors")
    run("coral-ml commit -m second --metric accuracy=0.9")
    return Repository(tmp_path)


def test_show_a_weight_of_head_or_of_a_commit(repo: Repository) -> None:
    """``coral-ml show <weight> [-c commit]  # Show weight info``"""
    head = as_json("coral-ml show fc.weight")
    older = as_json("coral-ml show fc.weight -c HEAD~1")
    assert (head["shape"], head["dtype"]) == ([32, 16], "float32")
    assert head["commit"] == repo.resolve("HEAD")
    assert older["commit"] == repo.resolve("HEAD~1")
    assert head["tensor"] != older["tensor"]
    assert head["storage"] == "delta"  # the second version is a small step from the first
    assert "no weight 'nope'" in run("coral-ml show nope -c HEAD", ok=False).output
    assert as_json("coral-ml show HEAD~1")["message"] == "first"  # a ref is still a commit


def test_compare_one_ref_against_head(repo: Repository) -> None:
    """``coral-ml compare <ref1> [ref2]  # Compare commits/branches``"""
    compared = as_json("coral-ml compare HEAD~1")
    assert (compared["a"], compared["b"]) == (repo.resolve("HEAD~1"), repo.resolve("HEAD"))
    assert compared["metrics"]["accuracy"] == [0.8, 0.9]
    assert compared["tensors"]["modified"] == 1


def test_stats_json(repo: Repository) -> None:
    """``coral-ml stats [--json]  # Show repository statistics``"""
    stats = json.loads(run("coral-ml stats --json").stdout)
    assert stats["commits"] == 2
    assert stats["stored_bytes"] > 0


def test_experiment_alone_lists_the_experiments(repo: Repository) -> None:
    """``coral-ml experiment  # Manage experiments``"""
    manager = CheckpointManager(repo, CheckpointConfig(), "sweep")
    manager.save({"fc.weight": np.ones((4, 4), np.float32)}, TrainingState(epoch=1, global_step=1))
    listed = run("coral-ml experiment").output
    assert "sweep" in listed
    assert listed == run("coral-ml experiment list").output


def test_deduplicate_keeps_every_version(repo: Repository) -> None:
    """``coral-ml deduplicate  # Manual deduplication``"""
    before = {c.commit_hash: repo.get_all_weights(c.commit_hash) for c in repo.log()}
    done = as_json("coral-ml deduplicate")
    assert done["bytes_after"] <= done["bytes_before"]
    for commit, weights in before.items():
        again = Repository(repo.path).get_all_weights(commit)
        assert all(
            np.array_equal(bit_view(again[n].data), bit_view(w.data)) for n, w in weights.items()
        )


def test_pull_all_brings_every_branch(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``coral-ml pull [remote] [--all]  # Pull from remote``"""
    run(f"coral-ml remote add origin {tmp_path / 'shared'}")
    run("coral-ml push origin --all")
    other = tmp_path / "other"
    run(f"coral-ml clone {tmp_path / 'shared'} {other}")
    monkeypatch.chdir(other)
    run("coral-ml checkout -b feature")
    run("coral-ml add ../v1.safetensors")
    run("coral-ml commit -m feature-work")
    run("coral-ml checkout main")
    run("coral-ml add ../v1.safetensors")
    run("coral-ml commit -m main-work")
    run("coral-ml push origin --all")
    monkeypatch.chdir(tmp_path)
    pulled = as_json("coral-ml pull --all")
    assert pulled == {"feature": "created", "main": "merged"}
    assert repo.resolve("feature") == Repository(other).resolve("feature")
    assert repo.resolve("main") == Repository(other).resolve("main")


def test_the_team_workflow(repo: Repository, tmp_path: Path) -> None:
    """02-introduction.md, "Team Collaboration": branches from HEAD, pushes, a
    graph of every branch, a diff, a merge and a release tag."""
    run(f"coral-ml remote add origin {tmp_path / 'team'}")
    baseline = run('coral-ml commit -m "Baseline ResNet-50" --author alice@team.com', ok=False)
    assert "nothing" in baseline.output.lower()  # (the fixture committed the model already)
    run("coral-ml push origin main")
    run("coral-ml checkout -b experiment_augmentation")
    assert repo.current_branch == "experiment_augmentation"
    assert repo.resolve("experiment_augmentation") == repo.resolve("main")  # from HEAD
    run("coral-ml add v1.safetensors")
    run("coral-ml commit -m augmentation --author bob@team.com")
    run("coral-ml push origin experiment_augmentation")
    run("coral-ml checkout main")
    run("coral-ml checkout -b experiment_wider")
    run("coral-ml push origin experiment_wider")
    graph = run("coral-ml log --all --graph").output
    assert "augmentation" in graph
    assert "bob@team.com" in run("coral-ml log --all").output
    run("coral-ml diff main experiment_augmentation")
    run("coral-ml checkout main")
    run("coral-ml merge experiment_augmentation")
    assert repo.resolve("main") == repo.resolve("experiment_augmentation")  # a fast-forward
    run('coral-ml tag v2.0 -d "Production: with augmentation"')
    assert [t.name for t in repo.list_tags()] == ["v2.0"]
