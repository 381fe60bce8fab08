"""The book's settings: ``coral-ml config core.delta_encoding true`` and
``core.similarity_threshold 0.98`` (04-storage.md "Enable Delta Encoding",
written into the repository config), under the names the book uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from coral_cli.main import cli
from coral_core import Repository


def coral(*words: str) -> str:
    result = CliRunner().invoke(cli, list(words), catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


def test_the_book_settings_are_taken_and_do_what_they_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    coral("init")
    coral("config", "core.delta_encoding", "true")
    coral("config", "core.similarity_threshold", "0.98")
    repo = Repository(tmp_path)
    assert repo.config.get("delta.enabled") is True
    assert repo.objects.delta_config.similarity_threshold == 0.98
    shown = json.loads(coral("--json", "config", "core.similarity_threshold"))
    assert shown == {"core.similarity_threshold": 0.98}
    coral("config", "core.delta_encoding", "false")  # every chunk stored on its own
    repo = Repository(tmp_path)
    rng = np.random.default_rng(0)
    base = rng.standard_normal(20_000).astype(np.float32)
    repo.commit("one", weights={"w": base})
    repo.commit("two", weights={"w": base + np.float32(1e-4)})
    assert json.loads(coral("--json", "ls-tree"))[0]["storage"] == "full"
    coral("config", "core.delta_encoding", "true")
    repo = Repository(tmp_path)
    repo.commit("three", weights={"w": base + np.float32(2e-4)})
    assert json.loads(coral("--json", "ls-tree"))[0]["storage"] == "delta"


def test_the_book_settings_written_into_the_file_by_hand(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    path = tmp_path / ".coral" / "config"
    stored = json.loads(path.read_text())
    stored["core"].update({"delta_encoding": True, "similarity_threshold": 0.9})
    path.write_text(json.dumps(stored))
    reopened = Repository(tmp_path)
    assert reopened.config.get("delta.similarity_threshold") == 0.9  # honoured, not ignored
    assert reopened.config.get("core.delta_encoding") is True
    assert repo.path == reopened.path
