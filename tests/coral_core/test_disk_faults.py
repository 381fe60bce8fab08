"""What the disk and the OS do: full, read-only, too many open files, symlinks,
FIFOs, damaged files. Each is one clear error (one line from ``coral-ml``,
exit 1), and an operation either happened or did not.

The full-disk tests mount a small tmpfs and the read-only ones a read-only
bind mount; both need root, and are skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from coral_cli.main import cli
from coral_core import (
    ConfigError,
    CoralError,
    CorruptObjectError,
    DiskError,
    InvalidRefNameError,
    ModelFileError,
    Repository,
    bit_view,
)
from coral_core.formats import read_safetensors, write_safetensors

ROOT = Path(__file__).resolve().parents[2]


def mounted(*command: str) -> bool:
    return subprocess.run(list(command), capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, to fill up."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or not mounted(
        "mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)
    ):
        pytest.skip("mounting a tmpfs needs root (the full-disk tests run in CI as root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` bytes."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def coral(*args: str, repo: Path | None = None) -> tuple[int, str]:
    """``coral-ml`` in this process: exit status and the error output."""
    options = ["-C", str(repo)] if repo else []
    result = CliRunner().invoke(cli, [*options, *args], catch_exceptions=False)
    return result.exit_code, result.stderr


def test_a_full_disk_fails_each_write_cleanly(small_disk: Path) -> None:
    repo = Repository(small_disk / "repo", init=True)
    first = repo.commit("first", weights={"w": np.arange(256, dtype=np.float32)})
    repo.tag_version("v1")
    filler = fill(small_disk, leave=16 * 1024)
    big = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)  # 4 MiB
    with pytest.raises(DiskError, match="disk is full") as caught:
        repo.commit("too big", weights={"w": big})
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOSPC
    assert [c.commit_hash for c in repo.log()] == [first.commit_hash]  # nothing happened
    code, err = coral("commit", "-m", "x", "--allow-empty", repo=repo.path)
    assert code in (0, 1)  # a tiny commit may fit: either it happened, or one line says why
    if code == 1:
        assert err.count("\n") == 1
        assert err.startswith("error:")
    for args in (("tag", "v2", "-d", "x" * 20000), ("branch", "b" * 200)):
        code, err = coral(*args, repo=repo.path)
        assert code in (0, 1)
        assert "Traceback" not in err
    filler.unlink()
    assert repo.verify().ok  # a full disk took nothing
    assert np.array_equal(
        repo.get_weight("w", first.commit_hash).data, np.arange(256, dtype=np.float32)
    )
    repo.commit("after", weights={"w": big})  # space again: it works
    assert repo.verify().ok


def test_a_reflog_the_disk_cannot_take_does_not_undo_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.stage_weights({"w": np.arange(4, dtype=np.float32)})

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("coral_core.files._append_lines", full)
    with caplog.at_level("WARNING", logger="coral.refs"):
        made = repo.commit("staged")  # the branch moved: the commit happened, and says so
    assert "reflog" in caplog.text
    assert repo.resolve("main") == made.commit_hash
    assert repo.staged().empty  # a retry would not commit it twice


def test_pointers_go_back_when_the_branch_cannot_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    before = repo.commit("one", weights={"w": np.zeros(4, np.float32)})
    pointer = "refs/runs/exp/r1/last"
    repo.refs.write(pointer, before.commit_hash)
    real = repo.refs.write

    def write(ref: str, object_id: str) -> None:
        if ref.startswith("refs/heads/"):
            raise DiskError("cannot write the branch: the disk is full", errno.ENOSPC)
        real(ref, object_id)

    monkeypatch.setattr(repo.refs, "write", write)
    with pytest.raises(DiskError):
        repo.commit(
            "two", weights={"w": np.ones(4, np.float32)}, pointers={pointer: before.commit_hash}
        )
    assert repo.refs.read(pointer) == before.commit_hash  # back where it was
    assert repo.resolve("main") == before.commit_hash


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A repository with history, mounted read-only."""
    source = tmp_path / "source"
    repo = Repository(source, init=True)
    for step in range(3):
        repo.commit(f"step {step}", weights={"w": np.full(64, step, np.float32)})
    repo.tag_version("v1")
    view = tmp_path / "view"
    view.mkdir()
    if os.geteuid() != 0 or not mounted("mount", "--bind", str(source), str(view)):
        pytest.skip("a read-only bind mount needs root (the read-only tests run in CI as root)")
    if not mounted("mount", "-o", "remount,ro,bind", str(view)):
        subprocess.run(["umount", str(view)], check=False)
        pytest.skip("remounting read-only is not allowed here")
    yield view
    subprocess.run(["umount", "-l", str(view)], check=False)


def test_a_read_only_repository_serves_every_read(read_only: Path, tmp_path: Path) -> None:
    for args in (
        ("log",),
        ("log", "--all", "--oneline"),
        ("show", "v1"),
        ("ls-tree",),
        ("diff", "HEAD~2"),
        ("stats",),
        ("verify",),
        ("gc", "--dry-run"),
        ("branch",),
        ("tag", "--list"),
        ("status",),
        ("export", "HEAD~1", str(tmp_path / "out.safetensors")),
    ):
        code, err = coral(*args, repo=read_only)
        assert code == 0, (args, err)
    assert np.array_equal(
        read_safetensors(tmp_path / "out.safetensors")["w"], np.full(64, 1, np.float32)
    )
    for args in (("commit", "-m", "x", "--allow-empty"), ("tag", "v2"), ("branch", "b")):
        code, err = coral(*args, repo=read_only)
        assert code == 1, args
        assert "read-only" in err, (args, err)
        assert err.count("\n") == 1, err
    mine = Repository(tmp_path / "mine", init=True)
    mine.commit("x", weights={"w": np.zeros(4, np.float32)})
    mine.create_branch("mine")
    mine.add_remote("ro", str(read_only))
    with pytest.raises(CoralError, match="read-only"):
        mine.push("ro", ["mine"])


def test_thousands_of_tensors_in_a_file_need_one_descriptor(tmp_path: Path) -> None:
    arrays = {f"layer{i}.weight": np.full(16, i, np.float32) for i in range(1500)}
    write_safetensors(tmp_path / "many.safetensors", arrays)
    script = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from coral_cli.main import main
sys.argv = ["coral-ml", "-C", {str(tmp_path)!r}, "add", {str(tmp_path / "many.safetensors")!r}]
main()
"""
    Repository(tmp_path, init=True)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_fifos_symlink_loops_and_odd_files_are_one_line(tmp_path: Path) -> None:
    Repository(tmp_path / "repo", init=True)
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    for path in (fifo, loop):
        code, err = coral("add", str(path), repo=tmp_path / "repo")  # a FIFO must not hang
        assert code == 1, err
        assert err.count("\n") == 1, err


def test_symlinks_do_not_lead_writes_out_of_the_repository(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("one", weights={"w": np.zeros(8, np.float32)})
    outside = tmp_path / "outside"
    outside.write_text("mine\n")
    reflog = repo.coral_dir / "logs" / "refs" / "heads" / "main"
    reflog.unlink()
    reflog.symlink_to(outside)
    prints = repo.coral_dir / "fingerprints"
    prints.unlink(missing_ok=True)
    prints.symlink_to(outside)
    repo.commit(
        "two", weights={"w": np.random.default_rng(0).standard_normal(8192).astype(np.float32)}
    )
    assert outside.read_text() == "mine\n"  # neither log was written through the link
    lock = repo.coral_dir / "locks" / "refs.lock"
    lock.unlink()
    lock.symlink_to(tmp_path / "made-outside")
    with pytest.raises(DiskError, match="symlink"):
        repo.commit("three", weights={"w": np.ones(8, np.float32)})
    assert not (tmp_path / "made-outside").exists()
    lock.unlink()

    remote = tmp_path / "remote"
    (remote / "refs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (remote / "refs" / "heads").symlink_to(tmp_path / "elsewhere")
    repo.add_remote("origin", str(remote))
    with pytest.raises(CoralError, match="symlink"):
        repo.push()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_damaged_local_files_are_errors_not_tracebacks(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("one", weights={"w": np.zeros(8, np.float32)})
    head = repo.coral_dir / "HEAD"
    for damage in (b"\xff\xfe garbage", b"ref: refs/tags/v1\n"):
        head.write_bytes(damage)
        code, err = coral("log", repo=repo.path)
        assert code == 1, err
        assert err.count("\n") == 1, err
    head.write_text("ref: refs/heads/main\n")
    index = repo.coral_dir / "index"
    for damage in (
        "null",
        "[]",
        "{}",
        '{"entries": {"w": {"dtype": 1}}, "removed": [], "replace": 0}',
    ):
        index.write_text(damage)
        with pytest.raises(CorruptObjectError, match="reset"):
            repo.staged()
        code, err = coral("status", repo=repo.path)
        assert code == 1
        assert "reset" in err
    assert coral("reset", repo=repo.path)[0] == 0
    reflog = repo.coral_dir / "logs" / "HEAD"
    with open(reflog, "ab") as handle:
        handle.write(b'{"old": 1, "new": [], "author": 2, "time": "x", "message": null}\n\xff\n')
    assert coral("reflog", repo=repo.path)[0] == 0  # bad lines skipped
    ref = repo.coral_dir / "refs" / "heads" / "main"
    good = ref.read_bytes()
    ref.write_bytes(b"\xff" * 32)
    code, err = coral("log", repo=repo.path)
    assert (code, err.count("\n")) == (1, 1)
    ref.write_bytes(good)
    locks = repo.coral_dir / "locks"
    for child in locks.iterdir():
        child.unlink()
    locks.rmdir()
    locks.write_text("not a folder")
    code, err = coral("commit", "-m", "x", "--allow-empty", repo=repo.path)
    assert (code, err.count("\n")) == (1, 1), err


def test_config_values_are_checked_and_a_bad_one_can_be_repaired(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    for key, value in (
        ("core.chunk_size", "17"),
        ("core.compression_level", "99"),
        ("core.hash", "sha1"),
    ):
        code, err = coral("config", key, value, repo=repo.path)
        assert code == 1, (key, err)
    config = repo.coral_dir / "config"
    values = json.loads(config.read_text())
    values["core"]["chunk_size"] = 0  # as a hand edit (or an older Coral) left it
    config.write_text(json.dumps(values))
    code, err = coral("log", repo=repo.path)
    assert code == 1
    assert "coral-ml config core.chunk_size" in err
    assert coral("config", "core.chunk_size", "4194304", repo=repo.path)[0] == 0
    assert coral("log", repo=repo.path)[0] == 0
    # chains longer than a read decodes (64) would leave versions unreadable
    assert coral("config", "delta.max_chain_length", "90", repo=repo.path)[0] == 1
    assert coral("repack", "--max-chain-length", "90", repo=repo.path)[0] == 2
    with pytest.raises(ConfigError, match="1 to 64"):
        Repository(repo.path).repack(max_chain_length=90)
    assert Repository(repo.path).config.get("delta.max_chain_length") == 2


def test_formats_refuse_what_they_cannot_hold_and_files_that_lie(tmp_path: Path) -> None:
    import ml_dtypes

    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("bf16", weights={"w": np.ones(4, ml_dtypes.bfloat16)})
    for suffix in ("npz", "npy"):
        code, err = coral("export", "HEAD", str(tmp_path / f"out.{suffix}"), repo=repo.path)
        assert code == 1
        assert "bfloat16" in err
        assert not (tmp_path / f"out.{suffix}").exists()

    def safetensors(header: dict[str, object], size: int) -> Path:
        encoded = json.dumps(header).encode()
        path = tmp_path / f"{uuid.uuid4().hex}.safetensors"
        path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"\0" * size)
        return path

    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    overlapping = {"a": entry, "b": {**entry, "data_offsets": [8, 24], "shape": [4]}}
    fractional = {"a": {**entry, "shape": [2.0, 2]}}
    boolean = {"a": {**entry, "shape": [True, 4]}}
    huge = {"a": {**entry, "shape": [0, 2**62]}}
    for header in (overlapping, fractional, boolean, huge):
        with pytest.raises(ModelFileError):
            read_safetensors(safetensors(header, 32))
    twice = tmp_path / "twice.safetensors"
    one = b'{"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}'
    text = b'{"a": ' + one + b', "a": ' + one + b"}"
    twice.write_bytes(len(text).to_bytes(8, "little") + text + b"\0" * 16)
    with pytest.raises(ModelFileError, match="twice"):
        read_safetensors(twice)


def test_names_json_and_byte_orders(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    with pytest.raises(InvalidRefNameError, match="every remote"):
        repo.create_branch("café")  # could be made but never pushed
    repo.commit("nan", weights={"w": np.zeros(4, np.float32)}, metrics={"acc": float("nan")})
    result = CliRunner().invoke(cli, ["-C", str(repo.path), "--json", "log"])
    assert json.loads(result.stdout)[0]["metrics"]["acc"] is None  # strict JSON
    big = np.arange(6, dtype=">f4")  # big-endian: stored by value
    made = repo.commit("big-endian", weights={"b": big})
    restored = repo.get_weight("b", made.commit_hash).data
    assert np.array_equal(restored, big)
    assert restored.dtype.isnative
    assert np.array_equal(bit_view(restored), bit_view(big.astype("<f4")))
