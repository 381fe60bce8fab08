"""Training and sharing as one workflow: retention that never rewrites history,
pointers that move, pushes from training, pruning on both sides, partial clones.

Real processes, a folder remote and the moto S3 server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    ConfigError,
    MemoryStore,
    PrunedCommitError,
    PushRejectedError,
    RefExistsError,
    Repository,
    RepositoryNotFoundError,
    ShallowCommitError,
    TrainingState,
    bit_view,
    clone,
)
from coral_core.remote import RemoteRefs, collect_remote_garbage, open_store
from coral_core.remote_locks import GC_LOCK, RemoteBusyError, gc_lock, push_lock
from coral_core.runs import list_runs

from .run_worker import EXPERIMENT, loss, weights

ROOT = Path(__file__).resolve().parents[2]


def worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.coral_core.run_worker", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def same(repo: Repository, ref: str, expected: dict[str, np.ndarray]) -> bool:
    restored = repo.get_all_weights(ref)
    return set(restored) == set(expected) and all(
        np.array_equal(bit_view(restored[name].data), bit_view(array))
        for name, array in expected.items()
    )


def stored(objects_of: Repository | str) -> int:
    """Bytes of every object a repository (or a remote, by URL) holds."""
    if isinstance(objects_of, Repository):
        objects = objects_of.objects
    else:
        objects = RemoteRefs(open_store(objects_of)).objects
    return sum(objects.stored_size(i) for i in objects.iter_ids())


def save(manager: CheckpointManager, seed: int, step: int, size: int = 64) -> str:
    state = TrainingState(epoch=step, global_step=step, metrics={"loss": loss(seed, step)})
    return manager.save(weights(seed, step, size), state).commit_hash


def test_twenty_checkpoints_pushed_after_each_with_retention(
    tmp_path: Path, remote_url: str
) -> None:
    repo = Repository(tmp_path / "train", init=True)
    repo.add_remote("origin", remote_url)
    config = CheckpointConfig(max_checkpoints=2, save_on_best_metric="loss", push_to="origin")
    manager = CheckpointManager(repo, config, EXPERIMENT)
    ids = {}
    for step in range(1, 21):
        ids[step] = save(manager, 0, step, size=256)
        assert manager.finish()  # every push went through...
    assert manager.pusher is not None
    assert manager.pusher.failures == 0  # ...and none was refused
    kept = [c.step for c in manager.checkpoints]
    assert kept == [4, 19, 20]  # the best and the last two

    copy = clone(remote_url, tmp_path / "copy")
    assert [c.commit_hash for c in copy.log()] == [ids[s] for s in range(20, 0, -1)]
    assert copy.resolve("exp/best") == ids[4]
    assert copy.resolve("exp/last") == ids[20]
    for step, commit in ids.items():
        if step in kept:
            assert same(copy, commit, weights(0, step, 256)), step
            continue
        with pytest.raises(PrunedCommitError) as caught:
            copy.get_weight("encoder.weight", commit)
        assert caught.value.nearest in {ids[4], ids[19]}
    assert copy.verify().ok

    reference = Repository(tmp_path / "reference", init=True)  # just the kept checkpoints
    for step in kept:
        reference.commit(f"step {step}", weights=weights(0, step, 256))
    assert stored(repo) <= 1.25 * stored(reference)  # retention freed the rest at once
    assert stored(copy) <= 1.25 * stored(reference)  # pruned weights never traveled
    assert stored(remote_url) > 4 * stored(reference)  # pushed while they were kept...
    removed = repo.gc(remote="origin")
    assert removed.removed_objects > 0
    assert stored(remote_url) <= 1.25 * stored(reference)  # ...and collected there now
    again = clone(remote_url, tmp_path / "again")
    assert all(same(again, ids[step], weights(0, step, 256)) for step in kept)
    assert again.verify().ok


def test_two_runs_of_one_name_push_to_one_remote_at_once(tmp_path: Path, remote_url: str) -> None:
    runs = [
        worker("train", str(tmp_path / f"clone{s}"), remote_url, str(s), "8", "0.05")
        for s in (1, 2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (_out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    run_ids = [line.split()[1] for out, _ in outputs for line in out.splitlines() if "done" in line]
    assert len(set(run_ids)) == 2
    copy = clone(remote_url, tmp_path / "copy")
    found = {run.run_id: run for run in list_runs(copy)}
    assert set(found) == set(run_ids)  # both runs are in the remote's history
    for seed, run_id in zip((1, 2), run_ids, strict=True):
        run = found[run_id]
        assert run.experiment == EXPERIMENT
        assert [c.record.step for c in run.checkpoints] == list(range(1, 9))
        assert run.hyperparameters == {"seed": seed}
        assert [c.record.step for c in run.checkpoints if c.kept] == [4, 7, 8]
        for checkpoint in run.checkpoints:
            if checkpoint.kept:
                assert same(
                    copy, checkpoint.commit.commit_hash, weights(seed, checkpoint.record.step)
                )
        assert copy.resolve(f"exp/{run_id}/best") == run.checkpoints[3].commit.commit_hash
    assert copy.verify().ok


def test_remote_gc_killed_at_random_while_a_run_pushes(tmp_path: Path, remote_url: str) -> None:
    pusher = worker("train", str(tmp_path / "trainer"), remote_url, "3", "12", "0.4")
    admin = Repository(tmp_path / "admin", init=True)
    admin.add_remote("origin", remote_url)
    chance = random.Random(0)
    kills = runs = 0
    while pusher.poll() is None:
        gc = worker("gc", str(admin.path), "1.5")
        time.sleep(chance.uniform(0.05, 0.8))
        runs += 1
        if gc.poll() is None:
            gc.send_signal(signal.SIGKILL)
            kills += 1
        gc.communicate()
    out, err = pusher.communicate()
    assert pusher.returncode == 0, err
    assert "done" in out  # every checkpoint was pushed, none lost on the way
    assert runs >= 4
    assert kills >= 1
    collect_remote_garbage(admin, "origin", lease=1.5)
    copy = clone(remote_url, tmp_path / "copy")
    (run,) = list_runs(copy)
    assert [c.record.step for c in run.checkpoints] == list(range(1, 13))
    kept = [c for c in run.checkpoints if c.kept]
    assert [c.record.step for c in kept] == [4, 11, 12]
    for checkpoint in kept:
        assert same(copy, checkpoint.commit.commit_hash, weights(3, checkpoint.record.step))
    assert copy.verify().ok


@pytest.mark.parametrize("remote_url", ["s3"], indirect=True)
def test_push_to_survives_the_server_going_down(
    tmp_path: Path, remote_url: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("s3_server")
    bucket = remote_url.removeprefix("s3://").split("/")[0]
    repo = Repository(tmp_path / "train", init=True)
    repo.add_remote("origin", remote_url)
    config = CheckpointConfig(max_checkpoints=2, save_on_best_metric="loss", push_to="origin")
    manager = CheckpointManager(repo, config, EXPERIMENT)
    ids = {step: save(manager, 5, step) for step in range(1, 4)}
    assert manager.finish()
    server.stop()
    try:
        ids |= {step: save(manager, 5, step) for step in range(4, 8)}  # training goes on
        time.sleep(1.0)
        assert manager.pusher is not None
        assert manager.pusher.pending
    finally:
        server.start()  # moto keeps nothing across a restart: the bucket is made again
        server.client().create_bucket(Bucket=bucket)
    assert manager.finish(timeout=120)
    assert manager.pusher.failures > 0  # it saw the outage, and caught up
    copy = clone(remote_url, tmp_path / "copy")
    assert [c.commit_hash for c in copy.log()] == [ids[s] for s in range(7, 0, -1)]
    for checkpoint in manager.checkpoints:
        assert same(copy, checkpoint.commit_hash, weights(5, checkpoint.step))


def test_a_shallow_clone_brings_the_newest_weights_and_deepens(
    tmp_path: Path, remote_url: str
) -> None:
    repo = Repository(tmp_path / "origin", init=True)
    ids = [repo.commit(f"step {s}", weights=weights(9, s, 128)).commit_hash for s in range(10)]
    repo.add_remote("origin", remote_url)
    repo.push()
    sizes = {}
    for name, depth in (("full", None), ("shallow", 1)):
        received: list[int] = []
        clone(remote_url, tmp_path / name, received.append, depth=depth)
        sizes[name] = sum(received)
    assert sizes["shallow"] <= 0.5 * sizes["full"]
    shallow = Repository(tmp_path / "shallow")
    assert [c.commit_hash for c in shallow.log()] == ids[::-1]  # all of history...
    assert same(shallow, "HEAD", weights(9, 9, 128))
    assert shallow.weights_status("HEAD~1") == "shallow"  # ...without the older weights
    with pytest.raises(ShallowCommitError, match="--deepen") as caught:
        shallow.get_weight("encoder.weight", "HEAD~3")
    assert isinstance(caught.value, PrunedCommitError)
    assert shallow.verify().ok

    shallow.fetch("origin", deepen=2)
    assert [shallow.weights_status(f"HEAD~{n}") for n in (1, 2, 3)] == ["kept", "kept", "shallow"]
    assert same(shallow, "HEAD~2", weights(9, 7, 128))
    child = shallow.commit("fine-tune", weights=weights(9, 10, 128))  # work goes on on top
    shallow.push()
    assert Repository(tmp_path / "full").fetch("origin").refs  # a full clone gets it
    shallow.fetch("origin", unshallow=True)
    assert shallow.shallow.read() == frozenset()
    for step, commit in enumerate(ids):
        assert same(shallow, commit, weights(9, step, 128)), step
    assert same(shallow, child.commit_hash, weights(9, 10, 128))
    assert shallow.verify().ok


def test_tags_do_not_move_and_a_changed_tag_is_not_pushed(tmp_path: Path, remote_url: str) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    first = repo.commit("one", weights=weights(0, 1)).commit_hash
    second = repo.commit("two", weights=weights(0, 2)).commit_hash
    repo.tag_version("v1", ref=first)
    with pytest.raises(RefExistsError, match="already exists"):
        repo.tag_version("v1", ref=second)
    repo.add_remote("origin", remote_url)
    repo.push(tags=True)
    repo.tag_version("v1", ref=second, force=True)
    with pytest.raises(PushRejectedError, match="tags do not move") as caught:
        repo.push(tags=True)
    assert caught.value.ref == "refs/tags/v1"
    repo.push(tags=True, force=True)
    assert clone(remote_url, tmp_path / "copy").resolve("v1") == second


def test_rewrites_on_purpose_force_with_lease_and_delete(tmp_path: Path, remote_url: str) -> None:
    mine = Repository(tmp_path / "mine", init=True)
    for step in range(3):
        mine.commit(f"step {step}", weights=weights(0, step))
    mine.create_branch("scratch")
    mine.add_remote("origin", remote_url)
    mine.push("origin", ["main", "scratch"])
    theirs = clone(remote_url, tmp_path / "theirs")
    theirs.commit("their step", weights=weights(1, 0))
    theirs.push()
    mine.drop_commits("main", [mine.resolve("HEAD~1")], force=True)  # rewrite, on purpose
    with pytest.raises(PushRejectedError, match="fetch first"):
        mine.push()
    with pytest.raises(PushRejectedError, match="last saw it"):
        mine.push(force_with_lease=True)  # their push came after my last look
    mine.fetch()
    mine.push(force_with_lease=True)  # now I know what I replace
    assert clone(remote_url, tmp_path / "after").resolve("main") == mine.resolve("main")
    result = mine.push(delete=["scratch"])
    assert result.refs["refs/heads/scratch"][1] is None
    assert "scratch" not in {b.name for b in clone(remote_url, tmp_path / "gone").list_branches()}
    assert mine.refs.read("refs/remotes/origin/scratch") is None


def test_a_run_killed_at_random_loses_no_kept_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    chance = random.Random(1)
    for round_ in range(6):
        run = worker("prune", str(path), str(round_), "40")
        time.sleep(chance.uniform(0.3, 1.5))
        run.send_signal(signal.SIGKILL)
        run.communicate()
        repo = Repository(path)
        report = repo.verify()
        assert report.ok, report.problems
        for found in list_runs(repo):
            seed = found.hyperparameters["seed"]
            for checkpoint in found.checkpoints:
                if checkpoint.kept:
                    step = checkpoint.record.step
                    assert same(repo, checkpoint.commit.commit_hash, weights(seed, step))
            assert found.kept <= 3 + 1  # best, the last two, and one a kill caught mid-prune


def test_remote_locks_one_gc_alone_or_many_pushes() -> None:
    store = MemoryStore()  # a bucket's way: lock objects with leases
    order: list[str] = []

    def collect() -> None:
        with gc_lock(store, lease=5):
            order.append("gc")

    with push_lock(store, lease=5), push_lock(store, lease=5):  # pushes share the remote
        thread = threading.Thread(target=collect)
        thread.start()
        time.sleep(0.5)
        order.append("pushes done")
    thread.join()
    assert order == ["pushes done", "gc"]  # the gc waited for both
    with (
        gc_lock(store, lease=5),
        pytest.raises(RemoteBusyError, match="a gc holds"),
        push_lock(store, wait=0.3),
    ):
        pass  # a push waits for a gc, then gives up
    dead = {"owner": "gone", "kind": "gc", "expires": time.time() - 1}
    for leftover in (json.dumps(dead).encode(), b"", b"garbage"):
        store.put(GC_LOCK, leftover)  # a gc that died, or a torn file: broken, not waited for
        with push_lock(store, wait=2):
            pass
    with push_lock(store, lease=5) as held:
        held.check()
        store.delete(held.key)  # broken by a gc that thought this push dead
        with pytest.raises(RemoteBusyError, match="broken"):
            held.check()  # checked before any ref moves: the push gives up, and runs again
    assert list(store.list("locks/")) == []


def test_a_pin_travels_and_unpinning_on_the_remote_too(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.add_remote("origin", str(tmp_path / "remote"))
    config = CheckpointConfig(max_checkpoints=1, push_to="origin")
    manager = CheckpointManager(repo, config, EXPERIMENT)
    ids = {1: save(manager, 0, 1)}
    repo.pin(ids[1])  # retention lets it go at the next save; the pin keeps it
    for step in range(2, 6):
        ids[step] = save(manager, 0, step)
    assert manager.finish()
    copy = clone(str(tmp_path / "remote"), tmp_path / "copy")
    assert copy.weights_status(ids[1]) == "kept"  # the pin went along, and its weights
    assert same(copy, ids[1], weights(0, 1))
    assert copy.weights_status(ids[2]) == "pruned"
    copy.unpin(ids[1], remote="origin")
    assert copy.weights_status(ids[1]) == "pruned"
    repo.unpin(ids[1])
    repo.fetch()
    assert repo.pins() == []  # the remote's pin is gone: the fetch brought none back
    collect_remote_garbage(repo, "origin")
    assert clone(str(tmp_path / "remote"), tmp_path / "again").weights_status(ids[1]) == "pruned"


def test_retention_frees_at_once_while_pushes_lag_behind(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.add_remote("origin", str(tmp_path / "remote"))
    config = CheckpointConfig(max_checkpoints=2, push_to="origin")
    manager = CheckpointManager(repo, config, EXPERIMENT)
    for step in range(1, 16):  # no waiting: the background pushes fall behind
        save(manager, 0, step, size=128)
    assert manager.finish()
    assert repo.gc(dry_run=True).removed_objects == 0  # nothing left for a later gc
    assert stored(repo) < 3 * 128 * 128 * 4 * 1.2


def test_push_strategy_end_pushes_when_the_process_ends(tmp_path: Path) -> None:
    script = f"""
import numpy as np
from coral_core import CheckpointConfig, CheckpointManager, Repository, TrainingState
repo = Repository({str(tmp_path / "repo")!r}, init=True)
repo.add_remote("origin", {str(tmp_path / "remote")!r})
config = CheckpointConfig(push_to="origin", push_strategy="end")
manager = CheckpointManager(repo, config, "exp")
for step in range(1, 4):
    manager.save({{"w": np.full(8, step, np.float32)}}, TrainingState(global_step=step))
"""  # no finish(): the manual loop a user writes
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    copy = clone(str(tmp_path / "remote"), tmp_path / "copy")
    assert len(copy.log()) == 3
    assert copy.resolve("exp/last") == copy.resolve("main")


def test_an_unreachable_remote_costs_the_end_of_training_one_timeout(tmp_path: Path) -> None:
    script = f"""
import numpy as np
from coral_core import CheckpointConfig, CheckpointManager, Repository, TrainingState
repo = Repository({str(tmp_path / "repo")!r}, init=True)
repo.add_remote("origin", "s3://no-such-bucket/x")
config = CheckpointConfig(push_to="origin")
manager = CheckpointManager(repo, config, "exp")
manager.save({{"w": np.zeros(8, np.float32)}}, TrainingState(global_step=1))
print("pushed" if manager.finish(timeout=2) else "not pushed")
"""
    env = {**os.environ, "CORAL_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x"}
    env |= {"AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )  # the exit does not wait for the pushes once more (that would be 10 minutes)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "not pushed"
    assert "coral-ml push origin" in done.stderr  # how to push later
    assert Repository(tmp_path / "repo").log()  # the checkpoint is committed here


def test_remote_folders_are_where_they_were_named_and_missing_ones_are_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("one", weights=weights(0, 1))
    repo.add_remote("origin", "shared")  # relative to where the command runs
    assert repo.list_remotes()["origin"] == str(tmp_path / "shared")
    monkeypatch.chdir(tmp_path / "repo")
    repo.push()
    assert (tmp_path / "shared" / "refs" / "heads" / "main").is_file()
    assert not (tmp_path / "repo" / "shared").exists()
    with pytest.raises(RepositoryNotFoundError, match="does not exist"):
        clone(str(tmp_path / "nothing-here"), tmp_path / "copy")
    assert not (tmp_path / "copy").exists()  # nothing made for nothing
    repo.add_remote("gone", str(tmp_path / "gone"))
    with pytest.raises(RepositoryNotFoundError, match="does not exist"):
        repo.fetch("gone")


def test_an_interrupted_clone_is_taken_up_by_running_it_again(
    tmp_path: Path, remote_url: str
) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    ids = [repo.commit(f"step {s}", weights=weights(2, s)).commit_hash for s in range(4)]
    repo.add_remote("origin", remote_url)
    repo.push()
    moved = []

    def cut(size: int) -> None:
        moved.append(size)
        if len(moved) == 5:
            raise OSError(28, "No space left on device")  # as a full disk would

    with pytest.raises(OSError, match="No space"):
        clone(remote_url, tmp_path / "copy", cut)
    with pytest.raises(ConfigError, match="unfinished clone of"):
        clone(str(tmp_path / "repo"), tmp_path / "copy")  # not what it began with
    copy = clone(remote_url, tmp_path / "copy")  # the same clone again: it finishes
    assert [c.commit_hash for c in copy.log()] == ids[::-1]
    assert all(same(copy, commit, weights(2, s)) for s, commit in enumerate(ids))
    assert copy.verify().ok
    with pytest.raises(ConfigError, match="already holds"):
        clone(remote_url, tmp_path / "copy")  # a finished one is not cloned into again
