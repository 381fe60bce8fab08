"""Packs: a commit's objects in O(1) files, read back bit for bit, collected,
damaged, left half-written by a crash, and loose repositories converted by repack."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from coral_core import CorruptObjectError, LocalStore, PackedStore, Repository, bit_view, clone
from coral_core.object_format import object_key
from coral_core.remote import open_store
from coral_core.store.pack_format import PACKS, decode_index, encode_index

from .conftest import flip_bit

DATA = Path(__file__).parent / "data"


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def many_tensors(seed: int, count: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}.bias": rng.standard_normal(64).astype(np.float32) for i in range(count)}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(bit_view(a[k]), bit_view(b[k])) for k in a)


def arrays(repo: Repository, ref: str | None = None) -> dict[str, np.ndarray]:
    """A commit's tensors (HEAD by default) as arrays by name."""
    return {name: weight.data for name, weight in repo.get_all_weights(ref).items()}


def history(repo: Repository) -> dict[str, dict[str, np.ndarray]]:
    """Every commit of HEAD's history and its tensors."""
    return {c.commit_hash: arrays(repo, c.commit_hash) for c in repo.log()}


def same_history(expected: dict[str, dict[str, np.ndarray]], repo: Repository) -> bool:
    """Whether ``repo`` holds each of those commits with the same tensors, bit for bit."""
    return all(same(arrays(repo, commit), want) for commit, want in expected.items())


def test_a_commit_of_many_tensors_writes_a_few_files_and_reads_back(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    objects = repo.coral_dir / "objects"
    before = files_under(objects)
    first = many_tensors(0)
    repo.commit("200 tensors", weights=first)
    written = files_under(objects) - before
    # a pack, its index, the tree and the commit (small documents written one by one)
    assert len(written) <= 4, sorted(p.name for p in written)
    assert len(list((objects / PACKS).glob("pack-*.idx"))) == 1
    second = {k: v + np.float32(1e-3) for k, v in first.items()}
    repo.commit("a fine-tune step", weights=second)
    again = Repository(tmp_path)  # a new process's view: the indexes read from disk
    assert same(arrays(again, "HEAD~1"), first)
    assert same(arrays(again, "HEAD"), second)
    assert again.verify().ok


def test_gc_writes_a_pack_again_without_what_it_collected(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    repo.commit("keep", weights=many_tensors(0, 20))
    repo.create_branch("scratch")
    repo.commit("throwaway", weights=many_tensors(1, 20), branch="scratch")
    repo.delete_branch("scratch")
    packs = repo.coral_dir / "objects" / PACKS
    size_before = sum(p.stat().st_size for p in packs.iterdir())
    result = repo.gc()
    assert result.removed_objects > 20
    assert sum(p.stat().st_size for p in packs.iterdir()) < size_before - result.freed_bytes // 2
    assert repo.gc().removed_objects == 0  # nothing came back from a pack
    assert Repository(tmp_path).gc().removed_objects == 0  # nor for another process
    assert same(arrays(repo), many_tensors(0, 20))
    assert repo.verify().ok


def test_a_damaged_packed_object_is_found_and_a_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    repo.commit("one", weights=many_tensors(0, 5))
    chunk = repo.objects.tensor_descriptor(repo.ls_tree()["layer3.bias"].tensor).chunks[0]
    flip_bit(repo, chunk)
    report = Repository(tmp_path).verify()
    assert not report.ok
    assert any(chunk in p.message for p in report.problems)
    flip_bit(repo, chunk)  # as it was

    (index,) = (repo.coral_dir / "objects" / PACKS).glob("pack-*.idx")
    good = index.read_bytes()
    index.write_bytes(good[:-3] + bytes([good[-3] ^ 0xFF]) + good[-2:])  # its checksum fails
    with pytest.raises(CorruptObjectError, match="is damaged"):
        decode_index(index.read_bytes(), index)
    again = Repository(tmp_path)  # the entries come from scanning the pack instead
    assert same(arrays(again), many_tensors(0, 5))
    assert decode_index(encode_index({"a/b": (8, 3)}), index) == {"a/b": (8, 3)}


def test_a_pack_killed_before_its_index_is_not_seen_and_gc_removes_it(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    repo.commit("one", weights=many_tensors(0, 5))
    script = (
        "import os, sys\n"
        "import numpy as np\n"
        "from coral_core import Repository\n"
        "from coral_core.store import packs\n"
        "def killed(self, folder):\n"
        "    os.replace(self.tmp, folder / f'{self.name}.pack')\n"
        "    os._exit(9)  # between the pack and its index\n"
        "packs._PackWriter.publish = killed\n"
        "repo = Repository(sys.argv[1])\n"
        "repo.commit('two', weights={'w': np.arange(1000.0)})\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True)
    assert done.returncode == 9, done.stderr
    again = Repository(tmp_path)
    assert [c.message for c in again.log()] == ["one"]
    assert again.verify().ok
    orphans = [p for p in (again.coral_dir / "objects" / PACKS).glob("pack-*.pack")]
    assert any(not p.with_suffix(".idx").exists() for p in orphans)
    assert again.gc().temp_files_removed >= 1
    assert all(p.with_suffix(".idx").exists() for p in again.coral_dir.rglob("pack-*.pack"))


def test_a_repository_folder_seen_as_a_remote_reads_its_packs(tmp_path: Path) -> None:
    owner = Repository(tmp_path / "owner", init=True)
    weights = many_tensors(0, 10)
    owner.commit("packed", weights=weights)
    store = open_store(str(tmp_path / "owner"))
    assert isinstance(store, PackedStore)
    keys = set(store.list("objects/"))
    assert {f"objects/{object_key(i)}" for i in owner.objects.iter_ids()} == keys
    copy = clone(str(tmp_path / "owner"), tmp_path / "clone")
    assert same(arrays(copy), weights)


def test_a_loose_repository_of_format_1_converts_with_repack(tmp_path: Path) -> None:
    with tarfile.open(DATA / "format_v1.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    root = tmp_path / "repo"
    repo = Repository(root)
    objects = repo.coral_dir / "objects"
    before = history(repo)
    loose = [p for p in files_under(objects) if PACKS not in p.parts]
    assert len(loose) > 20  # one file per object, as that format stored them
    repo.repack()
    assert [p for p in files_under(objects) if PACKS not in p.parts] == []
    again = Repository(root)
    assert same_history(before, again)
    assert again.verify().ok
    assert json.loads((root / ".coral" / "config").read_text())["core"]["format_version"] == 3


def test_repack_replaces_a_packed_object_in_another_form(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    base = many_tensors(0, 3)
    for step in range(4):
        repo.commit(f"step {step}", weights={k: v + np.float32(step) for k, v in base.items()})
    expected = history(repo)
    repo.repack()
    again = Repository(tmp_path)
    assert same_history(expected, again)
    assert again.verify().ok
    assert again.gc().removed_objects == 0
    objects = again.coral_dir / "objects"
    assert [p for p in files_under(objects) if PACKS not in p.parts] == []  # all in packs


def test_a_clone_writes_packs_not_a_file_per_object(tmp_path: Path) -> None:
    origin = Repository(tmp_path / "origin", init=True)
    for seed in range(3):
        origin.commit(f"step {seed}", weights=many_tensors(seed, 50))
    copy = clone(str(tmp_path / "origin"), tmp_path / "copy")
    objects = copy.coral_dir / "objects"
    loose = [p for p in files_under(objects) if PACKS not in p.parts]
    packed = list((objects / PACKS).glob("pack-*.idx"))
    assert len(set(copy.objects.iter_ids())) > 150  # 3 x 50 tensors and their chunks...
    assert loose == []  # ...in a pack per level of the graph
    assert 1 <= len(packed) <= 12
    assert same_history(history(origin), copy)
    assert copy.verify().ok


def test_repack_merges_a_long_run_of_small_packs(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    for seed in range(12):
        repo.commit(f"step {seed}", weights=many_tensors(seed, 10))
    packs = repo.coral_dir / "objects" / PACKS
    assert len(list(packs.glob("pack-*.idx"))) == 12  # one a commit
    expected = history(repo)
    repo.repack()
    assert len(list(packs.glob("pack-*.idx"))) == 1
    assert len(list(packs.glob("pack-*.pack"))) == 1
    again = Repository(tmp_path)
    assert same_history(expected, again)
    assert again.verify().ok
    assert again.gc().removed_objects == 0


# -- regressions found by review: each scenario left a visible object whose base was gone --


def garbage_scratch(repo: Repository) -> dict[str, np.ndarray]:
    """Two commits on a branch (the second deltas on the first), then the branch
    deleted: garbage whose chunks reference each other. Returns the second's weights."""
    rng = np.random.default_rng(0)
    first = {f"t{i}": rng.standard_normal(4096).astype(np.float32) for i in range(4)}
    repo.commit("keep", weights={"k": np.arange(10, dtype=np.float32)})
    repo.create_branch("scratch")
    repo.commit("v1", weights=first, branch="scratch")
    second = {k: v.copy() for k, v in first.items()}
    for v in second.values():
        v[::97] += 1
    repo.commit("v2", weights=second, branch="scratch")
    repo.delete_branch("scratch")
    return second


def gc_killed(root: Path, patch: str) -> None:
    script = (
        "import os, signal\n"
        "from coral_core import Repository\n"
        "from coral_core.store.packs import PackedStore\n"
        f"{patch}\n"
        f"Repository({str(root)!r}).gc()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert done.returncode == -9, done.stderr


def assert_sound_after(root: Path, weights: dict[str, np.ndarray]) -> None:
    """verify passes, and the same weights committed again read back (a commit
    deduplicating against visible garbage whose base is gone would not)."""
    repo = Repository(root)
    assert repo.verify().ok
    repo.commit("the same weights again", weights=weights)
    assert same(arrays(Repository(root)), weights)


def test_a_gc_killed_while_it_writes_packs_again_shows_no_garbage(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    weights = garbage_scratch(repo)
    gc_killed(
        tmp_path,
        "rewrite = PackedStore._rewrite\n"
        "def killed(self, index, gone):\n"
        "    rewrite(self, index, gone)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)  # after the first pack written again\n"
        "PackedStore._rewrite = killed",
    )
    assert_sound_after(tmp_path, weights)


def test_a_gc_killed_before_reclaim_keeps_loose_bases_of_packed_garbage(tmp_path: Path) -> None:
    Repository(tmp_path, init=True)
    old = Repository(tmp_path, store=LocalStore(tmp_path / ".coral" / "objects"))  # before packs
    rng = np.random.default_rng(0)
    first = {f"t{i}": rng.standard_normal(4096).astype(np.float32) for i in range(4)}
    old.commit("keep", weights={"k": np.arange(10, dtype=np.float32)})
    old.create_branch("scratch")
    old.commit("v1, loose", weights=first, branch="scratch")
    repo = Repository(tmp_path)
    second = {k: v + np.float32(1e-3) for k, v in first.items()}
    repo.commit("v2, packed deltas on v1", weights=second, branch="scratch")
    repo.delete_branch("scratch")
    gc_killed(tmp_path, "PackedStore.reclaim = lambda self: os.kill(os.getpid(), signal.SIGKILL)")
    assert_sound_after(tmp_path, second)


def test_an_object_packed_twice_is_collected_in_both_packs(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    weights = garbage_scratch(repo)
    store = repo.objects.store
    assert isinstance(store, PackedStore)
    keys = [k for k in store.list() if store.locate(k) is not None]
    batch = store.write_batch()  # two writers that both found them missing: a second copy
    with batch as writing:
        for key in keys:
            writing.append(key, store.get(key))  # type: ignore[attr-defined]
    result = repo.gc()
    assert result.removed_objects > 0
    assert Repository(tmp_path).gc().removed_objects == 0  # no copy came back
    assert_sound_after(tmp_path, weights)


def test_a_clone_of_damaged_objects_keeps_none_and_resumes(tmp_path: Path) -> None:
    source = Repository(tmp_path / "source", init=True)
    rng = np.random.default_rng(1)
    weights = {f"t{i}": rng.standard_normal(2048).astype(np.float32) for i in range(40)}
    source.commit("one", weights=weights)
    chunks = [
        source.objects.tensor_descriptor(e.tensor).chunks[0] for e in source.ls_tree().values()
    ]
    packs = tmp_path / "source" / ".coral" / "objects" / PACKS
    pristine = {p: p.read_bytes() for p in packs.iterdir()}
    for chunk in chunks[::3]:  # 14 damaged in one level
        flip_bit(source, chunk)
    with pytest.raises(CorruptObjectError):
        clone(str(tmp_path / "source"), tmp_path / "copy")
    copy = Repository(tmp_path / "copy")
    assert not [c for c in chunks[::3] if copy.objects.has(c)]  # every bad one went again
    for path, data in pristine.items():  # the source repaired: the clone resumes
        path.write_bytes(data)
    resumed = clone(str(tmp_path / "source"), tmp_path / "copy")
    assert same(arrays(resumed), weights)
    assert resumed.verify().ok


def test_a_reader_finds_an_object_another_process_moved_out_of_its_pack(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    repo.commit("one", weights=many_tensors(0, 3))
    reader = Repository(tmp_path)
    chunk = reader.objects.tensor_descriptor(reader.ls_tree()["layer1.bias"].tensor).chunks[0]
    key = object_key(chunk)
    expected = reader.objects.store.get(key)
    writer = PackedStore(tmp_path / ".coral" / "objects")
    writer.put(key, expected)  # repack writes it loose, then drops the packed copy
    writer.reclaim()
    for index in (tmp_path / ".coral" / "objects" / PACKS).glob("pack-*.idx"):
        index.unlink()  # (and every other pack with it: only the loose file is left)
    assert reader.objects.store.get(key) == expected  # its view still names the pack


def test_a_damaged_index_and_a_cut_pack_keep_the_intact_records(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    repo.commit("one", weights=many_tensors(0, 10))
    (index,) = (repo.coral_dir / "objects" / PACKS).glob("pack-*.idx")
    pack = index.with_suffix(".pack")
    index.write_bytes(b"garbage")
    pack.write_bytes(pack.read_bytes()[:-10])  # the last record cut short
    store = PackedStore(repo.coral_dir / "objects")
    found = [k for k in store.list() if store.locate(k) is not None]
    assert found  # all records but the cut one
    store.consolidate()
    assert pack.exists()  # never dropped: it may hold what no index says
    assert index.exists()
