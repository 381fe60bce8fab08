"""PyTorch with Coral: CoralTrainer commits checkpoints as it trains; restore the best.

Trains a small MLP with BatchNorm and dropout on a synthetic 4-class problem
for a few epochs with ``CoralTrainer.fit``: a commit after every epoch and
whenever ``val_accuracy`` improves, keeping the two best and the newest
(``gc`` frees the rest). Lists the kept checkpoints, restores the best into a
fresh model and checks it scores what its commit says.

    python examples/pytorch_trainer.py [REPO_FOLDER]
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from coral_core import CheckpointConfig, Repository
from coral_torch import CoralTrainer


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.BatchNorm1d(64),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 4),
    )


def data(seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(512, 16, generator=generator)
    targets = (inputs[:, :4].argmax(dim=1) + (inputs[:, 4] > 1).long()) % 4
    return TensorDataset(inputs, targets)


def main(folder: str = "pytorch_example_repo", epochs: int = 5) -> dict[str, Any]:
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    repo = Repository(folder, init=True)
    config = CheckpointConfig(
        save_on_best_metric="val_accuracy", keep_best_n_checkpoints=2, max_checkpoints=1
    )
    trainer = CoralTrainer(model, repo, "mlp", config, optimizer, scheduler)
    train = DataLoader(data(1), batch_size=64, shuffle=True)
    val = DataLoader(data(2), batch_size=256)
    trainer.fit(train, val, epochs=epochs)
    print("kept checkpoints (oldest first):")
    for checkpoint in trainer.manager.checkpoints:
        accuracy = checkpoint.metrics["val_accuracy"]
        print(f"  {checkpoint.commit_hash[:12]}  epoch {checkpoint.epoch}  accuracy {accuracy:.3f}")
    print(repo.gc())
    best = repo.show("mlp/best")
    fresh = make_model()
    restorer = CoralTrainer(fresh, repo, "mlp", config)
    restorer.load_checkpoint(load_best=True)
    restored = restorer.evaluate(val, torch.nn.functional.cross_entropy)["val_accuracy"]
    claimed = best.metrics["val_accuracy"]
    print(
        f"best: {best.short_hash}, val_accuracy {claimed:.3f}; restored, it scores {restored:.3f}"
    )
    return {"best": best, "restored_accuracy": restored, "kept": trainer.manager.checkpoints}


if __name__ == "__main__":
    main(*sys.argv[1:2])
