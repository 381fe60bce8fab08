"""CoralTrainerCallback in real transformers.Trainer runs: commits, best tag, exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Trainer

from coral_core import CheckpointConfig, ConfigError, CoralError, Repository, clone
from coral_core.formats import read_safetensors
from coral_hf import FILES_KEY, CoralTrainerCallback, checkout_checkpoint, save_pretrained
from coral_hf.callback import TRAINER_STATE_KEY, policy_for

from .tiny import Pairs, accuracy, arguments, classifier, train


def same_tree(a: Any, b: Any) -> bool:
    """Equal nested state: the same keys (in any order), types, and tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in b)
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_tree(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


def test_each_trainer_save_is_a_commit_with_metrics_state_and_best_tag(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    _, callback = train(repo, tmp_path / "out")
    assert callback.manager is not None
    checkpoints = callback.manager.checkpoints
    assert [c.step for c in checkpoints] == [4, 8, 12]  # save_strategy="epoch", 4 steps each
    assert [c.epoch for c in checkpoints] == [0, 1, 2]
    for checkpoint in checkpoints:
        assert {"loss", "eval_loss", "eval_accuracy", "learning_rate"} <= set(checkpoint.metrics)
    best = max(checkpoints, key=lambda c: (c.metrics["eval_accuracy"], -c.step))
    assert repo.resolve("bert/best") == best.commit_hash
    state = repo.training_state(checkpoints[-1].commit_hash)
    assert state is not None
    assert state.global_step == 12
    assert state.optimizer_state["state"]  # AdamW moments, as tensors
    assert state.scheduler_state["last_epoch"] == 12
    assert set(state.random_state) >= {"python", "numpy", "torch"}
    assert state.extra[TRAINER_STATE_KEY]["global_step"] == 12
    files = repo.show(checkpoints[-1].commit_hash).metadata.metadata[FILES_KEY]
    assert "config.json" in files
    folder = callback.checkout(tmp_path / "best", load_best=True)
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == best.step


def test_steps_lower_is_better_and_retention(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    callback = CoralTrainerCallback(repo, "steps", CheckpointConfig(max_checkpoints=1))
    trainer = Trainer(
        model=classifier(),
        args=arguments(
            tmp_path / "out",
            save_strategy="steps",
            save_steps=5,
            eval_strategy="steps",
            eval_steps=5,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
        ),
        train_dataset=Pairs(),
        eval_dataset=Pairs(16, seed=1),
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.config.save_on_best_metric == "eval_loss"
    assert callback.config.minimize
    assert callback.manager is not None
    kept = callback.manager.checkpoints
    steps = [c.step for c in kept]
    assert steps[-1] == 12  # the Trainer saves the last step too; retention keeps the newest
    best = min(kept, key=lambda c: c.metrics["eval_loss"])
    assert repo.resolve("steps/best") == best.commit_hash
    assert len(kept) <= 2  # the newest and the tagged best


@pytest.mark.parametrize(
    ("changes", "resume_step"),
    [
        ({}, 4),
        ({"save_strategy": "steps", "save_steps": 3}, 6),
        ({"save_strategy": "steps", "save_steps": 3, "gradient_accumulation_steps": 2}, 3),
    ],
    ids=["epoch-boundary", "mid-epoch", "mid-epoch-accumulating"],
)
def test_resume_from_a_coral_commit_equals_the_uninterrupted_run(
    tmp_path: Path, changes: dict[str, object], resume_step: int
) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    whole, callback = train(repo, tmp_path / "whole", **changes)
    assert callback.manager is not None
    commit = next(c for c in callback.manager.checkpoints if c.step == resume_step)
    folder = checkout_checkpoint(repo, commit.commit_hash, tmp_path / "checkout")

    # The folder is what the Trainer itself wrote for that step.
    own = tmp_path / "whole" / f"checkpoint-{resume_step}"
    for name in ("trainer_state.json", "config.json"):
        assert (folder / name).read_bytes() == (own / name).read_bytes(), name
    ours, theirs = (
        read_safetensors(folder / "model.safetensors"),
        read_safetensors(own / "model.safetensors"),
    )
    assert ours.keys() == theirs.keys()
    assert all(ours[k].tobytes() == theirs[k].tobytes() for k in ours)
    for name in ("optimizer.pt", "scheduler.pt"):
        a = torch.load(folder / name, weights_only=True)
        b = torch.load(own / name, weights_only=True)
        assert same_tree(a, b), name

    again = Repository(tmp_path / "again", init=True)
    resumed, _ = train(again, tmp_path / "resumed", folder, **changes)
    expected = whole.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name  # bit for bit (float32, no NaN)


def test_only_callback_checkpoints_can_be_checked_out(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    commit = save_pretrained(classifier(), repo, "not a checkpoint")
    with pytest.raises(CoralError, match="holds no Trainer state"):
        checkout_checkpoint(repo, commit.commit_hash, tmp_path / "out")


def test_a_best_metric_other_than_the_trainers_is_refused(tmp_path: Path) -> None:
    args = arguments(tmp_path, metric_for_best_model="accuracy")
    with pytest.raises(ConfigError, match="metric_for_best_model is 'accuracy'"):
        policy_for(args, CheckpointConfig(save_on_best_metric="eval_loss"))
    assert policy_for(args, CheckpointConfig()).save_on_best_metric == "eval_accuracy"
    assert json.dumps(policy_for(args, CheckpointConfig()).minimize) == "false"


def test_push_to_sends_each_checkpoint_as_the_trainer_saves(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.add_remote("origin", str(tmp_path / "remote"))
    config = CheckpointConfig(max_checkpoints=1, push_to="origin")
    callback = CoralTrainerCallback(repo, "bert", config)
    trainer = Trainer(
        model=classifier(seed=0),
        args=arguments(tmp_path / "out"),
        train_dataset=Pairs(),
        eval_dataset=Pairs(16, seed=1),
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    trainer.train()  # on_train_end waits for the pushes
    copy = clone(str(tmp_path / "remote"), tmp_path / "copy")
    assert [c.commit_hash for c in copy.log()] == [c.commit_hash for c in repo.log()]
    assert callback.manager is not None
    latest = callback.manager.latest
    assert latest is not None
    assert copy.resolve("bert/last") == latest.commit_hash
    assert copy.weights_status(latest.commit_hash) == "kept"
    recorded = callback.manager.hyperparameters  # what a sweep varies, from the arguments
    assert recorded["learning_rate"] == trainer.args.learning_rate
    assert recorded["model_type"] == "bert"
