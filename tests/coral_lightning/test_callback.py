"""CoralCallback: the policy from Lightning's names, commits of real fits, resume, rank 0 only."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy

from coral_core import CheckpointConfig, ConfigError, Repository
from coral_core.checkpoint import CHECKPOINT_KEY
from coral_lightning import (
    CoralCallback,
    CoralCheckpointIO,
    UnstorableCheckpointError,
    policy_from_settings,
)
from coral_lightning.convert import ENTRIES_KEY
from coral_torch import load_state_dict

from .tiny import LEAFSPEC_FILTER, QUIET, TinyClassifier, loaders

pytestmark = pytest.mark.filterwarnings(LEAFSPEC_FILTER)
ROOT = Path(__file__).resolve().parents[2]


def fit(
    callback: pl.Callback, epochs: int, ckpt_path: str | None = None, **kwargs: Any
) -> tuple[pl.Trainer, TinyClassifier]:
    """Train a TinyClassifier for ``epochs`` (6 steps each) with ``callback``."""
    pl.seed_everything(0, verbose=False)
    model = TinyClassifier()
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], **QUIET, **kwargs)
    trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
    return trainer, model


# -- the policy -----------------------------------------------------------------------


def test_modelcheckpoint_names_map_to_the_policy() -> None:
    assert policy_from_settings({}) == CheckpointConfig()
    best = policy_from_settings({"monitor": "val_loss", "mode": "min", "save_top_k": 2})
    assert (best.save_on_best_metric, best.minimize, best.keep_best_n_checkpoints) == (
        "val_loss",
        True,
        2,
    )
    assert policy_from_settings({"save_top_k": 3}).max_checkpoints == 3  # no monitor: newest k
    assert policy_from_settings({"save_top_k": -1}) == CheckpointConfig()  # keep all
    assert policy_from_settings({"save_top_k": 0}).auto_commit is False  # save_last only
    steps = policy_from_settings({"every_n_train_steps": 5})
    assert (steps.save_every_n_steps, steps.save_every_n_epochs) == (5, None)
    both = policy_from_settings({"every_n_train_steps": 5, "every_n_epochs": 2})
    assert (both.save_every_n_steps, both.save_every_n_epochs) == (5, 2)
    assert policy_from_settings({"every_n_epochs": 0}).save_every_n_epochs is None
    fields = policy_from_settings({"save_on_best_metric": "val_accuracy", "max_checkpoints": 2})
    assert not fields.minimize
    assert fields.max_checkpoints == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"monitr": "val_loss"}, "unknown setting.*monitr"),
        ({"monitor": "a", "save_on_best_metric": "b"}, "monitor= and save_on_best_metric="),
        ({"monitor": "a", "save_top_k": 2, "keep_best_n_checkpoints": 3}, "save_top_k="),
        ({"save_last": "link"}, "save_last"),
        ({"mode": "up"}, "mode"),
        ({"every_n_train_steps": -1}, "save_every_n_steps"),
    ],
)
def test_bad_settings_are_refused_by_name(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CoralCallback("unused", **settings)


def test_config_and_settings_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="not both"):
        CoralCallback("unused", config=CheckpointConfig(), monitor="val_loss")


# -- commits of a real fit --------------------------------------------------------------


def test_commits_follow_the_policy_with_metrics_state_and_best_tag(tmp_path: Path) -> None:
    callback = CoralCallback(tmp_path / "repo", monitor="val_loss", save_top_k=2)
    trainer, model = fit(callback, epochs=4)
    repo = Repository(tmp_path / "repo")
    assert callback.manager is not None
    kept = callback.manager.checkpoints
    best = callback.manager.best
    assert best is not None
    assert best in kept
    assert len(kept) <= 3  # the two best and the newest
    assert kept[-1].step == trainer.global_step == 24
    assert kept[-1].epoch == 3
    history = callback.manager.history  # every checkpoint stays a commit; pruned ones lose weights
    assert [c.commit_hash for c in repo.log()] == [c.commit_hash for c in history[::-1]]
    assert {c.commit_hash for c in history if c.kept} == {c.commit_hash for c in kept}
    assert all(repo.weights_status(c.commit_hash) == "pruned" for c in history if not c.kept)
    assert repo.resolve("TinyClassifier/best") == best.commit_hash
    assert callback.best_model_path == f"coral://{repo.path}:{best.commit_hash}"

    newest = repo.show(kept[-1].commit_hash)
    assert {"val_loss", "val_accuracy", "train_loss"} <= set(newest.metrics)
    assert newest.metrics["val_loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    record = newest.metadata.metadata[CHECKPOINT_KEY]
    assert record["experiment"] == "TinyClassifier"
    assert (record["epoch"], record["step"], record["index"]) == (3, 24, len(history))
    assert record["run"] == callback.manager.run_id
    assert (record["monitor"], record["minimize"]) == ("val_loss", True)
    for name, tensor in load_state_dict(repo, newest.commit_hash).items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    state = repo.training_state(newest.commit_hash)
    assert state is not None
    assert state.global_step == 24
    assert state.optimizer_state[0]["state"][0]["exp_avg"].shape == (16, 10)
    assert state.scheduler_state[0]["last_epoch"] == 4
    assert state.learning_rate == pytest.approx(3e-3 * 0.7**4)  # epoch schedulers step first
    assert {"python", "numpy", "torch"} <= set(state.random_state)
    entries = state.extra[ENTRIES_KEY]
    assert entries["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 4
    assert entries["hyper_parameters"] == {"hidden": 16, "lr": 3e-3}
    assert repo.verify().ok


def test_step_schedule_and_a_last_commit(tmp_path: Path) -> None:
    callback = CoralCallback(tmp_path / "repo", "steps", every_n_train_steps=5)
    fit(callback, epochs=2)  # 12 steps: commits at 5 and 10, and the last at 12
    assert callback.manager is not None
    assert [c.step for c in callback.manager.checkpoints] == [5, 10, 12]
    assert callback.last_commit is not None
    assert callback.last_commit.commit_hash == callback.manager.checkpoints[-1].commit_hash


def test_fast_dev_run_commits_nothing(tmp_path: Path) -> None:
    callback = CoralCallback(tmp_path / "repo")
    fit(callback, epochs=1, fast_dev_run=True)
    assert Repository(tmp_path / "repo").log() == []


def test_resume_from_a_commit_with_ckpt_path_and_test_the_best(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    first = CoralCallback(repo, "run", monitor="val_accuracy")
    fit(first, epochs=2)
    assert first.manager is not None
    stopped = first.manager.latest
    assert stopped is not None
    assert stopped.step == 12

    again = CoralCallback(repo, "run", monitor="val_accuracy")
    trainer, model = fit(
        again, epochs=4, plugins=[CoralCheckpointIO(repo)], ckpt_path="coral://main"
    )
    assert again.manager is not None
    steps = [c.step for c in again.manager.checkpoints]
    assert steps[: len(first.manager.checkpoints)] == [c.step for c in first.manager.checkpoints]
    assert steps[-2:] == [18, 24]  # went on from step 12, not from 0
    optimizer = trainer.optimizers[0].state_dict()
    assert int(optimizer["state"][0]["step"]) == 24

    best = again.manager.best
    assert best is not None
    model.net[0].weight.data.zero_()
    trainer.validate(model, loaders()[1], ckpt_path="best", verbose=False)  # our best_model_path
    stored = load_state_dict(repo, best.commit_hash)["net.0.weight"]
    assert torch.equal(model.net[0].weight, stored)


def test_a_checkpoint_that_needs_a_pickle_is_refused_before_writing(tmp_path: Path) -> None:
    class WithPath(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"data": tmp_path})  # a PosixPath: would need a pickle

    trainer = pl.Trainer(max_epochs=1, callbacks=[CoralCallback(tmp_path / "repo")], **QUIET)
    with pytest.raises(
        UnstorableCheckpointError, match=r"entry 'hyper_parameters/data' is a PosixPath"
    ):
        trainer.fit(WithPath(), *loaders())
    assert Repository(tmp_path / "repo").log() == []


# -- distributed: only global rank 0 writes --------------------------------------------------


def test_only_global_rank_zero_opens_the_repository(tmp_path: Path) -> None:
    environment = LightningEnvironment()
    trainer = pl.Trainer(
        strategy=DDPStrategy(cluster_environment=environment), devices=1, max_epochs=1, **QUIET
    )
    model = TinyClassifier()
    callback = CoralCallback(tmp_path / "repo")
    environment.set_global_rank(1)
    assert not trainer.is_global_zero
    callback.setup(trainer, model, "fit")
    callback.on_train_epoch_end(trainer, model)
    callback.on_train_end(trainer, model)
    assert callback.manager is None
    assert not (tmp_path / "repo").exists()
    with pytest.raises(ConfigError, match="rank 0"):
        callback.save(trainer, model)
    environment.set_global_rank(0)
    callback.setup(trainer, model, "fit")
    assert callback.manager is not None
    assert (tmp_path / "repo" / ".coral").is_dir()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_two_process_ddp_commits_once_from_rank_zero(tmp_path: Path) -> None:
    port = str(free_port())
    ranks = []
    for rank in ("0", "1"):
        env = {
            **os.environ,
            "LOCAL_RANK": rank,
            "NODE_RANK": "0",
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "PYTHONWARNINGS": "error",
        }
        command = [sys.executable, "-m", "tests.coral_lightning.ddp_run"]
        ranks.append(
            subprocess.Popen(
                [*command, str(tmp_path / "repo"), str(tmp_path / "out")],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for process in ranks:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output.decode()[-3000:]
    reports = [json.loads((tmp_path / f"out.{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["opened"]
    assert len(reports[0]["commits"]) == 2
    assert reports[1] == {"rank": 1, "opened": False, "commits": []}
    repo = Repository(tmp_path / "repo")
    assert [c.commit_hash for c in repo.log()][::-1] == reports[0]["commits"]


def test_a_monitor_typo_and_unstorable_hyperparameters_fail_early(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not find the monitored key"):
        fit(CoralCallback(tmp_path / "typo", monitor="val_los"), epochs=2)  # as ModelCheckpoint
    assert not any(Repository(tmp_path / "typo").log())  # refused at the first validation

    class WithOpaque(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.hparams["thing"] = argparse.Namespace(lr=1)  # needs a pickle to be stored

    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=2, callbacks=[CoralCallback(tmp_path / "opaque")], **QUIET)
    with pytest.raises(UnstorableCheckpointError, match="thing"):
        trainer.fit(WithOpaque(), *loaders())
    assert trainer.current_epoch == 0  # before the first epoch trained
