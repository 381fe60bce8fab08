"""Opening repositories: missing, newer format, damaged config, re-init."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coral_core import (
    FORMAT_VERSION,
    CoralError,
    Repository,
    RepositoryNotFoundError,
    UnsupportedFormatError,
)


def test_missing_repository_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError, match="init=True") as caught:
        Repository(tmp_path)
    assert isinstance(caught.value, FileNotFoundError)
    assert list(tmp_path.iterdir()) == []


def test_newer_format_is_refused_with_advice(tmp_path: Path) -> None:
    Repository(tmp_path, init=True)
    config_path = tmp_path / ".coral" / "config"
    config = json.loads(config_path.read_text())
    config["core"]["format_version"] = FORMAT_VERSION + 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(UnsupportedFormatError, match="Upgrade coral-core"):
        Repository(tmp_path)


def test_damaged_config_is_a_coral_error(tmp_path: Path) -> None:
    Repository(tmp_path, init=True)
    (tmp_path / ".coral" / "config").write_text("{not json")
    with pytest.raises(CoralError, match="config"):
        Repository(tmp_path)


def test_init_on_an_existing_repository_keeps_everything(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    commit = repo.commit("keep me", weights={"w": np.arange(4.0)})
    repo.tag_version("v1")
    again = Repository(tmp_path, init=True)
    assert again.resolve("v1") == commit.commit_hash
    assert again.log() == [commit]
