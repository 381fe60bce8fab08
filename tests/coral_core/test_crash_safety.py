"""A process killed with SIGKILL at any moment never damages the repository.

A child process commits (or runs ``gc``, or repacks) in a loop and reports each
commit id only after ``commit()`` returned; the parent kills it at random
moments. After every kill the repository verifies, every commit ever reported
is still on its branch and restores bit for bit, the locks are free (a flock
dies with its process), and the next commit succeeds.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from coral_core import Repository, bit_view
from coral_core.locks import file_lock
from coral_core.maintenance import in_deletion_order, reachable_objects
from coral_core.object_format import ObjectKind

ROOT = Path(__file__).resolve().parents[2]
CHUNK_SIZE = 4096
PARENT_SEED = 10**6  # seeds of the commits the parent makes between kills
SCRATCH_SEED = 2 * 10**6  # seeds of the garbage the gc child makes
LAUNCH = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from tests.coral_core.test_crash_safety import child_main; child_main(sys.argv[2:])"
)


def weights_for(seed: int) -> dict[str, np.ndarray]:
    """Deterministic weights for ``seed``.

    ``big`` (12 KB, three 4 KiB chunks) stays close to a shared base, so most of its
    chunks are stored as deltas of the previous commit's; ``emb`` (8 KB, two
    chunks) is new every time; ``special`` holds NaNs with payloads, -0.0,
    infinities and subnormals, which only a bitwise comparison checks.
    """
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).standard_normal(3000)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, np.nan, seed], dtype=np.float32)
    bits = special.view(np.uint32)
    bits[6] = 0x7FC00000 | (seed % 0x3FFFFF)  # a NaN whose payload depends on the seed
    return {
        "big": (base + rng.standard_normal(3000) * 1e-3).astype(np.float32),
        "emb": rng.standard_normal(1024),
        "small": rng.standard_normal(7).astype(np.float16),
        "special": special,
        "step": np.array(seed, dtype=np.int64),
    }


# -- the child -------------------------------------------------------------------


def say(line: str) -> None:
    """Tell the parent where the child is (stdout is a pipe to it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def report_commit(report: Path, commit_id: str, seed: int, branch: str) -> None:
    """Append a finished commit to the report, durably, before going on."""
    with open(report, "a", encoding="utf-8") as handle:
        handle.write(f"{commit_id} {seed} {branch}\n")
        handle.flush()
        os.fsync(handle.fileno())


def child_main(argv: Sequence[str]) -> None:
    """Loop forever in ``mode`` (commit, gc or repack) until killed."""
    repo_path, report, mode, first_seed = Path(argv[0]), Path(argv[1]), argv[2], int(argv[3])
    repo = Repository(repo_path)
    say("ready")
    seed = first_seed
    while True:
        seed += 1
        if mode == "gc":  # make garbage with delta chains, then collect it
            for step in range(3):
                repo.commit(
                    "scratch", weights=weights_for(SCRATCH_SEED + seed + step), branch="tmp"
                )
            repo.delete_branch("tmp")
            say("gc")
            repo.gc()
            say("gc-done")
            continue
        if seed % 3 == 0:
            repo.stage_weights(weights_for(seed))
            commit, branch = repo.commit(f"seed {seed}", metrics={"seed": seed}), "main"
        elif seed % 3 == 1:
            commit, branch = repo.commit(f"seed {seed}", weights=weights_for(seed)), "main"
        else:
            branch = "side"
            commit = repo.commit(f"seed {seed}", weights=weights_for(seed), branch=branch)
        report_commit(report, commit.commit_hash, seed, branch)
        if mode == "repack":
            say("repack")
            repo.repack(max_chain_length=1 + seed % 3)
            say("repack-done")
        elif seed % 6 == 0:
            say("gc")
            repo.gc()
            say("gc-done")


# -- the parent ------------------------------------------------------------------


@dataclass
class Torture:
    """One repository, its reported commits, and where the kills landed."""

    repo_path: Path
    reports: list[Path] = field(default_factory=list)
    parent_commits: list[tuple[str, int, str]] = field(default_factory=list)
    kills_in: dict[str, int] = field(default_factory=dict)

    def reported(self) -> list[tuple[str, int, str]]:
        """Every commit a child finished, and the parent's own; a torn last line
        (the child died writing it) is not a report."""
        found = list(self.parent_commits)
        for report in self.reports:
            if not report.exists():
                continue
            text = report.read_text(encoding="utf-8")
            lines = text.split("\n")[:-1]  # whatever follows the last newline is torn
            for line in lines:
                commit_id, seed, branch = line.split()
                found.append((commit_id, int(seed), branch))
        return found

    def run_and_kill(self, mode: str, seed: int, rng: random.Random) -> None:
        """Start a child in ``mode``, SIGKILL it at a random moment, record where."""
        report = self.repo_path.parent / f"report-{seed}.txt"
        self.reports.append(report)
        args = [str(ROOT), str(self.repo_path), str(report), mode, str(seed)]
        child = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            seen = [child.stdout.readline().strip()]
            if mode == "commit":
                time.sleep(rng.uniform(0.02, 0.7))
            else:  # wait until it starts gc (or repack), then kill it inside
                marker = "gc" if mode == "gc" else "repack"
                for _ in range(rng.randint(1, 2)):
                    while seen[-1] and (line := child.stdout.readline().strip()) != marker:
                        seen.append(line)
                    seen.append(marker)
                time.sleep(rng.uniform(0, 0.004))
            alive = child.poll() is None
        finally:
            os.kill(child.pid, signal.SIGKILL)  # also when the test failed above
            out, errors = child.communicate()
        assert seen[0] == "ready", errors
        assert alive, f"the child died on its own: {errors}"
        assert child.returncode == -signal.SIGKILL
        seen += out.split()
        last = seen[-1]
        where = {"gc": "gc", "repack": "repack"}.get(last, "commit")
        self.kills_in[where] = self.kills_in.get(where, 0) + 1

    def check(self, round_number: int) -> None:
        """The repository after a kill: free locks, verified, nothing reported lost."""
        locks = self.repo_path / ".coral" / "locks"
        for name in ("refs.lock", "gc.lock"):
            with file_lock(locks / name, timeout=2.0):  # a stale lock would time out
                pass
        repo = Repository(self.repo_path)
        result = repo.verify()
        assert result.ok, "\n".join(
            f"{p.object_id}: {p.message} {p.used_by}" for p in result.problems
        )
        histories = {
            b.name: {c.commit_hash for c in repo.log(b.name)} for b in repo.list_branches()
        }
        for commit_id, seed, branch in self.reported():
            assert commit_id in histories.get(branch, set()), f"{commit_id} lost from {branch}"
            assert_restores(repo, commit_id, weights_for(seed))
        # the next commit goes through, and is checked after the later kills too
        seed = PARENT_SEED + round_number
        commit = repo.commit(f"after kill {round_number}", weights=weights_for(seed))
        self.parent_commits.append((commit.commit_hash, seed, "main"))
        assert_restores(repo, commit.commit_hash, weights_for(seed))


def assert_restores(repo: Repository, commit_id: str, expected: dict[str, np.ndarray]) -> None:
    """Every tensor of the commit comes back bit for bit, with its dtype and shape."""
    restored = repo.get_all_weights(commit_id)
    assert set(restored) == set(expected), commit_id
    for name, array in expected.items():
        data = restored[name].data
        assert data.dtype == array.dtype, (commit_id, name)
        assert data.shape == array.shape, (commit_id, name)
        assert np.array_equal(bit_view(data), bit_view(array)), (commit_id, name)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    """13 kills: while committing (stage + commit, snapshots, another branch), inside
    gc (with garbage made of delta chains) and inside repack."""
    torture = Torture(tmp_path / "repo")
    Repository(torture.repo_path, init=True, chunk_size=CHUNK_SIZE)
    rng = random.Random(20240611)
    modes = ["commit"] * 6 + ["gc"] * 4 + ["repack"] * 2
    rng.shuffle(modes)
    modes.insert(0, "commit")  # start with history, so gc and repack have work
    started = time.monotonic()
    for number, mode in enumerate(modes):
        torture.run_and_kill(mode, seed=(number + 1) * 1000, rng=rng)
        torture.check(number)
    elapsed = time.monotonic() - started
    child_commits = len(torture.reported()) - len(torture.parent_commits)
    assert child_commits >= 10, "the children barely committed; the test checked little"
    assert torture.kills_in.get("gc", 0) >= 1, torture.kills_in
    assert torture.kills_in.get("repack", 0) >= 1, torture.kills_in
    assert elapsed < 60, elapsed


# -- leftovers of a crash ----------------------------------------------------------


def test_torn_reflog_line_and_leftover_temp_files_break_nothing(tmp_path: Path) -> None:
    """What a crash can leave (a reflog line cut short, temporary files of atomic
    writes) is ignored by every read, and ``gc`` removes the object temp files."""
    repo = Repository(tmp_path, init=True, chunk_size=CHUNK_SIZE)
    first = repo.commit("one", weights=weights_for(1))
    coral = repo.coral_dir
    for log in (coral / "logs" / "HEAD", coral / "logs" / "refs" / "heads" / "main"):
        with open(log, "a", encoding="utf-8") as handle:
            handle.write('{"old": null, "new": "abc')  # a write cut short
    temps = [
        coral / "objects" / "ab" / ".tmp-999-deadbeef",  # a fan-out folder that had no object
        coral / "objects" / first.commit_hash[:2] / ".tmp-999-cafe",
        coral / "objects" / ".tmp-999-toplevel",
    ]
    for temp in temps:
        temp.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(b"CRL1 half an object")
    (coral / "refs" / "heads" / ".tmp-999-ref").write_text("not a ref")
    (coral / ".tmp-999-head").write_text("ref: refs/heads/nowhere\n")

    again = Repository(tmp_path)
    assert [e.message for e in again.reflog()] == ["commit: one"]
    assert [e.message for e in again.reflog("main")] == ["commit: one"]
    assert [b.name for b in again.list_branches()] == ["main"]
    assert [c.commit_hash for c in again.log()] == [first.commit_hash]
    assert again.verify().ok
    assert_restores(again, first.commit_hash, weights_for(1))

    dry = again.gc(dry_run=True)
    assert dry.temp_files_removed == len(temps)
    assert all(temp.exists() for temp in temps)
    result = again.gc()
    assert result.temp_files_removed == len(temps)
    assert result.removed_objects == 0
    assert not any(temp.exists() for temp in temps)
    assert again.gc().temp_files_removed == 0

    second = again.commit("two", weights=weights_for(2))
    assert [c.commit_hash for c in again.log()] == [second.commit_hash, first.commit_hash]
    assert again.verify().ok
    assert_restores(again, second.commit_hash, weights_for(2))


def test_reflog_keeps_the_entry_written_after_a_torn_line(tmp_path: Path) -> None:
    """A crash can cut the last reflog line short (no newline); the next move must
    still be logged, not glued onto the torn line and lost with it."""
    repo = Repository(tmp_path, init=True)
    repo.commit("one", weights={"w": np.arange(4.0)})
    with open(repo.coral_dir / "logs" / "HEAD", "a", encoding="utf-8") as handle:
        handle.write('{"old": null, "new": "abc')
    repo.commit("two", weights={"w": np.arange(5.0)})
    assert [e.message for e in repo.reflog()] == ["commit: two", "commit: one"]


def test_leftover_temp_file_does_not_block_writing_that_object(tmp_path: Path) -> None:
    """A temp file left where an object was being written does not stop the same
    object from being written again, and a half-written index is never read."""
    repo = Repository(tmp_path, init=True, chunk_size=CHUNK_SIZE)
    commit = repo.commit("one", weights=weights_for(3))
    for object_id in list(repo.objects.iter_ids()):
        if repo.objects.kind_of(object_id) in (ObjectKind.CHUNK, ObjectKind.TENSOR):
            folder = repo.coral_dir / "objects" / object_id[:2]
            folder.mkdir(exist_ok=True)
            (folder / f".tmp-1-{object_id[2:10]}").write_bytes(b"partial")
            repo.objects.delete(object_id)  # as if the crash came before the rename
    repo.objects.store.reclaim()  # what gc does after deleting: the packs lose them too
    packs = repo.coral_dir / "objects" / "packs"
    (packs / ".tmp-1-pack-0.pack").write_bytes(b"CRLP half a pack")  # killed while writing
    (packs / "pack-1.pack").write_bytes(b"CRLP")  # killed between the pack and its index
    (repo.coral_dir / ".tmp-1-index").write_text("{half an index")
    assert not repo.verify().ok  # the objects really are gone
    again = Repository(tmp_path)
    again.stage_weights(weights_for(3))
    assert again.commit("one").tree_hash == commit.tree_hash  # rewritten from scratch
    assert again.verify().ok
    assert again.gc().temp_files_removed > 0
    assert not (packs / "pack-1.pack").exists()
    assert_restores(again, "HEAD", weights_for(3))


def test_gc_stopped_at_any_point_of_its_deletions_leaves_a_sound_repository(
    tmp_path: Path,
) -> None:
    """A SIGKILL lands between two of gc's deletions: replay gc's own deletion
    order one object at a time and verify after each, which covers every moment
    a kill could stop it (the random kills above only hit some). Garbage made of
    delta chains (each scratch commit is a delta of the one before) means a
    chunk can be deleted while a delta made against it is still there."""
    repo = Repository(tmp_path, init=True, chunk_size=CHUNK_SIZE)
    repo.commit("kept", weights=weights_for(1))
    for step in range(8):
        repo.commit("scratch", weights=weights_for(SCRATCH_SEED + step), branch="tmp")
    repo.delete_branch("tmp")
    keep = reachable_objects(repo)
    order = in_deletion_order(repo.objects, [i for i in repo.objects.iter_ids() if i not in keep])
    assert repo.gc(dry_run=True).removed_objects == len(order)
    for done, object_id in enumerate(order, start=1):
        repo.objects.delete(object_id)
        result = repo.verify()
        assert result.ok, f"gc stopped after {done} of {len(order)} deletions: " + "; ".join(
            f"{p.message} (used by {', '.join(p.used_by)})" for p in result.problems
        )
    assert_restores(repo, "main", weights_for(1))
