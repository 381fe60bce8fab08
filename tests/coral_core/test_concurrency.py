"""Several processes writing to one repository at once lose nothing.

Workers are real processes, released together once all of them are ready; each
prints what it made (commit ids, staged tensor ids). Afterwards every reported
commit is in its branch's history, a branch shared by several writers is one
linear chain holding all of them, staged entries all reach the commit, ``gc``
running beside the writers deleted nothing they needed, and the repository
verifies.

The locks are polled flocks; the gc lock has a turnstile, so a waiting gc is
not starved by overlapping writers. A gc run back to back with no pause still
keeps writers waiting, so the gc loop here pauses 5 ms between runs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from coral_core import CoralError, LockTimeoutError, Repository, bit_view
from coral_core.locks import fair_lock, file_lock

ROOT = Path(__file__).resolve().parents[2]
CHUNK_SIZE = 4096
BASE_SEED = 0
LAUNCH = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from tests.coral_core.test_concurrency import worker_main; worker_main(sys.argv[2:])"
)
HOLD = (  # hold a lock until killed
    "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
    "from coral_core.locks import file_lock\n"
    "with file_lock(Path(sys.argv[2]), shared=sys.argv[3] == 'True'):\n"
    "    print('holding', flush=True); time.sleep(30)\n"
)


def weights_for(seed: int) -> dict[str, np.ndarray]:
    """Deterministic weights: ``big`` spans three 4 KiB chunks and is close to its
    versions for other seeds (stored as deltas), ``bias`` is tiny."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(12345).standard_normal(3000)
    return {
        "big": (base + rng.standard_normal(3000) * 1e-3).astype(np.float32),
        "bias": rng.standard_normal(5).astype(np.float32),
        "step": np.array(seed, dtype=np.int64),
    }


def staged_tensor(seed: int) -> np.ndarray:
    """What a staging worker stores under one name: 6 KB, two chunks."""
    return np.random.default_rng(seed).standard_normal(1500).astype(np.float32)


# -- the workers -----------------------------------------------------------------


def worker_main(argv: Sequence[str]) -> None:
    """One worker: open the repository, say ready, wait for ``go``, do ``job``,
    pausing ``pause`` seconds between steps."""
    repo_path, go, job, name = Path(argv[0]), Path(argv[1]), argv[2], argv[3]
    count, seed, pause = int(argv[4]), int(argv[5]), float(argv[6])
    repo = Repository(repo_path)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.002)
    if job == "commit":  # name is the branch
        for i in range(count):
            commit = repo.commit(f"{name} {i}", weights=weights_for(seed + i), branch=name)
            print(commit.commit_hash, seed + i, flush=True)
            time.sleep(pause * (i % 3))  # uneven pace, so writers interleave
    elif job == "stage":  # name prefixes the staged tensor names
        for i in range(count):
            ids = repo.stage_weights({f"{name}.{i}": staged_tensor(seed + i)})
            print(ids[f"{name}.{i}"], seed + i, flush=True)
            time.sleep(pause)
    elif job == "churn":  # commit what others will commit later, then make it garbage
        for i in range(count):
            repo.commit("soon garbage", weights=weights_for(seed + i), branch=name)
            repo.delete_branch(name)
            print("-", seed + i, flush=True)
            time.sleep(pause)
    elif job == "gc":  # until the stop file appears; then report when each run ended
        stop, runs = go.with_name("stop"), []
        while not stop.exists():
            result = repo.gc()
            runs.append(f"{time.time():.6f} {result.removed_objects}")
            time.sleep(pause)
        print("\n".join(runs), flush=True)


def start(
    repo: Repository, go: Path, job: str, name: str, count: int, seed: int, pause: float = 0.0
) -> Worker:
    """Start a worker process (it says when it is ready)."""
    args = [str(ROOT), str(repo.path), str(go), job, name, str(count), str(seed), str(pause)]
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _STARTED.append(process)
    return Worker(process)


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap_workers() -> Iterator[None]:
    """Kill any worker a failed test left running (a gc loop would never stop)."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(ValueError):  # ValueError: its pipes were read already
            process.communicate()


class Worker:
    """A running worker process and what it printed."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            _, errors = self.process.communicate(timeout=30)
            pytest.fail(f"worker failed to start: {errors}")

    def finish(self, timeout: float = 120) -> list[tuple[str, int]]:
        """Wait for the worker; return its (id, seed) lines."""
        out, errors = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, errors
        return [(line.split()[0], int(line.split()[1])) for line in out.splitlines()]


def run_together(workers: list[Worker], go: Path) -> None:
    """Release every worker at once, when all of them are ready."""
    for worker in workers:
        worker.wait_ready()
    go.touch()


def assert_restores(repo: Repository, commit_id: str, expected: dict[str, np.ndarray]) -> None:
    """The commit's tensors come back bit for bit."""
    restored = repo.get_all_weights(commit_id)
    assert set(restored) == set(expected), commit_id
    for name, array in expected.items():
        assert np.array_equal(bit_view(restored[name].data), bit_view(array)), (commit_id, name)


def first_parent_chain(repo: Repository, tip: str) -> list[str]:
    """Commit ids from ``tip`` down to the root, following first parents."""
    chain = [tip]
    while parents := repo.read_commit(chain[-1]).parent_hashes:
        assert len(parents) == 1, f"{chain[-1]} has {len(parents)} parents"
        chain.append(parents[0])
    return chain


def assert_reflog_chains(repo: Repository, ref: str, tip: str, moves: int) -> None:
    """The reflog has one entry per move, each starting where the one before ended."""
    entries = repo.reflog(ref)
    assert len(entries) == moves, ref
    assert entries[0].new == tip
    for newer, older in itertools.pairwise(entries):
        assert newer.old == older.new, f"{ref}: a move from {newer.old} after one to {older.new}"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A repository with one commit on main."""
    repository = Repository(tmp_path / "repo", init=True, chunk_size=CHUNK_SIZE)
    repository.commit("base", weights=weights_for(BASE_SEED))
    return repository


# -- the tests -------------------------------------------------------------------


def test_four_processes_commit_to_the_same_branch(repo: Repository, tmp_path: Path) -> None:
    """4 x 20 snapshot commits onto main at once: one linear chain holds all 80."""
    go, count = tmp_path / "go", 20
    base = repo.resolve("main")
    workers = [start(repo, go, "commit", "main", count, 1000 * (w + 1), 0.003) for w in range(4)]
    run_together(workers, go)
    reported = [worker.finish() for worker in workers]

    made = [commit_id for commits in reported for commit_id, _ in commits]
    assert len(made) == 4 * count
    assert len(set(made)) == len(made)
    tip = repo.resolve("main")
    chain = first_parent_chain(repo, tip)
    assert chain[-1] == base
    assert set(chain) == {*made, base}  # nothing lost, nothing extra
    assert len(chain) == 4 * count + 1
    assert len(repo.log("main")) == 4 * count + 1
    position = {commit_id: i for i, commit_id in enumerate(reversed(chain))}
    for commits in reported:  # each worker's commits are in the order it made them
        places = [position[commit_id] for commit_id, _ in commits]
        assert places == sorted(places)
    assert_reflog_chains(repo, "main", tip, 4 * count + 1)
    assert_reflog_chains(repo, "HEAD", tip, 4 * count + 1)  # HEAD follows main
    assert repo.current_branch == "main"
    assert repo.staged().empty  # snapshot commits leave the index alone
    assert [b.name for b in repo.list_branches()] == ["main"]
    report = repo.verify()
    assert report.ok, report.problems
    assert report.commits_checked == 4 * count + 1
    for commits in reported:
        for commit_id, seed in commits:
            assert_restores(repo, commit_id, weights_for(seed))


def test_four_processes_commit_to_their_own_branches(repo: Repository, tmp_path: Path) -> None:
    """4 x 20 commits, each worker on a new branch of its own: every branch holds
    exactly its worker's commits on top of HEAD, and HEAD and main do not move."""
    go, count = tmp_path / "go", 20
    base = repo.resolve("main")
    branches = [f"runs/worker-{w}" for w in range(4)]
    workers = [
        start(repo, go, "commit", branch, count, 1000 * (w + 1), 0.003)
        for w, branch in enumerate(branches)
    ]
    run_together(workers, go)
    reported = [worker.finish() for worker in workers]

    for branch, commits in zip(branches, reported, strict=True):
        ids = [commit_id for commit_id, _ in commits]
        assert len(ids) == count
        assert repo.resolve(branch) == ids[-1]
        assert first_parent_chain(repo, ids[-1]) == [*reversed(ids), base]
        assert [c.commit_hash for c in repo.log(branch)] == [*reversed(ids), base]
        assert_reflog_chains(repo, branch, ids[-1], count)
    assert repo.resolve("main") == base
    assert repo.head.branch == "main"
    assert repo.head.commit == base
    assert len(repo.reflog("HEAD")) == 1  # commits to other branches do not move HEAD
    assert sorted(b.name for b in repo.list_branches()) == sorted(["main", *branches])
    assert repo.staged().empty
    report = repo.verify()
    assert report.ok, report.problems
    for commits in reported:
        for commit_id, seed in commits:
            assert_restores(repo, commit_id, weights_for(seed))


def test_concurrent_staging_loses_no_entry(repo: Repository, tmp_path: Path) -> None:
    """4 processes stage 12 tensors each into the shared index at once; the next
    commit holds all 48 (and the tensors it had), each as staged."""
    go, count = tmp_path / "go", 12
    workers = [start(repo, go, "stage", f"worker{w}", count, 100 * w) for w in range(4)]
    run_together(workers, go)
    reported = [worker.finish() for worker in workers]

    staged = repo.staged()
    assert len(staged.entries) == 4 * count
    commit = repo.commit("everything staged")
    tree = repo.ls_tree(commit.commit_hash)
    assert set(tree) == {f"worker{w}.{i}" for w in range(4) for i in range(count)} | set(
        weights_for(BASE_SEED)
    )
    expected = dict(weights_for(BASE_SEED))
    for w, staged_ids in enumerate(reported):
        assert len(staged_ids) == count
        for i, (tensor_id, seed) in enumerate(staged_ids):
            assert tree[f"worker{w}.{i}"].tensor == tensor_id
            expected[f"worker{w}.{i}"] = staged_tensor(seed)
    assert_restores(repo, commit.commit_hash, expected)
    assert repo.staged().empty
    assert repo.verify().ok


def test_gc_in_a_loop_beside_writers_deletes_nothing_needed(
    repo: Repository, tmp_path: Path
) -> None:
    """One process runs gc over and over while others commit (onto main and onto a
    new branch), stage, and make garbage out of the very tensors main commits
    next (so main's writer finds them stored and reuses them); gc must never
    delete an object a commit, a branch or a staged entry needs."""
    go, count = tmp_path / "go", 15
    garbage = repo.commit("garbage", weights=weights_for(999), branch="doomed")
    repo.delete_branch("doomed")  # so the first gc has something to delete
    collector = start(repo, go, "gc", "-", 0, 0, 0.005)  # brief pauses: see the module doc
    writers = [
        start(repo, go, "commit", "main", count, 1000, 0.02),
        start(repo, go, "commit", "side", count, 2000, 0.02),
        start(repo, go, "stage", "staged", count, 3000, 0.02),
        start(repo, go, "churn", "churn", count, 1000, 0.01),
    ]
    run_together([collector, *writers], go)
    started = time.time()
    main, side, staged, _ = (worker.finish() for worker in writers)
    ended = time.time()
    (tmp_path / "stop").touch()
    runs = collector.finish()

    during = [float(end) for end, _ in runs if started <= float(end) <= ended]
    assert len(during) >= 3, f"gc ran {len(runs)} times, {len(during)} of them beside writers"
    assert sum(removed for _, removed in runs) > 0  # it really collected
    assert not repo.objects.has(garbage.commit_hash)
    report = repo.verify()
    assert report.ok, report.problems
    for commit_id, seed in main + side:
        assert_restores(repo, commit_id, weights_for(seed))
    assert first_parent_chain(repo, main[-1][0])[:count] == [c for c, _ in reversed(main)]
    assert first_parent_chain(repo, side[-1][0])[:count] == [c for c, _ in reversed(side)]
    assert repo.resolve("main") == main[-1][0]
    assert repo.resolve("side") == side[-1][0]
    commit = repo.commit("staged while gc ran")
    expected = weights_for(main[-1][1])  # the staged tensors land on main's tip
    expected.update({f"staged.{i}": staged_tensor(seed) for i, (_, seed) in enumerate(staged)})
    assert_restores(repo, commit.commit_hash, expected)
    assert repo.verify().ok


@pytest.mark.parametrize("shared", [False, True])
def test_a_lock_held_too_long_times_out(tmp_path: Path, shared: bool) -> None:
    """A lock another process holds longer than the timeout raises LockTimeoutError
    (a TimeoutError naming the lock) after about the timeout; an exclusive lock
    blocks shared takers too, a shared one only exclusive takers."""
    path = tmp_path / "locks" / "held.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(ROOT), str(path), str(shared)],
        stdout=subprocess.PIPE,
        text=True,
    )
    _STARTED.append(holder)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with (
            pytest.raises(LockTimeoutError, match=r"held\.lock") as caught,
            file_lock(path, timeout=0.3),
        ):
            pass
        waited = time.monotonic() - started
        assert 0.3 <= waited < 2.0
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, CoralError)
        if shared:  # readers share it
            with file_lock(path, shared=True, timeout=0.3):
                pass
        else:
            with pytest.raises(LockTimeoutError), file_lock(path, shared=True, timeout=0.2):
                pass
    finally:
        holder.kill()
        holder.communicate()
    with file_lock(path, timeout=1.0):  # the kernel released it with the process
        pass


def test_a_waiting_gc_is_not_starved_by_overlapping_writers(tmp_path: Path) -> None:
    """Shared takers that arrive while an exclusive taker waits queue behind it,
    so gc gets its turn even when commits keep overlapping."""
    path = tmp_path / "locks" / "gc.lock"
    order: list[str] = []
    first_in, exclusive_waiting = threading.Event(), threading.Event()

    def reader(name: str, hold: float) -> None:
        with fair_lock(path, shared=True, timeout=5):
            order.append(name)
            first_in.set()
            time.sleep(hold)

    def writer() -> None:
        exclusive_waiting.set()
        with fair_lock(path, timeout=5):
            order.append("gc")

    threads = [threading.Thread(target=reader, args=("first", 0.3))]
    threads[0].start()
    first_in.wait()
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    exclusive_waiting.wait()
    time.sleep(0.1)  # the writer now holds the turnstile and waits for "first"
    threads.append(threading.Thread(target=reader, args=("second", 0.0)))
    threads[2].start()
    for thread in threads:
        thread.join()
    assert order == ["first", "gc", "second"]


def test_a_commit_waits_for_a_held_refs_lock_and_goes_on_when_it_dies(
    repo: Repository, tmp_path: Path
) -> None:
    """Another process holding the refs lock makes ``refs.lock`` time out; once
    that process is SIGKILLed, a commit goes through at once."""
    path = repo.coral_dir / "locks" / "refs.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(ROOT), str(path), "False"],
        stdout=subprocess.PIPE,
        text=True,
    )
    _STARTED.append(holder)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    with pytest.raises(LockTimeoutError), repo.refs.lock(timeout=0.2):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate()
    started = time.monotonic()
    commit = repo.commit("after the holder died", weights=weights_for(7))
    assert time.monotonic() - started < 5
    assert repo.resolve("main") == commit.commit_hash


def test_pushes_into_a_live_repository_while_its_owner_commits_and_collects(
    tmp_path: Path,
) -> None:
    """benchmarks/shared_folder_soak.py for a few seconds: the owner's commits
    and every push that reported success are in main, bit for bit."""
    out = tmp_path / "soak.json"
    soak = str(ROOT / "benchmarks" / "shared_folder_soak.py")
    done = subprocess.run(
        [sys.executable, soak, "--seconds", "6", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert sum(result["lost"].values()) == 0
    assert result["verify_ok"]
    assert result["reported"]["owner"] > 10
    assert sum(n for writer, n in result["reported"].items() if writer != "owner") > 0
