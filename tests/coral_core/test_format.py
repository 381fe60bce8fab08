"""Opening repositories: missing ones, newer formats, damaged configs, re-init."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from coral_core import (
    FORMAT_VERSION,
    CheckpointConfig,
    CheckpointManager,
    CoralError,
    Repository,
    RepositoryNotFoundError,
    TrainingState,
    UnsupportedFormatError,
    bit_view,
)
from coral_core.runs import list_runs

from .data.make_format_v1 import weights as v1_weights

DATA = Path(__file__).parent / "data"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to see that nothing changed."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def set_format_version(repo_path: Path, version: object) -> None:
    config_path = repo_path / ".coral" / "config"
    config = json.loads(config_path.read_text())
    config["core"]["format_version"] = version
    config_path.write_text(json.dumps(config))


@pytest.mark.parametrize("newer", [FORMAT_VERSION + 1, FORMAT_VERSION + 100])
def test_newer_format_is_refused_with_upgrade_advice(tmp_path: Path, newer: int) -> None:
    """A repository written by a newer Coral is refused, and the message says to upgrade."""
    repo = Repository(tmp_path, init=True)
    repo.commit("one", weights={"w": np.arange(3.0)})
    set_format_version(tmp_path, newer)
    before = snapshot(tmp_path)
    with pytest.raises(UnsupportedFormatError, match=r"(?i)upgrade") as caught:
        Repository(tmp_path)
    assert str(newer) in str(caught.value)
    assert isinstance(caught.value, CoralError)
    with pytest.raises(UnsupportedFormatError):  # init=True must not "repair" it either
        Repository(tmp_path, init=True)
    assert snapshot(tmp_path) == before  # refusing wrote nothing


def test_current_and_older_formats_open(tmp_path: Path) -> None:
    """The format this Coral writes opens; so does an older one."""
    repo = Repository(tmp_path, init=True)
    commit = repo.commit("one", weights={"w": np.arange(3.0)})
    assert repo.config.get("core.format_version") == FORMAT_VERSION
    set_format_version(tmp_path, FORMAT_VERSION - 1)
    assert Repository(tmp_path).resolve("main") == commit.commit_hash


@pytest.mark.parametrize("text", ["{not json", "", "\x00\x01garbage", '{"core": {"format_'])
def test_config_that_is_not_json_is_a_coral_error(tmp_path: Path, text: str) -> None:
    """A damaged config raises a CoralError naming the config, not a bare exception."""
    Repository(tmp_path, init=True)
    (tmp_path / ".coral" / "config").write_text(text)
    with pytest.raises(CoralError, match="config"):
        Repository(tmp_path)


def test_config_with_invalid_utf8_is_a_coral_error(tmp_path: Path) -> None:
    Repository(tmp_path, init=True)
    (tmp_path / ".coral" / "config").write_bytes(b'{"core": "\xff\xfe"}')
    with pytest.raises(CoralError, match="config"):
        Repository(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "null",
        '"config"',
        '{"core": 5}',
        '{"core": {"format_version": 1}, "user": "ada"}',
        '{"core": {"format_version": 1, "chunk_size": "big"}}',
    ],
)
def test_config_that_is_json_of_the_wrong_shape_is_a_coral_error(tmp_path: Path, text: str) -> None:
    """Valid JSON that is not a config (a list, null, a section that is not an
    object, a setting of the wrong type) is damage too, and must raise a
    CoralError like broken JSON does."""
    Repository(tmp_path, init=True)
    (tmp_path / ".coral" / "config").write_text(text)
    with pytest.raises(CoralError):
        Repository(tmp_path)


def test_missing_format_version_is_refused(tmp_path: Path) -> None:
    Repository(tmp_path, init=True)
    (tmp_path / ".coral" / "config").write_text('{"core": {}}')
    with pytest.raises(CoralError):
        Repository(tmp_path)


def test_no_repository_raises_and_creates_nothing(tmp_path: Path) -> None:
    """Opening an empty folder without init is a RepositoryNotFoundError (also a
    FileNotFoundError) that says how to create one, and leaves the folder empty."""
    with pytest.raises(RepositoryNotFoundError, match="init=True") as caught:
        Repository(tmp_path)
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, CoralError)
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_raises_and_is_not_created(tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "deeper"
    with pytest.raises(FileNotFoundError):
        Repository(target)
    assert not (tmp_path / "nowhere").exists()


def test_coral_folder_without_config_is_not_a_repository(tmp_path: Path) -> None:
    """A ``.coral`` left half-made (no config yet) is not opened without init."""
    (tmp_path / ".coral" / "objects").mkdir(parents=True)
    with pytest.raises(RepositoryNotFoundError):
        Repository(tmp_path)
    repo = Repository(tmp_path, init=True)  # init finishes it
    assert repo.log() == []
    assert repo.commit("first", weights={"w": np.arange(2.0)}).parent_hashes == ()


def test_init_on_an_existing_repository_loses_nothing(tmp_path: Path) -> None:
    """``init=True`` on an existing repository opens it: commits, branches, tags,
    HEAD, the index, the reflog and the settings all stay as they were."""
    repo = Repository(tmp_path, init=True, chunk_size=4096)
    weights = {"w": np.random.default_rng(0).standard_normal(3000).astype(np.float32)}
    first = repo.commit("one", weights=weights, metrics={"loss": 0.5})
    repo.tag_version("v1", description="first")
    repo.create_branch("side")
    second = repo.commit("two", weights={"w": weights["w"] * 2}, branch="side")
    repo.stage_weights({"staged": np.arange(5, dtype=np.int32)})
    repo.config.set("user.name", "ada")
    before = snapshot(tmp_path)

    again = Repository(tmp_path, init=True, chunk_size=8192)
    assert snapshot(tmp_path) == before  # not one byte rewritten
    assert again.config.get("core.chunk_size") == 4096  # the stored setting wins
    assert again.config.get("user.name") == "ada"
    assert again.resolve("v1") == first.commit_hash
    assert again.resolve("side") == second.commit_hash
    assert again.current_branch == "main"
    assert again.log() == [first]
    assert [c.commit_hash for c in again.log("side")] == [second.commit_hash, first.commit_hash]
    assert set(again.staged().entries) == {"staged"}
    assert [e.message for e in again.reflog("main")] == ["commit: one"]
    restored = again.get_weight("w", "v1").data
    assert np.array_equal(bit_view(restored), bit_view(weights["w"]))
    assert again.verify().ok


def test_opening_through_the_coral_folder(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    commit = repo.commit("one", weights={"w": np.arange(3.0)})
    again = Repository(tmp_path / ".coral")
    assert again.path == tmp_path.absolute()
    assert again.resolve("HEAD") == commit.commit_hash


def test_a_format_1_repository_opens_migrates_and_keeps_every_commit(tmp_path: Path) -> None:
    """A repository the release before append-only history wrote (its retention
    rewrote the branch and kept a moving best tag) opens, migrates to this
    format, and every commit reads back bit for bit."""
    with tarfile.open(DATA / "format_v1.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    root = tmp_path / "repo"
    expected = json.loads((root / "expected.json").read_text())
    repo = Repository(root)
    assert repo.config.get("core.format_version") == FORMAT_VERSION == 3
    assert [c.message for c in repo.log()] == expected["log"]
    for commit in repo.log(all_refs=True):
        step = {"base model": 100, "feature work": 200}.get(commit.message)
        step = step if step is not None else int(commit.message.rsplit(" ", 1)[-1])
        for name, array in v1_weights(step).items():
            restored = repo.get_weight(name, commit.commit_hash).data
            assert np.array_equal(bit_view(restored), bit_view(array)), (commit.message, name)
    assert [t.name for t in repo.list_tags()] == ["v1"]  # the moving best tag is a pointer now
    (run,) = list_runs(repo)
    assert (run.experiment, run.run_id) == ("exp", "legacy")
    assert [c.record.step for c in run.checkpoints] == expected["kept_steps"]
    best = repo.show("exp/best")
    assert best.metadata.metadata["coral.checkpoint"]["step"] == expected["best_step"]
    assert repo.resolve("exp/last") == repo.resolve("main")
    assert repo.verify().ok
    assert Repository(root).config.get("core.format_version") == FORMAT_VERSION  # once is enough

    config = CheckpointConfig(save_on_best_metric="loss", max_checkpoints=2)
    manager = CheckpointManager(repo, config, "exp")  # the legacy run goes on where it was
    manager.resume_from(repo.resolve("exp/last"))
    assert manager.run_id == "legacy"
    assert [c.step for c in manager.checkpoints] == expected["kept_steps"]
    state = TrainingState(epoch=6, global_step=6, metrics={"loss": 0.1})
    newest = manager.save(v1_weights(6), state)
    assert repo.resolve("exp/best") == repo.resolve("exp/last") == newest.commit_hash
    assert [c.step for c in manager.checkpoints] == [5, 6]
    assert len(repo.log()) == len(expected["log"]) + 1  # nothing rewritten
