"""Packs in a bucket: a push is a pack and its index, a clone a few reads."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from coral_core import CorruptObjectError, LocalStore, MemoryStore, Repository, WeightStore, clone
from coral_core import remote as remote_module
from coral_core.object_format import ObjectKind, object_key
from coral_core.objects import ObjectDatabase
from coral_core.remote import RemoteRefs, copy_objects
from coral_core.store.bucket_packs import PACKED_ONLY, BucketPacks
from coral_core.store.pack_format import encode_index
from coral_core.store.prefix import PrefixStore
from coral_core.testing.s3_server import count_requests
from coral_core.testing.store_tests import StoreTests


class TestBucketPacks(StoreTests):
    """Bucket packs keep the store contract (each write outside a batch: a pack)."""

    read_only_sees_writes = False  # a new MemoryStore starts empty

    def make_store(self, tmp_path: Path) -> WeightStore:
        return BucketPacks(MemoryStore(), cache=tmp_path / "cache")

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        return BucketPacks(MemoryStore(read_only=True))


def checkpoints(count: int, tensors: int = 40) -> list[dict[str, np.ndarray]]:
    """A fine-tune's checkpoints: small steps from one start."""
    rng = np.random.default_rng(0)
    weights = {
        f"layer{i}.weight": rng.standard_normal((32, 32)).astype(np.float32) for i in range(tensors)
    }
    steps = []
    for _ in range(count):
        weights = {
            k: v + np.float32(1e-3) * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in weights.items()
        }
        steps.append(weights)
    return steps


def counted_requests(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Every HTTP request the remotes opened from now on send, by method and area."""
    calls: collections.Counter[str] = collections.Counter()
    opener = remote_module.open_store

    def counting(url: str, base: Path | None = None) -> WeightStore:
        store = opener(url, base)
        count_requests(store, calls)
        return store

    monkeypatch.setattr(remote_module, "open_store", counting)
    return calls


def objects_requests(calls: collections.Counter[str]) -> int:
    return sum(n for name, n in calls.items() if name.endswith("objects"))


@pytest.mark.parametrize("remote_url", ["s3"], indirect=True)
def test_a_push_is_a_pack_and_its_index_and_a_clone_a_few_reads(
    tmp_path: Path, remote_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.add_remote("origin", remote_url)
    calls = counted_requests(monkeypatch)
    steps = checkpoints(4)
    for index, weights in enumerate(steps):
        repo.commit(f"step {index}", weights=weights)
        calls.clear()
        sent = repo.push()
        assert sent.objects > 80
        # a listing of the packs, the pack, its index (the first also writes the marker
        # and lists the empty remote); no request per object
        assert objects_requests(calls) <= (5 if index == 0 else 3), calls
    calls.clear()
    copy = clone(remote_url, tmp_path / "copy")
    assert objects_requests(calls) <= 40, calls  # 4 packs of 80+ objects each: read in runs
    assert copy.verify().ok
    for index, weights in enumerate(steps):
        got = copy.get_all_weights(f"main~{len(steps) - 1 - index}")
        assert all(
            np.array_equal(got[k].data.view(np.uint32), v.view(np.uint32))
            for k, v in weights.items()
        )
    cache = tmp_path / "repo" / ".coral" / "cache" / "packs"
    assert len(list(cache.rglob("pack-*.idx"))) == len(steps)  # each index read once, kept


@pytest.mark.parametrize("remote_url", ["s3"], indirect=True)
def test_gc_on_a_bucket_writes_packs_again_without_the_garbage(
    tmp_path: Path, remote_url: str
) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.add_remote("origin", remote_url)
    first, second = checkpoints(2)
    repo.commit("kept", weights=first)
    repo.push()
    repo.create_branch("scratch")
    repo.commit("scratch", weights={k: -v for k, v in second.items()}, branch="scratch")
    repo.push(branches=["scratch"])
    bucket = remote_module.open_store(remote_url)
    packs_before = {k for k in bucket.list("objects/packs/") if k.endswith(".pack")}
    repo.push(delete=["scratch"])
    result = repo.gc(remote="origin")
    assert result.removed_objects > 40
    packs_after = {k for k in bucket.list("objects/packs/") if k.endswith(".pack")}
    assert len(packs_after) == 1
    assert len(packs_before - packs_after) == 1  # scratch's pack went
    copy = clone(remote_url, tmp_path / "copy")
    assert copy.verify().ok
    assert [b.name for b in copy.list_branches()] == ["main"]


def test_a_pack_cut_off_before_its_index_is_not_seen_and_gc_removes_it(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("one", weights=checkpoints(1)[0])
    bucket = LocalStore(tmp_path / "bucket")
    remote = RemoteRefs(bucket)
    roots = [(repo.resolve("main"), ObjectKind.COMMIT)]
    copy_objects(repo.objects, remote.objects, roots, verify=False)
    (index,) = [k for k in bucket.list("objects/packs/") if k.endswith(".idx")]
    assert bucket.has(f"objects/{PACKED_ONLY}")  # a remote that was empty: packs only
    bucket.delete(index)  # the push was killed between its pack and its index
    fresh = RemoteRefs(bucket)
    assert not fresh.objects.has(roots[0][0])
    fresh.objects.store.reclaim()  # what gc --remote calls when it is done
    assert [k for k in bucket.list("objects/packs/") if k.endswith(".pack")] == []


def test_a_bucket_of_loose_objects_stays_readable_and_grows_in_packs(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    first, second = checkpoints(2)
    repo.commit("one", weights=first)
    bucket = LocalStore(tmp_path / "bucket")
    legacy = ObjectDatabase(PrefixStore(bucket, "objects/"))  # how pushes wrote before packs
    copy_objects(repo.objects, legacy, [(repo.resolve("main"), ObjectKind.COMMIT)], verify=False)
    repo.commit("two", weights=second)
    remote = RemoteRefs(bucket)
    sent = copy_objects(
        repo.objects, remote.objects, [(repo.resolve("main"), ObjectKind.COMMIT)], verify=False
    )
    assert 0 < sent.objects < 100  # the second commit only: the loose ones were found
    assert not bucket.has(f"objects/{PACKED_ONLY}")  # loose objects stay: lookups ask for them
    fresh = Repository(tmp_path / "fresh", init=True)
    copy_objects(
        RemoteRefs(bucket).objects,
        fresh.objects,
        [(repo.resolve("main"), ObjectKind.COMMIT)],
        verify=True,
    )
    assert len(list(fresh.iter_commits([repo.resolve("main")]))) == 2


def test_a_hostile_index_and_odd_pack_names_are_refused(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("one", weights=checkpoints(1)[0])
    bucket = LocalStore(tmp_path / "bucket")
    commit = repo.resolve("main")
    copy_objects(
        repo.objects, RemoteRefs(bucket).objects, [(commit, ObjectKind.COMMIT)], verify=False
    )
    (index,) = [k for k in bucket.list("objects/packs/") if k.endswith(".idx")]
    bucket.put(index, encode_index({object_key(commit): (0, 64)}))  # points at the magic
    bucket.put(f"objects/packs/deeper/pack-{'0' * 32}.idx", b"junk")  # names no index has
    bucket.put("objects/packs/pack-zz.idx", b"junk")
    cache = tmp_path / "cache"
    remote = RemoteRefs(bucket, cache)
    fresh = Repository(tmp_path / "fresh", init=True)
    with pytest.raises(CorruptObjectError):
        copy_objects(remote.objects, fresh.objects, [(commit, ObjectKind.COMMIT)], verify=True)
    assert not fresh.objects.has(commit)
    assert sorted(p.name for p in cache.iterdir()) == [index.rsplit("/", 1)[-1]]


def test_a_damaged_cached_index_is_read_from_the_remote_again(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("one", weights=checkpoints(1)[0])
    bucket = LocalStore(tmp_path / "bucket")
    cache = tmp_path / "cache"
    commit = repo.resolve("main")
    copy_objects(
        repo.objects, RemoteRefs(bucket, cache).objects, [(commit, ObjectKind.COMMIT)], verify=False
    )
    (cached,) = cache.iterdir()
    cached.write_bytes(b"damaged")
    assert RemoteRefs(bucket, cache).objects.has(commit)
    assert cached.read_bytes() != b"damaged"


def test_a_damaged_index_on_the_remote_is_rebuilt_from_its_pack(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("one", weights=checkpoints(1)[0])
    bucket = LocalStore(tmp_path / "bucket")
    commit = repo.resolve("main")
    roots = [(commit, ObjectKind.COMMIT)]
    copy_objects(repo.objects, RemoteRefs(bucket).objects, roots, verify=False)
    (index,) = [k for k in bucket.list("objects/packs/") if k.endswith(".idx")]
    bucket.put(index, bucket.get(index)[:-3])  # cut: its checksum fails
    fresh = Repository(tmp_path / "fresh", init=True)
    copy_objects(RemoteRefs(bucket).objects, fresh.objects, roots, verify=True)
    assert fresh.objects.has(commit)


def test_gc_of_a_bucket_packs_its_loose_objects_and_small_packs(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    steps = checkpoints(3)
    bucket = LocalStore(tmp_path / "bucket")
    legacy = ObjectDatabase(PrefixStore(bucket, "objects/"))  # pushed before packs: loose
    repo.commit("one", weights=steps[0])
    copy_objects(repo.objects, legacy, [(repo.resolve("main"), ObjectKind.COMMIT)], verify=False)
    for index, weights in enumerate(steps[1:]):  # two pushes since: a small pack each
        repo.commit(f"step {index}", weights=weights)
        roots = [(repo.resolve("main"), ObjectKind.COMMIT)]
        copy_objects(repo.objects, RemoteRefs(bucket).objects, roots, verify=False)
    loose = [k for k in bucket.list("objects/") if not k.startswith("objects/packs/")]
    assert len(loose) > 80
    assert RemoteRefs(bucket).objects.store.consolidate() > len(loose)  # what gc --remote calls
    assert [k for k in bucket.list("objects/") if not k.startswith("objects/packs/")] == []
    assert len([k for k in bucket.list("objects/packs/") if k.endswith(".pack")]) == 1
    assert bucket.has(f"objects/{PACKED_ONLY}")  # lookups stop asking for loose keys
    fresh = Repository(tmp_path / "fresh", init=True)
    roots = [(repo.resolve("main"), ObjectKind.COMMIT)]
    copy_objects(RemoteRefs(bucket).objects, fresh.objects, roots, verify=True)
    assert len(list(fresh.iter_commits([repo.resolve("main")]))) == 3
