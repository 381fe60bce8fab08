"""CheckpointConfig validation, CheckpointManager schedule, best tracking, retention."""

from __future__ import annotations

from typing import Any

import pytest

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    ConfigError,
    CoralError,
    InvalidRefNameError,
    RefNotFoundError,
    Repository,
    TrainingState,
)

from .conftest import make_weights


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"save_every_n_epochs": 0}, "positive int"),
        ({"save_every_n_steps": 2.5}, "positive int"),
        ({"max_checkpoints": True}, "positive int"),
        ({"save_last": "yes"}, "True or False"),
        ({"mode": "maximum"}, "'auto', 'min' or 'max'"),
        ({"minimize_metric": 1}, "True, False or None"),
        ({"minimize_metric": True, "mode": "max", "save_on_best_metric": "a"}, "contradicts"),
        ({"keep_best_n_checkpoints": 2}, "needs save_on_best_metric"),
        ({"save_on_best_metric": ""}, "metric name"),
    ],
)
def test_config_is_validated_when_made(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CheckpointConfig(**values)


def test_config_from_dict_refuses_unknown_keys_and_bad_branches() -> None:
    with pytest.raises(ConfigError, match="save_every_epoch"):
        CheckpointConfig.from_dict({"save_every_epoch": 1})
    with pytest.raises(InvalidRefNameError):
        CheckpointConfig(branch="../x")
    assert CheckpointConfig.from_dict({"max_checkpoints": 3}).max_checkpoints == 3


@pytest.mark.parametrize(
    ("metric", "kwargs", "minimize"),
    [
        ("val_loss", {}, True),
        ("val_accuracy", {}, False),
        ("f1", {}, False),
        ("perplexity", {}, True),
        ("val_accuracy", {"mode": "min"}, True),
        ("val_loss", {"minimize_metric": False}, False),
    ],
)
def test_metric_direction(metric: str, kwargs: dict[str, Any], minimize: bool) -> None:
    assert CheckpointConfig(save_on_best_metric=metric, **kwargs).minimize is minimize


def save(manager: CheckpointManager, step: int, **metrics: float) -> str:
    state = TrainingState(epoch=step, global_step=step, metrics=metrics)
    return manager.save(make_weights(step), state).commit_hash


def test_schedule(repo: Repository) -> None:
    manager = CheckpointManager(repo, CheckpointConfig(save_every_n_epochs=2, save_every_n_steps=5))
    assert [s for s in range(1, 16) if manager.should_save_step(s)] == [5, 10, 15]
    assert [e for e in range(6) if manager.should_save_epoch(e)] == [1, 3, 5]
    off = CheckpointManager(repo, CheckpointConfig(save_every_n_steps=1, auto_commit=False))
    assert not off.should_save_step(1)
    assert not off.should_save_epoch(0)
    assert off.needs_final_save(3)  # save_last still commits the end of training


def test_best_is_tracked_tagged_and_saves_on_improvement(repo: Repository) -> None:
    config = CheckpointConfig(save_every_n_epochs=None, save_on_best_metric="val_loss")
    manager = CheckpointManager(repo, config, "exp")
    assert manager.should_save_epoch(0, {"val_loss": 1.0})  # the first value is an improvement
    first = save(manager, 1, val_loss=1.0)
    assert not manager.should_save_epoch(1, {"val_loss": 1.5})
    assert not manager.should_save_epoch(1, {"val_loss": float("nan")})
    assert not manager.should_save_epoch(1, {"other": 0.1})
    assert manager.should_save_epoch(1, {"val_loss": 0.5})
    second = save(manager, 2, val_loss=0.5)
    assert manager.best is not None
    assert manager.best.commit_hash == second
    tag = {t.name: t for t in repo.list_tags()}["exp/best"]
    assert tag.commit == second
    assert tag.metrics["val_loss"] == 0.5
    save(manager, 3, val_loss=0.7)
    assert repo.resolve("exp/best") == second
    assert manager.commit_of(load_best=True) == second
    assert manager.commit_of() == manager.checkpoints[-1].commit_hash
    assert manager.commit_of(ref=first[:10]) == first


def test_retention_keeps_best_and_recent_and_gc_frees_the_rest(repo: Repository) -> None:
    repo.commit("base model", weights=make_weights(100))  # not a checkpoint: never dropped
    config = CheckpointConfig(
        save_on_best_metric="acc", keep_best_n_checkpoints=2, max_checkpoints=2
    )
    manager = CheckpointManager(repo, config, "exp")
    accuracies = [0.5, 0.9, 0.6, 0.8, 0.55, 0.52]
    for step, acc in enumerate(accuracies):
        save(manager, step, acc=acc)
    kept = [(c.step, c.metrics["acc"]) for c in manager.checkpoints]
    assert kept == [(1, 0.9), (3, 0.8), (4, 0.55), (5, 0.52)]  # best two + last two
    history = [c.message for c in repo.log()]
    assert len(history) == 5
    assert history[-1] == "base model"
    assert {c.commit_hash for c in repo.log()[:-1]} == {c.commit_hash for c in manager.checkpoints}
    assert repo.resolve("exp/best") == manager.checkpoints[0].commit_hash
    before = repo.gc()
    assert before.removed_objects > 0
    assert repo.verify().ok
    for checkpoint in manager.checkpoints:  # every kept one restores exactly
        restored = repo.get_weight("encoder.weight", checkpoint.commit_hash).data
        assert (restored == make_weights(checkpoint.step)["encoder.weight"].data).all()


def test_recent_only_retention_and_a_new_manager_picks_up_the_history(repo: Repository) -> None:
    config = CheckpointConfig(max_checkpoints=3, tag_best_checkpoints=False)
    manager = CheckpointManager(repo, config, "exp")
    for step in range(5):
        save(manager, step)
    other = CheckpointManager(repo, config, "other-experiment")
    assert other.checkpoints == []
    again = CheckpointManager(repo, config, "exp")
    assert [c.step for c in again.checkpoints] == [2, 3, 4]
    save(again, 5)
    assert [c.step for c in again.checkpoints] == [3, 4, 5]
    assert len(repo.log()) == 3


def test_manager_needs_a_branch_and_a_checkpoint_to_resume(repo: Repository) -> None:
    manager = CheckpointManager(repo, CheckpointConfig(), "exp")
    with pytest.raises(RefNotFoundError, match="no checkpoint"):
        manager.commit_of()
    save(manager, 0)
    repo.checkout(manager.checkpoints[0].commit_hash)  # detached HEAD
    with pytest.raises(CoralError, match="detached"):
        CheckpointManager(repo, CheckpointConfig(), "exp")
    assert CheckpointManager(repo, CheckpointConfig(branch="main"), "exp").latest is not None
    with pytest.raises(ConfigError):
        CheckpointManager(repo, CheckpointConfig(branch="main"), "")


def test_drop_commits_rewrites_history_and_moves_tags(repo: Repository) -> None:
    ids = [repo.commit(f"c{i}", weights=make_weights(i)).commit_hash for i in range(4)]
    repo.tag_version("v2", "third", metrics={"acc": 1}, ref=ids[2])
    repo.tag_version("v1", ref=ids[1])
    repo.create_branch("keep", ids[3])
    mapping = repo.drop_commits("main", [ids[1]])
    assert mapping[ids[1]] == ids[0]
    assert ids[0] not in mapping  # below the dropped commit nothing changes
    assert [c.message for c in repo.log()] == ["c3", "c2", "c0"]
    tags = {t.name: t for t in repo.list_tags()}
    assert "v1" not in tags
    assert tags["v2"].commit == mapping[ids[2]]
    assert tags["v2"].metrics == {"acc": 1}
    assert repo.resolve("keep") == ids[3]  # other branches keep the old history
    assert repo.reflog("main")[0].message.startswith("rewrite: dropped 1")
    with pytest.raises(CoralError, match="not in the first-parent history"):
        repo.drop_commits("main", [ids[1]])
    with pytest.raises(CoralError, match="empty"):
        repo.drop_commits("main", [c.commit_hash for c in repo.log()])
    with pytest.raises(RefNotFoundError):
        repo.drop_commits("nope", [])
    assert len(repo.log()) == 3  # a refused rewrite changed nothing


def test_a_manager_sees_history_another_writer_rewrote(repo: Repository) -> None:
    config = CheckpointConfig(max_checkpoints=2, tag_best_checkpoints=False)
    first, second = CheckpointManager(repo, config, "exp"), CheckpointManager(repo, config, "exp")
    for step in range(3):
        save(first, step)  # first's retention rewrites the branch: second's ids go stale
    save(second, 3)
    assert [c.step for c in second.checkpoints] == [2, 3]
    assert {c.commit_hash for c in second.checkpoints} == {c.commit_hash for c in repo.log()}


def test_a_run_resumed_from_an_older_checkpoint_branches_off_there(
    repo: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    config = CheckpointConfig(tag_best_checkpoints=False)
    first = CheckpointManager(repo, config, "exp")
    ids = {step: save(first, step) for step in (10, 20, 30)}
    resumed = CheckpointManager(repo, config, "exp")  # a new process, loaded step 10
    with caplog.at_level("WARNING", logger="coral.checkpoint"):
        save(resumed, 15)
    assert "main-from-step-10" in caplog.text
    assert resumed.branch == "main-from-step-10"
    assert [c.step for c in resumed.checkpoints] == [10, 15]
    latest = resumed.latest
    assert latest is not None
    assert repo.read_commit(latest.commit_hash).parent_hashes == (ids[10],)
    assert [c.step for c in CheckpointManager(repo, config, "exp").checkpoints] == [10, 20, 30]
    save(resumed, 25)  # later saves follow the new branch
    assert [c.step for c in resumed.checkpoints] == [10, 15, 25]
    again = CheckpointManager(repo, config, "exp")  # from step 10 once more: another branch
    save(again, 12)
    assert again.branch == "main-from-step-10-2"
    fresh = CheckpointManager(repo, config, "exp")  # steps below every checkpoint: a new run
    save(fresh, 5)
    assert fresh.branch == "main"
