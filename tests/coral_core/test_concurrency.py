"""Several processes writing to one repository at once lose nothing.

Workers are real processes started together; each prints the id of every
commit it made. Afterwards every reported commit is in its branch's history,
the shared branch is one linear chain, and the repository verifies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coral_core import LockTimeoutError, Repository, bit_view
from coral_core.locks import file_lock

ROOT = Path(__file__).resolve().parents[2]

WORKER = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from coral_core import Repository
from coral_core.locks import file_lock
from tests.coral_core.test_concurrency import weights_for

root, repo_path, job, name, count, go = sys.argv[1:7]
while not Path(go).exists():
    time.sleep(0.005)
repo = Repository(repo_path)
if job == "commit":  # name is the branch
    for i in range(int(count)):
        seed = hash((name, i)) % 10**9
        commit = repo.commit(f"{name} {i}", weights=weights_for(seed), branch=name,
                             metrics={"seed": seed})
        print(commit.commit_hash, seed, flush=True)
elif job == "stage":  # name prefixes the staged tensor names
    for i in range(int(count)):
        repo.stage_weights({f"{name}.{i}": weights_for(i)["small"]})
elif job == "gc":
    stop = Path(go).with_name("stop")
    while not stop.exists():
        repo.gc()
elif job == "hold":
    with file_lock(Path(repo_path) / "held.lock"):
        print("holding", flush=True)
        time.sleep(float(count))
"""


def weights_for(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "big": rng.standard_normal(3000).astype(np.float32),
        "small": rng.standard_normal(5).astype(np.float32),
    }


def start(repo: Repository, job: str, name: str, count: int, go: Path) -> subprocess.Popen[str]:
    args = [str(ROOT), str(repo.path), job, name, str(count), str(go)]
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(workers: list[subprocess.Popen[str]]) -> list[list[tuple[str, int]]]:
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        results.append([(line.split()[0], int(line.split()[1])) for line in out.splitlines()])
    return results


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    repository = Repository(tmp_path / "repo", init=True, chunk_size=4096)
    repository.commit("base", weights=weights_for(0))
    return repository


@pytest.mark.slow
def test_four_processes_commit_at_once(repo: Repository, tmp_path: Path) -> None:
    go = tmp_path / "go"
    branches = ["main", "main", "run-a", "run-b"]
    workers = [start(repo, "commit", b, 20, go) for b in branches]
    time.sleep(0.8)  # let every worker import and wait at the line
    go.touch()
    reported = finish(workers)
    shared = [c for c, _ in reported[0] + reported[1]]
    main_log = repo.log("main")
    assert len(main_log) == 41  # base + 2 x 20, nothing lost
    assert all(len(c.parent_hashes) <= 1 for c in main_log)  # one linear chain
    assert set(shared) <= {c.commit_hash for c in main_log}
    for branch, commits in zip(branches[2:], reported[2:], strict=True):
        history = {c.commit_hash for c in repo.log(branch)}
        assert {c for c, _ in commits} <= history
        assert repo.resolve(branch) == commits[-1][0]
    assert repo.verify().ok
    for commit_id, seed in reported[0][:3] + reported[3][-3:]:
        restored = repo.get_weight("big", commit_id).data
        assert np.array_equal(bit_view(restored), bit_view(weights_for(seed)["big"]))


def test_concurrent_staging_loses_no_entry(repo: Repository, tmp_path: Path) -> None:
    go = tmp_path / "go"
    workers = [start(repo, "stage", f"worker{w}", 10, go) for w in range(4)]
    time.sleep(0.8)
    go.touch()
    finish(workers)
    commit = repo.commit("everything staged")
    names = set(repo.ls_tree(commit.commit_hash))
    assert {f"worker{w}.{i}" for w in range(4) for i in range(10)} <= names


@pytest.mark.slow
def test_gc_running_beside_committers_deletes_nothing_needed(
    repo: Repository, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    collector = start(repo, "gc", "-", 0, go)
    committers = [start(repo, "commit", b, 15, go) for b in ("main", "side")]
    time.sleep(0.8)
    go.touch()
    reported = finish(committers)
    (tmp_path / "stop").touch()
    finish([collector])
    assert repo.verify().ok
    for commit_id, seed in reported[0] + reported[1]:
        restored = repo.get_weight("big", commit_id).data
        assert np.array_equal(bit_view(restored), bit_view(weights_for(seed)["big"]))


def test_a_lock_held_too_long_times_out(repo: Repository, tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.touch()
    holder = start(repo, "hold", "-", 3, go)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    with (
        pytest.raises(LockTimeoutError, match="held"),
        file_lock(repo.path / "held.lock", timeout=0.3),
    ):
        pass
    holder.kill()
    holder.communicate()
