"""One rank of the two-process DDP test (run as ``python -m``, once per rank).

    LOCAL_RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p \
        python -m tests.coral_lightning.ddp_run REPO OUT

Both ranks train with ``strategy="ddp"`` on the CPU (gloo) and a CoralCallback;
each writes to OUT (a JSON file per rank) whether its callback opened the
repository and which commits it made.
"""

from __future__ import annotations

import json
import sys
import warnings

import pytorch_lightning as pl
import torch

from coral_lightning import CoralCallback

from .tiny import LEAFSPEC, QUIET, TinyClassifier, loaders


def main() -> None:
    repo, out = sys.argv[1:3]
    warnings.filterwarnings("ignore", LEAFSPEC, FutureWarning)
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    callback = CoralCallback(repo, "ddp", monitor="val_loss")
    train, val = loaders()
    trainer = pl.Trainer(max_epochs=2, strategy="ddp", devices=2, callbacks=[callback], **QUIET)
    trainer.fit(TinyClassifier(), train, val)
    report = {
        "rank": trainer.global_rank,
        "opened": callback.manager is not None,
        "commits": [c.commit_hash for c in callback.manager.checkpoints]
        if callback.manager
        else [],
    }
    with open(f"{out}.{trainer.global_rank}.json", "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    main()
