"""CoralCheckpointIO: ModelCheckpoint saves into Coral; ckpt_path resumes, bit for bit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from coral_core import RefNotFoundError, Repository, clone
from coral_lightning import CoralCallback, CoralCheckpointIO, UnstorableCheckpointError
from coral_lightning.checkpoint_io import PATH_KEY
from coral_torch import load_state_dict, save_model

from .tiny import LEAFSPEC_FILTER, QUIET, TinyClassifier, loaders, same_bits

pytestmark = pytest.mark.filterwarnings(LEAFSPEC_FILTER)
ROOT = Path(__file__).resolve().parents[2]


def fit_with_model_checkpoint(
    io: CoralCheckpointIO, dirpath: Path, epochs: int = 4, **checkpointing: Any
) -> tuple[pl.Trainer, pl.callbacks.ModelCheckpoint, TinyClassifier]:
    pl.seed_everything(0, verbose=False)
    model = TinyClassifier()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=dirpath, **checkpointing)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[checkpoint], plugins=[io], **QUIET)
    trainer.fit(model, *loaders())
    return trainer, checkpoint, model


def saved_paths(repo: Repository) -> list[str]:
    """The paths of the checkpoints whose weights are kept (pruned ones stay in the log)."""
    return [
        c.metadata.metadata[PATH_KEY]
        for c in repo.log()
        if repo.weights_status(c.commit_hash) == "kept"
    ]


def test_model_checkpoint_top_k_and_last_are_the_branch_commits(tmp_path: Path) -> None:
    io = CoralCheckpointIO(tmp_path / "repo", "tiny")
    dirpath = tmp_path / "ckpt"
    trainer, checkpoint, model = fit_with_model_checkpoint(
        io, dirpath, monitor="val_loss", save_top_k=2, save_last=True
    )
    repo = Repository(tmp_path / "repo")
    assert sorted(saved_paths(repo)) == sorted(
        [*checkpoint.best_k_models, checkpoint.last_model_path]
    )
    assert not dirpath.exists()  # no .ckpt file written
    best = repo.show("tiny/best")
    assert best.metadata.metadata[PATH_KEY] == checkpoint.best_model_path
    assert best.metrics["val_loss"] == pytest.approx(float(checkpoint.best_model_score))
    last = io.resolve(checkpoint.last_model_path)
    assert repo.show(last).metadata.metadata["coral.checkpoint"]["step"] == trainer.global_step
    for name, tensor in load_state_dict(repo, last).items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    pruned = [c for c in repo.log() if repo.weights_status(c.commit_hash) == "pruned"]
    assert pruned  # every checkpoint ModelCheckpoint saved stays in history...
    assert len(repo.log()) == len(pruned) + len(saved_paths(repo))
    assert repo.gc().removed_objects == 0  # ...and what only removed ones held is freed already
    assert repo.verify().ok


def test_load_by_path_ref_or_commit_id(tmp_path: Path) -> None:
    io = CoralCheckpointIO(tmp_path / "repo", "tiny", restore_random_state=False)
    _, checkpoint, model = fit_with_model_checkpoint(io, tmp_path / "ckpt", epochs=2)
    by_path = io.load_checkpoint(checkpoint.best_model_path)
    commit = io.resolve(checkpoint.best_model_path)
    assert io.resolve(commit[:12]) == commit
    assert io.resolve("coral://main") == commit  # save_top_k=1: the newest only
    assert set(by_path) >= {
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "optimizer_states",
        "lr_schedulers",
        "loops",
        "callbacks",
        "hyper_parameters",
    }
    assert by_path["global_step"] == 12
    assert isinstance(by_path["optimizer_states"][0]["state"][0]["exp_avg"], torch.Tensor)
    (state,) = by_path["callbacks"].values()
    assert state["best_model_path"] == checkpoint.best_model_path
    for name, tensor in by_path["state_dict"].items():
        assert torch.equal(tensor, model.state_dict()[name]), name

    with pytest.raises(RefNotFoundError, match=r"no checkpoint 'elsewhere\.ckpt'"):
        io.load_checkpoint("elsewhere.ckpt")
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint(by_path, tmp_path / "x.ckpt", storage_options={"compress": True})


def test_saving_to_a_path_again_replaces_the_commit(tmp_path: Path) -> None:
    io = CoralCheckpointIO(tmp_path / "repo")
    trainer, _, _ = fit_with_model_checkpoint(io, tmp_path / "ckpt", epochs=1)
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    paths = saved_paths(io.repo)
    assert paths.count(str(tmp_path / "manual.ckpt")) == 1
    manual = io.resolve(tmp_path / "manual.ckpt")
    io.remove_checkpoint(tmp_path / "manual.ckpt")
    io.remove_checkpoint(tmp_path / "never-saved.ckpt")  # nothing there: nothing to do
    assert io.repo.weights_status(manual) == "kept"  # the branch's tip keeps its weights...
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    assert io.repo.weights_status(manual) == "pruned"  # ...until the branch moves on
    assert str(tmp_path / "manual.ckpt") not in saved_paths(io.repo)
    assert len(saved_paths(io.repo)) == 2
    assert len(io.repo.log()) == 4  # every save stays a commit


def test_any_commit_validates_as_a_weights_only_checkpoint(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    pl.seed_everything(1, verbose=False)
    trained = TinyClassifier()
    commit = save_model(repo, trained, "weights from elsewhere")
    model = TinyClassifier()
    trainer = pl.Trainer(plugins=[CoralCheckpointIO(repo)], **QUIET)
    trainer.validate(model, loaders()[1], ckpt_path=f"coral://{commit.commit_hash}", verbose=False)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_a_checkpoint_that_needs_a_pickle_is_refused(tmp_path: Path) -> None:
    class WithDevice(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"device": torch.device("cpu")})

    io = CoralCheckpointIO(tmp_path / "repo")
    trainer = pl.Trainer(max_epochs=1, plugins=[io], **QUIET)
    with pytest.raises(
        UnstorableCheckpointError, match=r"entry 'hyper_parameters/device' is a device"
    ):
        trainer.fit(WithDevice(), *loaders())
    assert io.repo.log() == []


def test_tied_weights_are_stored_once_and_come_back_shared(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8, bias=False))
    model[1].weight = model[0].weight
    io = CoralCheckpointIO(tmp_path / "repo")
    io.save_checkpoint({"state_dict": model.state_dict(), "epoch": 0, "global_step": 3}, "tied")
    assert sorted(io.repo.ls_tree()) == ["0.weight"]
    loaded = io.load_checkpoint("tied")["state_dict"]
    assert loaded["1.weight"].data_ptr() == loaded["0.weight"].data_ptr()
    assert torch.equal(loaded["1.weight"], model[0].weight)


@pytest.mark.slow
def test_exact_resume_in_a_new_process(tmp_path: Path) -> None:
    """Stop after two epochs, resume in a new process from coral://main: bit for bit the
    uninterrupted run, from ModelCheckpoint's commit or CoralCallback's, and with
    ckpt_path="last" and no CoralCheckpointIO; resuming without the random
    generators' state is not."""
    env = {**os.environ, "PYTHONWARNINGS": "error"}

    def run(*jobs: str) -> None:
        """The jobs in one new process (one import of Lightning)."""
        command = [sys.executable, "-m", "tests.coral_lightning.resume_run", str(tmp_path)]
        done = subprocess.run(
            [*command, *jobs], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert done.returncode == 0, done.stdout.decode()[-3000:]

    def result(repo: str) -> dict[str, Any]:
        return torch.load(tmp_path / f"{repo}.pt", weights_only=True)  # type: ignore[no-any-return]

    run("full:uninterrupted", "first:split", "first-callback:callback")
    first = result("split")
    for repo in ("split", "callback"):
        stopped = Repository(tmp_path / repo).training_state("main")
        assert stopped is not None
        assert (stopped.epoch, stopped.global_step) == (1, 12)
    shutil.copytree(tmp_path / "split", tmp_path / "no-rng")
    shutil.copytree(tmp_path / "callback", tmp_path / "last")
    run("resume:split", "resume:callback", "resume-no-rng:no-rng")  # a new process
    run("resume-last:last")  # nothing of the first run in memory: "last" is read from the repo

    full = result("uninterrupted")
    for repo in ("split", "callback", "last"):
        resumed = result(repo)
        for name, tensor in full["model"].items():
            assert same_bits(resumed["model"][name], tensor), (repo, name)
        for index, values in full["optimizer"]["state"].items():
            for key, tensor in values.items():
                assert same_bits(resumed["optimizer"]["state"][index][key], tensor), (repo, key)
    assert not same_bits(first["model"]["net.0.weight"], full["model"]["net.0.weight"])
    no_rng = result("no-rng")
    assert not same_bits(no_rng["model"]["net.0.weight"], full["model"]["net.0.weight"])


def test_push_to_with_model_checkpoint_and_with_the_callback(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    repo = Repository(tmp_path / "repo", init=True)
    repo.add_remote("origin", str(remote))
    io = CoralCheckpointIO(repo, "tiny", push_to="origin")
    _, checkpoint, _ = fit_with_model_checkpoint(io, tmp_path / "ckpt", monitor="val_loss")
    copy = clone(str(remote), tmp_path / "copy")  # the end of fit waited for the pushes
    assert [c.commit_hash for c in copy.log()] == [c.commit_hash for c in repo.log()]
    assert copy.resolve("tiny/best") == io.resolve(checkpoint.best_model_path)

    callback = CoralCallback(repo, "callback", push_to="origin", save_top_k=1)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], **QUIET)
    trainer.fit(TinyClassifier(), *loaders())
    copy.fetch("origin")
    assert callback.manager is not None
    assert callback.manager.latest is not None
    assert copy.resolve("callback/last") == callback.manager.latest.commit_hash
    assert callback.manager.hyperparameters == {"hidden": 16, "lr": 3e-3}  # save_hyperparameters
    assert io.manager.hyperparameters == {"hidden": 16, "lr": 3e-3}
    assert io.manager.config.save_on_best_metric == "val_loss"  # ModelCheckpoint's monitor
