"""Lightning's own ways of naming a checkpoint reach Coral: ``coral://`` URLs in
``load_from_checkpoint``, ``ckpt_path="best"``/``"last"`` in a new process, and
the errors a user meets on the way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.connectors.callback_connector import _CallbackConnector
from pytorch_lightning.trainer.connectors.checkpoint_connector import _CheckpointConnector
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from coral_core import ConfigError, CoralError, PrunedCommitError, RefNotFoundError, Repository
from coral_core.runs import CheckpointRecord
from coral_lightning import CoralCallback, CoralCheckpointIO, CoralFileSystem, CoralURL
from coral_lightning.checkpoint_io import PATH_KEY
from coral_lightning.conventions import _WRAPPED

from .tiny import LEAFSPEC_FILTER, QUIET, TinyClassifier, loaders, same_bits

pytestmark = pytest.mark.filterwarnings(LEAFSPEC_FILTER)
ROOT = Path(__file__).resolve().parents[2]


def fit_with_callback(repo: Path, epochs: int = 3, **settings: object) -> CoralCallback:
    pl.seed_everything(0, verbose=False)
    callback = CoralCallback(repo, "tiny", monitor="val_loss", save_top_k=1, **settings)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], **QUIET)
    trainer.fit(TinyClassifier(), *loaders())
    return callback


def fit_with_model_checkpoint(repo: Path, dirpath: Path, epochs: int) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=dirpath, monitor="val_loss", save_top_k=1, save_last=True
    )
    io = CoralCheckpointIO(repo, "tiny")
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[checkpoint], plugins=[io], **QUIET)
    trainer.fit(TinyClassifier(), *loaders())
    return trainer


def test_the_installed_lightning_has_the_methods_coral_wraps() -> None:
    assert getattr(_CheckpointConnector._parse_ckpt_path, _WRAPPED, False)
    assert getattr(_CallbackConnector._configure_checkpoint_callbacks, _WRAPPED, False)


def test_load_from_checkpoint_reads_a_coral_url_in_a_process_that_never_imports_coral(
    tmp_path: Path,
) -> None:
    fit_with_callback(tmp_path / "runs")
    repo = Repository(tmp_path / "runs")
    best = repo.show("tiny/best")
    url = f"coral://{repo.path}:tiny/best"
    script = (
        "import sys, torch\n"
        "from tests.coral_lightning.tiny import TinyClassifier\n"
        f"model = TinyClassifier.load_from_checkpoint({url!r})\n"
        f"torch.save(model.state_dict(), {str(tmp_path / 'loaded.pt')!r})\n"
        "print(model.hparams['lr'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) == 3e-3  # the hyperparameters came back too
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    stored = repo.get_all_weights(best.commit_hash)
    for name, tensor in loaded.items():
        assert same_bits(tensor, torch.from_numpy(stored[name].data)), name


def test_a_url_without_a_folder_asks_the_repositories_this_process_saved_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    callback = fit_with_callback(tmp_path / "runs", epochs=2)
    monkeypatch.chdir(tmp_path)  # not a repository: the saved-to list answers
    model = TinyClassifier.load_from_checkpoint("coral://tiny/best")
    assert callback.best_model_path.endswith(Repository(tmp_path / "runs").resolve("tiny/best"))
    assert model.hparams["hidden"] == 16
    with pytest.raises(RefNotFoundError, match=r"name the repository: coral://<repository"):
        TinyClassifier.load_from_checkpoint("coral://other/best")
    parsed = CoralURL.parse("coral:///data/runs:tiny/best")
    assert parsed == CoralURL(Path("/data/runs"), "tiny/best")
    assert str(CoralURL.parse("coral://main~1")) == "coral://main~1"


def test_the_file_system_is_read_only_and_knows_pruned_checkpoints(tmp_path: Path) -> None:
    fit_with_callback(tmp_path / "runs", epochs=4)
    repo = Repository(tmp_path / "runs")
    fs = fsspec.filesystem("coral")
    assert isinstance(fs, CoralFileSystem)
    assert fs.exists(f"coral://{repo.path}:tiny/best")
    assert not fs.exists(f"coral://{repo.path}:no-such-ref")
    assert fs.info(f"coral://{repo.path}:main")["commit"] == repo.resolve("main")
    with (
        pytest.raises(CoralError, match="read-only"),
        fsspec.open(f"coral://{repo.path}:main", "wb") as file,
    ):
        file.write(b"x")
    pruned = [c for c in repo.log() if repo.weights_status(c.commit_hash) == "pruned"]
    assert pruned  # save_top_k=1 over four epochs
    with pytest.raises(PrunedCommitError, match="nearest kept checkpoint"):
        TinyClassifier.load_from_checkpoint(f"coral://{repo.path}:{pruned[0].commit_hash}")


def test_best_and_last_in_a_new_trainer_with_model_checkpoint_and_coral_checkpoint_io(
    tmp_path: Path,
) -> None:
    repo_path, dirpath = tmp_path / "repo", tmp_path / "ckpt"
    fit_with_model_checkpoint(repo_path, dirpath, epochs=3)
    repo = Repository(repo_path)
    first_last = repo.resolve("tiny/last")

    # a new process in all but name: new Trainer, ModelCheckpoint and CoralCheckpointIO
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=dirpath, monitor="val_loss", save_last=True)
    io = CoralCheckpointIO(repo_path, "tiny")
    trainer = pl.Trainer(max_epochs=3, callbacks=[checkpoint], plugins=[io], **QUIET)
    trainer.validate(TinyClassifier(), loaders()[1], ckpt_path="best", verbose=False)
    assert trainer.ckpt_path == f"coral://{repo.path}:{repo.resolve('tiny/best')}"

    resumed = fit_with_model_checkpoint_from(repo_path, dirpath, "last", epochs=5)
    assert resumed.ckpt_path == f"coral://{repo.path}:{first_last}"
    assert resumed.global_step == 5 * 6  # went on from step 18, not from 0
    assert run_of(repo, repo.resolve("tiny/last")) == run_of(repo, first_last)  # the same run

    # a second, fresh run saving to the same paths leaves the first run's checkpoints alone
    last_before = repo.resolve("tiny/last")
    fit_with_model_checkpoint(repo_path, dirpath, epochs=2)
    assert repo.weights_status(last_before) == "kept"
    assert repo.read_commit(last_before).metadata.metadata[PATH_KEY].endswith("last.ckpt")


def run_of(repo: Repository, commit: str) -> str | None:
    record = CheckpointRecord.of(repo.read_commit(commit))
    return record.run if record is not None else None


def fit_with_model_checkpoint_from(
    repo: Path, dirpath: Path, ckpt_path: str, epochs: int
) -> pl.Trainer:
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=dirpath, monitor="val_loss", save_last=True)
    io = CoralCheckpointIO(repo, "tiny")
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[checkpoint], plugins=[io], **QUIET)
    trainer.fit(TinyClassifier(), *loaders(), ckpt_path=ckpt_path)
    return trainer


def test_a_url_of_another_repository_is_refused_by_coral_checkpoint_io(tmp_path: Path) -> None:
    fit_with_callback(tmp_path / "runs", epochs=1)
    io = CoralCheckpointIO(tmp_path / "elsewhere")
    io.save_checkpoint({"state_dict": TinyClassifier().state_dict()}, "x.ckpt")
    with pytest.raises(CoralError, match="this CoralCheckpointIO saves to"):
        io.resolve(f"coral://{tmp_path / 'runs'}:tiny/best")


def test_best_before_fit_needs_the_experiment_when_there_are_several(tmp_path: Path) -> None:
    fit_with_callback(tmp_path / "runs", epochs=1)
    pl.seed_everything(0, verbose=False)
    other = CoralCallback(tmp_path / "runs", "other")
    pl.Trainer(max_epochs=1, callbacks=[other], **QUIET).fit(TinyClassifier(), *loaders())
    repo = Repository(tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"several experiments \(other, tiny\)"):
        _ = CoralCallback(tmp_path / "runs").best_model_path
    named = CoralCallback(tmp_path / "runs", "tiny", monitor="val_loss")
    assert named.best_model_path == f"coral://{repo.path}:{repo.resolve('tiny/best')}"
    assert CoralCallback(tmp_path / "runs", "other").last_model_path.endswith(
        repo.resolve("other/last")
    )
    assert CoralCallback(tmp_path / "empty").best_model_path == ""


def test_enable_checkpointing_false_with_a_coral_callback_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="Drop enable_checkpointing=False"):
        pl.Trainer(callbacks=[CoralCallback(tmp_path / "runs")], enable_checkpointing=False)
    pl.Trainer(enable_checkpointing=False, **QUIET)  # without Coral: Lightning's as ever


def test_a_path_coral_saved_without_coral_checkpoint_io_names_the_fix(tmp_path: Path) -> None:
    repo_path, dirpath = tmp_path / "runs" / "coral", tmp_path / "ckpt"
    fit_with_model_checkpoint(tmp_path / "old", dirpath, epochs=1)  # the same paths, before
    trained = fit_with_model_checkpoint(repo_path, dirpath, epochs=1)
    saved = trained.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    (tmp_path / "broken" / ".coral").mkdir(parents=True)  # a damaged repository beside it
    (tmp_path / "broken" / ".coral" / "config").write_text("[]")
    trainer = pl.Trainer(max_epochs=2, **QUIET)  # the plugin forgotten
    with pytest.raises(FileNotFoundError, match=r"plugins=\[CoralCheckpointIO\(") as error:
        trainer.fit(TinyClassifier(), *loaders(), ckpt_path=saved)
    commit = Repository(repo_path).resolve("tiny/best")
    assert f"ckpt_path='coral://{repo_path}:{commit}'" in str(error.value)
    with pytest.raises(FileNotFoundError, match="not found"):  # not Coral's: Lightning's own
        trainer.fit(TinyClassifier(), *loaders(), ckpt_path=tmp_path / "never.ckpt")
    # a new process started in another folder, that never imports coral_lightning
    script = (
        "import pytorch_lightning as pl\n"
        "from tests.coral_lightning.tiny import QUIET, TinyClassifier, loaders\n"
        "trainer = pl.Trainer(max_epochs=2, **QUIET)\n"
        f"trainer.fit(TinyClassifier(), *loaders(), ckpt_path={saved!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert f"ckpt_path='coral://{repo_path}:{commit}'" in done.stderr
