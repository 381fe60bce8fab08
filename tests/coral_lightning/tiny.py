"""A tiny LightningModule and data for the coral_lightning tests (and their child processes)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

#: Keeps Trainers quiet and fast in tests.
QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
}
#: Lightning 2.6 on torch 2.13 warns about its own use of a deprecated torch API.
LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LEAFSPEC_FILTER = f"ignore:{LEAFSPEC}:FutureWarning"


class TinyClassifier(pl.LightningModule):
    """Linear, BatchNorm, ReLU, Dropout, Linear; AdamW with a StepLR schedule."""

    def __init__(self, hidden: int = 16, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(10, hidden),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(hidden, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        inputs, targets = batch
        loss = torch.nn.functional.cross_entropy(self(inputs), targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        inputs, targets = batch
        scores = self(inputs)
        self.log("val_loss", torch.nn.functional.cross_entropy(scores, targets), sync_dist=True)
        self.log("val_accuracy", (scores.argmax(1) == targets).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"])
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)]


def loaders(batch_size: int = 16) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """96 samples (6 batches an epoch), shuffled for training; the same in order for validation."""
    generator = torch.Generator().manual_seed(1234)
    data = TensorDataset(
        torch.randn(96, 10, generator=generator), torch.randint(0, 4, (96,), generator=generator)
    )
    return DataLoader(data, batch_size=batch_size, shuffle=True), DataLoader(data, batch_size=48)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so -0.0 differs from 0.0 and NaNs compare)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.flatten().view(torch.uint8), b.flatten().view(torch.uint8))
    )
