"""Training runs of the exact-resume test (run as ``python -m``).

    python -m tests.coral_lightning.resume_run FOLDER MODE:REPO [MODE:REPO ...]

Runs each job in turn, in this one process, with the repository
``FOLDER/REPO``, and writes the final model and optimizer state to
``FOLDER/REPO.pt`` with ``torch.save``. Lightning's ModelCheckpoint saves every
epoch into Coral through CoralCheckpointIO. MODE ``full`` trains all epochs;
``first`` stops after ``FIRST_STEPS`` optimizer steps (an epoch boundary:
Lightning resumes plain dataloaders exactly only there); ``first-callback``
does the same with a CoralCallback committing instead; ``resume`` builds the
model from another seed, resumes with ``ckpt_path="coral://main"`` and trains
to the end; ``resume-no-rng`` does the same without restoring the random
generators; ``resume-last`` resumes with ``ckpt_path="last"`` and a
CoralCallback, without CoralCheckpointIO (Lightning's own CheckpointIO reads
the ``coral://`` URL "last" names).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from coral_lightning import CoralCallback, CoralCheckpointIO

from .tiny import LEAFSPEC, QUIET, TinyClassifier, loaders

EPOCHS, FIRST_STEPS = 4, 12  # 6 batches an epoch


def run(folder: Path, mode: str, name: str) -> None:
    repo = folder / name
    pl.seed_everything(7 if mode.startswith("resume") else 0, verbose=False)
    model = TinyClassifier()
    train, val = loaders()
    # one dirpath for every run: ModelCheckpoint's state names it (nothing is written there)
    checkpoints: pl.Callback = pl.callbacks.ModelCheckpoint(dirpath=folder / "ckpt", save_top_k=-1)
    plugins = [CoralCheckpointIO(repo, restore_random_state=mode != "resume-no-rng")]
    ckpt_path = "coral://main" if mode.startswith("resume") else None
    if mode in ("first-callback", "resume-last"):
        checkpoints = CoralCallback(repo, "resume", save_last=False)
    if mode == "resume-last":
        plugins, ckpt_path = [], "last"
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        max_steps=FIRST_STEPS if mode.startswith("first") else -1,
        callbacks=[checkpoints],
        plugins=plugins,
        deterministic=True,
        **QUIET,
    )
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    state = {"model": model.state_dict(), "optimizer": trainer.optimizers[0].state_dict()}
    torch.save(state, folder / f"{name}.pt")


def main() -> None:
    warnings.filterwarnings("ignore", LEAFSPEC, FutureWarning)
    torch.set_num_threads(1)
    folder = Path(sys.argv[1])
    for job in sys.argv[2:]:
        mode, name = job.split(":")
        run(folder, mode, name)


if __name__ == "__main__":
    main()
