"""A process killed with SIGKILL at any moment never damages the repository.

A child commits (or runs gc, or repacks) in a loop and reports each commit id only after
``commit()`` returned; the parent kills it at random moments. After every kill
the repository verifies, every reported commit restores bit for bit, and the
next commit succeeds (locks die with their process).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coral_core import Repository, bit_view

CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[4])
from coral_core import Repository
from tests.coral_core.test_crash_safety import weights_for

repo = Repository(sys.argv[1], init=True, chunk_size=4096)
report, mode = sys.argv[2], sys.argv[3]
seed = sum(1 for _ in open(report)) if os.path.exists(report) else 0
while True:
    seed += 1
    if mode == "gc":
        repo.commit("scratch", weights=weights_for(10**6 + seed), branch="scratch")
        repo.delete_branch("scratch")
        repo.gc()
        continue
    if seed % 2:
        repo.stage_weights(weights_for(seed))
        commit = repo.commit(f"seed {seed}", metrics={"seed": seed})
    else:
        commit = repo.commit(f"seed {seed}", weights=weights_for(seed), metrics={"seed": seed})
    with open(report, "a") as handle:
        handle.write(f"{commit.commit_hash} {seed}\n")
        handle.flush()
        os.fsync(handle.fileno())
    if seed % 7 == 0:
        repo.gc()
    if mode == "repack":
        repo.repack(max_chain_length=1 + seed % 3)
"""

ROOT = Path(__file__).resolve().parents[2]


def weights_for(seed: int) -> dict[str, np.ndarray]:
    """Deterministic weights; ``big`` spans several 4 KiB chunks and is close to its
    versions for other seeds, so most of its chunks are stored as deltas."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).standard_normal(3000)  # shared, so chunks become deltas
    return {
        "big": (base + rng.standard_normal(3000) * 1e-3).astype(np.float32),
        "small": rng.standard_normal(7).astype(np.float16),
        "step": np.array(seed, dtype=np.int64),
    }


def run_and_kill(repo_path: Path, report: Path, mode: str, delay: float) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(repo_path), str(report), mode, str(ROOT)],
        stderr=subprocess.PIPE,
    ) as child:
        time.sleep(delay)
        alive = child.poll() is None
        if alive:
            os.kill(child.pid, signal.SIGKILL)
        _, errors = child.communicate()
    assert alive, f"the child died on its own: {errors.decode()}"


def check(repo_path: Path, report: Path) -> int:
    repo = Repository(repo_path)
    result = repo.verify()
    assert result.ok, result.problems
    reported = [line.split() for line in report.read_text().splitlines()] if report.exists() else []
    for commit_id, seed in reported:
        restored = repo.get_all_weights(commit_id)
        expected = weights_for(int(seed))
        assert set(restored) == set(expected)
        for name, array in expected.items():
            assert np.array_equal(bit_view(restored[name].data), bit_view(array)), (commit_id, name)
    repo.commit("after the kill", allow_empty=True)  # no stale lock blocks us
    return len(reported)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    repo_path, report = tmp_path / "repo", tmp_path / "report.txt"
    rng = random.Random(1234)
    modes = ["commit"] * 7 + ["gc"] * 3 + ["repack"] * 3
    rng.shuffle(modes)
    survived = 0
    for mode in modes:
        run_and_kill(repo_path, report, mode, rng.uniform(0.6, 1.6))
        survived += 1
        check(repo_path, report)
    assert survived == len(modes)
    assert check(repo_path, report) >= 10  # commits were really made between kills


def test_torn_reflog_line_and_leftover_temp_file(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    repo.commit("one", weights=weights_for(1))
    with open(repo.coral_dir / "logs" / "HEAD", "a") as handle:
        handle.write('{"old": null, "new": "abc')  # a write cut short by a crash
    temp = repo.coral_dir / "objects" / "ab" / ".tmp-999-deadbeef"
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"half an object")
    assert [e.message for e in repo.reflog()] == ["commit: one"]
    assert repo.verify().ok
    result = repo.gc()
    assert result.temp_files_removed == 1
    assert not temp.exists()
    repo.commit("two", weights=weights_for(2))
    assert len(repo.log()) == 2
