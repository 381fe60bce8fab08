"""load_best_model_at_end after a resume on a new machine, and Coral holding the
Trainer's checkpoints (``keep_trainer_checkpoints=False``), in real Trainer runs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from coral_core import ConfigError, Repository, clone
from coral_hf import CoralTrainerCallback, checkout_checkpoint

from .tiny import BEST_RUN, arguments, disk_usage, train


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same dtype, shape and bytes (the integer view, so -0.0 and NaN payloads count)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)


def final(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The weights a Trainer ended on."""
    assert trainer.model is not None
    return dict(trainer.model.state_dict())


def commit_weights(repo: Repository, commit: str) -> dict[str, torch.Tensor]:
    return {w.name: torch.from_numpy(w.data.copy()) for w in repo.iter_weights(commit)}


def folders(output_dir: Path) -> list[str]:
    """The checkpoint folders in ``output_dir``, by step."""
    return sorted((p.name for p in output_dir.glob("checkpoint-*")), key=lambda n: int(n[11:]))


class FoldersAtSave(TrainerCallback):
    """Records the checkpoint folders in ``output_dir`` after each save (after Coral's callback)."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.seen.append(folders(Path(str(args.output_dir))))


@pytest.mark.parametrize("keep", [True, False], ids=["trainer-folders", "coral-holds"])
def test_load_best_model_at_end_after_a_resume_on_a_new_machine(tmp_path: Path, keep: bool) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    whole, callback = train(repo, tmp_path / "whole", keep_trainer_checkpoints=keep, **BEST_RUN)
    assert callback.manager is not None
    commits = {c.step: c.commit_hash for c in callback.manager.history}
    assert sorted(commits) == [4, 8, 12, 16, 20, 24]
    assert whole.state.best_global_step == 12
    best, last = commit_weights(repo, commits[12]), commit_weights(repo, commits[24])
    assert not all(same_bits(best[k], last[k]) for k in best)  # ending on the last would show
    assert same_weights(final(whole), best)  # the uninterrupted run ends on the best
    assert folders(tmp_path / "whole") == ([f"checkpoint-{s}" for s in commits] if keep else [])

    # Preempted after step 16; a new machine: a clone of the repository, no output_dir.
    shutil.rmtree(tmp_path / "whole")
    machine = tmp_path / "machine"
    copy = clone(str(tmp_path / "repo"), machine / "repo")
    folder = checkout_checkpoint(copy, commits[16], machine / "resume-from")
    recorded = json.loads((folder / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert recorded == str(tmp_path / "whole" / "checkpoint-12")  # gone with the old machine
    resumed, _ = train(copy, machine / "out", folder, keep_trainer_checkpoints=keep, **BEST_RUN)

    assert resumed.state.best_model_checkpoint == str(machine / "out" / "checkpoint-12")
    assert same_weights(final(resumed), best)
    assert same_weights(final(resumed), final(whole))
    if keep:  # the best folder is back where the Trainer keeps it, beside the new ones
        assert folders(machine / "out") == ["checkpoint-12", "checkpoint-20", "checkpoint-24"]
        restored = machine / "out" / "checkpoint-12"
        assert (restored / "trainer_state.json").is_file()
        assert (restored / "optimizer.pt").is_file()
    else:
        assert folders(machine / "out") == []


def test_coral_holds_the_checkpoints_and_rotates_them_as_save_total_limit(
    tmp_path: Path,
) -> None:
    changes = {**BEST_RUN, "save_total_limit": 2}
    own_probe, held_probe = FoldersAtSave(), FoldersAtSave()
    own, _ = train(
        Repository(tmp_path / "own-repo", init=True),
        tmp_path / "own",
        callbacks=[own_probe],
        **changes,
    )
    repo = Repository(tmp_path / "repo", init=True)
    held, callback = train(
        repo, tmp_path / "held", keep_trainer_checkpoints=False, callbacks=[held_probe], **changes
    )

    # The Trainer's rotation keeps the best and the newest; Coral keeps the same two.
    assert folders(tmp_path / "own") == ["checkpoint-12", "checkpoint-24"]
    assert own_probe.seen[-1] == ["checkpoint-12", "checkpoint-24"]
    assert callback.manager is not None
    assert [c.step for c in callback.manager.checkpoints] == [12, 24]
    assert [c.step for c in callback.manager.history] == [4, 8, 12, 16, 20, 24]  # commits stay
    assert {repo.weights_status(c.commit_hash) for c in callback.manager.history[:2]} == {"pruned"}
    # No folder outlives its commit, and the best was loaded all the same.
    assert held_probe.seen == [[]] * 6
    assert folders(tmp_path / "held") == []
    assert same_weights(final(held), final(own))
    held_bytes = disk_usage(tmp_path / "held")[0] + disk_usage(repo.coral_dir)[0]
    own_bytes = disk_usage(tmp_path / "own")[0] + disk_usage(tmp_path / "own-repo" / ".coral")[0]
    assert held_bytes < own_bytes


def test_coral_holding_checkpoints_refuses_what_needs_the_folders(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    with pytest.raises(ConfigError, match="keep_trainer_checkpoints must be True or False"):
        CoralTrainerCallback(repo, keep_trainer_checkpoints="no")  # type: ignore[arg-type]
    callback = CoralTrainerCallback(repo, keep_trainer_checkpoints=False)
    args = arguments(tmp_path / "out", push_to_hub=True, hub_model_id="me/tiny")
    with pytest.raises(ConfigError, match="push_to_hub uploads the Trainer's checkpoint folders"):
        callback.on_train_begin(args, TrainerState(), TrainerControl())
    assert not (tmp_path / "out").exists()


def test_a_best_the_repository_lacks_leaves_the_trainers_behaviour_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    _, callback = train(repo, tmp_path / "whole", **BEST_RUN)
    assert callback.manager is not None
    commits = {c.step: c.commit_hash for c in callback.manager.history}
    folder = checkout_checkpoint(repo, commits[16], tmp_path / "resume-from")
    shutil.rmtree(tmp_path / "whole")
    elsewhere = Repository(tmp_path / "elsewhere", init=True)  # without the run's commits
    with caplog.at_level(logging.WARNING, logger="coral.hf"):
        resumed, _ = train(elsewhere, tmp_path / "out", folder, **BEST_RUN)
    assert "the best checkpoint (step 12) is neither in" in caplog.text
    assert resumed.state.best_model_checkpoint is None
    assert same_weights(final(resumed), commit_weights(repo, commits[24]))  # the last, as HF does
