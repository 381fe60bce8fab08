"""PyTorch Lightning with Coral: checkpoints as commits, then restore the best.

Trains a small convolutional classifier on synthetic 12x12 "digits" (ten
noisy prototype images) for a few epochs with ``CoralCallback``, which commits
each epoch with its metrics and keeps the two best by ``val_accuracy`` (and
the newest); lists the commits, loads the best with Lightning's ``load_from_checkpoint``, and
goes on training from it with ``ckpt_path="coral://mnist/best"``.

    python examples/lightning_mnist_like.py [REPO_FOLDER]
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from coral_core import Repository
from coral_lightning import CoralCallback

QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
}


class DigitNet(pl.LightningModule):
    """Conv, BatchNorm, ReLU, pool, Dropout, Linear: a tiny MNIST-style classifier."""

    def __init__(self, lr: float = 5e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(8 * 6 * 6, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        images, labels = batch
        loss = torch.nn.functional.cross_entropy(self(images), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        images, labels = batch
        scores = self(images)
        self.log("val_loss", torch.nn.functional.cross_entropy(scores, labels))
        self.log("val_accuracy", (scores.argmax(1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def digits(count: int, seed: int) -> TensorDataset:
    """``count`` noisy copies of ten fixed random 12x12 prototypes, labelled 0-9."""
    prototypes = torch.randn(10, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = prototypes[labels] + 1.5 * torch.randn(count, 1, 12, 12, generator=generator)
    return TensorDataset(images, labels)


def main(folder: str = "lightning-repo", epochs: int = 4) -> dict[str, Any]:
    """Train, list the commits, restore the best; returns what it printed, for tests."""
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
    root = Path(folder)
    if (root / ".coral").is_dir():  # a previous run's demo repository: start over
        shutil.rmtree(root)
    repo = Repository(root, init=True)
    train = DataLoader(digits(512, seed=1), batch_size=64, shuffle=True)
    val = DataLoader(digits(256, seed=2), batch_size=256)

    # 1. Train with the callback: a commit per epoch, the two best kept, the best pointed at.
    pl.seed_everything(0, verbose=False)
    callback = CoralCallback(repo, "mnist", monitor="val_accuracy", save_top_k=2)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], **QUIET)
    trainer.fit(DigitNet(), train, val)

    # 2. The commits: each carries the logged metrics, epoch and step.
    print("commits (newest first):")
    for commit in repo.log():
        print(
            f"  {commit.short_hash}  {commit.message:<28} "
            f"val_accuracy={commit.metrics['val_accuracy']:.3f} "
            f"val_loss={commit.metrics['val_loss']:.3f}"
        )
    best = repo.show("mnist/best")
    print(
        f"best: {best.short_hash} ({best.message}), val_accuracy {best.metrics['val_accuracy']:.3f}"
    )

    # 3. Lightning's own way to load the best, from a coral:// URL (any process).
    restored = DigitNet.load_from_checkpoint(f"coral://{repo.path}:mnist/best")
    restored.eval()
    images, labels = val.dataset.tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        accuracy = (restored(images).argmax(1) == labels).float().mean().item()
    print(f"restored best: val_accuracy {accuracy:.3f}")

    # 4. Go on training from the best commit: optimizer, loops and RNG come back too.
    more = pl.Trainer(
        max_epochs=epochs + 1,
        callbacks=[CoralCallback(repo, "mnist", monitor="val_accuracy", save_top_k=2)],
        **QUIET,
    )
    more.fit(DigitNet(), train, val, ckpt_path="coral://mnist/best")
    step = best.metadata.metadata["coral.checkpoint"]["step"]
    print(f"resumed from the best (step {step}) to step {more.global_step}")
    print(f"{len(repo.log())} commits kept; `coral-ml log` in {root} shows them too")
    return {"best": best, "restored_accuracy": accuracy, "resumed_step": more.global_step}


if __name__ == "__main__":
    main(*sys.argv[1:2])
