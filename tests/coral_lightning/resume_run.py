"""One training process of the exact-resume test (run as ``python -m``).

    python -m tests.coral_lightning.resume_run REPO OUT {full,first,resume,resume-no-rng}

Lightning's ModelCheckpoint saves every epoch into Coral through
CoralCheckpointIO. ``full`` trains all epochs; ``first`` stops after
``FIRST_STEPS`` optimizer steps (an epoch boundary: Lightning resumes plain
dataloaders exactly only there); ``resume`` builds the model from another
seed, resumes with ``ckpt_path="coral://main"`` and trains to the end;
``resume-no-rng`` does the same without restoring the random generators. Each
writes the final model and optimizer state to OUT with ``torch.save``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from coral_lightning import CoralCheckpointIO

from .tiny import LEAFSPEC, QUIET, TinyClassifier, loaders

EPOCHS, FIRST_STEPS = 4, 12  # 6 batches an epoch


def main() -> None:
    repo, out, mode = sys.argv[1:4]
    warnings.filterwarnings("ignore", LEAFSPEC, FutureWarning)
    torch.set_num_threads(1)
    pl.seed_everything(7 if mode.startswith("resume") else 0, verbose=False)
    model = TinyClassifier()
    train, val = loaders()
    # one dirpath for every run: ModelCheckpoint's state names it (nothing is written there)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=Path(out).parent / "ckpt", save_top_k=-1)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        max_steps=FIRST_STEPS if mode == "first" else -1,
        callbacks=[checkpoints],
        plugins=[CoralCheckpointIO(repo, restore_random_state=mode != "resume-no-rng")],
        deterministic=True,
        **QUIET,
    )
    trainer.fit(model, train, val, ckpt_path="coral://main" if mode.startswith("resume") else None)
    optimizer = trainer.optimizers[0]
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out)


if __name__ == "__main__":
    main()
