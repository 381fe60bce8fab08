"""examples/pytorch_trainer.py runs: trains, keeps the best, restores it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples import load_example


def test_the_pytorch_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("pytorch_trainer")
    result = example.main(str(tmp_path / "repo"), epochs=4)
    assert result["restored_accuracy"] == result["best"].metrics["val_accuracy"]
    assert 1 <= len(result["kept"]) <= 3
    assert "kept checkpoints" in capsys.readouterr().out
