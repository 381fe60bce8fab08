"""One training process of the exact-resume test (run as ``python -m``).

    python -m tests.coral_torch.resume_run REPO OUT {full,first,resume} [MAX_STEPS]

``full`` trains every epoch; ``first`` stops after MAX_STEPS optimizer steps
(mid-epoch) with a last checkpoint; ``resume`` starts from a model with other
initial weights, loads the newest checkpoint, and trains to the end. Each
writes the final model and optimizer state to OUT with ``torch.save``. With
``CORAL_TEST_AMP=1`` the loop is the one AMP users write: bf16 autocast, a
grad scaler, clipping, two batches a step, a per-step LambdaLR schedule.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from coral_core import CheckpointConfig, Repository
from coral_torch import CoralTrainer

EPOCHS = 3


def build(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 32),
        torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(32, 4),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return model, optimizer, scheduler


def main() -> None:
    repo_path, out, mode = sys.argv[1:4]
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(1234)
    inputs = torch.randn(96, 10, generator=generator)
    targets = torch.randint(0, 4, (96,), generator=generator)
    model, optimizer, scheduler = build(seed=7 if mode == "resume" else 0)
    torch.manual_seed(99)  # the data order and dropout draw from here on
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=16, shuffle=True)
    config = CheckpointConfig(save_every_n_steps=4, max_checkpoints=3)
    amp = os.environ.get("CORAL_TEST_AMP") == "1"
    options: dict[str, Any] = {}
    scaler = None
    if amp:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        options = {
            "accumulate": 2,
            "clip_grad_norm": 0.5,
            "autocast": torch.bfloat16,
            "scheduler_interval": "step",
        }
    trainer = CoralTrainer(
        model,
        Repository(repo_path, init=True),
        "resume",
        config,
        optimizer,
        scheduler,
        grad_scaler=scaler,
    )
    if mode == "resume":
        trainer.load_checkpoint()
    max_steps = int(sys.argv[4]) if mode == "first" else None
    trainer.fit(loader, loader, epochs=EPOCHS, max_steps=max_steps, **options)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out)


if __name__ == "__main__":
    main()
