"""Merging two real fine-tunes of a tiny torch model gives a model that works."""

from __future__ import annotations

from pathlib import Path

import torch

from coral_core import MergeStrategy, Repository
from coral_torch import load_model, save_model


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def test_average_and_ties_of_two_fine_tunes_land_between_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    base = make_model()
    train(base, x, y, steps=60, lr=1e-2)
    repo = Repository(tmp_path, init=True)
    save_model(repo, base, "base")
    losses = {}
    for branch, half in (("left", slice(0, 128)), ("right", slice(128, 256))):
        tuned = make_model()
        tuned.load_state_dict(base.state_dict())
        train(tuned, x[half], y[half], steps=40, lr=5e-3)
        repo.create_branch(branch, "main")
        save_model(repo, tuned, f"fine-tune on {branch}", branch=branch)
        losses[branch] = loss_of(tuned, x, y)
    for strategy, options in ((MergeStrategy.AVERAGE, {}), (MergeStrategy.TIES, {"density": 0.5})):
        repo.create_branch(f"merged-{strategy.value}", "left")
        repo.checkout(f"merged-{strategy.value}")
        commit = repo.merge("right", strategy, **options)
        merged = make_model()
        load_model(repo, merged, commit.commit_hash)
        merged_loss = loss_of(merged, x, y)
        assert merged_loss <= max(losses.values()), (strategy, merged_loss, losses)
        assert merged_loss < loss_of(make_model(), x, y)  # far better than untrained
