"""examples/pytorch_trainer.py runs: trains, keeps the best, restores it exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pytorch_trainer.py"


def test_the_pytorch_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("pytorch_trainer", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(str(tmp_path / "repo"), epochs=4)
    assert result["restored_accuracy"] == result["best"].metrics["val_accuracy"]
    assert 1 <= len(result["kept"]) <= 3
    assert "kept checkpoints" in capsys.readouterr().out
