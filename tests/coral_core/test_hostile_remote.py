"""A remote that lies: forged objects, loops, bad names, refs onto what is no commit.

Each attack is a folder remote written by hand (what anyone with write access
to a bucket can do); a fetch, pull or clone from it must refuse with a
``CoralError`` before any ref moves, keep nothing it did not verify, and
leave the repository as sound as it was.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from coral_core import (
    CoralError,
    CorruptObjectError,
    InvalidRefNameError,
    LocalStore,
    MemoryStore,
    Repository,
    WeightStore,
    bit_view,
    clone,
)
from coral_core.hashing import chunk_id, document_id, tensor_hasher
from coral_core.object_format import (
    Codec,
    ObjectKind,
    canonical_json,
    encode_object,
    object_key,
    pack_object,
)
from coral_core.remote import RemoteRefs

ZEROS = np.zeros(4096, np.float32)


class Forger:
    """Writes a remote by hand: objects under any id, refs onto anything."""

    def __init__(self, folder: Path) -> None:
        self.remote = RemoteRefs(LocalStore(folder))

    def put(self, object_id: str, blob: bytes) -> str:
        self.remote.objects.store.put(object_key(object_id), blob)
        return object_id

    def document(self, kind: ObjectKind, document: dict[str, object]) -> str:
        return self.remote.objects.write_document(kind, document)

    def descriptor(self, object_id: str, **fields: object) -> str:
        return self.put(object_id, encode_object(ObjectKind.TENSOR, json.dumps(fields).encode()))

    def commit_of(
        self, tensor: str, dtype: str = "float32", shape: tuple[int, ...] = (4096,)
    ) -> str:
        entry = {"tensor": tensor, "dtype": dtype, "shape": list(shape), "nbytes": 16384}
        tree = self.document(ObjectKind.TREE, {"entries": {"w": entry}})
        document = {
            "tree": tree,
            "parents": [],
            "message": "forged",
            "author": "mallory",
            "timestamp": 1.0,
            "metrics": {},
            "tags": [],
            "metadata": {},
            "environment": {},
        }
        return self.document(ObjectKind.COMMIT, document)

    def ref(self, name: str, target: str) -> None:
        self.remote.store.put(name, f"{target}\n".encode())


def tensor_id(array: np.ndarray) -> str:
    hasher = tensor_hasher(str(array.dtype), array.shape)
    hasher.update(array.tobytes())
    return hasher.hexdigest()


@pytest.fixture
def victim(tmp_path: Path) -> Repository:
    repo = Repository(tmp_path / "victim", init=True)
    repo.commit("mine", weights={"keep": np.arange(8, dtype=np.float32)})
    repo.add_remote("evil", str(tmp_path / "evil"))
    return repo


def refused(repo: Repository, attack: type[CoralError] = CorruptObjectError) -> CoralError:
    """Fetch from the forged remote: refused, no ref moved, nothing unverified kept."""
    before = {prefix: repo.refs.list_refs(prefix) for prefix in ("refs/heads/", "refs/remotes/")}
    objects = set(repo.objects.iter_ids())
    with pytest.raises(attack) as caught:
        repo.fetch("evil")
    assert {p: repo.refs.list_refs(p) for p in before} == before
    assert set(repo.objects.iter_ids()) <= objects | _verified(repo, objects)
    assert repo.verify().ok
    return caught.value


def _verified(repo: Repository, before: set[str]) -> set[str]:
    """Objects a refused fetch may have kept: ones that check against their ids."""
    kept = set()
    for object_id in set(repo.objects.iter_ids()) - before:
        repo.objects.check_object(object_id)
        kept.add(object_id)
    return kept


def test_a_forged_descriptor_under_the_id_of_zeros_is_refused(
    victim: Repository, tmp_path: Path
) -> None:
    forger = Forger(tmp_path / "evil")
    ones = np.ones(4096, np.float32)
    chunk = chunk_id(ones.tobytes())
    forger.put(chunk, pack_object(ObjectKind.CHUNK, Codec.RAW, ones.tobytes(), ones.nbytes))
    zeros_id = tensor_id(ZEROS)  # the id every repository gives zeros(4096)
    forger.descriptor(
        zeros_id, dtype="float32", shape=[4096], nbytes=16384, chunks=[chunk], chunk_size=4 << 20
    )
    forger.ref("refs/heads/main", forger.commit_of(zeros_id))
    assert "does not match its id" in str(refused(victim))
    assert not victim.objects.has(zeros_id)  # nothing poisons a later commit of zeros
    made = victim.commit("zeros", weights={"z": ZEROS})
    assert np.array_equal(bit_view(victim.get_weight("z", made.commit_hash).data), bit_view(ZEROS))


def test_a_descriptor_claiming_32_tib_is_refused_before_anything_is_allocated(
    victim: Repository, tmp_path: Path
) -> None:
    forger = Forger(tmp_path / "evil")
    huge = {"dtype": "float32", "shape": [1 << 43], "nbytes": 1 << 45, "chunk_size": 1 << 45}
    forged = "ab" * 16
    forger.descriptor(forged, **huge, chunks=["cd" * 16])
    forger.ref("refs/heads/main", forger.commit_of(forged, shape=(1 << 43,)))
    assert "claims chunks of" in str(refused(victim))
    victim.objects.store.put(
        object_key(forged), forger.remote.objects.store.get(object_key(forged))
    )
    with pytest.raises(CorruptObjectError, match="claims"):  # planted here: still no MemoryError
        victim.objects.read_tensor(forged)


@pytest.mark.parametrize("loop", ["itself", "each other"])
def test_a_delta_loop_is_refused_at_once(victim: Repository, tmp_path: Path, loop: str) -> None:
    forger = Forger(tmp_path / "evil")
    first, second = "a1" * 16, "b2" * 16
    bases = {first: first} if loop == "itself" else {first: second, second: first}
    for chunk, base in bases.items():
        params = {"base": base, "root": base, "depth": 1, "type": "xor_float32", "dtype": "float32"}
        forger.put(chunk, pack_object(ObjectKind.CHUNK, Codec.DELTA, b"\0" * 64, 16384, params))
    forged = "c3" * 16
    forger.descriptor(
        forged, dtype="float32", shape=[4096], nbytes=16384, chunks=[first], chunk_size=4 << 20
    )
    forger.ref("refs/heads/main", forger.commit_of(forged))
    done = threading.Event()
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            refused(victim)
        except BaseException as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=attempt, daemon=True).start()
    assert done.wait(30), "the walk of a delta loop never ended"
    assert not errors, errors


def test_a_remote_ref_onto_a_tensor_is_refused(victim: Repository, tmp_path: Path) -> None:
    forger = Forger(tmp_path / "evil")
    forger.ref("refs/heads/main", victim.ls_tree()["keep"].tensor)  # a tensor the victim has
    assert "names a tensor" in str(refused(victim))


def test_names_from_a_remote_do_not_escape(victim: Repository, tmp_path: Path) -> None:
    forger = Forger(tmp_path / "evil")
    commit = forger.commit_of(tensor_id(ZEROS))
    forger.ref("refs/heads/x..y", commit)  # a name no branch may have
    refused(victim, InvalidRefNameError)


def test_tags_of_tags_are_followed_and_chains_bounded(victim: Repository, tmp_path: Path) -> None:
    source = Repository(tmp_path / "source", init=True)
    made = source.commit("tagged", weights={"w": np.arange(4, dtype=np.float32)})
    forger = Forger(tmp_path / "evil")
    victim.remove_remote("evil")
    source.add_remote("origin", str(tmp_path / "evil"))
    source.push()
    target = made.commit_hash
    chain = []
    for level in range(10):  # a tag of a tag of ... ten deep
        document = {"object": target, "name": f"t{level}", "tagger": "m", "timestamp": 1.0}
        target = forger.document(ObjectKind.TAG, document)
        chain.append(target)
    forger.ref("refs/tags/shallow", chain[1])  # two deep: fine
    copy = clone(str(tmp_path / "evil"), tmp_path / "copy")
    assert copy.resolve("shallow") == made.commit_hash
    assert copy.list_tags()[0].commit == made.commit_hash
    forger.ref("refs/tags/deep", chain[-1])  # ten deep: refused
    copy.remove_remote("origin")
    copy.add_remote("evil", str(tmp_path / "evil"))
    assert "deeper than" in str(refused(copy))


def test_a_remote_that_lies_about_a_commit_kind_cannot_name_a_tree(
    victim: Repository, tmp_path: Path
) -> None:
    forger = Forger(tmp_path / "evil")
    tree = forger.document(ObjectKind.TREE, {"entries": {}})
    forger.ref("refs/heads/main", tree)  # a tree the victim lacks, named as a branch
    refused(victim)


def test_a_forged_remote_is_refused_quickly_by_clone_too(tmp_path: Path) -> None:
    forger = Forger(tmp_path / "evil")
    forger.ref("refs/heads/main", "ef" * 16)  # names an object nobody has
    start = time.monotonic()
    with pytest.raises(CoralError):
        clone(str(tmp_path / "evil"), tmp_path / "copy")
    assert time.monotonic() - start < 30
    assert canonical_json({}) == b"{}"
    assert document_id("tree", b"{}")  # the forger's ids are the real ones


class LockingStore(MemoryStore):
    """A store without conditional writes: compare-and-swap by lock objects."""

    def compare_and_swap(self, key: str, expected: bytes | None, new: bytes) -> bool:
        return WeightStore.compare_and_swap(self, key, expected, new)


@pytest.mark.parametrize("leftover", [b"", b"garbage", str(time.time() - 3600).encode()])
def test_a_dead_or_garbage_ref_lock_is_broken_at_once(leftover: bytes) -> None:
    store = LockingStore()
    store.put("refs/heads/main.lock", leftover)  # a writer that died, or a torn file
    start = time.monotonic()
    assert store.compare_and_swap("refs/heads/main", None, b"x\n")
    assert time.monotonic() - start < 5  # not the 60 s a live lock is waited for
    assert set(store.list("refs/")) == {"refs/heads/main"}


def test_a_fresh_ref_lock_is_not_broken_by_a_slow_breaker() -> None:
    store = LockingStore()
    store.put("refs/heads/main.lock", str(time.time() - 3600).encode())
    store.put("refs/heads/main.lock.break", str(time.time()).encode())  # someone is breaking it
    store._break_stale_lock("refs/heads/main.lock")  # a second breaker: leaves it to them
    assert store.has("refs/heads/main.lock")
    store.delete("refs/heads/main.lock.break")
    store.put("refs/heads/main.lock", str(time.time()).encode())  # taken anew meanwhile
    store._break_stale_lock("refs/heads/main.lock")
    assert store.has("refs/heads/main.lock")  # a live lock stays


@pytest.mark.parametrize("model_name", ["../../x", "/tmp/absolute", "a\\b"])
def test_export_keeps_model_names_from_a_commit_in_the_folder(
    tmp_path: Path, model_name: str
) -> None:
    from click.testing import CliRunner

    from coral_cli.main import cli
    from coral_core import WeightMetadata, WeightTensor

    repo = Repository(tmp_path / "repo", init=True)
    meta = WeightMetadata(name="w", shape=(2,), dtype=np.float32, model_name=model_name)
    repo.commit("forged", weights={"w": WeightTensor(np.zeros(2, np.float32), meta)})
    out = tmp_path / "deep" / "er" / "export"
    result = CliRunner().invoke(cli, ["-C", str(repo.path), "export", "HEAD", str(out)])
    assert result.exit_code == 1
    assert "cannot name a file" in result.stderr or "leads out" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()
    assert not list(tmp_path.glob("deep/**/*.safetensors"))
