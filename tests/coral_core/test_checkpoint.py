"""CheckpointConfig validation, CheckpointManager schedule, best tracking, runs, retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    ConfigError,
    CoralError,
    InvalidRefNameError,
    PrunedCommitError,
    RefNotFoundError,
    Repository,
    TrainingState,
)
from coral_core.runs import list_runs, pointer_ref

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


def test_best_is_tracked_by_a_pointer_and_saves_on_improvement(repo: Repository) -> None:
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
    assert repo.list_tags() == []  # a moving pointer, not a tag (tags do not move)
    best = pointer_ref("exp", manager.run_id, "best")
    assert repo.refs.read(best) == second
    assert [e.new for e in repo.reflog(best)] == [second, first]  # moved in the commit's step
    save(manager, 3, val_loss=0.7)
    assert repo.resolve("exp/best") == second
    assert repo.resolve(f"exp/{manager.run_id}/best") == second
    assert repo.resolve("exp/last") == manager.checkpoints[-1].commit_hash
    assert manager.commit_of(load_best=True) == second
    assert manager.commit_of() == manager.checkpoints[-1].commit_hash
    assert manager.commit_of(ref=first[:10]) == first


def test_retention_prunes_weights_and_keeps_every_commit(repo: Repository) -> None:
    repo.commit("base model", weights=make_weights(100))  # not a checkpoint: never pruned
    config = CheckpointConfig(
        save_on_best_metric="acc", keep_best_n_checkpoints=2, max_checkpoints=4
    )
    manager = CheckpointManager(repo, config, "exp")
    accuracies = [0.5, 0.9, 0.6, 0.8, 0.55, 0.52]
    ids = [save(manager, step, acc=acc) for step, acc in enumerate(accuracies)]
    kept = [(c.step, c.metrics["acc"]) for c in manager.checkpoints]
    assert kept == [(1, 0.9), (3, 0.8), (4, 0.55), (5, 0.52)]  # best two + last two: four
    history = repo.log()
    assert [c.commit_hash for c in history[:-1]] == ids[::-1]  # nothing rewritten
    assert history[-1].message == "base model"
    assert [c.step for c in manager.history if not c.kept] == [0, 2]
    assert repo.resolve("exp/best") == ids[1]
    for step in (0, 2):
        assert repo.weights_status(ids[step]) == "pruned"
        with pytest.raises(PrunedCommitError, match="nearest kept checkpoint") as caught:
            repo.get_weight("encoder.weight", ids[step])
        assert caught.value.nearest == ids[step + 1]
        assert isinstance(caught.value, LookupError)
        assert repo.show(ids[step]).metrics["acc"] == accuracies[step]  # the commit stays
    assert repo.gc().removed_objects == 0  # retention freed the pruned weights already
    assert repo.verify().ok
    for checkpoint in manager.checkpoints:  # every kept one restores exactly
        restored = repo.get_weight("encoder.weight", checkpoint.commit_hash).data
        assert (restored == make_weights(checkpoint.step)["encoder.weight"].data).all()
        assert repo.training_state(checkpoint.commit_hash) is not None


def test_a_run_goes_on_by_its_id_and_a_new_run_is_separate(repo: Repository) -> None:
    config = CheckpointConfig(max_checkpoints=3, tag_best_checkpoints=False)
    manager = CheckpointManager(repo, config, "exp", hyperparameters={"lr": 1e-3})
    for step in range(5):
        save(manager, step)
    other = CheckpointManager(repo, config, "other-experiment")
    assert other.checkpoints == []
    again = CheckpointManager(repo, config, "exp", run_id=manager.run_id)
    assert [c.step for c in again.checkpoints] == [2, 3, 4]
    save(again, 5)
    assert [c.step for c in again.checkpoints] == [3, 4, 5]
    assert len(repo.log()) == 6
    rerun = CheckpointManager(repo, config, "exp")  # a sweep: same name, a run of its own
    assert rerun.run_id != manager.run_id
    assert rerun.checkpoints == []
    for step in range(4):
        save(rerun, step)
    assert [c.step for c in again.checkpoints] == [3, 4, 5]
    assert [
        c.step for c in CheckpointManager(repo, config, "exp", run_id=manager.run_id).checkpoints
    ] == [3, 4, 5]
    assert [c.step for c in rerun.checkpoints] == [1, 2, 3]
    assert len(repo.log()) == 10  # both runs in the branch's history
    record = repo.show(again.checkpoints[-1].commit_hash).metadata.metadata["coral.checkpoint"]
    assert record["run"] == manager.run_id
    assert record["hyperparameters"] == {"lr": 1e-3}
    assert record["index"] == 6


def test_manager_needs_a_branch_and_a_checkpoint_to_resume(repo: Repository) -> None:
    manager = CheckpointManager(repo, CheckpointConfig(), "exp")
    with pytest.raises(RefNotFoundError, match="no checkpoint"):
        manager.commit_of()
    first = save(manager, 0)
    repo.checkout(manager.checkpoints[0].commit_hash)  # detached HEAD
    with pytest.raises(CoralError, match="detached"):
        CheckpointManager(repo, CheckpointConfig(), "exp")
    fresh = CheckpointManager(repo, CheckpointConfig(branch="main"), "exp")
    assert fresh.latest is None  # a new run...
    assert fresh.commit_of() == first  # ...that can resume the experiment's newest
    with pytest.raises(ConfigError):
        CheckpointManager(repo, CheckpointConfig(branch="main"), "")
    with pytest.raises(ConfigError, match="run id"):
        CheckpointManager(repo, CheckpointConfig(branch="main"), "exp", run_id="best")


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


def test_drop_commits_refuses_to_rewrite_what_a_remote_has(
    repo: Repository, tmp_path: Path
) -> None:
    ids = [repo.commit(f"c{i}", weights=make_weights(i)).commit_hash for i in range(3)]
    repo.add_remote("origin", str(tmp_path / "remote"))
    repo.push("origin")
    local = repo.commit("c3", weights=make_weights(3)).commit_hash
    repo.commit("c4", weights=make_weights(4))
    with pytest.raises(CoralError, match="a remote has"):
        repo.drop_commits("main", [ids[1]])
    assert repo.log()[2].commit_hash == ids[2]  # nothing changed
    repo.drop_commits("main", [local])  # unpushed history may be rewritten
    assert [c.message for c in repo.log()] == ["c4", "c2", "c1", "c0"]
    repo.drop_commits("main", [ids[1]], force=True)  # an explicit, forced rewrite
    assert [c.message for c in repo.log()] == ["c4", "c2", "c0"]


def test_two_runs_of_one_name_interleaved_keep_their_own_retention(repo: Repository) -> None:
    config = CheckpointConfig(max_checkpoints=2, tag_best_checkpoints=False)
    first, second = CheckpointManager(repo, config, "exp"), CheckpointManager(repo, config, "exp")
    for step in range(4):
        save(first, step)
        save(second, 100 + step)
    assert [c.step for c in first.checkpoints] == [2, 3]
    assert [c.step for c in second.checkpoints] == [102, 103]
    assert len(repo.log()) == 8
    runs = {r.run_id: r for r in list_runs(repo)}
    assert {first.run_id, second.run_id} == set(runs)
    assert [c.record.step for c in runs[first.run_id].checkpoints] == [0, 1, 2, 3]
    assert runs[first.run_id].kept == 2


def test_a_pinned_or_tagged_checkpoint_keeps_its_weights(repo: Repository) -> None:
    config = CheckpointConfig(max_checkpoints=1, tag_best_checkpoints=False)
    manager = CheckpointManager(repo, config, "exp")
    first = save(manager, 0)
    repo.pin(first)
    second = save(manager, 1)
    repo.tag_version("v-second", ref=second)
    save(manager, 2)
    save(manager, 3)
    assert repo.weights_status(first) == repo.weights_status(second) == "kept"
    assert (
        repo.get_weight("encoder.weight", first).data == make_weights(0)["encoder.weight"].data
    ).all()
    assert repo.pins() == [first]
    repo.unpin(first)
    with pytest.raises(RefNotFoundError):
        repo.unpin(first)
    assert repo.weights_status(first) == "pruned"  # retention's mark applies again
    repo.gc()
    with pytest.raises(PrunedCommitError):
        repo.get_all_weights(first)
    with pytest.raises(PrunedCommitError, match="pruned"):
        repo.pin(first)  # gone: nothing to pin
    assert repo.verify().ok


def test_diff_and_checkout_of_a_pruned_checkpoint(repo: Repository) -> None:
    config = CheckpointConfig(
        max_checkpoints=1, save_on_best_metric="loss", tag_best_checkpoints=False
    )
    manager = CheckpointManager(repo, config, "exp")
    old = save(manager, 0, loss=1.0)
    new = save(manager, 1, loss=0.5)
    diff = repo.diff(old, new)
    assert diff.weights_gone == (old,)
    assert diff.tensors == {}
    assert diff.metrics["loss"] == (1.0, 0.5)
    with pytest.raises(PrunedCommitError):
        repo.checkout(old)
    with pytest.raises(PrunedCommitError):
        repo.training_state(old)
    assert repo.current_branch == "main"


def test_a_run_resumed_from_an_older_checkpoint_branches_off_there(
    repo: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    config = CheckpointConfig(tag_best_checkpoints=False)
    first = CheckpointManager(repo, config, "exp")
    ids = {step: save(first, step) for step in (10, 20, 30)}
    resumed = CheckpointManager(repo, config, "exp")  # a new process, loaded step 10
    resumed.resume_from(ids[10])
    with caplog.at_level("WARNING", logger="coral.checkpoint"):
        save(resumed, 15)
    assert "main-from-step-10" in caplog.text
    assert resumed.branch == "main-from-step-10"
    assert resumed.parent_run == first.run_id != resumed.run_id
    assert [c.step for c in resumed.checkpoints] == [15]
    latest = resumed.latest
    assert latest is not None
    assert repo.read_commit(latest.commit_hash).parent_hashes == (ids[10],)
    assert [c.step for c in first.checkpoints] == [10, 20, 30]
    save(resumed, 25)  # later saves follow the new branch
    assert [c.step for c in resumed.checkpoints] == [15, 25]
    again = CheckpointManager(repo, config, "exp")  # from step 10 once more: another branch
    again.resume_from(ids[10])
    save(again, 12)
    assert again.branch == "main-from-step-10-2"
    newest = CheckpointManager(repo, config, "exp")  # from the run's newest: the same run
    newest.resume_from(ids[30])
    save(newest, 40)
    assert newest.run_id == first.run_id
    assert newest.branch == "main"
    assert [c.step for c in newest.checkpoints] == [10, 20, 30, 40]


def test_drop_commits_over_pruned_checkpoints_keeps_them_pruned(repo: Repository) -> None:
    config = CheckpointConfig(max_checkpoints=1, tag_best_checkpoints=False)
    manager = CheckpointManager(repo, config, "exp")
    for step in range(1, 5):
        save(manager, step)
    oldest = repo.log()[-1].commit_hash
    mapping = repo.drop_commits("main", [oldest])
    assert [repo.weights_status(c.commit_hash) for c in repo.log()] == ["kept", "pruned", "pruned"]
    with pytest.raises(PrunedCommitError):
        repo.get_weight("encoder.weight", repo.log()[1].commit_hash)
    assert repo.verify().ok
    assert repo.gc().removed_objects == 4  # the dropped commit, the three rewritten ones
    assert repo.verify().ok
    (run,) = list_runs(repo)  # one run, its pointer moved with the rewrite
    assert [c.record.step for c in run.checkpoints] == [2, 3, 4]
    assert run.last == mapping[manager.history[-1].commit_hash]


def test_a_manager_prunes_its_own_run_only(repo: Repository) -> None:
    config = CheckpointConfig(tag_best_checkpoints=False)
    first, second = CheckpointManager(repo, config, "exp"), CheckpointManager(repo, config, "exp")
    theirs, ours = save(first, 1), save(second, 2)
    second.prune([theirs, ours])
    assert repo.weights_status(theirs) == "kept"
    assert [c.kept for c in second.history] == [False]


def test_resuming_from_a_checkpoint_of_the_newest_step_goes_on_with_the_run(
    repo: Repository,
) -> None:
    config = CheckpointConfig(tag_best_checkpoints=False)
    first = CheckpointManager(repo, config, "exp")
    save(first, 10)
    best = save(first, 20)  # a best and a last of one moment, as ModelCheckpoint saves them
    save(first, 20)
    again = CheckpointManager(repo, config, "exp")
    again.resume_from(best)
    save(again, 30)
    assert (again.run_id, again.branch) == (first.run_id, "main")
