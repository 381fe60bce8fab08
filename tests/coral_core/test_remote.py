"""Remotes on a folder: push, fetch, pull, clone, sync; races, interruptions, damage."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coral_core import (
    CoralError,
    CorruptObjectError,
    MemoryStore,
    PushRejectedError,
    RefNotFoundError,
    Repository,
    bit_view,
    clone,
)
from coral_core.object_format import ObjectKind, object_key
from coral_core.objects import ObjectDatabase
from coral_core.remote import copy_objects, open_store
from coral_core.store.bucket_packs import BucketPacks
from coral_core.store.packs import PackedStore

from .conftest import flip_last_bit, flip_stored_bit

ROOT = Path(__file__).resolve().parents[2]


def model(step: int, size: int = 64 * 1024) -> dict[str, np.ndarray]:
    """A model whose big tensor changes in a small region each step (fine-tune-like)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(size).astype(np.float32)
    weight[: step * 64] += np.float32(1e-3)
    return {"encoder.weight": weight, "encoder.bias": np.full(16, step, np.float32)}


def history(repo: Repository) -> dict[str, list[str]]:
    return {b.name: [c.commit_hash for c in repo.log(b.name)] for b in repo.list_branches()}


@pytest.fixture
def origin(tmp_path: Path, remote_url: str) -> Repository:
    repo = Repository(tmp_path / "origin", init=True)
    for step in range(3):
        repo.commit(f"step {step}", weights=model(step), metrics={"loss": 1.0 / (step + 1)})
    repo.tag_version("v1", "first release", metrics={"loss": 0.5}, ref="HEAD~1")
    repo.create_branch("experiment", "HEAD~1")
    repo.commit("experiment", weights=model(9), branch="experiment")
    repo.add_remote("origin", remote_url)
    return repo


def test_push_clone_round_trip_with_branches_tags_and_deltas(
    origin: Repository, tmp_path: Path, remote_url: str
) -> None:
    sent = origin.push("origin", ["main", "experiment"], tags=True)
    assert sent.objects > 0
    assert set(sent.refs) == {"refs/heads/main", "refs/heads/experiment", "refs/tags/v1"}
    again = origin.push("origin", ["main", "experiment"], tags=True)
    assert (again.objects, again.bytes, again.refs) == (0, 0, {})  # nothing missing
    copy = clone(remote_url, tmp_path / "copy")
    assert history(copy) == history(origin)
    assert copy.current_branch == "main"
    assert copy.list_tags()[0].metrics == {"loss": 0.5}
    assert copy.resolve("v1") == origin.resolve("v1")
    for commit in origin.log(all_refs=True):
        for name, weight in origin.get_all_weights(commit.commit_hash).items():
            restored = copy.get_weight(name, commit.commit_hash).data
            assert np.array_equal(bit_view(restored), bit_view(weight.data))
    assert copy.verify().ok
    assert copy.resolve("origin/experiment") == origin.resolve("experiment")
    copy.gc()  # remote-tracking refs keep their commits alive
    assert copy.verify().ok


def test_a_small_change_sends_about_its_delta(origin: Repository) -> None:
    origin.push()
    origin.commit("step 3", weights=model(3))
    sent = origin.push()
    model_bytes = sum(a.nbytes for a in model(3).values())
    assert 0 < sent.bytes < 0.2 * model_bytes, (sent.bytes, model_bytes)


def test_a_push_behind_the_remote_is_rejected_until_pulled(
    origin: Repository, tmp_path: Path, remote_url: str
) -> None:
    origin.push()
    other = clone(remote_url, tmp_path / "other")
    other.commit("from the other clone", weights=model(5))
    other.push()
    origin.commit("diverging", weights={**model(2), "head.weight": np.ones(4, np.float32)})
    before = origin.resolve("main")
    with pytest.raises(PushRejectedError, match="fetch first"):
        origin.push()
    unknown = {row.branch: row for row in origin.sync_status()}["main"]
    assert (unknown.ahead, unknown.behind) == (None, None)  # not fetched: cannot count
    origin.fetch()
    known = {row.branch: row for row in origin.sync_status()}["main"]
    assert (known.ahead, known.behind) == (1, 1)
    origin.pull("origin", "main", strategy="theirs")
    assert origin.resolve("main~1") == before  # the local commit is kept: a merge
    origin.push()
    other.pull()  # a fast-forward
    assert other.resolve("main") == origin.resolve("main")
    status = {row.branch: row for row in origin.sync_status()}
    assert (status["main"].ahead, status["main"].behind) == (0, 0)
    assert status["experiment"].remote is None


@pytest.mark.parametrize("remote_url", ["folder"], indirect=True)
def test_fetch_verifies_objects_and_moves_nothing_on_damage(
    origin: Repository, tmp_path: Path
) -> None:
    origin.push()
    chunk = origin.objects.tensor_descriptor(origin.ls_tree()["encoder.weight"].tensor).chunks[-1]
    flip_stored_bit(open_store(str(tmp_path / "remote")), f"objects/{object_key(chunk)}")
    fresh = Repository(tmp_path / "fresh", init=True)
    fresh.add_remote("origin", f"file://{tmp_path / 'remote'}")
    with pytest.raises(CorruptObjectError, match=chunk):
        fresh.fetch()
    assert fresh.refs.list_refs("refs/remotes/") == {}
    assert not fresh.objects.has(chunk)


@pytest.mark.parametrize("remote_url", ["folder"], indirect=True)
def test_remote_management_errors(origin: Repository, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="exists"):
        origin.add_remote("origin", str(tmp_path / "elsewhere"))
    with pytest.raises(Exception, match="s3:// and file://"):
        origin.add_remote("web", "https://example.com/repo")
    with pytest.raises(RefNotFoundError, match="no remote named 'nope'"):
        origin.push("nope")
    origin.push()
    assert origin.list_remotes() == {"origin": str(tmp_path / "remote")}
    origin.remove_remote("origin")
    assert origin.list_remotes() == {}
    assert origin.refs.list_refs("refs/remotes/") == {}
    with pytest.raises(Exception, match="already holds"):
        clone(str(tmp_path / "remote"), origin.path)


PUSHER = textwrap.dedent(
    """
    import sys
    from coral_core import PushRejectedError, Repository
    repo = Repository(sys.argv[1])
    try:
        repo.push()
        print("pushed")
    except PushRejectedError as exc:
        print("rejected", exc)
    """
)


def test_racing_pushes_from_two_processes_lose_no_commit(
    origin: Repository, tmp_path: Path, remote_url: str
) -> None:
    origin.push()
    clones = [clone(remote_url, tmp_path / f"clone{i}") for i in range(2)]
    mine = []
    for i, repo in enumerate(clones):
        mine.append(repo.commit(f"clone {i}", weights=model(10 + i)).commit_hash)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", PUSHER, str(repo.path)], stdout=subprocess.PIPE, text=True
        )
        for repo in clones
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert sorted(o.split()[0] for o in outputs) == ["pushed", "rejected"], outputs
    assert "fetch first" in next(o for o in outputs if o.startswith("rejected"))
    remote_tip = origin.fetch().refs["refs/remotes/origin/main"][1]
    assert remote_tip in mine  # the winner's commit, whole
    loser = clones[mine.index(next(m for m in mine if m != remote_tip))]
    loser.pull(strategy="ours")
    loser.push()  # after pulling, the loser's commit lands too
    final = Repository(tmp_path / "origin")
    final.fetch()
    landed = {c.commit_hash for c in final.log("origin/main")}
    assert set(mine) <= landed


KILLED_PUSHER = textwrap.dedent(
    """
    import sys
    from coral_core import Repository
    repo = Repository(sys.argv[1])
    print("start", flush=True)
    repo.push()
    """
)


def test_a_killed_push_leaves_the_remote_sound_and_can_be_run_again(
    tmp_path: Path, remote_url: str
) -> None:
    repo = Repository(tmp_path / "big", init=True)
    for step in range(12):
        repo.commit(f"step {step}", weights={**model(step, size=256 * 1024), "x": np.full(8, step)})
    repo.add_remote("origin", remote_url)
    for delay in (0.05, 0.2):
        run = subprocess.Popen(
            [sys.executable, "-c", KILLED_PUSHER, str(repo.path)], stdout=subprocess.PIPE, text=True
        )
        assert run.stdout is not None
        run.stdout.readline()
        time.sleep(delay)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        run.stdout.close()
        copy = clone(remote_url, tmp_path / f"after-kill-{delay}")
        assert copy.verify().ok  # whatever the remote's main names is complete
        if copy.refs.read("refs/heads/main") is not None:
            assert copy.resolve("main") == repo.resolve("main")
    repo.push()
    final = clone(remote_url, tmp_path / "final")
    assert history(final)["main"] == history(repo)["main"]
    assert final.verify().ok


def test_many_small_objects(tmp_path: Path, remote_url: str) -> None:
    repo = Repository(tmp_path / "small", init=True)
    repo.commit("1000 tensors", weights={f"t{i}": np.full(3, i, np.int32) for i in range(1000)})
    repo.add_remote("origin", remote_url)
    sent = repo.push()
    assert sent.objects >= 1000
    copy = clone(remote_url, tmp_path / "copy")
    assert copy.get_weight("t999").data.tolist() == [999, 999, 999]


def test_a_damaged_local_object_is_not_pushed_silently(
    origin: Repository, tmp_path: Path, remote_url: str
) -> None:
    """Pushing copies bytes; the clone's verification catches what was damaged here."""
    chunk = origin.objects.tensor_descriptor(origin.ls_tree()["encoder.bias"].tensor).chunks[0]
    flip_last_bit(origin, chunk)
    origin.push()
    with pytest.raises(CorruptObjectError):
        clone(remote_url, tmp_path / "copy")


@pytest.mark.slow
@pytest.mark.parametrize("remote_url", ["s3"], indirect=True)
def test_one_200_mb_tensor_goes_up_and_comes_back(tmp_path: Path, remote_url: str) -> None:
    repo = Repository(tmp_path / "big", init=True)
    weight = np.random.default_rng(1).standard_normal(50 * 1024 * 1024, dtype=np.float32)
    repo.commit("200 MB", weights={"w": weight})
    repo.add_remote("origin", remote_url)
    sent = repo.push()
    assert sent.objects > 50  # 4 MiB chunks, in parallel
    copy = clone(remote_url, tmp_path / "copy")
    assert np.array_equal(bit_view(copy.get_weight("w").data), bit_view(weight))


@pytest.mark.parametrize("remote_url", ["s3"], indirect=True)
def test_a_server_stopped_mid_push_then_back_takes_the_push_again(
    tmp_path: Path, remote_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = request.getfixturevalue("s3_server")
    repo = Repository(tmp_path / "repo", init=True)
    for step in range(8):
        repo.commit(f"step {step}", weights=model(step, size=512 * 1024))
    repo.add_remote("origin", remote_url)
    bucket = remote_url.removeprefix("s3://").split("/")[0]
    publish = BucketPacks._publish
    stopped = threading.Event()

    def stop_then_publish(store: BucketPacks, *args: Any) -> None:
        if not stopped.is_set():  # the server goes away just as the first pack goes up
            stopped.set()
            server.stop()
        publish(store, *args)

    monkeypatch.setattr(BucketPacks, "_publish", stop_then_publish)
    with pytest.raises(CoralError):
        repo.push()
    server.start()  # moto keeps nothing across a restart: the bucket is made again
    server.client().create_bucket(Bucket=bucket)
    repo.push()
    copy = clone(remote_url, tmp_path / "copy")
    assert history(copy)["main"] == history(repo)["main"]
    assert copy.verify().ok


class CountingStore(PackedStore):
    """A folder store that counts its reads, as a remote would bill requests."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: collections.Counter[str] = collections.Counter()

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        self.gets[key] += 1
        return super().get(key, byte_range)


def test_a_transfer_reads_each_object_once_and_a_big_chunk_twice(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    rng = np.random.default_rng(0)
    weights = {"big": rng.standard_normal(1 << 18).astype(np.float32)}  # one 1 MiB chunk
    weights |= {f"small{i}": rng.standard_normal(64).astype(np.float32) for i in range(5)}
    repo.commit("one", weights=weights)
    head = repo.commit("two", weights={k: v + np.float32(1e-3) for k, v in weights.items()})
    big = {
        object_key(chunk)
        for ref in ("HEAD", "HEAD~1")
        for chunk in repo.objects.tensor_descriptor(repo.ls_tree(ref)["big"].tensor).chunks
    }
    source = ObjectDatabase(CountingStore(repo.coral_dir / "objects"))
    dest = ObjectDatabase(MemoryStore())
    result = copy_objects(source, dest, [(head.commit_hash, ObjectKind.COMMIT)], verify=True)
    gets = source.store.gets  # type: ignore[attr-defined]
    assert result.objects == len(gets) > len(big) == 2  # a delta chunk and its keyframe
    assert {key: n for key, n in gets.items() if key in big} == dict.fromkeys(big, 2)
    assert all(n == 1 for key, n in gets.items() if key not in big)  # read whole in the walk
    tree = repo.ls_tree()
    ids = [tree[name].tensor for name in sorted(tree)]
    for copied, original in zip(
        dest.read_tensors(ids), repo.objects.read_tensors(ids), strict=True
    ):
        assert np.array_equal(bit_view(copied), bit_view(original))
