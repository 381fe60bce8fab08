"""examples/lightning_mnist_like.py runs: trains, lists, restores the best, resumes from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral_core import Repository
from tests.examples import load_example


def test_the_lightning_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("lightning_mnist_like")
    result = example.main(str(tmp_path / "repo"), epochs=2)
    best = result["best"]
    assert result["restored_accuracy"] == pytest.approx(best.metrics["val_accuracy"])
    assert result["resumed_step"] == best.metadata.metadata["coral.checkpoint"]["step"] + 8
    best_now = Repository(tmp_path / "repo").show("mnist/best")
    assert best_now.metrics["val_accuracy"] >= best.metrics["val_accuracy"]
    printed = capsys.readouterr().out
    assert "commits (newest first):" in printed
    assert best.short_hash in printed
