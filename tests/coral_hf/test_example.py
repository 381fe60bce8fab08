"""examples/hf_trainer.py runs as written and says what it promises (in this process,
which has imported transformers already)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_trainer_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = ROOT / "examples" / "hf_trainer.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "demo")])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count(" step ") >= 2  # the kept checkpoints are listed
    assert "restored BertForSequenceClassification from" in out
    assert "same final weights bit for bit: True" in out
