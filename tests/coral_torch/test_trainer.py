"""CoralTrainer: checkpoints of real training, callbacks, best, async commits, exact resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from coral_core import (
    CheckpointConfig,
    ConfigError,
    CoralError,
    RefNotFoundError,
    Repository,
    TrainingState,
    clone,
)
from coral_torch import CoralTrainer, StateDictMismatchError, to_tensor
from coral_torch.trainer import LOOP_KEY

from .test_state_dict import BatchNormMLP, TiedLM, same_bits

ROOT = Path(__file__).resolve().parents[2]


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(48, 6, generator=generator)
    targets = torch.randint(0, 2, (48,), generator=generator)
    data = TensorDataset(inputs, targets)
    return DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=16)


def trainer_for(repo: Repository, config: CheckpointConfig, **kwargs: Any) -> CoralTrainer:
    torch.manual_seed(0)
    model = BatchNormMLP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    return CoralTrainer(model, repo, "mlp", config, optimizer, scheduler, **kwargs)


def test_fit_commits_on_schedule_calls_back_and_loads_the_best(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    config = CheckpointConfig(
        save_every_n_epochs=2, save_on_best_metric="val_loss", keep_best_n_checkpoints=1
    )
    trainer = trainer_for(repo, config)
    seen: list[tuple[int, int, str]] = []
    trainer.register_checkpoint_callback(lambda s, h: seen.append((s.epoch, s.global_step, h)))
    train, val = loaders()
    state = trainer.fit(train, val, epochs=4)
    assert state.global_step == 24
    assert state.epoch == 3
    assert seen
    assert seen[0][:2] == (0, 6)  # the first epoch is always an improvement
    assert (3, 24) in [s[:2] for s in seen]  # the schedule: after epoch 1 and 3
    kept = trainer.manager.checkpoints
    best = trainer.manager.best
    assert best is not None
    assert kept[-1].step == 24  # the newest is kept, and the best
    assert {c.commit_hash for c in kept} == {best.commit_hash, kept[-1].commit_hash}
    assert repo.resolve("mlp/best") == best.commit_hash
    commit = repo.show(best.commit_hash)
    assert commit.metrics["val_loss"] == min(c.metrics["val_loss"] for c in kept)
    assert {"train_loss", "val_loss", "val_accuracy", "loss"} <= set(commit.metrics)
    stored = repo.training_state(best.commit_hash)
    assert stored is not None
    assert stored.learning_rate is not None
    assert set(stored.random_state) >= {"python", "numpy", "torch"}
    assert stored.optimizer_state["param_groups"][0]["betas"] == (0.9, 0.999)
    loaded = trainer.load_checkpoint(load_best=True)
    assert loaded.global_step == best.step
    for name, tensor in trainer.model.state_dict().items():
        assert same_bits(tensor, to_tensor(repo.get_weight(name, best.commit_hash).data)), name
    assert trainer.optimizer is not None
    assert trainer.optimizer.state_dict()["state"][0]["exp_avg"].shape == (8, 6)
    assert repo.verify().ok


@pytest.mark.parametrize("amp", [False, True], ids=["plain", "amp-clip-accumulate"])
def test_exact_resume_in_a_new_process(tmp_path: Path, amp: bool) -> None:
    """Stop mid-epoch in one process, resume in another: bit for bit the uninterrupted run
    (also with bf16 autocast, a grad scaler, clipping, accumulation and a per-step schedule)."""
    env = {**os.environ, "PYTHONWARNINGS": "error", "CORAL_TEST_AMP": "1" if amp else "0"}

    def run(mode: str, repo: str, *extra: str) -> dict[str, Any]:
        out = tmp_path / f"{mode}.pt"
        script = [sys.executable, "-m", "tests.coral_torch.resume_run"]
        subprocess.run(
            [*script, str(tmp_path / repo), str(out), mode, *extra], cwd=ROOT, env=env, check=True
        )
        return torch.load(out, weights_only=True)

    full = run("full", "uninterrupted")
    steps, batches = (4, 2) if amp else (10, 4)  # 6 batches an epoch; with amp, 2 a step
    first = run("first", "split", str(steps))
    repo = Repository(tmp_path / "split")
    stopped = repo.training_state()
    assert stopped is not None
    assert stopped.global_step == steps
    assert stopped.extra[LOOP_KEY]["batch_in_epoch"] == batches  # mid-epoch
    if amp:
        assert stopped.grad_scaler_state is not None
        assert stopped.scheduler_state["last_epoch"] == steps  # stepped with the optimizer
    resumed = run("resume", "split")
    for name, tensor in full["model"].items():
        assert same_bits(resumed["model"][name], tensor), name
    for index, values in full["optimizer"]["state"].items():
        for key, tensor in values.items():
            assert same_bits(resumed["optimizer"]["state"][index][key], tensor), (index, key)
    assert not same_bits(first["model"]["0.weight"], full["model"]["0.weight"])


def test_async_commits_equal_sync_ones_and_errors_surface(tmp_path: Path) -> None:
    config = CheckpointConfig(save_every_n_steps=3, save_every_n_epochs=None, save_last=False)
    sync = trainer_for(Repository(tmp_path / "sync", init=True), config)
    train, _ = loaders()
    sync.fit(train, epochs=2)
    with trainer_for(
        Repository(tmp_path / "async", init=True), config, async_commit=True, max_pending=2
    ) as background:
        hashes: list[str] = []
        background.register_checkpoint_callback(lambda s, h: hashes.append(h))
        background.fit(train, epochs=2)
    assert len(hashes) == 4
    trees_sync = [c.tree_hash for c in sync.repo.log()]
    trees_async = [c.tree_hash for c in background.repo.log()]
    assert trees_sync == trees_async  # the same snapshots, though training went on meanwhile
    assert hashes[-1] == background.repo.resolve("main")

    failing = trainer_for(Repository(tmp_path / "fail", init=True), config, async_commit=True)
    failing.manager.branch = "bad..name"  # every commit now fails on the background thread
    failing.save_checkpoint()
    with pytest.raises(CoralError):
        failing.wait()
    failing.close()


def test_step_api_with_a_tied_transformer_and_no_optimizer_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = CheckpointConfig(save_every_n_steps=2, include_optimizer=False, auto_commit=True)
    trainer = CoralTrainer(model, repo_path=tmp_path / "lm", config=config, optimizer=optimizer)
    tokens = torch.randint(0, 50, (4, 6))
    commits = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, 50), tokens.reshape(-1))
        loss.backward()
        optimizer.step()
        commits.append(trainer.step(loss=loss.item(), batch_accuracy=0.5))
    assert [c is not None for c in commits] == [False, True, False, True]
    trainer.epoch_end(0, val_loss=1.0)
    repo = trainer.repo
    assert "head.weight" not in repo.ls_tree()
    state = repo.training_state()
    assert state is not None
    assert state.optimizer_state is None
    assert state.metrics == {"batch_accuracy": 0.5, "val_loss": 1.0}
    torch.manual_seed(5)
    fresh = TiedLM()
    again = CoralTrainer(fresh, repo, config=config)
    assert again.load_checkpoint().epoch == 0
    assert fresh.head.weight is fresh.embed.weight
    for name, tensor in model.state_dict().items():
        assert same_bits(fresh.state_dict()[name], tensor), name
    trainer.step(loss=0.1)  # the next step starts epoch 1 with fresh metrics
    assert trainer.state.epoch == 1
    assert trainer.state.metrics == {}


def test_trainer_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a repository"):
        CoralTrainer(BatchNormMLP())
    trainer = CoralTrainer(BatchNormMLP(), tmp_path, config=CheckpointConfig())
    with pytest.raises(RefNotFoundError, match="no checkpoint"):
        trainer.load_checkpoint()
    trainer.save_checkpoint("by hand")
    wrong = CoralTrainer(torch.nn.Linear(2, 2), tmp_path, config=CheckpointConfig())
    with pytest.raises(StateDictMismatchError):
        wrong.load_checkpoint()
    assert isinstance(trainer.state, TrainingState)


def test_scheduler_and_grad_scaler_state_come_back(tmp_path: Path) -> None:
    def make() -> CoralTrainer:
        torch.manual_seed(0)
        model = BatchNormMLP()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=40)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
        return CoralTrainer(
            model, tmp_path, "amp", CheckpointConfig(), optimizer, scheduler, grad_scaler=scaler
        )

    trainer = make()
    assert trainer.optimizer is not None
    inputs, targets = torch.randn(16, 6), torch.randint(0, 2, (16,))
    for _ in range(7):
        trainer.optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(trainer.model(inputs), targets)
        trainer.grad_scaler.scale(loss).backward()
        trainer.grad_scaler.step(trainer.optimizer)
        trainer.grad_scaler.update()
        trainer.scheduler.step()
        trainer.step(loss=loss.item())
    first = trainer.save_checkpoint("amp state")
    assert first is not None
    expected = (trainer.scheduler.state_dict(), trainer.grad_scaler.state_dict())
    again = make()
    again.load_checkpoint(ref=first.commit_hash)
    assert again.scheduler.state_dict() == expected[0]
    assert again.grad_scaler.state_dict() == expected[1]
    assert again.grad_scaler.get_scale() == trainer.grad_scaler.get_scale()
    assert again.state.global_step == 7


def test_resuming_an_older_checkpoint_trains_on_a_branch_from_it(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    config = CheckpointConfig(save_every_n_epochs=1)
    train, _ = loaders()
    first = trainer_for(repo, config)
    first.fit(train, epochs=3)  # checkpoints at steps 6, 12, 18
    first_run = [c.commit_hash for c in repo.log()]
    again = trainer_for(repo, config)  # another process
    step_6 = first.manager.checkpoints[0]
    assert again.load_checkpoint(ref=step_6.commit_hash).global_step == 6
    again.fit(train, epochs=2)  # epoch 1 again: step 12 of a second lineage
    assert again.manager.branch == "main-from-step-6"
    assert [c.step for c in again.manager.checkpoints] == [12]  # a new run, from step 6
    assert again.manager.parent_run == step_6.run_id
    assert repo.read_commit(again.manager.checkpoints[0].commit_hash).parent_hashes == (
        step_6.commit_hash,
    )
    assert [c.commit_hash for c in repo.log("main")] == first_run  # the first run, untouched


def test_push_to_sends_the_run_and_fit_waits_for_it(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.add_remote("origin", str(tmp_path / "remote"))
    config = CheckpointConfig(max_checkpoints=1, push_to="origin", push_strategy="end")
    trainer = trainer_for(repo, config)
    train, _ = loaders()
    trainer.fit(train, epochs=3)  # pushes once, at the end, and waits for it
    copy = clone(str(tmp_path / "remote"), tmp_path / "copy")
    assert [c.commit_hash for c in copy.log()] == [c.commit_hash for c in repo.log()]
    latest = trainer.manager.latest
    assert latest is not None
    assert copy.resolve("mlp/last") == latest.commit_hash
    assert [copy.weights_status(c.commit_hash) for c in trainer.manager.history] == [
        "pruned",
        "pruned",
        "kept",
    ]
    record = copy.show("mlp/last").metadata.metadata["coral.checkpoint"]
    assert record["hyperparameters"]["optimizer"] == "AdamW"  # the optimizer's settings
    assert record["hyperparameters"]["lr"] == 1e-2
